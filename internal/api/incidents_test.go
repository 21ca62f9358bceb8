package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/seal"
	"github.com/garrisonhq/garrison/internal/store"
)

// incidentWorld is what the incident and export routes of one world act on.
type incidentWorld struct {
	incident, webhook, delivery string
	runbook                     alert.Kind // a kind with a tenant runbook
}

func newIncidents(t testing.TB, st store.Store, clk clock.Clock) *incident.Service {
	t.Helper()
	svc, err := incident.New(incident.Options{Store: st, Clock: clk})
	require.NoError(t, err)
	return svc
}

// seedIncidents adds an open incident, a webhook with a dead delivery, a
// tenant runbook and a syslog target to tenant.
func seedIncidents(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, n int, now time.Time) incidentWorld {
	t.Helper()
	w := incidentWorld{incident: fmt.Sprintf("inc-%d", n), webhook: fmt.Sprintf("wh-%d", n), delivery: fmt.Sprintf("dl-%d", n), runbook: alert.PortScan}
	require.NoError(t, tx.Incidents().Create(ctx, store.Incident{Tenant: tenant, ID: w.incident, Title: "Scan", State: store.IncidentOpen,
		Severity: alert.High, Kind: alert.PortScan, OpenedBy: "op", StartedAt: now, DetectedAt: now, OpenedAt: now, UpdatedAt: now}))
	require.NoError(t, tx.Webhooks().Create(ctx, store.Webhook{Tenant: tenant, ID: w.webhook, Name: "soc", URL: "https://soc.example/hook",
		Secret: []byte("0123456789abcdef"), Events: []string{}, Channel: "default", CreatedAt: now}))
	require.NoError(t, tx.Deliveries().Create(ctx, store.Delivery{Tenant: tenant, ID: w.delivery, Webhook: w.webhook, Type: "alert.raised",
		Body: []byte(`{}`), State: store.DeliveryDead, Attempts: 8, NextAt: now, LastError: "HTTP 500", CreatedAt: now, UpdatedAt: now}))
	require.NoError(t, tx.Settings().Put(ctx, tenant, incident.SettingKey(w.runbook), []byte(`{"markdown":"# Ours","updated_by":"op","updated_at":"2026-11-24T12:00:00Z"}`)))
	require.NoError(t, tx.Settings().Put(ctx, tenant, export.SyslogSettingKey, []byte(`{"addr":"siem.example:6514","tls":true,"updated_at":"2026-11-24T12:00:00Z"}`)))
	return w
}

// fill puts the world's ids in an incident or export route's path.
func (w incidentWorld) fill(path string) string {
	switch {
	case strings.Contains(path, "/incidents/{id}"):
		return strings.ReplaceAll(path, "{id}", w.incident)
	case strings.Contains(path, "/webhooks/{id}"):
		return strings.ReplaceAll(path, "{id}", w.webhook)
	case strings.Contains(path, "/deliveries/{id}"):
		return strings.ReplaceAll(path, "{id}", w.delivery)
	case strings.Contains(path, "/runbooks/{kind}"):
		return strings.ReplaceAll(path, "{kind}", string(w.runbook))
	}
	return path
}

// incidentBody is a valid body for an incident or export route.
func incidentBody(pattern, alertID string) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/incidents":
		return `{"title":"Manual incident","severity":"high"}`, true
	case t + "/incidents/{id}/alerts":
		return `{"alert_id":"` + alertID + `"}`, true
	case t + "/incidents/{id}/notes":
		return `{"text":"looked at it"}`, true
	case t + "/incidents/{id}/transition":
		return `{"to":"contained","note":"quarantined"}`, true
	case t + "/runbooks/{kind}":
		return `{"markdown":"# Our procedure\n\n1. Call the SOC."}`, true
	case t + "/webhooks":
		return `{"name":"pager","url":"https://pager.example/hook","events":["alert.raised","incident.state"]}`, true
	case t + "/syslog":
		return `{"addr":"siem.example:514"}`, true
	}
	return "", false
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &v), rec.Body.String())
	return v
}

