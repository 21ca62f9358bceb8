package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
	"github.com/garrisonhq/garrison/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	pgtest.URL(t)
	storetest.Run(t, func(t *testing.T) store.Store { return pgtest.Open(t) })
}

// TestUpdateRetriesSerializationFailures: fn failing with 40001 or 40P01 is
// run again in a new transaction, and the failed attempt left nothing.
func TestUpdateRetriesSerializationFailures(t *testing.T) {
	db := pgtest.Open(t)
	ctx := context.Background()
	for _, code := range []string{"40001", "40P01"} {
		calls := 0
		err := db.Update(ctx, func(tx store.Tx) error {
			calls++
			if err := tx.Settings().Put(ctx, "acme", "attempt-"+code, []byte(fmt.Sprint(calls))); err != nil {
				return err
			}
			if calls < 3 {
				return fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code})
			}
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 3, calls, code)
		require.NoError(t, db.View(ctx, func(tx store.Tx) error {
			v, err := tx.Settings().Get(ctx, "acme", "attempt-"+code)
			require.NoError(t, err)
			require.Equal(t, "3", string(v))
			return nil
		}))
	}
	// Other errors are not retried, and attempts are bounded.
	calls := 0
	boom := errors.New("boom")
	require.ErrorIs(t, db.Update(ctx, func(store.Tx) error { calls++; return boom }), boom)
	require.Equal(t, 1, calls)
	calls = 0
	err := db.Update(ctx, func(store.Tx) error { calls++; return &pgconn.PgError{Code: "40001"} })
	require.Error(t, err)
	require.Equal(t, 5, calls)
}

func TestOpenRejectsOddSchemaNames(t *testing.T) {
	for _, s := range []string{"Upper", "a;drop", "1abc", "with space", "a,b"} {
		_, err := postgres.Open(context.Background(), "postgres://127.0.0.1:1/none", postgres.WithSchema(s))
		require.ErrorIs(t, err, store.ErrInvalid, s)
	}
}

// TestDeferredBeginAndCommit: BEGIN travels with a transaction's first
// statement, yet a View still reads one snapshot (so BEGIN ... REPEATABLE
// READ really came first), an Update whose statement failed commits
// nothing even when fn swallows the error, an Update failing after its
// writes leaves nothing and its connection usable, and an Update without a
// statement succeeds.
func TestDeferredBeginAndCommit(t *testing.T) {
	db := pgtest.Open(t)
	ctx := context.Background()
	put := func(k, v string) {
		t.Helper()
		require.NoError(t, db.Update(ctx, func(tx store.Tx) error { return tx.Settings().Put(ctx, "acme", k, []byte(v)) }))
	}
	get := func(tx store.Tx, k string) string {
		t.Helper()
		v, err := tx.Settings().Get(ctx, "acme", k)
		if errors.Is(err, store.ErrNotFound) {
			return "absent"
		}
		require.NoError(t, err)
		return string(v)
	}
	put("snap", `"old"`)
	require.NoError(t, db.View(ctx, func(tx store.Tx) error {
		require.Equal(t, `"old"`, get(tx, "snap"))
		put("snap", `"new"`) // another transaction commits meanwhile
		require.Equal(t, `"old"`, get(tx, "snap"), "a View reads one snapshot")
		return nil
	}))

	err := db.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().Put(ctx, "acme", "swallowed", []byte(`1`)); err != nil {
			return err
		}
		_, err := tx.Settings().Get(ctx, "acme", "nul\x00") // the server refuses a NUL in text
		var pe *pgconn.PgError
		require.ErrorAs(t, err, &pe)
		return nil // the caller ignores the failure: the transaction is aborted all the same
	})
	require.ErrorIs(t, err, pgx.ErrTxCommitRollback)

	boom := errors.New("boom")
	for range 20 { // more than the pool's connections: a failed one is not leaked
		require.ErrorIs(t, db.Update(ctx, func(tx store.Tx) error {
			if err := tx.Settings().Put(ctx, "acme", "failed", []byte(`1`)); err != nil {
				return err
			}
			return boom
		}), boom)
	}
	require.NoError(t, db.Update(ctx, func(store.Tx) error { return nil }))
	require.NoError(t, db.View(ctx, func(tx store.Tx) error {
		require.Equal(t, "absent", get(tx, "swallowed"))
		require.Equal(t, "absent", get(tx, "failed"))
		require.Equal(t, `"new"`, get(tx, "snap"))
		return nil
	}))
}

// TestCommandSetStatusKeepsACompletion: a device's result may complete a
// command between SetStatus's read and its write (a node marks the command
// sent just after publishing it, the answer comes back through another
// transaction). At READ COMMITTED the write must not reopen the completed
// command: here the completion holds the row while SetStatus waits on it,
// then commits; the command stays succeeded.
func TestCommandSetStatusKeepsACompletion(t *testing.T) {
	db := pgtest.Open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now().UTC()
	require.NoError(t, db.Update(ctx, func(tx store.Tx) error {
		return tx.Commands().Create(ctx, store.Command{Tenant: "acme", ID: "cmd-1", Device: "gw-1", Name: "ping",
			Status: store.CommandOffline, CreatedBy: "op1", CreatedAt: now, Expires: now.Add(time.Hour)})
	}))

	// The completion's transaction, left open with the row locked.
	completion, err := db.Raw.Begin(ctx)
	require.NoError(t, err)
	defer completion.Rollback(context.Background())
	_, err = completion.Exec(ctx, `UPDATE commands SET status = 'succeeded', output = 'pong', completed_at = $1
		WHERE tenant = 'acme' AND id = 'cmd-1' AND completed_at IS NULL`, now.UnixMicro())
	require.NoError(t, err)
	var holder int
	require.NoError(t, completion.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder))

	setStatus := make(chan error, 1)
	go func() {
		setStatus <- db.Update(ctx, func(tx store.Tx) error {
			return tx.Commands().SetStatus(ctx, "acme", "cmd-1", store.CommandSent)
		})
	}()
	// SetStatus has read the command (offline: the completion is not
	// committed) and waits on the row for its write.
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, db.Raw.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE $1 = ANY(pg_blocking_pids(pid))`, holder).Scan(&waiting))
		return waiting > 0
	}, 30*time.Second, 10*time.Millisecond, "SetStatus waits on the completion's row lock")
	require.NoError(t, completion.Commit(ctx))
	require.NoError(t, <-setStatus)

	require.NoError(t, db.View(ctx, func(tx store.Tx) error {
		c, err := tx.Commands().Get(ctx, "acme", "cmd-1")
		require.NoError(t, err)
		require.Equal(t, store.CommandSucceeded, c.Status, "the completion is kept")
		require.Equal(t, "pong", c.Output)
		return nil
	}))
}
