package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// seedPassword gives the world's device a broker password, so that the
// RBAC walk's DELETE .../password has one to clear.
func seedPassword(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, dev event.DeviceID, now time.Time) {
	t.Helper()
	require.NoError(t, tx.Passwords().Set(ctx, store.DevicePassword{Tenant: tenant, Device: dev, Hash: "$argon2id$seed", CreatedAt: now}))
}

func TestPasswordRoutes(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	tok := w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant) + "/devices/" + string(w.deviceID) + "/password"

	rec := e.do("DELETE", base, tok, "")
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	requireCode(t, e.do("DELETE", base, tok, ""), http.StatusNotFound, api.CodeNotFound)
	rec = e.do("GET", base, w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"device":"`+string(w.deviceID)+`","set":false}`, rec.Body.String())

	rec = e.do("POST", base, tok, "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var g registry.PasswordGrant
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &g))
	require.Equal(t, string(w.tenant)+"/"+string(w.deviceID), g.Username)
	require.GreaterOrEqual(t, len(g.Password), 22)
	require.False(t, g.Rotated)

	// Only the hash is stored, and it verifies the password shown.
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		p, err := tx.Passwords().Get(context.Background(), w.tenant, w.deviceID)
		require.NoError(t, err)
		ok, err := creds.VerifyPassword(p.Hash, g.Password)
		require.NoError(t, err)
		require.True(t, ok)
		return nil
	}))
	// The status never shows it again.
	rec = e.do("GET", base, w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.NotContains(t, rec.Body.String(), g.Password)
	require.Contains(t, rec.Body.String(), `"set": true`)

	rec = e.do("POST", base, tok, "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var g2 registry.PasswordGrant
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &g2))
	require.True(t, g2.Rotated)
	require.NotEqual(t, g.Password, g2.Password)

	// Audited, never with the secret.
	rec = e.do("GET", "/api/v1/tenants/"+string(w.tenant)+"/audit", w.tokens[store.RoleAdmin], "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	body := rec.Body.String()
	require.Equal(t, 3, strings.Count(body, `"device.password"`), body)
	require.NotContains(t, body, g.Password)
	require.NotContains(t, body, g2.Password)

	// An unknown device, and a viewer, are refused.
	requireCode(t, e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/devices/nope/password", tok, ""), http.StatusNotFound, api.CodeNotFound)
	requireCode(t, e.do("POST", base, w.tokens[store.RoleViewer], ""), http.StatusForbidden, api.CodeForbidden)
}
