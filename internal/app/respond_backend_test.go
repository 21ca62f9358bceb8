package app

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/connectivity"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

type kicks struct{ got []event.DeviceID }

func (k *kicks) Kick(_ event.TenantID, d event.DeviceID, _ string) bool {
	k.got = append(k.got, d)
	return true
}

type gateway struct {
	calls int
	err   error
}

func (g *gateway) Disconnect(context.Context, event.TenantID, event.DeviceID) error {
	g.calls++
	return g.err
}

type simPlatform struct {
	suspended map[event.DeviceID]bool
	err       error
}

func (p *simPlatform) SuspendSIM(_ context.Context, _ event.TenantID, d event.DeviceID) error {
	if p.err != nil {
		return p.err
	}
	p.suspended[d] = true
	return nil
}

func (p *simPlatform) ReactivateSIM(_ context.Context, _ event.TenantID, d event.DeviceID) error {
	if p.err != nil {
		return p.err
	}
	p.suspended[d] = false
	return nil
}

// TestServeBackend: in serve, a disconnect step kicks the MQTT session and
// drops the data session at the gateway (a device without one is done, a
// failing gateway is retried); blocking the SIM moves the registry (RADIUS
// rejects it) and suspends it at the platform where one is configured, and
// the undo reverses both.
func TestServeBackend(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	defer st.Close()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: "m-1", Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now})
	}))
	reg, err := registry.New(registry.Options{Store: st, Clock: clock.NewManual(now)})
	require.NoError(t, err)
	k, gw, pf := &kicks{}, &gateway{}, &simPlatform{suspended: map[event.DeviceID]bool{}}
	b := serveBackend{RegistryBackend: respond.RegistryBackend{Registry: reg}, broker: k, radius: gw, sims: pf}
	tg := respond.Target{Tenant: "acme", Device: "m-1", Reason: "sim.imei_mismatch"}

	require.NoError(t, b.Disconnect(ctx, tg))
	require.Equal(t, []event.DeviceID{"m-1"}, k.got)
	require.Equal(t, 1, gw.calls)
	gw.err = fmt.Errorf("no data session: %w", connectivity.ErrNoSession)
	require.NoError(t, b.Disconnect(ctx, tg), "nothing to cut is done")
	gw.err = errors.New("gateway timeout")
	require.ErrorContains(t, b.Disconnect(ctx, tg), "gateway timeout", "retried by the engine")

	state := func() store.DeviceState {
		var d store.Device
		require.NoError(t, st.View(ctx, func(tx store.Tx) (err error) { d, err = tx.Devices().Get(ctx, "acme", "m-1"); return err }))
		return d.State
	}
	u, err := b.SuspendSIM(ctx, tg)
	require.NoError(t, err)
	require.Equal(t, store.StateSuspended, state())
	require.True(t, pf.suspended["m-1"])
	require.NoError(t, b.ResumeSIM(ctx, tg, u))
	require.Equal(t, store.StateActive, state())
	require.False(t, pf.suspended["m-1"])

	// No platform for the tenant: the registry block alone.
	pf.err = fmt.Errorf("acme: %w", connectivity.ErrNoProvider)
	_, err = b.SuspendSIM(ctx, tg)
	require.NoError(t, err)
	require.Equal(t, store.StateSuspended, state())
	// The platform refuses: the step fails (and is retried).
	pf.err = errors.New("403 from the operator API")
	require.ErrorContains(t, b.ResumeSIM(ctx, tg, u), "403")
	require.Equal(t, store.StateSuspended, state(), "the registry stays blocked while the platform has not reactivated")

	// serve without RADIUS, a platform or a broker still answers.
	bare := serveBackend{RegistryBackend: respond.RegistryBackend{Registry: reg}}
	require.NoError(t, bare.Disconnect(ctx, tg))
}
