package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testPasswords(t *testing.T, s store.Store) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p := func(tenant, device, hash string, at time.Time) store.DevicePassword {
		return store.DevicePassword{Tenant: event.TenantID(tenant), Device: event.DeviceID(device), Hash: hash, CreatedAt: at}
	}
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		pw := tx.Passwords()
		require.NoError(t, pw.Set(ctx, p("acme", "gw-1", "$argon2id$one", t0)))
		require.NoError(t, pw.Set(ctx, p("acme", "gw-2", "$argon2id$two", t0)))
		require.NoError(t, pw.Set(ctx, p("beta", "cam-1", "$argon2id$three", t0)))
		// A rotation replaces the hash and the time.
		require.NoError(t, pw.Set(ctx, p("acme", "gw-1", "$argon2id$one-b", t0.Add(time.Hour))))
		for _, bad := range []store.DevicePassword{p("", "gw-1", "h", t0), p("acme", "", "h", t0), p("acme", "gw-1", "", t0)} {
			require.ErrorIs(t, pw.Set(ctx, bad), store.ErrInvalid)
		}
		return nil
	}))
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		pw := tx.Passwords()
		got, err := pw.Get(ctx, "acme", "gw-1")
		require.NoError(t, err)
		require.Equal(t, p("acme", "gw-1", "$argon2id$one-b", t0.Add(time.Hour)), got)
		got, err = pw.Get(ctx, "beta", "cam-1")
		require.NoError(t, err)
		require.Equal(t, p("beta", "cam-1", "$argon2id$three", t0), got)
		// Tenant-scoped reads never see another tenant's device.
		_, err = pw.Get(ctx, "acme", "cam-1")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = pw.Get(ctx, "beta", "gw-1")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	}))
	// The same device id in two tenants: two passwords, apart.
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		return tx.Passwords().Set(ctx, p("beta", "gw-2", "$argon2id$dup", t0))
	}))
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		pw := tx.Passwords()
		require.ErrorIs(t, pw.Delete(ctx, "acme", "cam-1"), store.ErrNotFound)
		require.NoError(t, pw.Delete(ctx, "beta", "gw-2"))
		require.NoError(t, pw.Delete(ctx, "acme", "gw-1"))
		require.ErrorIs(t, pw.Delete(ctx, "acme", "gw-1"), store.ErrNotFound)
		_, err := pw.Get(ctx, "acme", "gw-1")
		require.ErrorIs(t, err, store.ErrNotFound)
		got, err := pw.Get(ctx, "acme", "gw-2")
		require.NoError(t, err)
		require.Equal(t, "$argon2id$two", got.Hash)
		_, err = pw.Get(ctx, "beta", "gw-2")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	}))
}
