package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// fakeClock is a Clock whose timers fire only when the test advances it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	waits  []time.Duration // every After duration asked, in order
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	return ch
}

// Advance moves the clock and fires every timer now due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			keep = append(keep, t)
		}
	}
	c.timers = keep
}

// pending returns the deadlines of the timers not yet fired.
func (c *fakeClock) pending() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Time
	for _, t := range c.timers {
		out = append(out, t.at)
	}
	return out
}

func (c *fakeClock) waited() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.waits)
}

// platform is the real Garrison app on random loopback ports.
type platform struct {
	app    *app.App
	pool   *x509.CertPool
	tenant event.TenantID
}

var testPass = []byte("agent-test-passphrase-not-secret")

func startPlatform(t *testing.T) *platform {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.API.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Broker.Addr = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass, NoDetection: true})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, a.Start(ctx))
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	p := &platform{app: a, pool: pool, tenant: "acme"}
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		return tx.Tenants().Create(ctx, store.Tenant{ID: p.tenant, Name: "Acme", CreatedAt: now})
	}))
	return p
}

func (p *platform) addDevice(t *testing.T, id, model, serial string) {
	t.Helper()
	p.addDeviceIn(t, id, model, serial, store.StateActive)
}

func (p *platform) addDeviceIn(t *testing.T, id, model, serial string, state store.DeviceState) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	require.NoError(t, p.app.Store().Update(ctx, func(tx store.Tx) error {
		return tx.Devices().Create(ctx, store.Device{Tenant: p.tenant, ID: event.DeviceID(id), Model: model, Serial: serial,
			State: state, CreatedAt: now, UpdatedAt: now})
	}))
}

func (p *platform) setState(t *testing.T, id string, state store.DeviceState) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, p.app.Store().Update(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, p.tenant, event.DeviceID(id))
		if err != nil {
			return err
		}
		d.State, d.UpdatedAt = state, time.Now().UTC()
		return tx.Devices().Update(ctx, d)
	}))
}

func (p *platform) token(t *testing.T, device string) string {
	t.Helper()
	secret, _, err := p.app.Identity().CreateToken(context.Background(), p.tenant, identity.TokenSpec{Device: event.DeviceID(device)}, "test")
	require.NoError(t, err)
	return secret
}

// config is an agent configuration for device against p.
func (p *platform) config(t *testing.T, device string) Config {
	return Config{
		Tenant: string(p.tenant), Device: device, Model: "m1", StateDir: filepath.Join(t.TempDir(), "state"),
		URL: "https://" + p.app.APIAddr().String(), MQTTAddr: p.app.MQTTAddr().String(), ServerCA: p.pool,
		MetricsInterval: time.Hour, Backoff: Backoff{Base: 50 * time.Millisecond, Max: time.Second},
		Logger: testLogger(t),
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("AGENT_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// msg is one publish seen by the broker.
type msg struct {
	Topic   string
	Payload map[string]any
}

// observer collects what a device publishes, as the broker accepted it.
type observer struct {
	ch chan msg
}

func (p *platform) observe(t *testing.T, device string) *observer {
	t.Helper()
	o := &observer{ch: make(chan msg, 1024)}
	stop, err := p.app.Broker().Observe("devices/"+device+"/#", func(topic string, payload []byte) {
		var m map[string]any
		if json.Unmarshal(payload, &m) != nil {
			m = map[string]any{"_raw": string(payload)}
		}
		select {
		case o.ch <- msg{topic, m}:
		default:
		}
	})
	require.NoError(t, err)
	t.Cleanup(stop)
	return o
}

// wait returns the first message on a topic ending in suffix for which
// match holds, skipping others.
func (o *observer) wait(t *testing.T, suffix string, match func(m map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-o.ch:
			if strings.HasSuffix(m.Topic, suffix) && (match == nil || match(m.Payload)) {
				return m.Payload
			}
		case <-deadline:
			t.Fatalf("no %s message matched within 30s", suffix)
			return nil
		}
	}
}

func is(key string, v any) func(map[string]any) bool {
	return func(m map[string]any) bool { return m[key] == v }
}

// runAgent runs a until the test ends and returns it.
func runAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return a
}
