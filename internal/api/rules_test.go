package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/store"
)

// readOnlyPost lists POST routes that change nothing (no audit record).
var readOnlyPost = map[string]bool{"/api/v1/tenants/{tenant}/rules/test": true}

const seededRule = "seeded-rule"

func newRules(t testing.TB, st store.Store, clk clock.Clock) *platform.Rules {
	t.Helper()
	r, err := platform.NewRules(platform.RulesOptions{Store: st, Clock: clk})
	require.NoError(t, err)
	return r
}

func seedRule(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, now time.Time) {
	t.Helper()
	require.NoError(t, tx.Rules().Create(ctx, store.Rule{Tenant: tenant, ID: seededRule, Name: "seeded", Expr: "true", Severity: "low",
		Version: 1, Actor: "op", CreatedAt: now, UpdatedAt: now}))
}

func ruleBody(pattern string, dev event.DeviceID) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/rules":
		return `{"id":"new-rule","name":"Telnet","expr":"event.attrs.dst_port == 23.0","severity":"high","events":["net.flow"]}`, true
	case t + "/rules/{id}":
		return `{"name":"seeded","expr":"false","severity":"medium","enabled":true}`, true
	case t + "/rules/test":
		ev := fmt.Sprintf(`{"device":%q,"kind":"net.flow","time":"2026-11-24T11:00:00Z","attrs":{"dst_port":23}}`, dev)
		return mustJSON(api.RuleTestRequest{Rule: api.RuleRequest{ID: "t", Name: "t", Expr: "event.attrs.dst_port == 23.0", Severity: "low"}, Events: ev}), true
	}
	return "", false
}

type ruleEnv struct {
	*env
	rules *platform.Rules
	w     world
	admin string
}

func newRuleEnv(t *testing.T) ruleEnv {
	e := newEnv(t)
	w := e.world(t)
	return ruleEnv{env: e, w: w, admin: w.tokens[store.RoleAdmin]}
}

func (e ruleEnv) path(s string) string { return "/api/v1/tenants/" + string(e.w.tenant) + "/rules" + s }

func TestRulesCRUD(t *testing.T) {
	e := newRuleEnv(t)
	before := e.head(t, e.w.tenant)

	// An invalid expression is refused naming its position; nothing changes.
	rec := e.do("POST", e.path(""), e.admin, `{"id":"telnet","name":"Telnet","severity":"high","expr":"event.attrs.dst_port ==\n  && true"}`)
	requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
	require.Contains(t, rec.Body.String(), "line 2, column 3")
	rec = e.do("POST", e.path(""), e.admin, `{"id":"telnet","name":"Telnet","severity":"high","expr":"device.modle == 'x'"}`)
	requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
	require.Contains(t, rec.Body.String(), "line 1, column 7")
	require.Contains(t, rec.Body.String(), "modle")
	rec = e.do("POST", e.path(""), e.admin, `{"id":"telnet","name":"Telnet","severity":"urgent","expr":"true"}`)
	requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
	require.Contains(t, rec.Body.String(), "severity")
	require.Equal(t, before, e.head(t, e.w.tenant))

	rec = e.do("POST", e.path(""), e.admin, `{"id":"telnet","name":"Telnet","severity":"high","expr":"event.attrs.dst_port in [23, 2323]","events":["net.flow"]}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	r := decode[store.Rule](t, rec)
	require.Equal(t, 1, r.Version)
	require.False(t, r.Enabled, "a rule is created disabled unless asked")
	require.Equal(t, before+1, e.head(t, e.w.tenant))
	rec = e.do("POST", e.path(""), e.admin, `{"id":"telnet","name":"Again","severity":"high","expr":"true"}`)
	requireCode(t, rec, http.StatusConflict, api.CodeConflict)

	rec = e.do("PUT", e.path("/telnet"), e.admin, `{"name":"Telnet","severity":"critical","expr":"event.attrs.dst_port in [23, 2323]","events":["net.flow"],"enabled":true,"version":1}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	r = decode[store.Rule](t, rec)
	require.Equal(t, 2, r.Version)
	require.True(t, r.Enabled)
	require.Equal(t, "critical", r.Severity)
	rec = e.do("PUT", e.path("/telnet"), e.admin, `{"name":"Stale","severity":"low","expr":"true","version":1}`)
	requireCode(t, rec, http.StatusConflict, api.CodeConflict)
	rec = e.do("PUT", e.path("/telnet"), e.admin, `{"id":"other","name":"x","severity":"low","expr":"true"}`)
	requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
	rec = e.do("PUT", e.path("/nope"), e.admin, `{"name":"x","severity":"low","expr":"true"}`)
	requireCode(t, rec, http.StatusNotFound, api.CodeNotFound)

	rec = e.do("GET", e.path(""), e.w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	list := decode[[]store.Rule](t, rec)
	require.Len(t, list, 2)
	require.Equal(t, seededRule, list[0].ID)
	require.Equal(t, "telnet", list[1].ID)
	rec = e.do("GET", e.path("/telnet"), e.w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, 2, decode[store.Rule](t, rec).Version)

	// The audit log names the rule and what changed.
	var recs []store.AuditRecord
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) (err error) {
		recs, err = tx.Audit().Range(context.Background(), e.w.tenant, before, 10)
		return err
	}))
	require.Len(t, recs, 2)
	require.Equal(t, "rule.create", recs[0].Action)
	require.Equal(t, "rule.update", recs[1].Action)
	require.Equal(t, "rule:telnet", recs[1].Target)
	require.Contains(t, string(recs[1].Details), `"version":2`)

	rec = e.do("DELETE", e.path("/telnet"), e.admin, "")
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	rec = e.do("GET", e.path("/telnet"), e.admin, "")
	requireCode(t, rec, http.StatusNotFound, api.CodeNotFound)
	rec = e.do("DELETE", e.path("/telnet"), e.admin, "")
	requireCode(t, rec, http.StatusNotFound, api.CodeNotFound)
}

