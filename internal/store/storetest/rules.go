package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testRules(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := store.Rule{Tenant: "acme", ID: "telnet-out", Name: "Telnet out", Description: "d", Expr: "event.attrs.dst_port == 23.0",
		Kind: "rule.telnet", Severity: "high", Events: []event.Kind{event.NetFlow}, Enabled: true, Version: 1, Actor: "op",
		CreatedAt: us(t0), UpdatedAt: us(t0)}
	r2 := store.Rule{Tenant: "acme", ID: "a-first", Name: "any", Expr: "true", Severity: "low", Version: 1, Actor: "op",
		CreatedAt: us(t0), UpdatedAt: us(t0)}
	update(t, s, func(tx store.Tx) error {
		rs := tx.Rules()
		require.NoError(t, rs.Create(ctx, r1))
		require.NoError(t, rs.Create(ctx, r2))
		require.ErrorIs(t, rs.Create(ctx, r1), store.ErrConflict)
		require.ErrorIs(t, rs.Create(ctx, store.Rule{Tenant: "acme", Version: 1}), store.ErrInvalid)
		bad := r1
		bad.ID, bad.Version = "v2", 2
		require.ErrorIs(t, rs.Create(ctx, bad), store.ErrInvalid, "a new rule starts at version 1")
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Rules().Get(ctx, "acme", "telnet-out")
		require.NoError(t, err)
		require.Equal(t, r1, got)
		got, err = tx.Rules().Get(ctx, "acme", "a-first")
		require.NoError(t, err)
		require.Equal(t, r2, got, "no events reads back as nil")
		_, err = tx.Rules().Get(ctx, "other", "telnet-out")
		require.ErrorIs(t, err, store.ErrNotFound, "another tenant's rule is not found")
		list, err := tx.Rules().List(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, []store.Rule{r2, r1}, list, "ordered by id")
		list, err = tx.Rules().List(ctx, "other")
		require.NoError(t, err)
		require.Empty(t, list)
		return nil
	})

	v2 := r1
	v2.Version, v2.Expr, v2.Enabled, v2.Events, v2.Actor = 2, "event.attrs.dst_port in [23, 2323]", false, nil, "op2"
	v2.UpdatedAt = us(t0.Add(time.Minute))
	require.NoError(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Update(ctx, v2) }))
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Update(ctx, v2) }), store.ErrConflict,
		"a second writer of version 2 loses")
	stale := v2
	stale.Version = 5
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Update(ctx, stale) }), store.ErrConflict)
	missing := v2
	missing.ID = "nope"
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Update(ctx, missing) }), store.ErrNotFound)
	foreign := v2
	foreign.Tenant, foreign.Version = "other", 2
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Update(ctx, foreign) }), store.ErrNotFound)
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Rules().Get(ctx, "acme", "telnet-out")
		require.NoError(t, err)
		want := v2
		want.CreatedAt = us(t0)
		require.Equal(t, want, got, "created_at is kept")
		return nil
	})

	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Delete(ctx, "other", "telnet-out") }), store.ErrNotFound)
	require.NoError(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Delete(ctx, "acme", "telnet-out") }))
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Rules().Delete(ctx, "acme", "telnet-out") }), store.ErrNotFound)
	view(t, s, func(tx store.Tx) error {
		list, err := tx.Rules().List(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, []store.Rule{r2}, list)
		return nil
	})
}
