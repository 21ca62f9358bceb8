package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestServeDetectsAndResponds proves that a served platform defends itself:
// a device registered after start, whose SIM then opens a data session from
// a device with another IMEI, gets a stored sim.imei_mismatch alert with its
// evidence and is quarantined by the default playbook, with the action and
// the state change in the audit log.
func TestServeDetectsAndResponds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := app.New(testConfig(t), nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())

	const tenant, device = event.TenantID("acme"), event.DeviceID("meter-0017")
	const imsi, boundIMEI, foreignIMEI = "214017536736625", "356039801863042", "357517049431432"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: device, Model: "acme-meter-2", State: store.StateActive,
			IMSI: imsi, IMEI: boundIMEI, CreatedAt: now, UpdatedAt: now})
	}))

	session := func(imei string, at time.Time) *event.Event {
		return &event.Event{Tenant: tenant, Device: device, Kind: event.NetSession, Time: at, Source: "radius",
			Attrs: map[string]any{"status": "start", "session_id": "s-" + imei, "imsi": imsi, "imei": imei, "ip": "10.64.0.17"}}
	}
	require.NoError(t, a.Bus().Publish(ctx, session(boundIMEI, now)))

	// Nothing is wrong yet: the SIM is in its own device.
	time.Sleep(300 * time.Millisecond)
	alerts := func() []alert.Alert {
		var out []alert.Alert
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			var err error
			out, err = tx.Alerts().List(ctx, tenant, store.AlertFilter{Device: device})
			return err
		}))
		return out
	}
	require.Empty(t, alerts(), "a SIM in its bound device raised an alert")

	require.NoError(t, a.Bus().Publish(ctx, session(foreignIMEI, now.Add(time.Minute))))
	require.Eventually(t, func() bool {
		as := alerts()
		return len(as) == 1 && as[0].Kind == alert.SIMIMEIMismatch && as[0].Evidence.Summary != ""
	}, 10*time.Second, 50*time.Millisecond, "no sim.imei_mismatch alert stored")
	require.Eventually(t, func() bool {
		var dev store.Device
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			var err error
			dev, err = tx.Devices().Get(ctx, tenant, device)
			return err
		}))
		return dev.State == store.StateQuarantined
	}, 10*time.Second, 50*time.Millisecond, "the default playbook did not quarantine the device")

	// The action is stored as pending before the registry call and marked
	// done in its own transaction after it.
	var actions []store.Action
	require.Eventually(t, func() bool {
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			var err error
			actions, err = tx.Actions().List(ctx, tenant, store.ActionFilter{Device: device, Kind: "quarantine"})
			return err
		}))
		return len(actions) == 1 && actions[0].State == store.ActionDone
	}, 10*time.Second, 50*time.Millisecond, "quarantine action not done: %+v", actions)
	require.Equal(t, "automation", actions[0].Actor)
}
