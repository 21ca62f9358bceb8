package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/seal"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

type env struct {
	st  store.Store
	clk *clock.Manual
	srv *api.Server
	n   int
	cat *ota.Catalog
	eng *ota.Engine
	id  *identity.Service
}

func newEnv(t testing.TB) *env {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clk := clock.NewManual(t0)
	id, reg := newIdentity(t, st, clk)
	cat, eng := newOTA(t, st, clk)
	srv, err := api.New(api.Options{Store: st, Clock: clk, MaxBodyBytes: 4096, Identity: id, Devices: reg, Incidents: newIncidents(t, st, clk), Firmware: cat, Campaigns: eng,
		Response:       newResponse(t, st, clk, reg),
		Connectivity:   newIngester(st, clk, &published{}),
		Commands:       newCommands(t, st, clk),
		Rules:          newRules(t, st, clk),
		Groups:         reg,
		WebhookSecrets: newSealer(t),
		Passwords:      reg})
	require.NoError(t, err)
	return &env{st: st, clk: clk, srv: srv, cat: cat, eng: eng, id: id}
}

// newSealer seals webhook secrets as serve does, at a test's scrypt cost.
func newSealer(t testing.TB) *seal.Sealer {
	t.Helper()
	sl, err := seal.New([]byte("api-test-passphrase"), seal.WithScryptCost(10, 8, 1))
	require.NoError(t, err)
	return sl
}

// world is one fresh tenant with an operator and token of every role, a
// victim operator and token to delete, and a platform admin token.
type world struct {
	tenant         event.TenantID
	tokens         map[store.Role]string // tenant tokens (platform-admin: platform token)
	foreign        string                // admin of another tenant
	victimOp       string
	victimTok      string
	platVictimOp   string
	platVictimTok  string
	expiredTok     string
	revokedTok     string
	newTenantInput string
	alertID        string
	deviceID       event.DeviceID
	inc            incidentWorld
	ota            otaWorld
	resp           responseWorld
	commandID      string
	caID           string // a retired issuing CA of the tenant (trust, distrust)
}

func (e *env) token(ctx context.Context, tx store.Tx, tenant event.TenantID, op store.Operator, role store.Role, exp time.Time) (string, string) {
	sec, err := auth.NewSecret(nil)
	if err != nil {
		panic(err)
	}
	err = tx.Tokens().Create(ctx, store.Token{ID: sec.ID, Tenant: tenant, Operator: op.ID, Role: role, Name: "t",
		Hash: sec.Hash, CreatedAt: e.clk.Now(), ExpiresAt: exp})
	if err != nil {
		panic(err)
	}
	return sec.ID, sec.Plaintext
}

