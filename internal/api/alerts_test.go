package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// seedAlerts stores, besides the world's own open alert, alerts of several
// devices, kinds, states and ages, and a few actions and devices.
func (e *env) seedAlerts(t *testing.T, w world) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, e.st.Update(ctx, func(tx store.Tx) error {
		for i, a := range []struct {
			dev   event.DeviceID
			kind  alert.Kind
			state alert.State
			age   time.Duration
		}{
			{"d1", alert.PortScan, alert.Open, 1 * time.Hour},
			{"d1", alert.Bruteforce, alert.Acknowledged, 2 * time.Hour},
			{"d2", alert.PortScan, alert.Resolved, 3 * time.Hour},
			{"d2", alert.DataSpike, alert.FalsePositive, 48 * time.Hour},
		} {
			ts := e.clk.Now().Add(-a.age)
			require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: fmt.Sprintf("s%d", i), Tenant: w.tenant, Device: a.dev,
				Kind: a.kind, Severity: alert.Medium, Detector: "x", FirstSeen: ts, LastSeen: ts, Count: 1, State: a.state}))
		}
		for _, d := range []struct {
			id    event.DeviceID
			model string
			state store.DeviceState
		}{{"d1", "m1", store.StateActive}, {"d2", "m2", store.StateQuarantined}, {"d3", "m2", store.StateActive}} {
			require.NoError(t, tx.Devices().Create(ctx, store.Device{Tenant: w.tenant, ID: d.id, Model: d.model, State: d.state,
				CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()}))
		}
		for i, a := range []struct {
			dev   event.DeviceID
			state store.ActionState
		}{{"d1", store.ActionDone}, {"d2", store.ActionApproval}, {"d2", store.ActionDone}} {
			require.NoError(t, tx.Actions().Put(ctx, store.Action{Tenant: w.tenant, ID: fmt.Sprintf("ac%d", i), Device: a.dev,
				Kind: "quarantine", Actor: "automation", State: a.state, CreatedAt: e.clk.Now().Add(time.Duration(i) * time.Second),
				UpdatedAt: e.clk.Now()}))
		}
		return nil
	}))
}

func ids[T any](t *testing.T, body []byte, id func(T) string) []string {
	t.Helper()
	var xs []T
	require.NoError(t, json.Unmarshal(body, &xs), string(body))
	out := []string{}
	for _, x := range xs {
		out = append(out, id(x))
	}
	return out
}

func TestAlertFilters(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	e.seedAlerts(t, w)
	viewer := w.tokens[store.RoleViewer]
	base := "/api/v1/tenants/" + string(w.tenant)
	alertID := func(a alert.Alert) string { return a.ID }
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{w.alertID, "s0", "s1", "s2", "s3"}}, // newest FirstSeen first
		{"device=d1", []string{"s0", "s1"}},
		{"kind=net.port_scan", []string{w.alertID, "s0", "s2"}},
		{"state=acknowledged", []string{"s1"}},
		{"state=false_positive", []string{"s3"}},
		{"device=d2&kind=net.port_scan", []string{"s2"}},
		{"since=" + url.QueryEscape(t0.Add(-150*time.Minute).Format(time.RFC3339)), []string{w.alertID, "s0", "s1"}},
		{"limit=2", []string{w.alertID, "s0"}},
		{"before=s0&limit=2", []string{"s1", "s2"}},
		{"before=s3", []string{}},
		{"device=nobody", []string{}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			rec := e.do("GET", base+"/alerts?"+tc.query, viewer, "")
			require.Equal(t, 200, rec.Code, rec.Body.String())
			require.Equal(t, tc.want, ids(t, rec.Body.Bytes(), alertID))
		})
	}

	rec := e.do("GET", base+"/alerts/s1", viewer, "")
	require.Equal(t, 200, rec.Code)
	var a alert.Alert
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &a))
	require.Equal(t, alert.Bruteforce, a.Kind)
	require.Equal(t, alert.Acknowledged, a.State)
	requireCode(t, e.do("GET", base+"/alerts/nope", viewer, ""), 404, api.CodeNotFound)

	actionID := func(a store.Action) string { return a.ID }
	for q, want := range map[string][]string{
		"":                     {w.resp.action, "ac0", "ac1", "ac2"}, // the world's own action is older
		"device=d2":            {"ac1", "ac2"},
		"state=done":           {"ac0", "ac2"},
		"device=d2&state=done": {"ac2"},
		"limit=1":              {w.resp.action},
		"after=ac0&limit=1":    {"ac1"},
		"after=ac2":            {},
	} {
		rec := e.do("GET", base+"/actions?"+q, viewer, "")
		require.Equal(t, 200, rec.Code, rec.Body.String())
		require.Equal(t, want, ids(t, rec.Body.Bytes(), actionID), q)
	}

	devID := func(d store.Device) string { return string(d.ID) }
	for q, want := range map[string][]string{
		"":                      {"d1", "d2", "d3", string(w.deviceID)},
		"model=m2":              {"d2", "d3"},
		"state=quarantined":     {"d2"},
		"model=m2&state=active": {"d3"},
		"limit=2":               {"d1", "d2"},
		"after=d2&limit=1":      {"d3"},
		"after=d3":              {string(w.deviceID)},
	} {
		rec := e.do("GET", base+"/devices?"+q, viewer, "")
		require.Equal(t, 200, rec.Code, rec.Body.String())
		require.Equal(t, want, ids(t, rec.Body.Bytes(), devID), q)
	}
	rec = e.do("GET", base+"/devices/d2", viewer, "")
	require.Equal(t, 200, rec.Code)
	require.Contains(t, rec.Body.String(), `"state": "quarantined"`)
	requireCode(t, e.do("GET", base+"/devices/nope", viewer, ""), 404, api.CodeNotFound)
}

