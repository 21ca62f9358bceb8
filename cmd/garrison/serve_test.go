package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runServe runs serve to completion (it must exit by itself) and returns
// its stderr and whether it succeeded.
func runServe(t *testing.T, data string, env ...string) (string, bool) {
	t.Helper()
	cmd := serveCmd(data, env...)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errb, &errb
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return errb.String(), err == nil
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("serve did not exit: %s", errb.String())
		return "", false
	}
}

func TestServeRefusesWithoutPassphrase(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	errs, ok := runServe(t, data)
	require.False(t, ok, "serve without a key passphrase must exit non-zero")
	require.Contains(t, errs, "GARRISON_KEY_PASSPHRASE")
	require.Contains(t, errs, "--key-passphrase-file")
	_, err := os.Stat(data)
	require.ErrorIs(t, err, os.ErrNotExist, "nothing is created before the passphrase is known")

	// A passphrase too short is refused the same way.
	errs, ok = runServe(t, data, "GARRISON_KEY_PASSPHRASE=short")
	require.False(t, ok)
	require.Contains(t, errs, "GARRISON_KEY_PASSPHRASE")
}

// TestServePassphraseFile starts serve with the passphrase in a file, then
// shows that a restart with another passphrase refuses to open the CA keys
// (and does not print the passphrase).
func TestServePassphraseFile(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	pf := filepath.Join(dir, "pass")
	require.NoError(t, os.WriteFile(pf, []byte(testPassphrase+"\n"), 0o600))
	cmd := serveCmd(data, "GARRISON_IDENTITY_KEY_PASSPHRASE_FILE="+pf)
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	addrFile := filepath.Join(data, "run", "mqtt.addr")
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The bootstrap token is printed last, once everything started.
		if b, err := os.ReadFile(addrFile); err == nil && strings.HasSuffix(string(b), "\n") && tokenRE.MatchString(out.String()) {
			break
		}
		select {
		case <-done:
			t.Fatalf("serve exited early: %s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
		require.True(t, time.Now().Before(deadline), "serve did not write mqtt.addr: %s", out.String())
	}
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	<-done
	require.True(t, cmd.ProcessState.Success(), out.String())

	wrong := "another-passphrase-entirely"
	errs, ok := runServe(t, data, "GARRISON_KEY_PASSPHRASE="+wrong)
	require.False(t, ok, "a wrong passphrase must stop serve")
	require.Contains(t, errs, "wrong key passphrase")
	require.NotContains(t, errs, wrong)
	require.NotContains(t, errs, testPassphrase)

	// Both sources at once is ambiguous and refused.
	errs, ok = runServe(t, data, "GARRISON_KEY_PASSPHRASE="+testPassphrase, "GARRISON_IDENTITY_KEY_PASSPHRASE_FILE="+pf)
	require.False(t, ok)
	require.Contains(t, errs, "keep one")
}