func (e *env) world(t testing.TB) world {
	t.Helper()
	e.n++
	ctx := context.Background()
	w := world{tenant: event.TenantID(fmt.Sprintf("acme-%d", e.n)), tokens: map[store.Role]string{}}
	foreign := event.TenantID(fmt.Sprintf("globex-%d", e.n))
	exp := e.clk.Now().Add(time.Hour)
	err := e.st.Update(ctx, func(tx store.Tx) error {
		for _, id := range []event.TenantID{w.tenant, foreign} {
			require.NoError(t, tx.Tenants().Create(ctx, store.Tenant{ID: id, Name: string(id), CreatedAt: e.clk.Now()}))
		}
		mk := func(tenant event.TenantID, name string, role store.Role) store.Operator {
			if tenant == "" {
				name = fmt.Sprintf("%s-%d", name, e.n) // platform names are global
			}
			o := store.Operator{ID: fmt.Sprintf("op-%s-%d", name, e.n), Tenant: tenant, Name: name, Role: role, CreatedAt: e.clk.Now()}
			require.NoError(t, tx.Operators().Create(ctx, o))
			return o
		}
		for _, r := range auth.Roles() {
			if r == store.RolePlatformAdmin {
				_, w.tokens[r] = e.token(ctx, tx, "", mk("", "plat", r), r, exp)
				continue
			}
			_, w.tokens[r] = e.token(ctx, tx, w.tenant, mk(w.tenant, string(r), r), r, exp)
		}
		_, w.foreign = e.token(ctx, tx, foreign, mk(foreign, "admin", store.RoleAdmin), store.RoleAdmin, exp)
		v := mk(w.tenant, "victim", store.RoleViewer)
		w.victimOp = v.ID
		w.victimTok, _ = e.token(ctx, tx, w.tenant, v, store.RoleViewer, exp)
		pv := mk("", "plat-victim", store.RolePlatformAdmin)
		w.platVictimOp = pv.ID
		w.platVictimTok, _ = e.token(ctx, tx, "", pv, store.RolePlatformAdmin, exp)
		_, w.expiredTok = e.token(ctx, tx, w.tenant, v, store.RoleViewer, e.clk.Now())
		w.deviceID = event.DeviceID(fmt.Sprintf("dev-%d", e.n))
		require.NoError(t, tx.Devices().Create(ctx, store.Device{Tenant: w.tenant, ID: w.deviceID, Model: "m1",
			State: store.StateActive, CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()}))
		w.alertID = fmt.Sprintf("al-%d", e.n)
		require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: w.alertID, Tenant: w.tenant, Device: w.deviceID,
			Kind: alert.PortScan, Severity: alert.High, Detector: "net", FirstSeen: e.clk.Now(), LastSeen: e.clk.Now(),
			Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: "scan"}}))
		w.inc = seedIncidents(t, ctx, tx, w.tenant, e.n, e.clk.Now())
		w.resp = seedResponse(t, ctx, tx, w.tenant, e.n, e.clk.Now(), w.alertID, w.deviceID)
		w.commandID = seedCommand(t, ctx, tx, w.tenant, w.deviceID, e.n, e.clk.Now())
		seedRule(t, ctx, tx, w.tenant, e.clk.Now())
		seedGroup(t, ctx, tx, w.tenant, e.clk.Now())
		seedPassword(t, ctx, tx, w.tenant, w.deviceID, e.clk.Now())
		var id string
		id, w.revokedTok = e.token(ctx, tx, w.tenant, v, store.RoleViewer, exp)
		return tx.Tokens().Revoke(ctx, w.tenant, id, e.clk.Now())
	})
	require.NoError(t, err)
	w.newTenantInput = fmt.Sprintf(`{"id":"new-%d","name":"New"}`, e.n)
	e.otaWorld(t, &w)
	return w
}

// retiredCA gives w a retired issuing CA (two rotations: the first CA is
// no longer active, still trusted), for the trust and distrust routes.
func (e *env) retiredCA(t testing.TB, w *world) {
	t.Helper()
	first, err := e.id.Rotate(context.Background(), w.tenant, "setup")
	require.NoError(t, err)
	_, err = e.id.Rotate(context.Background(), w.tenant, "setup")
	require.NoError(t, err)
	w.caID = first.ID
}

// do runs one request through the server.
func (e *env) do(method, path, token, body string, hdr ...string) *httptest.ResponseRecorder {
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, r)
	return rec
}

