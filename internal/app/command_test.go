package app_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/agent"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// operatorToken creates an operator of tenant and an API token for it.
func operatorToken(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID) string {
	t.Helper()
	sec, err := auth.NewSecret(nil)
	require.NoError(t, err)
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		op := store.Operator{ID: "op-field", Tenant: tenant, Name: "field", Role: store.RoleOperator, CreatedAt: now}
		if err := tx.Operators().Create(ctx, op); err != nil {
			return err
		}
		return tx.Tokens().Create(ctx, store.Token{ID: sec.ID, Tenant: tenant, Operator: op.ID, Role: store.RoleOperator,
			Name: "t", Hash: sec.Hash, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	}))
	return sec.Plaintext
}

// TestAgentCommandsAndTelemetryEndToEnd runs the whole platform and the
// real device agent: the agent enrols with a one-time token, connects over
// mutual TLS; an operator sends commands through the API, the agent
// executes them and its command.result completes them, visible through
// the API; the agent's telemetry reaches the tenant's data stream and its
// position becomes a location event; its metrics become device.metrics.
func TestAgentCommandsAndTelemetryEndToEnd(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass, NoDetection: true})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())

	const tenant, dev = event.TenantID("acme"), "trk-0001"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: dev, Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now})
	}))
	token := operatorToken(t, ctx, a, tenant)

	// The tenant's application reads its telemetry from the data stream;
	// the location and metrics events go to detection's stream.
	var mu sync.Mutex
	var telemetry, located, metrics []*event.Event
	collect := func(dst *[]*event.Event) bus.Handler {
		return func(_ context.Context, e *event.Event) error {
			mu.Lock()
			defer mu.Unlock()
			if e.Device == dev {
				cp := *e
				*dst = append(*dst, &cp)
			}
			return nil
		}
	}
	for _, c := range []bus.ConsumerOptions{
		{Name: "acme-app", Stream: bus.Data, Filters: []string{bus.TelemetryFilter(tenant)}, Handler: collect(&telemetry)},
		{Name: "test-location", Stream: a.Bus().StreamFor(event.Location), Filters: []string{bus.KindFilter(event.Location)}, Handler: collect(&located)},
		{Name: "test-metrics", Stream: a.Bus().StreamFor(event.DeviceMetrics), Filters: []string{bus.KindFilter(event.DeviceMetrics)}, Handler: collect(&metrics)},
	} {
		cons, err := a.Bus().Consume(ctx, c)
		require.NoError(t, err)
		defer cons.Stop()
	}

	// A command sent before the device ever connected is kept and sent
	// again once it subscribes.
	c := client(t, a)
	base := "/api/v1/tenants/" + string(tenant) + "/devices/" + dev + "/commands"
	var early store.Command
	require.Equal(t, 202, doJSON(t, c, a, "POST", base, token, `{"name":"ping","ttl_s":600}`, &early))
	require.Equal(t, store.CommandOffline, early.Status)

	secret, _, err := a.Identity().CreateToken(ctx, tenant, identity.TokenSpec{Device: dev}, "test")
	require.NoError(t, err)
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	ag, err := agent.New(agent.Config{Tenant: string(tenant), Device: dev, Model: "m1", StateDir: filepath.Join(t.TempDir(), "state"),
		URL: "https://" + a.APIAddr().String(), MQTTAddr: a.MQTTAddr().String(), ServerCA: pool, Token: secret,
		MetricsInterval: time.Hour, Backoff: agent.Backoff{Base: 50 * time.Millisecond, Max: time.Second},
		Logger: slog.New(slog.DiscardHandler),
		Commands: map[string]agent.CommandFunc{"locate": func(_ context.Context, args json.RawMessage) (string, error) {
			var p struct{ Precision string }
			err := json.Unmarshal(args, &p)
			return "here, " + p.Precision, err
		}}})
	require.NoError(t, err)
	actx, acancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(actx) }()
	defer func() { acancel(); <-done }()
	// Connects counts sessions whose subscriptions were acknowledged.
	require.Eventually(t, func() bool { return ag.Stats().Connects > 0 && a.Broker().Stats().Sessions == 1 }, 30*time.Second, 20*time.Millisecond,
		"agent connected and subscribed")

	send := func(body string) store.Command {
		t.Helper()
		var cmd store.Command
		code := doJSON(t, c, a, "POST", base, token, body, &cmd)
		require.Equal(t, 202, code)
		// sent, or already answered by a quick device: either way not
		// offline, the device had a live session
		require.NotEqual(t, store.CommandOffline, cmd.Status, "the device had a live session")
		return cmd
	}
	outcome := func(id string) store.Command {
		t.Helper()
		var cmd store.Command
		require.Eventually(t, func() bool {
			require.Equal(t, 200, doJSON(t, c, a, "GET", base+"/"+id, token, "", &cmd))
			// offline (sent before the device connected) and sent are both
			// still open; wait for the device's answer
			return cmd.Status == store.CommandSucceeded || cmd.Status == store.CommandFailed
		}, 20*time.Second, 20*time.Millisecond, "command %s completed", id)
		return cmd
	}
	got := outcome(early.ID)
	require.Equal(t, store.CommandSucceeded, got.Status, "the command sent while offline ran after the device connected")
	require.Equal(t, "pong", got.Output)

	ping := send(`{"name":"ping"}`)
	locate := send(`{"name":"locate","args":{"precision":"10m"}}`)
	unknown := send(`{"name":"self-destruct"}`)
	got = outcome(ping.ID)
	require.Equal(t, store.CommandSucceeded, got.Status)
	require.Equal(t, "pong", got.Output)
	require.False(t, got.CompletedAt.IsZero())
	got = outcome(locate.ID)
	require.Equal(t, store.CommandSucceeded, got.Status)
	require.Equal(t, "here, 10m", got.Output)
	got = outcome(unknown.ID)
	require.Equal(t, store.CommandFailed, got.Status)
	require.Contains(t, got.Error, "unknown command")
	report := send(`{"name":"report"}`)
	require.Equal(t, store.CommandSucceeded, outcome(report.ID).Status)

	require.NoError(t, ag.PublishTelemetry(ctx, map[string]any{"speed": 42, "lat": 48.8566, "lon": 2.3522, "accuracy_m": 10}))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(telemetry) == 1 && len(located) == 1 && len(metrics) >= 1
	}, 20*time.Second, 20*time.Millisecond, "telemetry on the data stream, a location and the metrics the report command sent")
	mu.Lock()
	defer mu.Unlock()
	var tel map[string]any
	require.NoError(t, json.Unmarshal([]byte(telemetry[0].Str("payload")), &tel))
	require.Equal(t, 42.0, tel["speed"])
	require.Equal(t, tenant, telemetry[0].Tenant)
	lat, _ := located[0].Float("lat")
	require.Equal(t, 48.8566, lat)
	require.Equal(t, "device", located[0].Str("source"))
	_, hasPorts := metrics[0].Attrs["listening_ports"]
	require.True(t, hasPorts, "metrics carry the agent's listening ports")
	require.Greater(t, metrics[0].Int("processes"), int64(0))
}
