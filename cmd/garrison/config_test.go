package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func runCLI(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), &cliEnv{Stdout: &out, Stderr: &errb, Environ: env}, args)
	return out.String(), errb.String(), code
}

func TestConfigDefaultsPassCheck(t *testing.T) {
	out, _, code := runCLI(t, nil, "config", "defaults")
	require.Equal(t, 0, code)
	f := filepath.Join(t.TempDir(), "g.yaml")
	require.NoError(t, os.WriteFile(f, []byte(out), 0o600))
	out, errs, code := runCLI(t, nil, "config", "check", "--config", f)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "configuration is valid")
}

func TestConfigCheckReportsEveryError(t *testing.T) {
	f := filepath.Join(t.TempDir(), "g.yaml")
	require.NoError(t, os.WriteFile(f, []byte("log:\n  level: loud\nstore:\n  url: mysql://u:hunter2@h/db\n"), 0o600))
	_, errs, code := runCLI(t, []string{"GARRISON_API_ADDR=nope", "GARRISON_TOKEN=gar_x"}, "config", "check", "--config", f, "--http-addr", "1:2:3")
	require.Equal(t, 2, code)
	for _, want := range []string{
		"log.level (file " + f + ")",
		"store.url (file " + f + ")",
		"api.addr (env GARRISON_API_ADDR)",
		"http.addr (flag --http-addr)",
	} {
		require.Contains(t, errs, want)
	}
	require.NotContains(t, errs, "hunter2", "secrets are redacted")

	// Load errors (types, unknown keys) come out the same way.
	require.NoError(t, os.WriteFile(f, []byte("api: {addr: [1]}\nbogus: 1\n"), 0o600))
	_, errs, code = runCLI(t, nil, "config", "check", "--config", f)
	require.Equal(t, 2, code)
	require.Contains(t, errs, "api.addr")
	require.Contains(t, errs, "bogus (file "+f+"): unknown key")

	_, errs, code = runCLI(t, nil, "config", "check", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	require.Equal(t, 2, code)
	require.Contains(t, errs, "missing.yaml")
}

func TestServeRefusesBadConfig(t *testing.T) {
	_, errs, code := runCLI(t, nil, "serve", "--api-addr", "nope", "--data-dir", t.TempDir())
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "api.addr (flag --api-addr)")
}

func TestClientCommandsNeedToken(t *testing.T) {
	_, errs, code := runCLI(t, nil, "tenant", "list")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "GARRISON_TOKEN")
}