func TestAlertBadQueries(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	viewer := w.tokens[store.RoleViewer]
	base := "/api/v1/tenants/" + string(w.tenant)
	for _, tc := range []struct{ path, param string }{
		{"/alerts?state=closed", "state"},
		{"/alerts?since=yesterday", "since"},
		{"/alerts?since=2026-11-24", "since"},
		{"/alerts?limit=0", "limit"},
		{"/alerts?limit=1001", "limit"},
		{"/alerts?limit=ten", "limit"},
		{"/alerts?device=" + url.QueryEscape("d1' OR 1=1"), "device"},
		{"/alerts?kind=" + url.QueryEscape("a b"), "kind"},
		{"/actions?state=running", "state"},
		{"/actions?limit=-1", "limit"},
		{"/alerts?before=" + url.QueryEscape("s0'--"), "before"},
		{"/actions?after=" + url.QueryEscape("a c"), "after"},
		{"/actions?device=" + url.QueryEscape("/x"), "device"},
		{"/devices?state=online", "state"},
		{"/devices?model=" + url.QueryEscape("m 1"), "model"},
		{"/devices?after=" + url.QueryEscape("%"), "after"},
		{"/devices?limit=99999", "limit"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			rec := e.do("GET", base+tc.path, viewer, "")
			requireCode(t, rec, 400, api.CodeBadRequest)
			require.Contains(t, rec.Body.String(), `\"`+tc.param+`\"`, "the error names the parameter")
		})
	}
}

func (e *env) alertState(t *testing.T, tenant event.TenantID, id string) alert.State {
	t.Helper()
	var a alert.Alert
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) (err error) {
		a, err = tx.Alerts().Get(context.Background(), tenant, id)
		return err
	}))
	return a.State
}

func TestAlertTransitions(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	e.seedAlerts(t, w)
	op := w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant) + "/alerts/"

	type step struct {
		method, id, body string
		status           int
		code             string      // on failure
		state            alert.State // after the step
	}
	for _, s := range []step{
		{"ack", w.alertID, "", 200, "", alert.Acknowledged},
		{"ack", w.alertID, "", 409, api.CodeConflict, alert.Acknowledged}, // twice
		{"resolve", w.alertID, `{"note":"patched"}`, 200, "", alert.Resolved},
		{"ack", w.alertID, "", 409, api.CodeConflict, alert.Resolved},                            // ack a resolved alert
		{"resolve", w.alertID, `{}`, 409, api.CodeConflict, alert.Resolved},                      // resolve twice
		{"resolve", "s0", `{"false_positive":true}`, 200, "", alert.FalsePositive},               // open straight to false positive
		{"resolve", "s3", `{"false_positive":true}`, 409, api.CodeConflict, alert.FalsePositive}, // already closed
		{"resolve", "s1", `{"nte":"typo"}`, 400, api.CodeBadRequest, alert.Acknowledged},
		{"resolve", "s1", fmt.Sprintf(`{"note":%q}`, strings.Repeat("a", 1001)), 400, api.CodeInvalid, alert.Acknowledged},
		{"resolve", "s1", `{"note":"dup of s0"}`, 200, "", alert.Resolved},
	} {
		before := e.head(t, w.tenant)
		rec := e.do("POST", base+s.id+"/"+s.method, op, s.body)
		if s.status == 200 {
			require.Equal(t, 200, rec.Code, rec.Body.String())
			var a alert.Alert
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &a))
			require.Equal(t, s.state, a.State)
			require.Equal(t, before+1, e.head(t, w.tenant), "one audit record per change")
		} else {
			requireCode(t, rec, s.status, s.code)
			require.Equal(t, before, e.head(t, w.tenant), "a refused change writes no audit record")
		}
		require.Equal(t, s.state, e.alertState(t, w.tenant, s.id), "%s %s", s.method, s.id)
	}

	requireCode(t, e.do("POST", base+"nope/ack", op, ""), 404, api.CodeNotFound)
	requireCode(t, e.do("POST", base+"nope/resolve", op, `{}`), 404, api.CodeNotFound)

	// The audit trail says who did what, with the note.
	rec := e.do("GET", "/api/v1/tenants/"+string(w.tenant)+"/audit?limit=100", w.tokens[store.RoleAuditor], "")
	require.Equal(t, 200, rec.Code)
	var recs []store.AuditRecord
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &recs))
	var got []string
	for _, r := range recs {
		if r.Target == "alert:"+w.alertID {
			got = append(got, r.Action+" "+string(r.Details))
		}
	}
	require.Equal(t, []string{
		`alert.ack {"from":"open","to":"acknowledged"}`,
		`alert.resolve {"from":"acknowledged","note":"patched","to":"resolved"}`,
	}, got)
}

