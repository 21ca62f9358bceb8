package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestRulesCLI drives `garrison rules` against a real serve: a rule is
// tried on recorded events before it is created, created, listed, shown
// and deleted; invalid CEL is refused with its position; a viewer may try
// rules but not write them.
func TestRulesCLI(t *testing.T) {
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

	// A registered camera the rule knows by model.
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(data, "garrison.db"))
	require.NoError(t, err)
	now := time.Now().UTC()
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		return tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: "cam-1", Model: "ipcam-3", State: store.StateActive, CreatedAt: now, UpdatedAt: now})
	}))
	require.NoError(t, st.Close())

	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	rule := write("telnet.yaml", `id: camera-telnet
name: Camera talks telnet
severity: high
events: [net.flow]
enabled: true
expr: |
  device.model.startsWith('ipcam') &&
  event.attrs.dst_port in [23, 2323]
`)
	bad := write("bad.yaml", "id: bad\nname: bad\nseverity: low\nexpr: |\n  event.kind == 'net.flow' &&\n  event.atrs.x == 1\n")
	unknown := write("unknown.yaml", "id: u\nname: u\nseverity: low\nexpr: 'true'\nenabeld: true\n")
	events := write("events.jsonl", `{"id":"e1","device":"cam-1","kind":"net.flow","time":"2026-11-24T10:00:00Z","source":"flows","attrs":{"dst_ip":"198.51.100.1","dst_port":443}}
{"id":"e2","device":"cam-1","kind":"net.flow","time":"2026-11-24T10:00:05Z","source":"flows","attrs":{"dst_ip":"198.51.100.2","dst_port":23}}
{"id":"e3","device":"cam-1","kind":"mqtt.publish","time":"2026-11-24T10:00:06Z","source":"broker","attrs":{"bytes":120}}
{"id":"e4","device":"cam-1","kind":"net.flow","time":"2026-11-24T10:00:09Z","source":"flows","attrs":{"dst_ip":"198.51.100.3","dst_port":2323}}
`)

	// Tried before it exists, by a viewer: two matches, one alert of two.
	o, e, code = garrison(t, s, viewer, "rules", "test", "--tenant", "acme", "--rule", rule, "--events", events)
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "4 events, 3 evaluated, 2 matched, 0 failed")
	require.Contains(t, o, "rule.camera_telnet")
	o, e, code = garrison(t, s, viewer, "rules", "test", "--tenant", "acme", "--rule", rule, "--events", events, "-o", "json")
	require.Equal(t, 0, code, e)
	var res api.RuleTestResponse
	require.NoError(t, json.Unmarshal([]byte(o), &res), o)
	require.Equal(t, []int{2, 4}, []int{res.Matches[0].Line, res.Matches[1].Line})
	require.Len(t, res.Alerts, 1)
	require.Equal(t, 2, res.Alerts[0].Count)
	o, e, code = garrison(t, s, viewer, "rules", "list", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	require.JSONEq(t, "[]", o, "a test stores nothing")

	// A viewer cannot write; bad rules are refused with where and why.
	_, e, code = garrison(t, s, viewer, "rules", "create", "--tenant", "acme", "--rule", rule)
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	_, e, code = garrison(t, s, admin, "rules", "create", "--tenant", "acme", "--rule", bad)
	require.Equal(t, 1, code)
	require.Contains(t, e, "line 2, column 6")
	require.Contains(t, e, "atrs")
	_, e, code = garrison(t, s, admin, "rules", "create", "--tenant", "acme", "--rule", unknown)
	require.Equal(t, 1, code)
	require.Contains(t, e, "enabeld")

	o, e, code = garrison(t, s, admin, "rules", "create", "--tenant", "acme", "--rule", rule)
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "camera-telnet")
	o, e, code = garrison(t, s, viewer, "rules", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "rule.camera_telnet")
	require.Contains(t, o, "net.flow")
	o, e, code = garrison(t, s, viewer, "rules", "show", "camera-telnet", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "event.attrs.dst_port in [23, 2323]")
	o, e, code = garrison(t, s, viewer, "rules", "test", "--tenant", "acme", "--id", "camera-telnet", "--events", events)
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "2 matched")

	o, e, code = garrison(t, s, admin, "rules", "delete", "camera-telnet", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "deleted")
	_, e, code = garrison(t, s, viewer, "rules", "show", "camera-telnet", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "not_found")

	o, e, code = garrison(t, s, admin, "audit", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "rule.create")
	require.Contains(t, o, "rule.delete")
}
