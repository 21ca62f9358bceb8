package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/agent"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// TestDeviceCommandCLI: the real binary serves, the real agent enrols with
// a token the CLI created and connects over mutual TLS, and `garrison
// device command --wait` sends commands through the broker and prints the
// agent's answers; a failure exits non-zero; a viewer cannot send. The
// agent reports a firmware digest no signed release has, so detection and
// response quarantine it soon after it connects: commands and their
// answers must still flow (a quarantined device reports and updates).
func TestDeviceCommandCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin)
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
	dev := func(tok string, args ...string) (string, string, int) {
		return garrison(t, s, tok, append([]string{"device", "--tenant", "acme"}, args...)...)
	}
	_, e, code = dev(operator, "create", "trk-0001", "--model", "m1")
	require.Equal(t, 0, code, e)
	_, e, code = dev(operator, "set-state", "trk-0001", "active")
	require.Equal(t, 0, code, e)
	o, e, code := dev(operator, "enrol-token", "--device", "trk-0001", "-o", "json")
	require.Equal(t, 0, code, e)
	var tok api.CreatedEnrolToken
	require.NoError(t, json.Unmarshal([]byte(o), &tok))

	mqttAddr, err := os.ReadFile(filepath.Join(data, "run", "mqtt.addr"))
	require.NoError(t, err)
	pool, err := tlsutil.Pool(filepath.Join(data, "tls", tlsutil.CertFile))
	require.NoError(t, err)
	ag, err := agent.New(agent.Config{Tenant: "acme", Device: "trk-0001", Model: "m1", StateDir: filepath.Join(t.TempDir(), "state"),
		URL: "https://" + s.addr, MQTTAddr: strings.TrimSpace(string(mqttAddr)), ServerCA: pool, Token: tok.Secret,
		MetricsInterval: time.Hour, Backoff: agent.Backoff{Base: 50 * time.Millisecond, Max: time.Second},
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, func() bool { return ag.Stats().Connects > 0 }, 30*time.Second, 20*time.Millisecond, "agent connected")

	var cmd store.Command
	o, e, code = dev(operator, "command", "trk-0001", "ping", "--wait", "20s", "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &cmd))
	require.Equal(t, store.CommandSucceeded, cmd.Status)
	require.Equal(t, "pong", cmd.Output)

	// Quarantined by the firmware.unapproved playbook; commands still work.
	require.Eventually(t, func() bool {
		o, _, _ := dev(operator, "show", "trk-0001", "-o", "json")
		var d store.Device
		return json.Unmarshal([]byte(o), &d) == nil && d.State == store.StateQuarantined
	}, 30*time.Second, 200*time.Millisecond, "device quarantined for its unsigned firmware")
	o, e, code = dev(operator, "command", "trk-0001", "report", "--wait", "20s", "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &cmd))
	require.Equal(t, store.CommandSucceeded, cmd.Status, "a quarantined device answers")
	require.Contains(t, cmd.Output, "fw_digest")

	o, e, code = dev(operator, "command", "trk-0001", "self-destruct", "--wait", "20s", "-o", "json")
	require.NotEqual(t, 0, code, "a failed command exits non-zero")
	require.Contains(t, e, "failed")
	require.NoError(t, json.Unmarshal([]byte(o), &cmd))
	require.Equal(t, store.CommandFailed, cmd.Status)
	require.Contains(t, cmd.Error, "unknown command")

	_, e, code = dev(operator, "command", "trk-0001", "ping", "--args", "not json")
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "--args")

	_, e, code = dev(viewer, "command", "trk-0001", "ping")
	require.NotEqual(t, 0, code, "a viewer cannot send commands")
	require.Contains(t, e, "forbidden")

	o, e, code = dev(viewer, "commands", "trk-0001")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "self-destruct")
	require.Contains(t, o, "succeeded")
	require.Contains(t, o, "failed")
}
