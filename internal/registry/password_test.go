package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func storedHash(t *testing.T, st store.Store, tenant event.TenantID, id event.DeviceID) (string, error) {
	t.Helper()
	var h string
	err := st.View(context.Background(), func(tx store.Tx) error {
		p, err := tx.Passwords().Get(context.Background(), tenant, id)
		h = p.Hash
		return err
	})
	return h, err
}

func TestPasswordSetRotateClear(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, err := f.reg.Register(ctx, dev("acme", "meter-1"), "op-1")
	require.NoError(t, err)
	_, err = f.reg.Register(ctx, dev("beta", "meter-9"), "op-9")
	require.NoError(t, err)
	st, err := f.reg.Password(ctx, "acme", "meter-1")
	require.NoError(t, err)
	require.False(t, st.Set)

	g, err := f.reg.SetPassword(ctx, "acme", "meter-1", "op-1")
	require.NoError(t, err)
	require.Equal(t, "acme/meter-1", g.Username)
	require.False(t, g.Rotated)
	require.GreaterOrEqual(t, len(g.Password), 22, "at least 128 bits in base64")
	h1, err := storedHash(t, f.st, "acme", "meter-1")
	require.NoError(t, err)
	require.NotContains(t, h1, g.Password)
	ok, err := creds.VerifyPassword(h1, g.Password)
	require.NoError(t, err)
	require.True(t, ok)

	f.clk.Advance(time.Minute)
	g2, err := f.reg.SetPassword(ctx, "acme", "meter-1", "op-1")
	require.NoError(t, err)
	require.True(t, g2.Rotated)
	require.NotEqual(t, g.Password, g2.Password)
	h2, _ := storedHash(t, f.st, "acme", "meter-1")
	ok, _ = creds.VerifyPassword(h2, g.Password)
	require.False(t, ok, "the old password still works after a rotation")
	st, err = f.reg.Password(ctx, "acme", "meter-1")
	require.NoError(t, err)
	require.True(t, st.Set)
	require.Equal(t, t0.Add(time.Minute), *st.CreatedAt)

	// Another tenant's device is not found, and nothing changes.
	_, err = f.reg.SetPassword(ctx, "acme", "meter-9", "op-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, f.reg.ClearPassword(ctx, "beta", "meter-1", "op-9"), store.ErrNotFound)
	_, err = f.reg.Password(ctx, "beta", "meter-1")
	require.ErrorIs(t, err, store.ErrNotFound)

	require.NoError(t, f.reg.ClearPassword(ctx, "acme", "meter-1", "op-1"))
	_, err = storedHash(t, f.st, "acme", "meter-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, f.reg.ClearPassword(ctx, "acme", "meter-1", "op-1"), store.ErrNotFound)

	// Audited without the secret; published after each change.
	var actions []string
	for _, r := range auditRecords(t, f.st, "acme") {
		require.NotContains(t, string(r.Details), g.Password)
		require.NotContains(t, string(r.Details), g2.Password)
		if r.Action == "device.password" {
			actions = append(actions, string(r.Details))
		}
	}
	require.Equal(t, []string{`{"action":"set"}`, `{"action":"rotated"}`, `{"action":"cleared"}`}, actions)
	var pubs []string
	for _, e := range f.pub.all() {
		if e.Kind == event.DevicePassword {
			require.Equal(t, event.DeviceID("meter-1"), e.Device)
			pubs = append(pubs, e.Str("action"))
		}
	}
	require.Equal(t, "set,set,cleared", strings.Join(pubs, ","))

	// A revoked device gets no password.
	_, err = f.reg.SetState(ctx, "acme", "meter-1", store.StateActive, "op-1", "")
	require.NoError(t, err)
	_, err = f.reg.SetState(ctx, "acme", "meter-1", store.StateRevoked, "op-1", "")
	require.NoError(t, err)
	_, err = f.reg.SetPassword(ctx, "acme", "meter-1", "op-1")
	require.ErrorIs(t, err, store.ErrConflict)
}
