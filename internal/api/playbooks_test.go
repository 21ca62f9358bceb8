package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

func newResponse(t testing.TB, st store.Store, clk clock.Clock, reg *registry.Registry) respond.Service {
	t.Helper()
	rb := respond.RegistryBackend{Registry: reg}
	eng, err := respond.New(respond.Options{Store: st, Clock: clk, Quarantiner: rb, SIMBlocker: rb, Revoker: rb,
		Logger: slog.New(slog.DiscardHandler), RetryBackoff: time.Millisecond})
	require.NoError(t, err)
	m, err := respond.NewMass(respond.MassOptions{Store: st, Clock: clk, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	return respond.Service{Engine: eng, Mass: m}
}

// responseWorld is what the playbook, approval and mass routes of one world
// act on: an action waiting for approval and a running mass job.
type responseWorld struct {
	action, job string
}

func seedResponse(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, n int, now time.Time, alertID string, dev event.DeviceID) responseWorld {
	t.Helper()
	w := responseWorld{action: respond.ActionID(alertID, "quarantine-compromised", 0), job: fmt.Sprintf("mj-%d", n)}
	require.NoError(t, tx.Actions().Put(ctx, store.Action{Tenant: tenant, ID: w.action, Device: dev, Kind: "quarantine", AlertID: alertID,
		Playbook: "quarantine-compromised", Actor: respond.Automation, State: store.ActionApproval, Reason: "test",
		CreatedAt: now.Add(-time.Hour), UpdatedAt: now}))
	require.NoError(t, tx.Mass().CreateJob(ctx, store.MassJob{Tenant: tenant, ID: w.job, Kind: "kick", Selector: "*", State: respond.JobRunning,
		Actor: "op", CreatedAt: now, UpdatedAt: now}))
	return w
}

func (w responseWorld) fill(path string) string {
	path = strings.ReplaceAll(path, "/playbooks/{name}", "/playbooks/quarantine-compromised")
	path = strings.ReplaceAll(path, "/versions/{version}", "/versions/0")
	path = strings.ReplaceAll(path, "/mass/{id}", "/mass/"+w.job)
	path = strings.ReplaceAll(path, "/actions/{id}", "/actions/"+url.PathEscape(w.action))
	if strings.HasSuffix(path, "/mass/preview") {
		path += "?selector=*"
	}
	return path
}

func (w responseWorld) body(pattern string) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/playbooks/{name}":
		return mustJSON(api.PutPlaybookRequest{YAML: "trigger: {kinds: [net.telnet_scan]}\nsteps: [quarantine]\n"}), true
	case t + "/approvals":
		return mustJSON(api.ApprovalRequest{Action: w.action, Decision: "approve"}), true
	case t + "/mass":
		return `{"kind":"kick","selector":"*"}`, true
	}
	return "", false
}

type respEnv struct {
	*https
	svc respond.Service
	w   world
	bus *stateBus
}

// stateBus records what the API publishes and hands alert.state_changed to
// the response engine at once, as serve's consumer does on the bus.
type stateBus struct {
	published
	eng *respond.Engine
}

func (b *stateBus) Publish(ctx context.Context, e *event.Event) error {
	if err := b.published.Publish(ctx, e); err != nil {
		return err
	}
	if e.Kind != event.AlertStateChanged {
		return nil
	}
	return b.eng.AlertStateChanged(ctx, e.Tenant, e.Str("alert_id"), alert.State(e.Str("to")), e.Str("actor"))
}

func newRespEnv(t *testing.T) *respEnv {
	t.Helper()
	h := newHTTPS(t)
	svc := newResponse(t, h.st, h.clk, h.reg)
	b := &stateBus{eng: svc.Engine}
	srv, err := api.New(api.Options{Store: h.st, Clock: h.clk, MaxBodyBytes: 64 << 10, Identity: h.id, Devices: h.reg, Response: svc, Events: b})
	require.NoError(t, err)
	h.srv.Config.Handler = srv
	return &respEnv{https: h, svc: svc, w: h.world(t), bus: b}
}

