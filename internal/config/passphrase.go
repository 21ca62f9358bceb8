package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// PassphraseEnv is the environment variable holding the key passphrase.
const PassphraseEnv = "GARRISON_KEY_PASSPHRASE"

// ErrNoPassphrase: neither GARRISON_KEY_PASSPHRASE nor
// identity.key_passphrase_file gives a key passphrase. Its message says how
// to set one.
var ErrNoPassphrase = errors.New("no key passphrase: the CA private keys are sealed with it; " +
	"set the environment variable " + PassphraseEnv + " (at least 12 characters) " +
	"or name a file holding it with --key-passphrase-file (config identity.key_passphrase_file, env GARRISON_IDENTITY_KEY_PASSPHRASE_FILE)")

// KeyPassphrase returns the passphrase that seals CA private keys: the
// contents of identity.key_passphrase_file (one trailing newline removed)
// if that key is set, else GARRISON_KEY_PASSPHRASE from environ. Setting
// both is an error, so there is never a doubt which one is in use. The
// value is never logged or printed.
func (c Config) KeyPassphrase(environ []string) ([]byte, error) {
	var env string
	envSet := false
	for _, kv := range environ {
		if name, val, ok := strings.Cut(kv, "="); ok && name == PassphraseEnv {
			env, envSet = val, true
		}
	}
	switch {
	case c.Identity.KeyPassphraseFile != "" && envSet:
		return nil, fmt.Errorf("key passphrase: both %s and identity.key_passphrase_file are set; keep one", PassphraseEnv)
	case c.Identity.KeyPassphraseFile != "":
		b, err := os.ReadFile(c.Identity.KeyPassphraseFile)
		if err != nil {
			return nil, fmt.Errorf("key passphrase file: %w", err)
		}
		b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
		if len(b) == 0 {
			return nil, fmt.Errorf("key passphrase file %s is empty: %w", c.Identity.KeyPassphraseFile, ErrNoPassphrase)
		}
		return b, nil
	case env != "":
		return []byte(env), nil
	}
	return nil, ErrNoPassphrase
}
