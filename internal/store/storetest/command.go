package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testCommands(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(tenant event.TenantID, id string, dev event.DeviceID, at time.Duration) store.Command {
		return store.Command{Tenant: tenant, ID: id, Device: dev, Name: "ping", Args: []byte(`{"n":1}`), Status: store.CommandSent,
			CreatedBy: "op1", CreatedAt: t0.Add(at), Expires: t0.Add(at + 5*time.Minute)}
	}
	update(t, s, func(tx store.Tx) error {
		c := tx.Commands()
		require.NoError(t, c.Create(ctx, mk("acme", "cmd-1", "gw-1", 0)))
		require.NoError(t, c.Create(ctx, mk("acme", "cmd-2", "gw-1", time.Minute)))
		require.NoError(t, c.Create(ctx, mk("acme", "cmd-3", "gw-2", 2*time.Minute)))
		require.NoError(t, c.Create(ctx, mk("beta", "cmd-1", "gw-1", 0)))
		noArgs := mk("acme", "cmd-4", "gw-1", 3*time.Minute)
		noArgs.Args, noArgs.Status = nil, store.CommandOffline
		require.NoError(t, c.Create(ctx, noArgs))
		return nil
	})
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.Commands().Create(ctx, mk("acme", "cmd-1", "gw-9", 0))
	}), store.ErrConflict)
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.Commands().Create(ctx, store.Command{Tenant: "acme", ID: "x", Device: "gw-1"})
	}), store.ErrInvalid)

	view(t, s, func(tx store.Tx) error {
		c := tx.Commands()
		got, err := c.Get(ctx, "acme", "cmd-1")
		require.NoError(t, err)
		want := mk("acme", "cmd-1", "gw-1", 0)
		want.CreatedAt, want.Expires = us(want.CreatedAt), us(want.Expires)
		require.Equal(t, want, got)
		got, err = c.Get(ctx, "acme", "cmd-4")
		require.NoError(t, err)
		require.Nil(t, got.Args)
		require.Equal(t, store.CommandOffline, got.Status)
		_, err = c.Get(ctx, "gamma", "cmd-1")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := c.ListDevice(ctx, "acme", "gw-1", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"cmd-4", "cmd-2", "cmd-1"}, commandIDs(list))
		list, err = c.ListDevice(ctx, "acme", "gw-1", 2)
		require.NoError(t, err)
		require.Equal(t, []string{"cmd-4", "cmd-2"}, commandIDs(list))
		list, err = c.ListDevice(ctx, "beta", "gw-2", 0)
		require.NoError(t, err)
		require.Empty(t, list)
		return nil
	})

	// Another device, or the same id in another tenant, cannot complete it.
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.Commands().Complete(ctx, "acme", "gw-2", "cmd-1", true, "pong", "", t0)
		return err
	}), store.ErrNotFound)
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.Commands().Complete(ctx, "gamma", "gw-1", "cmd-1", true, "pong", "", t0)
		return err
	}), store.ErrNotFound)

	done := t0.Add(10 * time.Second)
	update(t, s, func(tx store.Tx) error {
		c, err := tx.Commands().Complete(ctx, "acme", "gw-1", "cmd-1", true, "pong", "", done)
		require.NoError(t, err)
		require.Equal(t, store.CommandSucceeded, c.Status)
		require.Equal(t, "pong", c.Output)
		require.Equal(t, us(done), c.CompletedAt)
		// A redelivered result changes nothing.
		c, err = tx.Commands().Complete(ctx, "acme", "gw-1", "cmd-1", false, "", "late", done.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, store.CommandSucceeded, c.Status)
		require.Equal(t, us(done), c.CompletedAt)
		require.Empty(t, c.Error)
		// A completed command keeps its status.
		require.NoError(t, tx.Commands().SetStatus(ctx, "acme", "cmd-1", store.CommandOffline))
		c, err = tx.Commands().Complete(ctx, "acme", "gw-1", "cmd-2", false, "", `unknown command "x"`, done)
		require.NoError(t, err)
		require.Equal(t, store.CommandFailed, c.Status)
		require.NoError(t, tx.Commands().SetStatus(ctx, "acme", "cmd-4", store.CommandSent))
		require.ErrorIs(t, tx.Commands().SetStatus(ctx, "acme", "cmd-3", store.CommandSucceeded), store.ErrInvalid)
		require.ErrorIs(t, tx.Commands().SetStatus(ctx, "acme", "nope", store.CommandSent), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		c, err := tx.Commands().Get(ctx, "acme", "cmd-1")
		require.NoError(t, err)
		require.Equal(t, store.CommandSucceeded, c.Status)
		c, err = tx.Commands().Get(ctx, "acme", "cmd-4")
		require.NoError(t, err)
		require.Equal(t, store.CommandSent, c.Status)
		c, err = tx.Commands().Get(ctx, "beta", "cmd-1")
		require.NoError(t, err)
		require.Equal(t, store.CommandSent, c.Status, "another tenant's command of the same id is untouched")
		return nil
	})
}

func commandIDs(cs []store.Command) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}