func (r *respEnv) fleet(t *testing.T, tenant event.TenantID, n int, model string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, r.st.Update(ctx, func(tx store.Tx) error {
		for i := 0; i < n; i++ {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: event.DeviceID(fmt.Sprintf("m-%04d", i)), Model: model,
				State: store.StateActive, CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	}))
}

func (r *respEnv) deviceState(t *testing.T, tenant event.TenantID, id event.DeviceID) store.DeviceState {
	t.Helper()
	d, err := r.reg.Get(context.Background(), tenant, id)
	require.NoError(t, err)
	return d.State
}

const kickDoc = "# kick port scanners\ntrigger:\n  kinds: [net.port_scan]\nmode: auto\nsteps:\n  - quarantine\n"

func TestPlaybookRoutes(t *testing.T) {
	r := newRespEnv(t)
	w := r.w
	base := "/api/v1/tenants/" + string(w.tenant)
	admin, viewer, operator := w.tokens[store.RoleAdmin], w.tokens[store.RoleViewer], w.tokens[store.RoleOperator]

	var in respond.PlaybookInfo
	code, body := r.json(t, "PUT", base+"/playbooks/kick-scanners", admin, mustJSON(api.PutPlaybookRequest{YAML: kickDoc}), &in)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, 1, in.Version)
	require.True(t, in.Enabled)
	code, body = r.json(t, "PUT", base+"/playbooks/kick-scanners", admin, mustJSON(api.PutPlaybookRequest{YAML: kickDoc + "  - notify: {channel: soc}\n"}), &in)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, 2, in.Version)

	// Bad input: errors name the line; nothing changes.
	before := r.head(t, w.tenant)
	for _, tc := range []struct{ name, yaml, want string }{
		{"kick-scanners", kickDoc + "  - reboot\n", `line 7: unknown step \"reboot\"`},
		{"kick-scanners", "name: other\n" + kickDoc, `line 1: playbook name \"other\" differs from \"kick-scanners\"`},
		{"kick-scanners", "trigger:\n  kinds: [Port Scan]\nsteps: [quarantine]\n", `line 2: alert kind \"Port Scan\" must be domain.name`},
		{"kick-scanners", "", `empty document`},
		{"Kick_Scanners", kickDoc, `playbook name must be 1-63 characters`},
	} {
		code, body = r.json(t, "PUT", base+"/playbooks/"+tc.name, admin, mustJSON(api.PutPlaybookRequest{YAML: tc.yaml}), nil)
		require.Equal(t, http.StatusBadRequest, code, body)
		require.Contains(t, body, tc.want)
	}
	code, _ = r.json(t, "PUT", base+"/playbooks/kick-scanners", operator, mustJSON(api.PutPlaybookRequest{YAML: kickDoc}), nil)
	require.Equal(t, http.StatusForbidden, code, "an operator may not change playbooks")
	require.Equal(t, before, r.head(t, w.tenant), "refused uploads change nothing")

	var list []respond.PlaybookInfo
	code, body = r.json(t, "GET", base+"/playbooks", viewer, "", &list)
	require.Equal(t, http.StatusOK, code, body)
	var names []string
	for _, p := range list {
		names = append(names, p.Name+"@"+fmt.Sprint(p.Version))
	}
	require.Equal(t, []string{"kick-scanners@2", "notify-suspicious@0", "quarantine-compromised@0"}, names)

	var vs []store.PlaybookVersion
	code, body = r.json(t, "GET", base+"/playbooks/kick-scanners/versions", viewer, "", &vs)
	require.Equal(t, http.StatusOK, code, body)
	require.Len(t, vs, 2)
	require.Contains(t, vs[0].Actor, "operator:")
	var v1 store.PlaybookVersion
	code, body = r.json(t, "GET", base+"/playbooks/kick-scanners/versions/1", viewer, "", &v1)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, kickDoc, v1.YAML)
	code, _ = r.json(t, "GET", base+"/playbooks/kick-scanners/versions/9", viewer, "", nil)
	require.Equal(t, http.StatusNotFound, code)
	code, body = r.json(t, "GET", base+"/playbooks/kick-scanners/versions/x", viewer, "", nil)
	require.Equal(t, http.StatusBadRequest, code, body)
	var def respond.PlaybookInfo
	code, body = r.json(t, "GET", base+"/playbooks/quarantine-compromised", viewer, "", &def)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, respond.SourceDefault, def.Source)
	require.Contains(t, def.YAML, "sim.imei_mismatch")

	// The running engine uses the tenant's playbook: a port scan quarantines.
	ctx := context.Background()
	r.fleet(t, w.tenant, 3, "m2")
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "ps-1", Tenant: w.tenant, Device: "m-0001", Kind: alert.PortScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	require.Equal(t, store.StateQuarantined, r.deviceState(t, w.tenant, "m-0001"))

	// Disabled, it no longer runs.
	code, body = r.json(t, "POST", base+"/playbooks/kick-scanners/disable", admin, "", &in)
	require.Equal(t, http.StatusOK, code, body)
	require.False(t, in.Enabled)
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "ps-2", Tenant: w.tenant, Device: "m-0002", Kind: alert.PortScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0002"))
	code, _ = r.json(t, "POST", base+"/playbooks/no-such/disable", admin, "", nil)
	require.Equal(t, http.StatusNotFound, code)

	// Another tenant sees neither the playbook nor this tenant.
	code, _ = r.json(t, "GET", base+"/playbooks/kick-scanners", w.foreign, "", nil)
	require.Equal(t, http.StatusNotFound, code)
}

