package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
)

// TestDetectorCLI drives `garrison detector` against a real serve: list,
// tune a detector for a tenant and a group, read it back, refuse a bad
// field (naming it) and a viewer's write, reset.
func TestDetectorCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	o, e, code := garrison(t, s, admin, "token", "create", "viewer-bot", "--tenant", "acme", "--role", "viewer", "-o", "json")
	require.Equal(t, 0, code, e)
	var ct struct{ Secret string }
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	viewer := ct.Secret

	o, e, code = garrison(t, s, viewer, "detector", "list")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "auth.bruteforce")
	require.Contains(t, o, "net.threat_intel_hit")

	o, e, code = garrison(t, s, admin, "detector", "set", "auth.bruteforce", "threshold=50", "window=5m", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, `{"threshold":50,"window":"5m"}`)
	o, e, code = garrison(t, s, admin, "detector", "set", "auth.bruteforce", "disabled=true", "--tenant", "acme", "--group", "meters")
	require.Equal(t, 0, code, e)

	o, e, code = garrison(t, s, viewer, "detector", "show", "auth.bruteforce", "--tenant", "acme", "--group", "meters")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "threshold")
	require.Regexp(t, `threshold\s+integer\s+8\s+50`, o, "default and effective value")
	require.Contains(t, o, "true") // disabled in the group
	o, e, code = garrison(t, s, viewer, "detector", "list", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	var ds []api.DetectorInfo
	require.NoError(t, json.Unmarshal([]byte(o), &ds))
	for _, d := range ds {
		require.False(t, d.Disabled, "only the group is disabled: %s", d.Name)
	}

	// A misspelt field is named and changes nothing; a viewer may not write.
	_, e, code = garrison(t, s, admin, "detector", "set", "auth.bruteforce", "threshld=5", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "threshld")
	_, e, code = garrison(t, s, viewer, "detector", "set", "auth.bruteforce", "threshold=5", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	o, e, code = garrison(t, s, admin, "detector", "set", "auth.bruteforce", "--reset", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	var d api.DetectorInfo
	require.NoError(t, json.Unmarshal([]byte(o), &d))
	require.Empty(t, d.Override)

	o, e, code = garrison(t, s, admin, "detector", "feeds")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "NAME")

	o, e, code = garrison(t, s, admin, "audit", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "detector.settings.set")
}
