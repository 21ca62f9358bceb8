package respond_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// TestPostgres runs the engine on PostgreSQL (skipped unless
// GARRISON_TEST_POSTGRES_URL is set). The concurrent guard test matters most
// here: PostgreSQL does not serialize writers the way SQLite does, so only
// the engine's per-tenant lock keeps concurrent alerts under the cap.
func TestPostgres(t *testing.T) {
	pgtest.URL(t)
	t.Run("default playbook", func(t *testing.T) {
		ctx := context.Background()
		f := newFixtureOn(t, pgtest.Open(t), nil)
		f.fleet(t, "acme", 3)
		a := mkAlert("acme", "al-1", "dev-00001", alert.CloneSuspected, t0)
		require.NoError(t, f.eng.Handle(ctx, a))
		require.NoError(t, f.eng.Handle(ctx, a))
		require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00001"))
		require.Len(t, f.actions(t, "acme", store.ActionFilter{}), 2)
		require.NoError(t, f.eng.Resolve(ctx, "acme", "al-1", alert.FalsePositive, "op-1"))
		require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00001"))
		require.Equal(t, store.ActionUndone, f.action(t, "acme", respond.ActionID("al-1", "quarantine-compromised", 0)).State)
		f.audit(t, "acme")
	})
	t.Run("concurrent guard", func(t *testing.T) {
		testGuardConcurrent(t, newFixtureOn(t, pgtest.Open(t), nil))
	})
}