func TestApprovalRoutes(t *testing.T) {
	r := newRespEnv(t)
	w := r.w
	ctx := context.Background()
	base := "/api/v1/tenants/" + string(w.tenant)
	admin, viewer, operator := w.tokens[store.RoleAdmin], w.tokens[store.RoleViewer], w.tokens[store.RoleOperator]
	r.fleet(t, w.tenant, 2, "m2")
	code, body := r.json(t, "PUT", base+"/playbooks/approve-scans", admin, mustJSON(api.PutPlaybookRequest{
		YAML: "trigger: {kinds: [net.port_scan]}\nmode: approve\nsteps: [quarantine]\n"}), nil)
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "ps-1", Tenant: w.tenant, Device: "m-0000", Kind: alert.PortScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	id := respond.ActionID("ps-1", "approve-scans", 0)
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0000"), "waits for a human")

	var waiting []store.Action
	code, body = r.json(t, "GET", base+"/approvals", viewer, "", &waiting)
	require.Equal(t, http.StatusOK, code, body)
	var found bool
	for _, a := range waiting {
		found = found || a.ID == id
	}
	require.True(t, found, body)

	before := r.head(t, w.tenant)
	for _, tc := range []struct {
		tok, body string
		code      int
		want      string
	}{
		{viewer, mustJSON(api.ApprovalRequest{Action: id, Decision: "approve"}), http.StatusForbidden, "lacks permission"},
		{operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "maybe"}), http.StatusBadRequest, `decision \"maybe\" must be approve or reject`},
		{operator, mustJSON(api.ApprovalRequest{Decision: "approve"}), http.StatusBadRequest, "action must be the id"},
		{operator, mustJSON(api.ApprovalRequest{Action: "nope/x/0", Decision: "approve"}), http.StatusNotFound, "not found"},
		{operator, `{"action":"` + id + `","decision":"approve","extra":1}`, http.StatusBadRequest, "extra"},
		{operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "reject"}), http.StatusBadRequest, "a rejection needs a reason"},
		{operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "reject", Reason: "  "}), http.StatusBadRequest, "a rejection needs a reason"},
		{operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "reject", Reason: strings.Repeat("r", 501)}), http.StatusBadRequest, "reason is 501 bytes; at most 500"},
		{operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "reject", Reason: "a\nb"}), http.StatusBadRequest, "one line"},
	} {
		code, body = r.json(t, "POST", base+"/approvals", tc.tok, tc.body, nil)
		require.Equal(t, tc.code, code, body)
		require.Contains(t, body, tc.want)
	}
	require.Equal(t, before, r.head(t, w.tenant), "refused decisions change nothing")

	// Another tenant's admin cannot decide this tenant's action, through
	// this tenant's route or through its own.
	code, _ = r.json(t, "POST", base+"/approvals", w.foreign, mustJSON(api.ApprovalRequest{Action: id, Decision: "approve"}), nil)
	require.Equal(t, http.StatusNotFound, code)
	foreignTenant := strings.Replace(string(w.tenant), "acme", "globex", 1)
	code, body = r.json(t, "POST", "/api/v1/tenants/"+foreignTenant+"/approvals", w.foreign, mustJSON(api.ApprovalRequest{Action: id, Decision: "approve"}), nil)
	require.Equal(t, http.StatusNotFound, code, body)
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0000"))

	var act store.Action
	code, body = r.json(t, "POST", base+"/approvals", operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "approve"}), &act)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, store.ActionDone, act.State, "an approved action runs")
	require.Contains(t, act.Actor, "operator:")
	require.Equal(t, store.StateQuarantined, r.deviceState(t, w.tenant, "m-0000"))
	code, body = r.json(t, "POST", base+"/approvals", operator, mustJSON(api.ApprovalRequest{Action: id, Decision: "reject", Reason: "too late"}), nil)
	require.Equal(t, http.StatusConflict, code)
	require.Contains(t, body, "action is not awaiting approval")

	// The audit log says who approved.
	var approvedBy string
	require.NoError(t, r.st.View(ctx, func(tx store.Tx) error {
		recs, err := tx.Audit().Range(ctx, w.tenant, 0, 10000)
		for _, rec := range recs {
			if rec.Target == "action:"+id && strings.Contains(string(rec.Details), "approved by") {
				approvedBy = rec.Actor
			}
		}
		return err
	}))
	require.Equal(t, act.Actor, approvedBy)

	// Reject: the action never runs.
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "ps-2", Tenant: w.tenant, Device: "m-0001", Kind: alert.PortScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	rid := respond.ActionID("ps-2", "approve-scans", 0)
	code, body = r.json(t, "POST", base+"/approvals", admin, mustJSON(api.ApprovalRequest{Action: rid, Decision: "reject", Reason: "scanner is our own pentest"}), &act)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, store.ActionRejected, act.State)
	require.Equal(t, "rejected by "+act.Actor+": scanner is our own pentest", act.Reason)
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0001"))

	// The decided action keeps its reason: GET actions/{id} (slashes
	// escaped), and the audit record.
	var got store.Action
	code, body = r.json(t, "GET", base+"/actions/"+url.PathEscape(rid), viewer, "", &got)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, act.Reason, got.Reason)
	require.Equal(t, store.ActionRejected, got.State)
	code, _ = r.json(t, "GET", base+"/actions/"+url.PathEscape(rid), w.foreign, "", nil)
	require.Equal(t, http.StatusNotFound, code, "another tenant does not see it")
	code, _ = r.json(t, "GET", base+"/actions/"+url.PathEscape("nope/x/0"), viewer, "", nil)
	require.Equal(t, http.StatusNotFound, code)
	var rejectAudited bool
	require.NoError(t, r.st.View(ctx, func(tx store.Tx) error {
		recs, err := tx.Audit().Range(ctx, w.tenant, 0, 10000)
		for _, rec := range recs {
			rejectAudited = rejectAudited || (rec.Target == "action:"+rid && rec.Action == "action.rejected" &&
				rec.Actor == act.Actor && strings.Contains(string(rec.Details), "scanner is our own pentest"))
		}
		return err
	}))
	require.True(t, rejectAudited)
}

