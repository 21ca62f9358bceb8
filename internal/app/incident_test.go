package app_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/seal"
	"github.com/garrisonhq/garrison/internal/store"
)

// hookReceiver collects the CloudEvent types a webhook receives, checking
// each signature.
type hookReceiver struct {
	mu    sync.Mutex
	types []string
	bad   int
	// incidents maps action ids to the incident_id of their action.taken.
	incidents map[string]string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if export.Verify([]byte("0123456789abcdef-secret"), r.Header.Get(export.SignatureHeader), body, time.Now(), time.Minute) != nil {
		h.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ce export.CloudEvent
	if json.Unmarshal(body, &ce) != nil {
		h.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.types = append(h.types, ce.Type)
	var ad export.ActionData
	if ce.Type == "io.garrison.action.taken" && json.Unmarshal(ce.Data, &ad) == nil && ad.IncidentID != "" {
		if h.incidents == nil {
			h.incidents = map[string]string{}
		}
		h.incidents[ad.Action.ID] = ad.IncidentID
	}
}

func (h *hookReceiver) has(types ...string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, want := range types {
		found := false
		for _, got := range h.types {
			found = found || got == want
		}
		if !found {
			return false
		}
	}
	return true
}

// syslogCollector accepts one TCP connection and reads octet-counted frames.
type syslogCollector struct {
	ln     net.Listener
	mu     sync.Mutex
	frames []string
}

func newSyslogCollector(t *testing.T) *syslogCollector {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	c := &syslogCollector{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					n, err := br.ReadString(' ')
					if err != nil {
						return
					}
					size, err := strconv.Atoi(strings.TrimSpace(n))
					if err != nil || size <= 0 || size > 1<<20 {
						return
					}
					b := make([]byte, size)
					if _, err := io.ReadFull(br, b); err != nil {
						return
					}
					c.mu.Lock()
					c.frames = append(c.frames, string(b))
					c.mu.Unlock()
				}
			}()
		}
	}()
	return c
}

func (c *syslogCollector) find(substr string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if strings.Contains(f, substr) {
			return f
		}
	}
	return ""
}

func doJSON(t *testing.T, c *http.Client, a *app.App, method, path, token, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+a.APIAddr().String()+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil && resp.StatusCode < 300 {
		require.NoError(t, json.Unmarshal(b, out), string(b))
	}
	return resp.StatusCode
}

