package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyPassphrase(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "correct horse battery\n")
	crlf := write("crlf", "correct horse battery\r\n")
	empty := write("empty", "\n")
	for _, tc := range []struct {
		name    string
		file    string
		env     []string
		want    string
		wantErr string
	}{
		{"env", "", []string{"PATH=/bin", PassphraseEnv + "=from the environment"}, "from the environment", ""},
		{"file, newline trimmed", good, nil, "correct horse battery", ""},
		{"file, CRLF trimmed", crlf, nil, "correct horse battery", ""},
		{"neither", "", []string{"GARRISON_KEY_PASSPHRASE_FILE=x"}, "", "GARRISON_KEY_PASSPHRASE"},
		{"empty env", "", []string{PassphraseEnv + "="}, "", "--key-passphrase-file"},
		{"empty file", empty, nil, "", "is empty"},
		{"missing file", filepath.Join(dir, "nope"), nil, "", "no such file"},
		{"both", good, []string{PassphraseEnv + "=x"}, "", "keep one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.Identity.KeyPassphraseFile = tc.file
			got, err := c.KeyPassphrase(tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := Default().KeyPassphrase(nil); !errors.Is(err, ErrNoPassphrase) {
		t.Fatalf("err = %v, want ErrNoPassphrase", err)
	}
}

// TestPassphraseNeverInConfig: the secret is not a key, so neither the
// defaults file nor a loaded config can hold or print it.
func TestPassphraseNeverInConfig(t *testing.T) {
	cfg, _, err := Load(Input{Environ: []string{PassphraseEnv + "=hunter2hunter2"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		if EnvName(k) == PassphraseEnv {
			t.Fatalf("key %s reads the secret env var", k)
		}
	}
	if strings.Contains(DefaultYAML(), "hunter2") || strings.Contains(strings.ToLower(DefaultYAML()), "key_passphrase:") {
		t.Fatal("defaults print a passphrase value")
	}
	if cfg.Identity.KeyPassphraseFile != "" {
		t.Fatal("the env secret leaked into a config key")
	}
}