func TestAlertsForeignTenant(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	other := e.world(t) // a second tenant with its own alert and device
	base := "/api/v1/tenants/" + string(w.tenant)
	admin := w.tokens[store.RoleAdmin]
	// Ids of another tenant's alert or device through one's own tenant: 404.
	requireCode(t, e.do("GET", base+"/alerts/"+other.alertID, admin, ""), 404, api.CodeNotFound)
	requireCode(t, e.do("POST", base+"/alerts/"+other.alertID+"/ack", admin, ""), 404, api.CodeNotFound)
	requireCode(t, e.do("GET", base+"/devices/"+string(other.deviceID), admin, ""), 404, api.CodeNotFound)
	require.Equal(t, alert.Open, e.alertState(t, other.tenant, other.alertID))
	// Lists only show the tenant's own.
	rec := e.do("GET", base+"/alerts", admin, "")
	require.Equal(t, []string{w.alertID}, ids(t, rec.Body.Bytes(), func(a alert.Alert) string { return a.ID }))
	// Through the other tenant's path: 404, and nothing changes.
	requireCode(t, e.do("POST", "/api/v1/tenants/"+string(other.tenant)+"/alerts/"+other.alertID+"/ack", admin, ""), 404, api.CodeNotFound)
	require.Equal(t, alert.Open, e.alertState(t, other.tenant, other.alertID))
}

// TestAlertConcurrentAck races operators acknowledging one alert: exactly
// one wins, the others get 409, and one audit record is written.
func TestAlertConcurrentAck(t *testing.T) { raceAcks(t, newEnv(t)) }

// TestAlertConcurrentAckPostgres is the same race on PostgreSQL, whose
// writes run at READ COMMITTED.
func TestAlertConcurrentAckPostgres(t *testing.T) {
	db := pgtest.Open(t)
	clk := clock.NewManual(t0)
	srv, err := api.New(api.Options{Store: db, Clock: clk, MaxBodyBytes: 4096})
	require.NoError(t, err)
	raceAcks(t, &env{st: db, clk: clk, srv: srv})
}

func raceAcks(t *testing.T, e *env) {
	w := e.world(t)
	path := "/api/v1/tenants/" + string(w.tenant) + "/alerts/" + w.alertID + "/ack"
	before := e.head(t, w.tenant)
	const n = 8
	codes := make(chan int, n)
	for range n {
		go func() { codes <- e.do("POST", path, w.tokens[store.RoleOperator], "").Code }()
	}
	won := 0
	for range n {
		switch c := <-codes; c {
		case 200:
			won++
		case 409:
		default:
			t.Fatalf("status %d", c)
		}
	}
	require.Equal(t, 1, won)
	require.Equal(t, before+1, e.head(t, w.tenant))
}

// FuzzListQueries throws arbitrary query strings at the alert, action and
// device lists: every answer is a JSON array or a clean 400.
func FuzzListQueries(f *testing.F) {
	for _, s := range []struct {
		which uint8
		q     string
	}{
		{0, "device=d1&kind=net.port_scan&state=open&since=2026-11-24T00:00:00Z&limit=5"},
		{0, "since=2026-13-40T99:00:00Z"},
		{0, "limit=%00"},
		{1, "device=d1&state=done&limit=1000"},
		{2, "model=m2&state=active&after=d1&limit=2"},
		{2, "after=%ff%fe&state="},
	} {
		f.Add(s.which, s.q)
	}
	e := newEnv(f)
	w := e.world(f)
	base := "/api/v1/tenants/" + string(w.tenant)
	paths := []string{base + "/alerts", base + "/actions", base + "/devices"}
	f.Fuzz(func(t *testing.T, which uint8, q string) {
		u := paths[int(which)%len(paths)] + "?" + url.PathEscape(q)
		u = strings.ReplaceAll(u, "%26", "&")
		u = strings.ReplaceAll(u, "%3D", "=")
		rec := e.do("GET", u, w.tokens[store.RoleViewer], "")
		switch rec.Code {
		case 200:
			var xs []json.RawMessage
			if err := json.Unmarshal(rec.Body.Bytes(), &xs); err != nil {
				t.Fatalf("not an array: %s", rec.Body.String())
			}
		case 400:
			var eb api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code != api.CodeBadRequest {
				t.Fatalf("error body %q", rec.Body.String())
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, u, rec.Body.String())
		}
	})
}