// TestServeExportsAndIncidents: in a served platform, an alert raised on
// the bus and the default playbook's quarantine and notify reach a
// tenant's webhook as signed CloudEvents and the syslog collector as an
// OCSF Detection Finding; an incident opened through the API on that alert
// gathers the quarantine, is contained, and its opening is exported too.
func TestServeExportsAndIncidents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	hooks := &hookReceiver{}
	srv := httptest.NewServer(hooks)
	defer srv.Close()
	collector := newSyslogCollector(t)

	cfg := testConfig(t)
	cfg.Exports.WebhookAllowPrivate = true // the receiver is on loopback
	cfg.Exports.WebhookBackoff = 50 * time.Millisecond
	cfg.Exports.SyslogAddr = collector.ln.Addr().String()
	var out bytes.Buffer
	logs := &lockedBuffer{}
	a, err := app.New(cfg, nil, app.Options{Out: &out, KeyPassphrase: testPass, Clock: clock.Real{},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())
	token := tokenRE.FindString(out.String())
	require.NotEmpty(t, token)
	c := client(t, a)
	defer c.CloseIdleConnections()

	const tenant, device = event.TenantID("acme"), event.DeviceID("meter-0017")
	const imsi, boundIMEI, foreignIMEI = "214017536736625", "356039801863042", "357517049431432"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: device, Model: "acme-meter-2", State: store.StateActive,
			IMSI: imsi, IMEI: boundIMEI, CreatedAt: now, UpdatedAt: now})
	}))
	var created struct {
		Webhook store.Webhook `json:"webhook"`
	}
	require.Equal(t, http.StatusCreated, doJSON(t, c, a, "POST", "/api/v1/tenants/acme/webhooks", token,
		`{"name":"soc","url":"`+srv.URL+`/hook","secret":"0123456789abcdef-secret"}`, &created))

	// The tenant's own syslog collector, set through the API.
	tenantCollector := newSyslogCollector(t)
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "PUT", "/api/v1/tenants/acme/syslog", token,
		`{"addr":"`+tenantCollector.ln.Addr().String()+`"}`, nil))

	session := func(imei string, at time.Time) *event.Event {
		return &event.Event{Tenant: tenant, Device: device, Kind: event.NetSession, Time: at, Source: "radius",
			Attrs: map[string]any{"status": "start", "session_id": "s-" + imei, "imsi": imsi, "imei": imei, "ip": "10.64.0.17"}}
	}
	require.NoError(t, a.Bus().Publish(ctx, session(boundIMEI, now)))
	require.NoError(t, a.Bus().Publish(ctx, session(foreignIMEI, now.Add(time.Minute))))

	require.Eventually(t, func() bool {
		return hooks.has("io.garrison.alert.raised", "io.garrison.notification", "io.garrison.action.taken")
	}, 30*time.Second, 50*time.Millisecond, "webhook got the alert, the notify step and the actions")
	var frame string
	require.Eventually(t, func() bool { frame = collector.find(`"sim.imei_mismatch"`); return frame != "" }, 30*time.Second, 50*time.Millisecond)
	require.True(t, strings.HasPrefix(frame, "<83>1 "), "authpriv.err for a high alert: %s", frame)
	var fnd export.DetectionFinding
	require.NoError(t, json.Unmarshal([]byte(frame[strings.Index(frame, "{"):]), &fnd))
	require.Equal(t, export.OCSFClassDetectionFinding, fnd.ClassUID)
	require.Equal(t, "meter-0017", fnd.Device.UID)
	require.Equal(t, "acme", fnd.Metadata.TenantUID)
	require.Eventually(t, func() bool { return tenantCollector.find(`"sim.imei_mismatch"`) != "" }, 30*time.Second, 50*time.Millisecond,
		"the tenant's own collector gets the alert too")

	// The quarantine is done: an incident opened on the alert gathers it
	// and is contained at once.
	var alerts []struct{ ID string }
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "GET", "/api/v1/tenants/acme/alerts?kind=sim.imei_mismatch", token, "", &alerts))
	require.Len(t, alerts, 1)
	require.Eventually(t, func() bool {
		var acts []store.Action
		doJSON(t, c, a, "GET", "/api/v1/tenants/acme/actions?state=done", token, "", &acts)
		for _, act := range acts {
			if act.Kind == "quarantine" {
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond)
	var inc store.Incident
	require.Equal(t, http.StatusCreated, doJSON(t, c, a, "POST", "/api/v1/tenants/acme/incidents", token,
		`{"title":"SIM swap on meter-0017","alerts":["`+alerts[0].ID+`"]}`, &inc))
	var d incident.Detail
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "GET", "/api/v1/tenants/acme/incidents/"+inc.ID, token, "", &d))
	require.Equal(t, store.IncidentContained, d.Incident.State)
	require.NotNil(t, d.Metrics.TimeToContain)
	require.Eventually(t, func() bool { return hooks.has("io.garrison.incident.opened", "io.garrison.incident.state") },
		30*time.Second, 50*time.Millisecond)
	// Resolved as a false positive through the API: alert.state_changed
	// goes over the bus to the response engine, which releases the device
	// (the default playbook restores), audited as the operator; the
	// webhook gets the move.
	require.Equal(t, store.StateQuarantined, deviceState(t, a, tenant, device))
	var resolved alert.Alert
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "POST", "/api/v1/tenants/acme/alerts/"+alerts[0].ID+"/resolve", token,
		`{"false_positive":true,"note":"the SIM was moved by the field team"}`, &resolved))
	require.Equal(t, alert.FalsePositive, resolved.State)
	require.Eventually(t, func() bool { return deviceState(t, a, tenant, device) == store.StateActive }, 30*time.Second, 50*time.Millisecond,
		"the quarantined device is restored")
	// The engine releases the device, then records the undone action in a
	// transaction of its own: the record is waited for, not read once.
	var undoBy string
	require.Eventually(t, func() bool {
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			recs, err := tx.Audit().Range(ctx, tenant, 0, 10000)
			for _, r := range recs {
				if r.Action == "action.undone" && strings.Contains(r.Target, alerts[0].ID+"/quarantine-compromised/") {
					undoBy = r.Actor
				}
			}
			return err
		}))
		return undoBy != ""
	}, 30*time.Second, 50*time.Millisecond, "the undone quarantine is audited")
	require.True(t, strings.HasPrefix(undoBy, "operator:"), "undone as the operator, audited: %q", undoBy)
	require.Eventually(t, func() bool { return hooks.has("io.garrison.alert.state_changed") }, 30*time.Second, 50*time.Millisecond)

	hooks.mu.Lock()
	require.Zero(t, hooks.bad, "every delivery was signed")
	hooks.mu.Unlock()

	// The secret is sealed at rest: the raw row does not hold it, and no
	// log line does either.
	raw, err := sql.Open("sqlite", "file:"+filepath.Join(cfg.DataDir, "garrison.db")+"?mode=ro")
	require.NoError(t, err)
	defer raw.Close()
	var row []byte
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT secret FROM webhooks WHERE tenant = 'acme' AND id = ?`, created.Webhook.ID).Scan(&row))
	require.True(t, seal.IsSealed(row))
	require.NotContains(t, string(row), "0123456789abcdef-secret")
	require.NotContains(t, logs.String(), "0123456789abcdef-secret")
}

// lockedBuffer is a bytes.Buffer safe for the logger's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestServeSealsClearWebhookSecrets: a webhook secret stored in clear (by
// an earlier version) is sealed in place when serve starts, with an audit
// record; the raw row no longer holds it.
func TestServeSealsClearWebhookSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t)
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass, Clock: clock.Real{}, NoDetection: true})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	const clearSecret = "left-in-clear-by-v1-0123"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Webhooks().Create(ctx, store.Webhook{Tenant: "acme", ID: "wh-old", Name: "old", URL: "https://soc.example/hook",
			Secret: []byte(clearSecret), Events: []string{}, Channel: "default", CreatedAt: now})
	}))
	require.NoError(t, a.Stop(ctx))

	b, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass, Clock: clock.Real{}, NoDetection: true})
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx))
	defer b.Stop(context.Background())
	raw, err := sql.Open("sqlite", "file:"+filepath.Join(cfg.DataDir, "garrison.db")+"?mode=ro")
	require.NoError(t, err)
	defer raw.Close()
	var row []byte
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT secret FROM webhooks WHERE tenant = 'acme' AND id = 'wh-old'`).Scan(&row))
	require.True(t, seal.IsSealed(row), "sealed at start")
	require.NotContains(t, string(row), clearSecret)
	var audited bool
	require.NoError(t, b.Store().View(ctx, func(tx store.Tx) error {
		recs, err := tx.Audit().Range(ctx, "acme", 0, 100)
		for _, r := range recs {
			audited = audited || (r.Action == "webhook.secret_sealed" && r.Target == "webhook:wh-old")
		}
		return err
	}))
	require.True(t, audited)
}