// TestIncidentLifecycleOverAPI opens, fills, moves and reports an incident
// through the routes an operator uses; bad input is refused with a clear
// error and changes nothing.
func TestIncidentLifecycleOverAPI(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	op := w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant)

	for body, code := range map[string]string{
		`{"title":""}`:                       api.CodeInvalid,
		`{"title":"x","severity":"extreme"}`: api.CodeInvalid,
		`{"title":"x","kind":"Not A Kind"}`:  api.CodeInvalid,
		`{"title":"x","alerts":["al-none"]}`: api.CodeNotFound,
		`{"title":"x","colour":"red"}`:       api.CodeBadRequest,
	} {
		before := e.head(t, w.tenant)
		rec := e.do("POST", base+"/incidents", op, body)
		require.Equal(t, code, decode[api.ErrorBody](t, rec).Error.Code, body)
		require.Equal(t, before, e.head(t, w.tenant), "refused: nothing audited")
	}

	rec := e.do("POST", base+"/incidents", op, `{"title":"Port scan from dev","alerts":["`+w.alertID+`"]}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	inc := decode[store.Incident](t, rec)
	require.Equal(t, alert.High, inc.Severity, "from the alert")
	require.Equal(t, w.deviceID, inc.Device)

	rec = e.do("POST", base+"/incidents/"+inc.ID+"/notes", op, `{"text":"device is a camera in lobby"}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	rec = e.do("POST", base+"/incidents/"+inc.ID+"/transition", op, `{"to":"recovered"}`)
	requireCode(t, rec, http.StatusConflict, api.CodeConflict)
	require.Contains(t, decode[api.ErrorBody](t, rec).Error.Message, "incident is open")
	rec = e.do("POST", base+"/incidents/"+inc.ID+"/transition", op, `{"to":"melted"}`)
	requireCode(t, rec, http.StatusBadRequest, api.CodeInvalid)
	e.clk.Set(t0.Add(15 * time.Minute))
	rec = e.do("POST", base+"/incidents/"+inc.ID+"/transition", op, `{"to":"contained","note":"quarantined by hand"}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, store.IncidentContained, decode[store.Incident](t, rec).State)
	rec = e.do("POST", base+"/incidents/"+w.inc.incident+"/alerts", op, `{"alert_id":"`+w.alertID+`"}`)
	requireCode(t, rec, http.StatusConflict, api.CodeConflict)

	rec = e.do("GET", base+"/incidents/"+inc.ID, w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	d := decode[incident.Detail](t, rec)
	require.Len(t, d.Timeline, 4, "opened, alert, note, state")
	require.Equal(t, 900.0, *d.Metrics.TimeToContain)

	rec = e.do("GET", base+"/incidents?state=contained", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Len(t, decode[[]store.Incident](t, rec), 1)
	requireCode(t, e.do("GET", base+"/incidents?state=bogus", op, ""), http.StatusBadRequest, api.CodeBadRequest)
	requireCode(t, e.do("GET", base+"/incidents?open=maybe", op, ""), http.StatusBadRequest, api.CodeBadRequest)

	rec = e.do("GET", base+"/incidents/"+inc.ID+"/report", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	rep := decode[incident.Report](t, rec)
	require.Len(t, rep.Alerts, 1)
	require.Equal(t, "tenant", rep.Runbook.Source, "the world's own port-scan runbook")
	require.Equal(t, "# Ours", rep.Runbook.Markdown)
	rec = e.do("GET", base+"/incidents/"+inc.ID+"/report.md", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "text/markdown; charset=utf-8", rec.Header().Get("Content-Type"))
	require.Contains(t, rec.Body.String(), "# Post-incident report: Port scan from dev")
	require.Contains(t, rec.Body.String(), "- Time to contain: 15m0s")

	// Another tenant's admin sees none of it.
	requireCode(t, e.do("GET", base+"/incidents/"+inc.ID, w.foreign, ""), http.StatusNotFound, api.CodeNotFound)
}

func TestRunbooksOverAPI(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	base := "/api/v1/tenants/" + string(w.tenant)
	admin := w.tokens[store.RoleAdmin]
	rec := e.do("GET", base+"/runbooks", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	list := decode[[]incident.Runbook](t, rec)
	require.Len(t, list, len(incident.ShippedKinds()))
	rec = e.do("GET", base+"/runbooks/sim.imei_mismatch", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "shipped", decode[incident.Runbook](t, rec).Source)
	requireCode(t, e.do("GET", base+"/runbooks/NOPE", admin, ""), http.StatusBadRequest, api.CodeInvalid)
	requireCode(t, e.do("GET", base+"/runbooks/custom.none", admin, ""), http.StatusNotFound, api.CodeNotFound)
	requireCode(t, e.do("PUT", base+"/runbooks/sim.imei_mismatch", admin, `{"markdown":"  "}`), http.StatusBadRequest, api.CodeInvalid)
	rec = e.do("PUT", base+"/runbooks/sim.imei_mismatch", admin, `{"markdown":"# Ours\n\nCall Bob."}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	rec = e.do("GET", base+"/runbooks/sim.imei_mismatch", w.tokens[store.RoleViewer], "")
	rb := decode[incident.Runbook](t, rec)
	require.Equal(t, "tenant", rb.Source)
	require.Equal(t, "# Ours\n\nCall Bob.", rb.Markdown)
	require.Equal(t, http.StatusNoContent, e.do("DELETE", base+"/runbooks/sim.imei_mismatch", admin, "").Code)
	requireCode(t, e.do("DELETE", base+"/runbooks/sim.imei_mismatch", admin, ""), http.StatusNotFound, api.CodeNotFound)
}

func TestWebhooksOverAPI(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	base := "/api/v1/tenants/" + string(w.tenant)
	admin := w.tokens[store.RoleAdmin]
	for body, code := range map[string]string{
		`{"name":"x","url":"ftp://x/"}`:                         api.CodeInvalid,
		`{"name":"x","url":"https://u:p@x/"}`:                   api.CodeInvalid,
		`{"name":"x","url":"https://x/","events":["alert.*"]}`:  api.CodeInvalid,
		`{"name":"x","url":"https://x/","secret":"short"}`:      api.CodeInvalid,
		`{"name":"","url":"https://x/"}`:                        api.CodeInvalid,
		`{"name":"soc","url":"https://x/"}`:                     api.CodeConflict,
		`{"name":"x","url":"https://x/","channel":"has space"}`: api.CodeInvalid,
	} {
		before := e.head(t, w.tenant)
		rec := e.do("POST", base+"/webhooks", admin, body)
		require.Equal(t, code, decode[api.ErrorBody](t, rec).Error.Code, body)
		require.Equal(t, before, e.head(t, w.tenant), "refused: nothing changed")
	}
	rec := e.do("POST", base+"/webhooks", admin, `{"name":"siem","url":"https://siem.example/in?token=abc"}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	created := decode[api.WebhookCreated](t, rec)
	require.True(t, strings.HasPrefix(created.Secret, "whsec_"), "a generated secret is shown once")
	require.Equal(t, "default", created.Webhook.Channel)
	// Stored sealed: the row holds neither the shown secret nor one given.
	rec = e.do("POST", base+"/webhooks", admin, `{"name":"pager","url":"https://pager.example/in","secret":"given-secret-0123456789"}`)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	require.NotContains(t, rec.Body.String(), "given-secret-0123456789", "a given secret is not echoed")
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		for _, id := range []string{created.Webhook.ID, decode[api.WebhookCreated](t, rec).Webhook.ID} {
			h, err := tx.Webhooks().Get(context.Background(), w.tenant, id)
			require.NoError(t, err)
			require.True(t, seal.IsSealed(h.Secret), "sealed at rest")
			require.NotContains(t, string(h.Secret), created.Secret)
			require.NotContains(t, string(h.Secret), "given-secret-0123456789")
		}
		return nil
	}))
	rec = e.do("GET", base+"/webhooks", w.tokens[store.RoleAuditor], "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.NotContains(t, rec.Body.String(), created.Secret)
	require.NotContains(t, rec.Body.String(), "secret")
	rec = e.do("GET", base+"/audit", admin, "")
	require.NotContains(t, rec.Body.String(), "token=abc", "the audit keeps the host, not the query")

	rec = e.do("GET", base+"/deliveries?state=dead", w.tokens[store.RoleAuditor], "")
	require.Equal(t, http.StatusOK, rec.Code)
	dead := decode[[]store.Delivery](t, rec)
	require.Len(t, dead, 1)
	rec = e.do("POST", base+"/deliveries/"+dead[0].ID+"/redrive", admin, "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, store.DeliveryPending, decode[store.Delivery](t, rec).State)
	requireCode(t, e.do("POST", base+"/deliveries/"+dead[0].ID+"/redrive", admin, ""), http.StatusConflict, api.CodeConflict)
	requireCode(t, e.do("GET", base+"/deliveries?state=lost", admin, ""), http.StatusBadRequest, api.CodeBadRequest)
	requireCode(t, e.do("POST", base+"/deliveries/"+dead[0].ID+"/redrive", w.foreign, ""), http.StatusNotFound, api.CodeNotFound)
}

// TestSyslogTargetOverAPI: a tenant's own syslog target is set, read and
// removed through the API, audited; bad targets are refused with a clear
// error and change nothing; another tenant sees none of it.
func TestSyslogTargetOverAPI(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	base := "/api/v1/tenants/" + string(w.tenant)
	admin, auditor := w.tokens[store.RoleAdmin], w.tokens[store.RoleAuditor]
	for body, want := range map[string]string{
		`{"addr":"no-port"}`:                                   "must be host:port",
		`{"addr":"siem.example:0"}`:                            "port must be 1-65535",
		`{"addr":"siem.example:6514","ca_pem":"x"}`:            "ca_pem is only used with tls",
		`{"addr":"siem.example:6514","tls":true,"ca_pem":"x"}`: "no PEM certificate",
	} {
		before := e.head(t, w.tenant)
		rec := e.do("PUT", base+"/syslog", admin, body)
		require.Equal(t, http.StatusBadRequest, rec.Code, body)
		require.Contains(t, rec.Body.String(), want)
		require.Equal(t, before, e.head(t, w.tenant), "refused: nothing changed")
	}
	rec := e.do("PUT", base+"/syslog", admin, `{"addr":"siem.acme.example:6514","tls":true}`)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	rec = e.do("GET", base+"/syslog", auditor, "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	got := decode[export.SyslogTarget](t, rec)
	require.Equal(t, "siem.acme.example:6514", got.Addr)
	require.True(t, got.TLS)
	require.Contains(t, got.Actor, "operator:")
	rec = e.do("GET", "/api/v1/tenants/"+string(w.tenant)+"/syslog", w.foreign, "")
	require.Equal(t, http.StatusNotFound, rec.Code, "another tenant's admin sees nothing")
	rec = e.do("DELETE", base+"/syslog", admin, "")
	require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	rec = e.do("GET", base+"/syslog", auditor, "")
	require.Equal(t, http.StatusNotFound, rec.Code)
	rec = e.do("DELETE", base+"/syslog", admin, "")
	require.Equal(t, http.StatusNotFound, rec.Code)
	var actions []string
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		recs, err := tx.Audit().Range(context.Background(), w.tenant, 0, 10000)
		for _, r := range recs {
			if strings.HasPrefix(r.Action, "syslog.") {
				actions = append(actions, r.Action)
			}
		}
		return err
	}))
	require.Equal(t, []string{"syslog.set", "syslog.delete"}, actions)
}
