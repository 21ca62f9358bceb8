package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

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