func TestFalsePositiveResolutionRestores(t *testing.T) {
	r := newRespEnv(t)
	w := r.w
	ctx := context.Background()
	base := "/api/v1/tenants/" + string(w.tenant)
	r.fleet(t, w.tenant, 2, "m2")
	// The default playbook quarantines on a telnet scan and restores on a false positive.
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "tel-1", Tenant: w.tenant, Device: "m-0001", Kind: alert.TelnetScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	require.Equal(t, store.StateQuarantined, r.deviceState(t, w.tenant, "m-0001"))
	code, body := r.json(t, "POST", base+"/alerts/tel-1/resolve", w.tokens[store.RoleOperator], `{"false_positive":true,"note":"lab test"}`, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0001"), "restored")
	var act store.Action
	require.NoError(t, r.st.View(ctx, func(tx store.Tx) (err error) {
		act, err = tx.Actions().Get(ctx, w.tenant, respond.ActionID("tel-1", "quarantine-compromised", 0))
		return err
	}))
	require.Equal(t, store.ActionUndone, act.State)

	var undoBy string
	require.NoError(t, r.st.View(ctx, func(tx store.Tx) error {
		recs, err := tx.Audit().Range(ctx, w.tenant, 0, 10000)
		for _, rec := range recs {
			if rec.Action == "action.undone" && rec.Target == "action:"+act.ID {
				undoBy = rec.Actor
			}
		}
		return err
	}))
	require.Contains(t, undoBy, "operator:", "the undo is audited as the operator who resolved")

	// Acknowledged, then resolved (not a false positive): the device stays
	// quarantined.
	require.NoError(t, r.svc.Handle(ctx, alert.Alert{ID: "tel-2", Tenant: w.tenant, Device: "m-0000", Kind: alert.TelnetScan,
		Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
	code, body = r.json(t, "POST", base+"/alerts/tel-2/ack", w.tokens[store.RoleOperator], "", nil)
	require.Equal(t, http.StatusOK, code, body)
	code, body = r.json(t, "POST", base+"/alerts/tel-2/resolve", w.tokens[store.RoleOperator], `{}`, nil)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, store.StateQuarantined, r.deviceState(t, w.tenant, "m-0000"))
	code, _ = r.json(t, "POST", base+"/alerts/tel-2/ack", w.tokens[store.RoleOperator], "", nil)
	require.Equal(t, http.StatusConflict, code, "a refused move publishes nothing")

	// Every move was published as alert.state_changed, with who and why.
	type move struct{ alert, device, kind, from, to, note string }
	var moves []move
	for _, ev := range r.bus.all() {
		require.Equal(t, event.AlertStateChanged, ev.Kind)
		require.Equal(t, w.tenant, ev.Tenant)
		require.Contains(t, ev.Str("actor"), "operator:")
		moves = append(moves, move{ev.Str("alert_id"), string(ev.Device), ev.Str("alert_kind"), ev.Str("from"), ev.Str("to"), ev.Str("note")})
	}
	require.Equal(t, []move{
		{"tel-1", "m-0001", "net.telnet_scan", "open", "false_positive", "lab test"},
		{"tel-2", "m-0000", "net.telnet_scan", "open", "acknowledged", ""},
		{"tel-2", "m-0000", "net.telnet_scan", "acknowledged", "resolved", ""},
	}, moves)
}

func TestMassRoutes(t *testing.T) {
	r := newRespEnv(t)
	w := r.w
	ctx := context.Background()
	base := "/api/v1/tenants/" + string(w.tenant)
	foreignTenant := event.TenantID(strings.Replace(string(w.tenant), "acme", "globex", 1))
	operator, viewer := w.tokens[store.RoleOperator], w.tokens[store.RoleViewer]
	r.fleet(t, w.tenant, 40, "m2")
	r.fleet(t, foreignTenant, 40, "m2") // the same device ids in another tenant

	var p respond.MassPreview
	code, body := r.json(t, "GET", base+"/mass/preview?sample=3&selector="+url.QueryEscape("model=m2"), viewer, "", &p)
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, 40, p.Count)
	require.Len(t, p.Sample, 3)
	before := r.head(t, w.tenant)
	for _, tc := range []struct{ q, want string }{
		{"selector=" + url.QueryEscape("model=m2,colour=red"), `term 2 \"colour=red\": unknown key \"colour\"`},
		{"selector=" + url.QueryEscape("last_seen>soon"), `age must be a positive duration`},
		{"", `query parameter \"selector\"`},
		{"selector=*&sample=500", `query parameter \"sample\"`},
	} {
		code, body = r.json(t, "GET", base+"/mass/preview?"+tc.q, viewer, "", nil)
		require.Equal(t, http.StatusBadRequest, code, body)
		require.Contains(t, body, tc.want)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"kind":"reboot","selector":"*"}`, `kind \"reboot\" must be quarantine, revoke or kick`},
		{`{"kind":"quarantine"}`, `a selector is required`},
		{`{"kind":"quarantine","selector":"state=sleepy"}`, `unknown state`},
		{`{"kind":"quarantine","selector":"*","rate":-5}`, `rate must be`},
	} {
		code, body = r.json(t, "POST", base+"/mass", operator, tc.body, nil)
		require.Equal(t, http.StatusBadRequest, code, body)
		require.Contains(t, body, tc.want)
	}
	code, _ = r.json(t, "POST", base+"/mass", viewer, `{"kind":"quarantine","selector":"*"}`, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Equal(t, before, r.head(t, w.tenant), "previews and refused requests change nothing")
	require.Equal(t, store.StateActive, r.deviceState(t, w.tenant, "m-0000"))

	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- r.svc.Mass.Serve(sctx) }()
	defer func() { stop(); require.NoError(t, <-served) }()

	var j store.MassJob
	code, body = r.json(t, "POST", base+"/mass", operator, `{"kind":"quarantine","selector":"model=m2,imsi^=","rate":0}`, nil)
	require.Equal(t, http.StatusBadRequest, code, body)
	code, body = r.json(t, "POST", base+"/mass", operator, `{"kind":"quarantine","selector":"model=m2","reason":"outbreak"}`, &j)
	require.Equal(t, http.StatusAccepted, code, body)
	require.Equal(t, 40, j.Total)
	require.Eventually(t, func() bool {
		code, _ := r.json(t, "GET", base+"/mass/"+j.ID, viewer, "", &j)
		return code == http.StatusOK && j.State == respond.JobDone
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 40, j.Changed)
	for i := 0; i < 40; i++ {
		id := event.DeviceID(fmt.Sprintf("m-%04d", i))
		require.Equal(t, store.StateQuarantined, r.deviceState(t, w.tenant, id))
		require.Equal(t, store.StateActive, r.deviceState(t, foreignTenant, id), "the other tenant's device of the same id is untouched")
	}
	var jobs []store.MassJob
	code, body = r.json(t, "GET", base+"/mass", viewer, "", &jobs)
	require.Equal(t, http.StatusOK, code, body)
	require.NotEmpty(t, jobs)
	require.Equal(t, j.ID, jobs[0].ID)

	// The other tenant can neither read nor cancel the job.
	code, _ = r.json(t, "GET", base+"/mass/"+j.ID, w.foreign, "", nil)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = r.json(t, "GET", "/api/v1/tenants/"+string(foreignTenant)+"/mass/"+j.ID, w.foreign, "", nil)
	require.Equal(t, http.StatusNotFound, code)
	code, body = r.json(t, "POST", base+"/mass/"+j.ID+"/cancel", operator, "", nil)
	require.Equal(t, http.StatusConflict, code, body)
	require.Contains(t, body, "not running")
}