// deviceState reads a device's registry state from the served store.
func deviceState(t *testing.T, a *app.App, tenant event.TenantID, id event.DeviceID) store.DeviceState {
	t.Helper()
	var d store.Device
	require.NoError(t, a.Store().View(context.Background(), func(tx store.Tx) (err error) {
		d, err = tx.Devices().Get(context.Background(), tenant, id)
		return err
	}))
	return d.State
}

// TestServeActionTakenNamesIncident: in a served platform, a tenant
// playbook's open_incident step opens an incident on a SIM swap, and the
// webhook's action.taken of that step carries the incident's id.
func TestServeActionTakenNamesIncident(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hooks := &hookReceiver{}
	srv := httptest.NewServer(hooks)
	defer srv.Close()
	cfg := testConfig(t)
	cfg.Exports.WebhookAllowPrivate = true
	cfg.Exports.WebhookBackoff = 50 * time.Millisecond
	var out bytes.Buffer
	a, err := app.New(cfg, nil, app.Options{Out: &out, KeyPassphrase: testPass, Clock: clock.Real{}})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())
	token := tokenRE.FindString(out.String())
	c := client(t, a)
	defer c.CloseIdleConnections()

	const tenant, device = event.TenantID("acme"), event.DeviceID("meter-0018")
	const imsi, boundIMEI, foreignIMEI = "214017536736626", "356039801863042", "357517049431432"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: device, Model: "acme-meter-2", State: store.StateActive,
			IMSI: imsi, IMEI: boundIMEI, CreatedAt: now, UpdatedAt: now})
	}))
	require.Equal(t, http.StatusCreated, doJSON(t, c, a, "POST", "/api/v1/tenants/acme/webhooks", token,
		`{"name":"soc","url":"`+srv.URL+`/hook","secret":"0123456789abcdef-secret","events":["action.taken"]}`, nil))
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "PUT", "/api/v1/tenants/acme/playbooks/track-sim-swaps", token,
		`{"yaml":"trigger: {kinds: [sim.imei_mismatch]}\nsteps:\n  - open_incident: {title: SIM swap}\n"}`, nil))
	for i, imei := range []string{boundIMEI, foreignIMEI} {
		require.NoError(t, a.Bus().Publish(ctx, &event.Event{Tenant: tenant, Device: device, Kind: event.NetSession,
			Time: now.Add(time.Duration(i) * time.Minute), Source: "radius",
			Attrs: map[string]any{"status": "start", "session_id": "s-" + imei, "imsi": imsi, "imei": imei, "ip": "10.64.0.18"}}))
	}
	var opened store.Action
	require.Eventually(t, func() bool {
		var acts []store.Action
		doJSON(t, c, a, "GET", "/api/v1/tenants/acme/actions?state=done", token, "", &acts)
		for _, act := range acts {
			if act.Kind == "open_incident" {
				opened = act
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond)
	var incID string
	require.Eventually(t, func() bool {
		hooks.mu.Lock()
		defer hooks.mu.Unlock()
		incID = hooks.incidents[opened.ID]
		return incID != ""
	}, 30*time.Second, 50*time.Millisecond, "the open_incident step's action.taken names the incident")
	require.Equal(t, "incident "+incID, opened.Reason)
	var d incident.Detail
	require.Equal(t, http.StatusOK, doJSON(t, c, a, "GET", "/api/v1/tenants/acme/incidents/"+incID, token, "", &d))
	hooks.mu.Lock()
	require.Zero(t, hooks.bad)
	hooks.mu.Unlock()
}
