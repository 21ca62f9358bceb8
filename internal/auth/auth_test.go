package auth_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

func TestParse(t *testing.T) {
	s, err := auth.NewSecret(nil)
	require.NoError(t, err)
	id, sec, err := auth.Parse(s.Plaintext)
	require.NoError(t, err)
	require.Equal(t, s.ID, id)
	require.Equal(t, s.Hash, auth.Hash(sec))
	require.NotContains(t, s.String(), sec, "String hides the secret")

	for _, bad := range []string{
		"", "gar_", "gar__", "bearer " + s.Plaintext, strings.ToUpper(s.Plaintext), s.Plaintext + "0",
		s.Plaintext[:len(s.Plaintext)-1], strings.Replace(s.Plaintext, "gar_", "gat_", 1),
		"gar_" + s.ID + "-" + sec, "gar_" + s.ID + "_" + sec[:63] + "g",
	} {
		_, _, err := auth.Parse(bad)
		require.ErrorIs(t, err, auth.ErrMalformed, bad)
	}
}

func TestNewSecretFailsWithoutRandomness(t *testing.T) {
	_, err := auth.NewSecret(bytes.NewReader(make([]byte, 10)))
	require.Error(t, err)
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	defer st.Close()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewManual(t0)
	a := &auth.Authenticator{Store: st, Clock: clk}

	good, err := auth.NewSecret(nil)
	require.NoError(t, err)
	revoked, err := auth.NewSecret(nil)
	require.NoError(t, err)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		require.NoError(t, tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: t0}))
		require.NoError(t, tx.Operators().Create(ctx, store.Operator{ID: "op1", Tenant: "acme", Name: "n", Role: store.RoleAuditor, CreatedAt: t0}))
		for _, s := range []auth.Secret{good, revoked} {
			require.NoError(t, tx.Tokens().Create(ctx, store.Token{ID: s.ID, Tenant: "acme", Operator: "op1", Role: store.RoleAuditor,
				Name: "t", Hash: s.Hash, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
		}
		return tx.Tokens().Revoke(ctx, "acme", revoked.ID, t0)
	}))

	p, err := a.Authenticate(ctx, good.Plaintext)
	require.NoError(t, err)
	require.Equal(t, auth.Principal{Operator: "op1", Tenant: "acme", Role: store.RoleAuditor, TokenID: good.ID}, p)

	_, id := good.Plaintext, good.ID
	forged := "gar_" + id + "_" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		tok  string
		want error
	}{
		{forged, auth.ErrUnknown},
		{"gar_" + strings.Repeat("a", 16) + "_" + strings.Repeat("0", 64), auth.ErrUnknown},
		{revoked.Plaintext, auth.ErrRevoked},
		{"nonsense", auth.ErrMalformed},
	} {
		_, err := a.Authenticate(ctx, tc.tok)
		require.True(t, errors.Is(err, tc.want), "%v", err)
	}
	clk.Advance(time.Hour)
	_, err = a.Authenticate(ctx, good.Plaintext)
	require.ErrorIs(t, err, auth.ErrExpired)
}

func TestCan(t *testing.T) {
	require.True(t, auth.Can(store.RolePlatformAdmin, auth.PermPlatform))
	require.False(t, auth.Can(store.RoleAdmin, auth.PermPlatform))
	require.False(t, auth.Can("intruder", auth.PermAuthenticated), "unknown roles hold nothing")
	require.True(t, auth.ValidRole(store.RoleViewer))
	require.False(t, auth.ValidRole("root"))
}

func FuzzParse(f *testing.F) {
	f.Add("gar_0123456789abcdef_" + strings.Repeat("ab", 32))
	f.Add("gar_")
	f.Add("gar_x_y_z")
	f.Fuzz(func(t *testing.T, s string) {
		id, sec, err := auth.Parse(s)
		if err != nil {
			require.ErrorIs(t, err, auth.ErrMalformed)
			return
		}
		require.Equal(t, "gar_"+id+"_"+sec, s, "a parsed token round-trips")
		require.Len(t, id, 16)
		require.Len(t, sec, 64)
	})
}
