package platform

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestScoringAPIReadsEveryPage proves the simulator's results come through
// the API completely: more alerts and actions than one page holds, some
// with the same timestamp, each read back exactly once, in the API's order;
// another tenant's records are not among them.
func TestScoringAPIReadsEveryPage(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	t0 := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	clk := clock.NewManual(t0)
	for _, tn := range []event.TenantID{"sim", "other"} {
		require.NoError(t, createTenant(ctx, st, clk, tn))
	}
	const nAlerts, nActions = 2345, 1500
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		for i := range nAlerts {
			at := t0.Add(time.Duration(i/3) * time.Second) // three alerts share each second
			for _, tn := range []event.TenantID{"sim", "other"} {
				if err := tx.Alerts().Put(ctx, alert.Alert{ID: fmt.Sprintf("al-%05d", i), Tenant: tn, Device: "d1", Kind: alert.DataSpike,
					Severity: alert.Low, FirstSeen: at, LastSeen: at, Count: 1, State: alert.Open}); err != nil {
					return err
				}
			}
		}
		for i := range nActions {
			at := t0.Add(time.Duration(i/4) * time.Second)
			if err := tx.Actions().Put(ctx, store.Action{Tenant: "sim", ID: fmt.Sprintf("ac-%05d", i), Device: "d1", Kind: "quarantine",
				Actor: "automation", State: store.ActionDone, CreatedAt: at, UpdatedAt: at}); err != nil {
				return err
			}
		}
		return nil
	}))
	p := &Platform{Store: st, Clock: clk, Tenant: "sim"}
	res, stop, err := p.scoringAPI(ctx)
	require.NoError(t, err)
	defer stop()

	as, err := res.Alerts(ctx)
	require.NoError(t, err)
	require.Len(t, as, nAlerts)
	for i, a := range as {
		require.Equal(t, event.TenantID("sim"), a.Tenant)
		require.Equal(t, fmt.Sprintf("al-%05d", nAlerts-1-i), a.ID, "newest first, ties by id, none skipped or repeated")
	}
	acs, err := res.Actions(ctx)
	require.NoError(t, err)
	require.Len(t, acs, nActions)
	for i, a := range acs {
		require.Equal(t, fmt.Sprintf("ac-%05d", i), a.ID, "oldest first")
	}
}
