package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestFirmwareOfflineCLI: keygen, sign, sign-keys and verify need no server,
// and verify catches a tampered artifact, a wrong model and a downgrade.
func TestFirmwareOfflineCLI(t *testing.T) {
	dir := t.TempDir()
	cli := func(args ...string) (string, string, int) {
		return runCLI(t, nil, append([]string{"firmware"}, args...)...)
	}
	for _, role := range []string{"root", "release"} {
		o, e, code := cli("keygen", "--role", role, "--dir", dir)
		require.Equal(t, 0, code, e)
		require.Contains(t, o, "keyid ")
	}
	fi, err := os.Stat(filepath.Join(dir, "release.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	art := filepath.Join(dir, "fw.bin")
	require.NoError(t, os.WriteFile(art, []byte("image 1.2.0"), 0o644))
	man, keys := filepath.Join(dir, "m.json"), filepath.Join(dir, "keys.json")
	_, e, code := cli("sign", "--key", filepath.Join(dir, "release.key"), "--artifact", art, "--version", "1.2.0",
		"--min-version", "1.0.0", "--models", "m1,m2", "--out", man)
	require.Equal(t, 0, code, e)
	_, e, code = cli("sign-keys", "--root", filepath.Join(dir, "root.key"), "--keys", filepath.Join(dir, "release.pub"), "--out", keys)
	require.Equal(t, 0, code, e)
	verify := func(extra ...string) (string, string, int) {
		return cli(append([]string{"verify", "--manifest", man, "--keys", keys, "--root", filepath.Join(dir, "root.pub")}, extra...)...)
	}
	o, e, code := verify("--artifact", art, "--model", "m1", "--current", "1.1.0")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "ok: 1.2.0")
	_, e, code = verify("--model", "m9", "--current", "1.1.0")
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "another model")
	_, e, code = verify("--model", "m1", "--current", "1.3.0")
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "downgrade")
	require.NoError(t, os.WriteFile(art, []byte("image 1.2.X"), 0o644))
	_, e, code = verify("--artifact", art)
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "digest mismatch")
	// A keys document signed by another root is refused.
	_, e, code = cli("keygen", "--role", "root", "--name", "evil", "--dir", dir)
	require.Equal(t, 0, code, e)
	_, e, code = cli("verify", "--manifest", man, "--keys", keys, "--root", filepath.Join(dir, "evil.pub"))
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "signature not trusted")
}

// TestFirmwareAndCampaignCLI drives the catalog and a campaign through the
// API with the CLI against a running server.
func TestFirmwareAndCampaignCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	for _, id := range []string{"m-1", "m-2", "m-3"} {
		_, e, code = garrison(t, s, admin, "device", "create", id, "--model", "m1", "--tenant", "acme")
		require.Equal(t, 0, code, e)
	}
	dir := t.TempDir()
	off := func(args ...string) {
		t.Helper()
		_, e, code := runCLI(t, nil, append([]string{"firmware"}, args...)...)
		require.Equal(t, 0, code, e)
	}
	off("keygen", "--role", "root", "--dir", dir)
	off("keygen", "--role", "release", "--dir", dir)
	art := filepath.Join(dir, "fw.bin")
	require.NoError(t, os.WriteFile(art, []byte(strings.Repeat("firmware 1.2.0 ", 1000)), 0o644))
	man, keys := filepath.Join(dir, "m.json"), filepath.Join(dir, "keys.json")
	off("sign", "--key", filepath.Join(dir, "release.key"), "--artifact", art, "--version", "1.2.0", "--models", "m1", "--out", man)
	off("sign-keys", "--root", filepath.Join(dir, "root.key"), "--keys", filepath.Join(dir, "release.pub"), "--out", keys)

	fw := func(args ...string) (string, string, int) {
		return garrison(t, s, admin, append([]string{"firmware", "--tenant", "acme"}, args...)...)
	}
	_, e, code = fw("upload", "--manifest", man, "--artifact", art)
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "no trust configured", "no root yet: refused")
	o, e, code := fw("trust-root", filepath.Join(dir, "root.pub"))
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "ROOT KEYID")
	_, e, code = fw("set-keys", keys)
	require.Equal(t, 0, code, e)
	// A tampered artifact is refused and nothing is listed.
	bad := filepath.Join(dir, "bad.bin")
	b, _ := os.ReadFile(art)
	b[0] ^= 1
	require.NoError(t, os.WriteFile(bad, b, 0o644))
	_, e, code = fw("upload", "--manifest", man, "--artifact", bad)
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "digest mismatch")
	o, e, code = fw("list", "-o", "json")
	require.Equal(t, 0, code, e)
	require.JSONEq(t, "[]", o)
	o, e, code = fw("upload", "--manifest", man, "--artifact", art, "-o", "json")
	require.Equal(t, 0, code, e)
	var rel api.ReleaseInfo
	require.NoError(t, json.Unmarshal([]byte(o), &rel))
	require.Equal(t, "1.2.0", rel.Version)
	o, e, code = fw("list")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, rel.SHA256)
	_, e, code = fw("min-version", "m1", "1.1.0")
	require.Equal(t, 0, code, e)

	cp := func(args ...string) (string, string, int) {
		return garrison(t, s, admin, append([]string{"campaign", "--tenant", "acme"}, args...)...)
	}
	o, e, code = cp("create", "--release", rel.SHA256, "--model", "m1", "--waves", "34,100", "--name", "fix", "-o", "json")
	require.Equal(t, 0, code, e)
	var ci api.CampaignInfo
	require.NoError(t, json.Unmarshal([]byte(o), &ci))
	require.Equal(t, 3, ci.Spec.Targets)
	_, e, code = cp("create", "--release", rel.SHA256, "--model", "m1", "--waves", "50,20")
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "increasing")
	o, e, code = cp("list")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, ci.ID)
	o, e, code = cp("pause", ci.ID, "--reason", "hold on")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "paused")
	o, e, code = cp("show", ci.ID)
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "hold on")
	require.Contains(t, o, "DEVICES")
	_, e, code = cp("resume", ci.ID)
	require.Equal(t, 0, code, e)
	_, e, code = cp("cancel", ci.ID)
	require.Equal(t, 0, code, e)
	o, e, code = cp("show", ci.ID, "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &ci))
	require.Equal(t, store.CampaignCancelled, ci.State)
	_, e, code = cp("resume", ci.ID)
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "conflict")
}