// allowed is the role model the API must implement, written out by hand so
// the test does not trust the code it checks.
var allowed = map[auth.Permission][]store.Role{
	auth.PermAuthenticated:     {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator, store.RoleAuditor, store.RoleViewer},
	auth.PermPlatform:          {store.RolePlatformAdmin},
	auth.PermTenantRead:        {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator, store.RoleAuditor, store.RoleViewer},
	auth.PermOperatorsRead:     {store.RolePlatformAdmin, store.RoleAdmin, store.RoleAuditor},
	auth.PermOperatorsWrite:    {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermTokensRead:        {store.RolePlatformAdmin, store.RoleAdmin, store.RoleAuditor},
	auth.PermTokensWrite:       {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermAuditRead:         {store.RolePlatformAdmin, store.RoleAdmin, store.RoleAuditor},
	auth.PermAlertsWrite:       {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermDevicesWrite:      {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermCAWrite:           {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermIncidentsWrite:    {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermExportsRead:       {store.RolePlatformAdmin, store.RoleAdmin, store.RoleAuditor},
	auth.PermExportsWrite:      {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermFirmwareWrite:     {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermCampaignsWrite:    {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermPlaybooksWrite:    {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermResponseWrite:     {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermConnectivityWrite: {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermCommandsWrite:     {store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator},
	auth.PermDetectorsWrite:    {store.RolePlatformAdmin, store.RoleAdmin},
	auth.PermRulesWrite:        {store.RolePlatformAdmin, store.RoleAdmin},
}

func may(perm auth.Permission, r store.Role) bool {
	roles, ok := allowed[perm]
	if !ok {
		panic("permission missing from the test's table: " + perm)
	}
	for _, x := range roles {
		if x == r {
			return true
		}
	}
	return false
}

// request fills a route's path and body for world w.
func request(rt api.Route, w world, tenant event.TenantID) (string, string) {
	path := strings.ReplaceAll(rt.Pattern, "{tenant}", string(tenant))
	platform := strings.HasPrefix(rt.Pattern, "/api/v1/platform")
	path = w.inc.fill(path)
	path = w.resp.fill(path)
	path = strings.ReplaceAll(path, "{command}", w.commandID)
	switch {
	case strings.Contains(path, "/operators/{id}") && platform:
		path = strings.ReplaceAll(path, "{id}", w.platVictimOp)
	case strings.Contains(path, "/operators/{id}"):
		path = strings.ReplaceAll(path, "{id}", w.victimOp)
	case strings.Contains(path, "/tokens/{id}") && platform:
		path = strings.ReplaceAll(path, "{id}", w.platVictimTok)
	case strings.Contains(path, "/tokens/{id}"):
		path = strings.ReplaceAll(path, "{id}", w.victimTok)
	case strings.Contains(path, "/alerts/{id}"):
		path = strings.ReplaceAll(path, "{id}", w.alertID)
	case strings.Contains(path, "/devices/{id}"):
		path = strings.ReplaceAll(path, "{id}", string(w.deviceID))
	case strings.Contains(path, "/detectors/{name}"):
		path = strings.ReplaceAll(path, "{name}", "auth.bruteforce")
	case strings.Contains(path, "/groups/{name}"):
		path = strings.ReplaceAll(path, "{name}", seededGroup)
	case strings.Contains(path, "/rules/{id}"):
		path = strings.ReplaceAll(path, "{id}", seededRule)
	case strings.Contains(path, "/ca/{id}"):
		id := w.caID
		if id == "" { // a world without a retired CA: the call is refused before any lookup
			id = "no-such-ca"
		}
		path = strings.ReplaceAll(path, "{id}", id)
	case strings.Contains(path, "/campaigns/{id}"):
		path = strings.ReplaceAll(path, "{id}", w.ota.campaign(rt.Pattern))
	}
	if strings.Contains(path, "{") {
		panic("no path values for " + rt.Pattern)
	}
	if rt.Req == nil && rt.Body == "" {
		return path, ""
	}
	switch {
	case rt.Pattern == "/api/v1/tenants":
		return path, w.newTenantInput
	case strings.HasSuffix(rt.Pattern, "/operators") && platform:
		return path, `{"name":"another-admin"}`
	case strings.HasSuffix(rt.Pattern, "/operators"):
		return path, `{"name":"new-op","role":"viewer"}`
	case strings.HasSuffix(rt.Pattern, "/tokens") && platform:
		return path, `{"name":"ci"}`
	case strings.HasSuffix(rt.Pattern, "/tokens"):
		return path, `{"name":"ci","role":"viewer","ttl":"1h"}`
	case strings.HasSuffix(rt.Pattern, "/resolve"):
		return path, `{"note":"checked"}`
	case strings.HasSuffix(rt.Pattern, "/detectors/{name}/settings"):
		return path, `{"threshold":30}`
	}
	if body, ok := identityBody(rt.Pattern); ok {
		return path, body
	}
	if body, ok := incidentBody(rt.Pattern, w.alertID); ok {
		return path, body
	}
	if body, ok := w.ota.body(rt.Pattern); ok {
		return path, body
	}
	if body, ok := w.resp.body(rt.Pattern); ok {
		return path, body
	}
	if body, ok := commandBody(rt.Pattern); ok {
		return path, body
	}
	if body, ok := connectivityBody(rt.Pattern); ok {
		return path, body
	}
	if body, ok := ruleBody(rt.Pattern, w.deviceID); ok {
		return path, body
	}
	if body, ok := groupBody(rt.Pattern, w.deviceID); ok {
		return path, body
	}
	panic("no request body for " + rt.Pattern)
}

func (e *env) head(t testing.TB, chain event.TenantID) int64 {
	t.Helper()
	var seq int64
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		h, err := tx.Audit().Head(context.Background(), chain)
		if err == nil {
			seq = h.Seq
			return nil
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}))
	return seq
}

// TestRBACEveryRoute walks every route with a token of every role and a
// token of a foreign tenant.
func TestRBACEveryRoute(t *testing.T) {
	e := newEnv(t)
	notFound := e.do("GET", "/api/v1/tenants/no-such-tenant", e.world(t).tokens[store.RoleViewer], "").Body.String()
	for _, rt := range e.srv.Routes() {
		principals := append(auth.Roles(), "foreign")
		for _, who := range principals {
			t.Run(rt.Method+" "+rt.Pattern+" as "+string(who), func(t *testing.T) {
				w := e.world(t)
				if strings.Contains(rt.Pattern, "/ca/{id}") {
					e.retiredCA(t, &w)
				}
				tok := w.tokens[who]
				if who == "foreign" {
					tok = w.foreign
				}
				path, body := request(rt, w, w.tenant)
				chain := w.tenant
				if (rt.Scope != api.ScopeTenant && rt.Scope != api.ScopeOwn) || rt.Pattern == "/api/v1/tenants/{tenant}" {
					chain = api.PlatformChain
				}
				before := e.head(t, chain)
				rec := e.do(rt.Method, path, tok, body, bodyType(rt)...)
				mutating := rt.Method != http.MethodGet && !readOnlyPost[rt.Pattern]

				switch {
				case rt.Perm == "":
					require.Equal(t, rt.Status, rec.Code, rec.Body.String())
				case rt.Scope == api.ScopeOwn && who == store.RolePlatformAdmin:
					requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid) // a platform token names no tenant
				case rt.Scope == api.ScopeOwn && who == "foreign":
					// The foreign admin acts in its own tenant: on the world's
					// device it finds nothing, the world's SIM is unknown there,
					// and the world's audit chain does not move.
					require.Contains(t, []int{http.StatusNotFound, rt.Status}, rec.Code, rec.Body.String())
					require.Equal(t, before, e.head(t, chain), "a foreign tenant's call changes nothing of this tenant")
				case who == "foreign" && rt.Scope == api.ScopeTenant:
					require.Equal(t, http.StatusNotFound, rec.Code, rec.Body.String())
					require.Equal(t, notFound, rec.Body.String(), "foreign tenant looks exactly like a missing one")
				case who == "foreign":
					role := store.RoleAdmin
					if may(rt.Perm, role) {
						require.Equal(t, rt.Status, rec.Code, rec.Body.String())
					} else {
						requireCode(t, rec, http.StatusForbidden, api.CodeForbidden)
					}
				case may(rt.Perm, store.Role(who)):
					require.Equal(t, rt.Status, rec.Code, rec.Body.String())
					if rt.Resp != nil && !rt.Raw {
						require.True(t, json.Valid(rec.Body.Bytes()))
					}
					if mutating {
						require.Greater(t, e.head(t, chain), before, "an allowed change writes its audit record")
					}
				default:
					requireCode(t, rec, http.StatusForbidden, api.CodeForbidden)
				}
				if rec.Code >= 400 || readOnlyPost[rt.Pattern] {
					require.Equal(t, before, e.head(t, chain), "a refused call changes nothing")
				}
				requireHeaders(t, rec)
			})
		}
		if rt.Perm != "" {
			t.Run(rt.Method+" "+rt.Pattern+" unauthenticated", func(t *testing.T) {
				w := e.world(t)
				path, body := request(rt, w, w.tenant)
				for _, tok := range []string{"", "gar_nope", w.expiredTok, w.revokedTok, w.tokens[store.RoleAdmin] + "x",
					strings.Replace(w.tokens[store.RoleAdmin], "_", "-", -1)} {
					rec := e.do(rt.Method, path, tok, body, bodyType(rt)...)
					requireCode(t, rec, http.StatusUnauthorized, api.CodeUnauthenticated)
				}
			})
		}
	}
}

func TestPlatformAdminMissingTenantIs404(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	for _, rt := range e.srv.Routes() {
		if rt.Scope != api.ScopeTenant {
			continue
		}
		path, body := request(rt, w, "no-such-tenant")
		rec := e.do(rt.Method, path, w.tokens[store.RolePlatformAdmin], body)
		requireCode(t, rec, http.StatusNotFound, api.CodeNotFound)
	}
}

func requireCode(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	var eb api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&eb), rec.Body.String())
	require.Equal(t, code, eb.Error.Code)
	require.NotEmpty(t, eb.Error.Message)
}

func requireHeaders(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	require.Contains(t, rec.Header().Get("Content-Security-Policy"), "default-src 'none'")
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
}

func TestBadBodies(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	tok := w.tokens[store.RolePlatformAdmin]
	for _, tc := range []struct {
		name, body string
		hdr        []string
		status     int
		code       string
	}{
		{"unknown field", `{"id":"x1","nmae":"typo"}`, nil, 400, api.CodeBadRequest},
		{"trailing data", `{"id":"x2"}{"id":"x3"}`, nil, 400, api.CodeBadRequest},
		{"trailing garbage", `{"id":"x2"} xyz`, nil, 400, api.CodeBadRequest},
		{"wrong type", `{"id":5}`, nil, 400, api.CodeBadRequest},
		{"array", `[{"id":"x4"}]`, nil, 400, api.CodeBadRequest},
		{"truncated", `{"id":"x5"`, nil, 400, api.CodeBadRequest},
		{"empty", ``, []string{"Content-Type", "application/json"}, 400, api.CodeBadRequest},
		{"not json", `id=x6`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, api.CodeUnsupportedMedia},
		{"oversize", `{"id":"x7","name":"` + strings.Repeat("a", 5000) + `"}`, nil, 413, api.CodeTooLarge},
		{"oversize trailing", `{"id":"x8"}` + strings.Repeat(" ", 5000), nil, 413, api.CodeTooLarge},
		{"bad tenant id", `{"id":"Bad_ID"}`, nil, 400, api.CodeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.head(t, api.PlatformChain)
			hdr := append([]string{"Authorization", "Bearer " + tok}, tc.hdr...)
			r := httptest.NewRequest("POST", "/api/v1/tenants", strings.NewReader(tc.body))
			if tc.hdr == nil {
				r.Header.Set("Content-Type", "application/json")
			}
			for i := 0; i+1 < len(hdr); i += 2 {
				r.Header.Set(hdr[i], hdr[i+1])
			}
			rec := httptest.NewRecorder()
			e.srv.ServeHTTP(rec, r)
			requireCode(t, rec, tc.status, tc.code)
			require.Equal(t, before, e.head(t, api.PlatformChain), "no state change")
		})
	}
	// A conflicting create is 409 and writes no audit record.
	require.Equal(t, 201, e.do("POST", "/api/v1/tenants", tok, `{"id":"dup"}`).Code)
	before := e.head(t, api.PlatformChain)
	requireCode(t, e.do("POST", "/api/v1/tenants", tok, `{"id":"dup"}`), 409, api.CodeConflict)
	require.Equal(t, before, e.head(t, api.PlatformChain))
	// A body on a route that takes none is refused.
	requireCode(t, e.do("GET", "/api/v1/whoami", tok, `{}`), 400, api.CodeBadRequest)
}

func TestTokenLifecycle(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	admin := w.tokens[store.RoleAdmin]
	base := "/api/v1/tenants/" + string(w.tenant)

	rec := e.do("POST", base+"/tokens", admin, `{"name":"svc","role":"auditor","ttl":"2h"}`)
	require.Equal(t, 201, rec.Code, rec.Body.String())
	var ct api.CreatedToken
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &ct))
	require.True(t, strings.HasPrefix(ct.Secret, "gar_"+ct.Token.ID+"_"))
	require.Equal(t, store.RoleAuditor, ct.Token.Role)

	who := e.do("GET", "/api/v1/whoami", ct.Secret, "")
	require.Equal(t, 200, who.Code)
	require.Contains(t, who.Body.String(), `"role": "auditor"`)

	list := e.do("GET", base+"/tokens", admin, "").Body.String()
	require.Contains(t, list, ct.Token.ID)
	require.NotContains(t, list, ct.Secret[len("gar_"+ct.Token.ID+"_"):], "secrets never listed")
	require.NotContains(t, list, "hash")

	// Escalation is refused: a tenant cannot mint platform admins.
	requireCode(t, e.do("POST", base+"/tokens", admin, `{"name":"evil","role":"platform-admin"}`), 400, api.CodeInvalid)
	requireCode(t, e.do("POST", base+"/operators", admin, `{"name":"evil","role":"platform-admin"}`), 400, api.CodeInvalid)
	// A token for a viewer operator cannot carry admin.
	requireCode(t, e.do("POST", base+"/tokens", admin, fmt.Sprintf(`{"name":"x","operator":%q,"role":"admin"}`, w.victimOp)), 400, api.CodeInvalid)

	// Expiry follows the clock.
	e.clk.Advance(2 * time.Hour)
	requireCode(t, e.do("GET", "/api/v1/whoami", ct.Secret, ""), 401, api.CodeUnauthenticated)

	// Revocation takes effect at once.
	e.clk.Set(t0)
	require.Equal(t, 200, e.do("GET", "/api/v1/whoami", ct.Secret, "").Code)
	require.Equal(t, 204, e.do("DELETE", base+"/tokens/"+ct.Token.ID, admin, "").Code)
	requireCode(t, e.do("GET", "/api/v1/whoami", ct.Secret, ""), 401, api.CodeUnauthenticated)

	// The audit chain holds every change and verifies.
	rep, err := audit.Verify(context.Background(), e.st, w.tenant)
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
	rec = e.do("GET", base+"/audit/verify", admin, "")
	require.Equal(t, 200, rec.Code)
	require.Contains(t, rec.Body.String(), `"ok": true`)
	rec = e.do("GET", base+"/audit?limit=100", admin, "")
	for _, action := range []string{"operator.create", "token.create", "token.revoke"} {
		require.Contains(t, rec.Body.String(), action)
	}
	requireCode(t, e.do("GET", base+"/audit?limit=0", admin, ""), 400, api.CodeBadRequest)
}

func TestUnknownRouteIsJSON404(t *testing.T) {
	e := newEnv(t)
	rec := e.do("GET", "/api/v1/nope", "", "")
	requireCode(t, rec, 404, api.CodeNotFound)
	requireHeaders(t, rec)
}

func TestReadyz(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	defer st.Close()
	var down error = errors.New("bus: connection refused")
	srv, err := api.New(api.Options{Store: st, Clock: clock.NewManual(t0), Ready: func(context.Context) error { return down }})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	requireCode(t, rec, 503, api.CodeUnavailable)
	require.NotContains(t, rec.Body.String(), "connection refused", "causes stay in the log")
	down = nil
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	require.Equal(t, 200, rec.Code)
}

func TestTokensDieWithOperatorAndTenant(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	plat := w.tokens[store.RolePlatformAdmin]
	base := "/api/v1/tenants/" + string(w.tenant)
	viewer := w.tokens[store.RoleViewer]
	require.Equal(t, 200, e.do("GET", "/api/v1/whoami", viewer, "").Code)
	require.Equal(t, 204, e.do("DELETE", base+"/operators/op-viewer-1", plat, "").Code)
	requireCode(t, e.do("GET", "/api/v1/whoami", viewer, ""), 401, api.CodeUnauthenticated)

	admin := w.tokens[store.RoleAdmin]
	require.Equal(t, 200, e.do("GET", "/api/v1/whoami", admin, "").Code)
	require.Equal(t, 204, e.do("DELETE", base, plat, "").Code)
	requireCode(t, e.do("GET", "/api/v1/whoami", admin, ""), 401, api.CodeUnauthenticated)
}
