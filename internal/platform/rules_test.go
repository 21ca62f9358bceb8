package platform

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestRulesLoad: Load puts every tenant's enabled rules in the set, leaves
// out a stored rule that no longer compiles (logged), reuses the compiled
// rule while its version stands, and empties the set of a deleted tenant.
func TestRulesLoad(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	put := func(tn event.TenantID, id, expr string, enabled bool) {
		require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
			return tx.Rules().Create(ctx, store.Rule{Tenant: tn, ID: id, Name: id, Expr: expr, Severity: "low", Enabled: enabled,
				Version: 1, Actor: "op", CreatedAt: now, UpdatedAt: now})
		}))
	}
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		for _, tn := range []event.TenantID{"acme", "globex"} {
			if err := tx.Tenants().Create(ctx, store.Tenant{ID: tn, Name: string(tn), CreatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	put("acme", "a1", "true", true)
	put("acme", "a2", "device.known", false)
	put("acme", "broken", "event.nope == 1", true) // written behind the service's back
	put("globex", "g1", "event.kind == 'net.flow'", true)

	rules, err := NewRules(RulesOptions{Store: st, Clock: clock.NewManual(now)})
	require.NoError(t, err)
	n, err := rules.Load(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	ids := func(tn event.TenantID) []string {
		var out []string
		for _, cr := range rules.Set().Rules(tn) {
			out = append(out, cr.ID)
		}
		return out
	}
	require.Equal(t, []string{"a1"}, ids("acme"))
	require.Equal(t, []string{"g1"}, ids("globex"))
	first := rules.Set().Rules("acme")[0]

	_, err = rules.Update(ctx, store.Rule{Tenant: "acme", ID: "a2", Name: "a2", Expr: "device.known", Severity: "medium", Enabled: true}, "op")
	require.NoError(t, err)
	require.Equal(t, []string{"a1", "a2"}, ids("acme"), "a change applies at once")
	require.Same(t, first, rules.Set().Rules("acme")[0], "an unchanged rule is not compiled again")

	require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Tenants().Delete(ctx, "globex") }))
	_, err = rules.Load(ctx)
	require.NoError(t, err)
	require.Empty(t, ids("globex"), "a deleted tenant's rules are dropped")
	require.NotContains(t, rules.tenantsInSet(), event.TenantID("globex"))

	// Invalid input changes nothing.
	_, err = rules.Create(ctx, store.Rule{Tenant: "acme", ID: "x", Name: "x", Expr: "1 +", Severity: "low"}, "op")
	require.ErrorIs(t, err, detect.ErrRule)
	_, err = rules.Create(ctx, store.Rule{Tenant: "acme", ID: "x", Name: "x", Expr: "true", Severity: "bad"}, "op")
	require.ErrorIs(t, err, detect.ErrRule)
	list, err := rules.List(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, list, 3)
}

// TestRulesTrySeesCurrentDevices: a rule test reads the devices' current
// registry records, so a change between two tests is seen.
func TestRulesTrySeesCurrentDevices(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	dev := store.Device{Tenant: "acme", ID: "cam-1", Model: "ipcam-2", State: store.StateActive, Groups: []string{"lobby"}, CreatedAt: now, UpdatedAt: now}
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, dev)
	}))
	rules, err := NewRules(RulesOptions{Store: st, Clock: clock.NewManual(now)})
	require.NoError(t, err)
	r := store.Rule{Tenant: "acme", ID: "r", Name: "r", Severity: "low", Expr: "device.model == 'ipcam-3' && 'lobby' in device.groups"}
	evs := []event.Event{{Tenant: "acme", Device: "cam-1", Kind: event.NetFlow, Time: now}, {Tenant: "acme", Device: "cam-9", Kind: event.NetFlow, Time: now}}
	_, res, err := rules.Try(ctx, r, evs)
	require.NoError(t, err)
	require.Equal(t, 2, res.Evaluated)
	require.Empty(t, res.Matches)

	dev.Model, dev.UpdatedAt = "ipcam-3", now.Add(time.Minute)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Devices().Update(ctx, dev) }))
	_, res, err = rules.Try(ctx, r, evs)
	require.NoError(t, err)
	require.Len(t, res.Matches, 1)
	require.Equal(t, 0, res.Matches[0].Index)
}
