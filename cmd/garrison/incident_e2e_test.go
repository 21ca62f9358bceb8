package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestIncidentCLI drives `garrison incident` and `garrison webhook` against
// a real serve: open an incident on an alert, note, move it, export the
// post-incident report in Markdown and JSON, edit a runbook, and manage a
// webhook.
func TestIncidentCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	o, e, code := garrison(t, s, admin, "token", "create", "op-bot", "--tenant", "acme", "--role", "operator", "-o", "json")
	require.Equal(t, 0, code, e)
	var ct struct{ Secret string }
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	op := ct.Secret

	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(data, "garrison.db"))
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		return tx.Alerts().Put(ctx, alert.Alert{ID: "al-1", Tenant: "acme", Device: "cam-7", Kind: alert.TelnetScan, Severity: alert.Critical,
			Detector: "net", FirstSeen: now.Add(-time.Hour), LastSeen: now, Count: 4, State: alert.Open,
			Evidence: alert.Evidence{Summary: "412 hosts on 23/tcp"}})
	}))
	require.NoError(t, st.Close())

	o, e, code = garrison(t, s, op, "incident", "open", "--tenant", "acme", "--title", "Mirai on cam-7", "--alert", "al-1", "-o", "json")
	require.Equal(t, 0, code, e)
	var inc store.Incident
	require.NoError(t, json.Unmarshal([]byte(o), &inc), o)
	require.Equal(t, alert.Critical, inc.Severity)
	_, e, code = garrison(t, s, op, "incident", "note", inc.ID, "camera unplugged", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	o, e, code = garrison(t, s, op, "incident", "move", inc.ID, "contained", "--tenant", "acme", "--note", "isolated")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "contained")
	_, e, code = garrison(t, s, op, "incident", "move", inc.ID, "open", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "conflict")
	o, e, code = garrison(t, s, op, "incident", "list", "--tenant", "acme", "--open")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "Mirai on cam-7")
	o, e, code = garrison(t, s, op, "incident", "show", inc.ID, "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "camera unplugged")
	require.Contains(t, o, "Time to detect")

	o, e, code = garrison(t, s, op, "incident", "report", inc.ID, "--tenant", "acme", "--format", "md")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "# Post-incident report: Mirai on cam-7")
	require.Contains(t, o, "## Timeline")
	require.Contains(t, o, "Telnet scanning (Mirai-like)", "the shipped runbook")
	o, e, code = garrison(t, s, op, "incident", "report", inc.ID, "--tenant", "acme", "--format", "json")
	require.Equal(t, 0, code, e)
	var rep incident.Report
	require.NoError(t, json.Unmarshal([]byte(o), &rep), o)
	require.Equal(t, inc.ID, rep.Incident.ID)
	require.Len(t, rep.Alerts, 1)
	require.NotNil(t, rep.Metrics.TimeToContain)
	_, e, code = garrison(t, s, op, "incident", "report", inc.ID, "--tenant", "acme", "--format", "pdf")
	require.Equal(t, 1, code)
	require.Contains(t, e, "--format")

	file := filepath.Join(t.TempDir(), "rb.md")
	require.NoError(t, os.WriteFile(file, []byte("# Our Mirai drill\n\n1. Pull the PoE cable.\n"), 0o600))
	_, e, code = garrison(t, s, op, "incident", "runbook", "set", "net.telnet_scan", file, "--tenant", "acme")
	require.Equal(t, 0, code, e)
	o, e, code = garrison(t, s, op, "incident", "runbook", "show", "net.telnet_scan", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Equal(t, "# Our Mirai drill\n\n1. Pull the PoE cable.\n", o)
	_, e, code = garrison(t, s, op, "incident", "runbook", "reset", "net.telnet_scan", "--tenant", "acme")
	require.Equal(t, 0, code, e)

	// Webhooks are an admin's business.
	_, e, code = garrison(t, s, op, "webhook", "create", "soc", "https://soc.example/hook", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	o, e, code = garrison(t, s, admin, "webhook", "create", "soc", "https://soc.example/hook", "--tenant", "acme", "--events", "alert.raised,incident.state")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "Signing secret (shown once): whsec_")
	o, e, code = garrison(t, s, admin, "webhook", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "alert.raised,incident.state")
	require.NotContains(t, o, "whsec_")
	_, e, code = garrison(t, s, admin, "webhook", "create", "bad", "ftp://x/", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "http or https")
	o, e, code = garrison(t, s, admin, "webhook", "deliveries", "--tenant", "acme", "--state", "dead", "-o", "json")
	require.Equal(t, 0, code, e)
	require.JSONEq(t, "[]", o)

	// The tenant's own syslog target.
	_, e, code = garrison(t, s, admin, "syslog", "show", "--tenant", "acme")
	require.Equal(t, 1, code, "none yet")
	require.Contains(t, e, "no syslog target")
	_, e, code = garrison(t, s, op, "syslog", "set", "siem.acme.example:6514", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	_, e, code = garrison(t, s, admin, "syslog", "set", "siem.acme.example", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "must be host:port")
	o, e, code = garrison(t, s, admin, "syslog", "set", "siem.acme.example:6514", "--tls", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `siem.acme.example:6514\s+true\s+system roots`, o)
	o, e, code = garrison(t, s, admin, "syslog", "show", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, `"addr": "siem.acme.example:6514"`)
	_, e, code = garrison(t, s, admin, "syslog", "clear", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	_, _, code = garrison(t, s, admin, "syslog", "show", "--tenant", "acme")
	require.Equal(t, 1, code, "cleared")

	o, e, code = garrison(t, s, admin, "audit", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	for _, action := range []string{"incident.open", "incident.note", "incident.state", "runbook.update", "runbook.reset", "webhook.create", "syslog.set", "syslog.delete"} {
		require.Contains(t, o, action)
	}
}
