package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

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