// TestRuleChangesReachTheEngine: the rule set the engine reads follows
// every change made through the API, without a restart.
func TestRuleChangesReachTheEngine(t *testing.T) {
	e := newEnv(t)
	st, clk := e.st, e.clk
	rules := newRules(t, st, clk)
	srv, err := api.New(api.Options{Store: st, Clock: clk, Rules: rules})
	require.NoError(t, err)
	e.srv = srv
	w := e.world(t)
	re := ruleEnv{env: e, w: w, admin: w.tokens[store.RoleAdmin]}
	n, err := rules.Load(context.Background())
	require.NoError(t, err)
	require.Zero(t, n, "the seeded rule is disabled")
	set := rules.Set()

	rec := re.do("POST", re.path(""), re.admin, `{"id":"r1","name":"r1","severity":"high","expr":"true","enabled":true}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.Len(t, set.Rules(w.tenant), 1)
	rec = re.do("PUT", re.path("/"+seededRule), re.admin, `{"name":"s","severity":"low","expr":"device.known","enabled":true}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	got := set.Rules(w.tenant)
	require.Len(t, got, 2)
	require.Equal(t, "device.known", got[1].Expr)
	rec = re.do("PUT", re.path("/r1"), re.admin, `{"name":"r1","severity":"high","expr":"true","enabled":false}`)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Len(t, set.Rules(w.tenant), 1)
	rec = re.do("DELETE", re.path("/"+seededRule), re.admin, "")
	require.Equal(t, http.StatusNoContent, rec.Code)
	require.Empty(t, set.Rules(w.tenant))
}

func TestRuleTest(t *testing.T) {
	e := newRuleEnv(t)
	before := e.head(t, e.w.tenant)
	dev := e.w.deviceID // model m1, active
	lines := strings.Join([]string{
		fmt.Sprintf(`{"id":"a","device":%q,"kind":"net.flow","time":"2026-11-24T11:00:00Z","source":"flows","attrs":{"dst_port":443}}`, dev),
		"",
		fmt.Sprintf(`{"v":1,"id":"b","tenant":%q,"device":%q,"kind":"net.flow","time":"2026-11-24T11:01:00Z","source":"flows","attrs":{"dst_port":23}}`, e.w.tenant, dev),
		fmt.Sprintf(`{"id":"c","device":%q,"kind":"net.flow","time":"2026-11-24T11:02:00Z","source":"flows","attrs":{}}`, dev),
		fmt.Sprintf(`{"id":"d","device":%q,"kind":"location","time":"2026-11-24T11:02:00Z","attrs":{"dst_port":23}}`, dev),
		fmt.Sprintf(`{"id":"e","device":%q,"kind":"net.flow","time":"2026-11-24T11:03:00Z","source":"flows","attrs":{"dst_port":2323}}`, dev),
		`{"id":"f","device":"unknown-dev","kind":"net.flow","time":"2026-11-24T11:04:00Z","attrs":{"dst_port":23}}`,
	}, "\n")
	req := api.RuleTestRequest{Rule: api.RuleRequest{ID: "telnet", Name: "Telnet", Severity: "high", Events: []event.Kind{event.NetFlow},
		Expr: "event.attrs.dst_port in [23, 2323] && device.known && device.model == 'm1'"}, Events: lines}
	rec := e.do("POST", e.path("/test"), e.w.tokens[store.RoleViewer], mustJSON(req))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	res := decode[api.RuleTestResponse](t, rec)
	require.Equal(t, 6, res.Events)
	require.Equal(t, 5, res.Evaluated, "the location event is not of the rule's kinds")
	require.Equal(t, 2, res.Matched)
	require.Equal(t, []int{3, 6}, []int{res.Matches[0].Line, res.Matches[1].Line})
	require.Equal(t, "b", res.Matches[0].EventID)
	require.Equal(t, 2, res.Matches[1].Count, "the repeat merges")
	require.Equal(t, 1, res.ErrorCount)
	require.Equal(t, 4, res.Errors[0].Line)
	require.Contains(t, res.Errors[0].Error, "dst_port")
	require.Len(t, res.Alerts, 1)
	a := res.Alerts[0]
	require.Equal(t, alert.Kind("rule.telnet"), a.Kind)
	require.Equal(t, alert.High, a.Severity)
	require.Equal(t, dev, a.Device)
	require.Equal(t, 2, a.Count)
	require.Equal(t, "telnet", a.Evidence.Values["rule"])
	require.Equal(t, before, e.head(t, e.w.tenant), "a test changes nothing")
	var n int
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		as, err := tx.Alerts().List(context.Background(), e.w.tenant, store.AlertFilter{Kind: "rule.telnet"})
		n = len(as)
		return err
	}))
	require.Zero(t, n, "no alert is stored")

	// Bad input names the line (or the rule's position) and changes nothing.
	bad := map[string]string{
		mustJSON(api.RuleTestRequest{Rule: req.Rule, Events: "{\"kind\":\"net.flow\",\"time\":\"2026-11-24T11:00:00Z\"}\n{nope"}):                 "events line 2",
		mustJSON(api.RuleTestRequest{Rule: req.Rule, Events: "\n\n{\"kind\":\"net.flow\"}"}):                                                      "events line 3",
		mustJSON(api.RuleTestRequest{Rule: req.Rule, Events: `{"tenant":"globex","kind":"net.flow","time":"2026-11-24T11:00:00Z"}`}):              "is not",
		mustJSON(api.RuleTestRequest{Rule: req.Rule, Events: `{"kind":"net.flow","time":"2026-11-24T11:00:00Z","extra":1}`}):                      "events line 1",
		mustJSON(api.RuleTestRequest{Rule: api.RuleRequest{ID: "x", Name: "x", Severity: "low", Expr: "event.attrs.dst_port in"}, Events: lines}): "line 1, column",
	}
	for body, want := range bad {
		rec := e.do("POST", e.path("/test"), e.w.tokens[store.RoleViewer], body)
		requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
		require.Contains(t, rec.Body.String(), want)
	}
	require.Equal(t, before, e.head(t, e.w.tenant))
}
