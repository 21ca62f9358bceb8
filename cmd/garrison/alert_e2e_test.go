package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestAlertCLI drives `garrison alert` against a real serve whose store
// holds alerts written as detection writes them.
func TestAlertCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	secret := func(role string) string {
		o, e, code := garrison(t, s, admin, "token", "create", role+"-bot", "--tenant", "acme", "--role", role, "-o", "json")
		require.Equal(t, 0, code, e)
		var ct struct{ Secret string }
		require.NoError(t, json.Unmarshal([]byte(o), &ct))
		return ct.Secret
	}
	operator, viewer := secret("operator"), secret("viewer")

	// Detection's side: alerts put in the store the server uses.
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(data, "garrison.db"))
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		for _, a := range []alert.Alert{
			{ID: "al-1", Tenant: "acme", Device: "d1", Kind: alert.PortScan, Severity: alert.High, Detector: "net",
				FirstSeen: now.Add(-2 * time.Hour), LastSeen: now.Add(-2 * time.Hour), Count: 3, State: alert.Open,
				Evidence: alert.Evidence{Summary: "42 ports in 10s", Values: map[string]any{"ports": 42, "baseline": 2}}},
			{ID: "al-2", Tenant: "acme", Device: "d2", Kind: alert.SIMIMEIMismatch, Severity: alert.Critical, Detector: "sim",
				FirstSeen: now, LastSeen: now, Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: "IMEI changed"}},
		} {
			if err := tx.Alerts().Put(ctx, a); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, st.Close())

	list := func(token string, args ...string) []alert.Alert {
		t.Helper()
		o, e, code := garrison(t, s, token, append([]string{"alert", "list", "--tenant", "acme", "-o", "json"}, args...)...)
		require.Equal(t, 0, code, e)
		var as []alert.Alert
		require.NoError(t, json.Unmarshal([]byte(o), &as), o)
		return as
	}
	require.Len(t, list(viewer), 2)
	as := list(viewer, "--device", "d1")
	require.Len(t, as, 1)
	require.Equal(t, "al-1", as[0].ID)
	require.Len(t, list(viewer, "--since", now.Add(-time.Hour).Format(time.RFC3339)), 1)
	require.Len(t, list(viewer, "--kind", string(alert.SIMIMEIMismatch)), 1)

	o, e, code := garrison(t, s, viewer, "alert", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "sim.imei_mismatch")
	require.Contains(t, o, "critical")
	o, e, code = garrison(t, s, viewer, "alert", "show", "al-1", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "42 ports in 10s")
	require.Contains(t, o, "baseline = 2")

	// A viewer reads but cannot acknowledge; an operator can, once.
	_, e, code = garrison(t, s, viewer, "alert", "ack", "al-1", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	o, e, code = garrison(t, s, operator, "alert", "ack", "al-1", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "acknowledged")
	_, e, code = garrison(t, s, operator, "alert", "ack", "al-1", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "conflict")
	o, e, code = garrison(t, s, operator, "alert", "resolve", "al-1", "--tenant", "acme", "--false-positive", "--note", "pentest", "-o", "json")
	require.Equal(t, 0, code, e)
	var a alert.Alert
	require.NoError(t, json.Unmarshal([]byte(o), &a))
	require.Equal(t, alert.FalsePositive, a.State)
	require.Len(t, list(viewer, "--state", "open"), 1)

	// Bad input is refused with the parameter named; unknown ids are 404.
	_, e, code = garrison(t, s, viewer, "alert", "list", "--tenant", "acme", "--since", "yesterday")
	require.Equal(t, 1, code)
	require.Contains(t, e, `"since"`)
	_, e, code = garrison(t, s, viewer, "alert", "show", "nope", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "not_found")
	_, e, code = garrison(t, s, viewer, "alert", "list")
	require.Equal(t, 1, code)
	require.Contains(t, e, "--tenant")

	// The changes are in the tenant's audit log.
	o, e, code = garrison(t, s, admin, "audit", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "alert.ack")
	require.Contains(t, o, "alert.false_positive")
}
