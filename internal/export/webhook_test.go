package export_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

const tenant event.TenantID = "acme"

func openStore(t *testing.T, path string) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), path)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

func newStore(t *testing.T) (store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "g.db")
	st := openStore(t, path)
	require.NoError(t, st.Update(context.Background(), func(tx store.Tx) error {
		for _, tn := range []event.TenantID{tenant, "globex"} {
			if err := tx.Tenants().Create(context.Background(), store.Tenant{ID: tn, Name: string(tn), CreatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	}))
	return st, path
}

func addHook(t *testing.T, st store.Store, tn event.TenantID, id, url, secret string, events []string, channel string) {
	t.Helper()
	require.NoError(t, st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Webhooks().Create(context.Background(), store.Webhook{Tenant: tn, ID: id, Name: id, URL: url, Secret: []byte(secret),
			Events: events, Channel: channel, CreatedAt: t0})
	}))
}

// receiver is a real HTTP server that checks each request's signature
// against the clock and fails the first `fail` requests.
type receiver struct {
	t      *testing.T
	secret []byte
	clk    clock.Clock
	mu     sync.Mutex
	fail   int
	status int // answer while failing (default 500)
	got    []export.CloudEvent
	bad    int // requests with a bad signature
	calls  int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.calls++
	if err := export.Verify(rc.secret, r.Header.Get(export.SignatureHeader), body, rc.clk.Now(), 5*time.Minute); err != nil {
		rc.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.Header.Get("Content-Type") != export.ContentType {
		rc.bad++
		w.WriteHeader(http.StatusUnsupportedMediaType)
		return
	}
	if rc.fail > 0 {
		rc.fail--
		st := rc.status
		if st == 0 {
			st = http.StatusInternalServerError
		}
		w.WriteHeader(st)
		return
	}
	var ce export.CloudEvent
	if err := json.Unmarshal(body, &ce); err != nil {
		rc.bad++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	rc.got = append(rc.got, ce)
	w.WriteHeader(http.StatusAccepted)
}

func (rc *receiver) snapshot() ([]export.CloudEvent, int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]export.CloudEvent(nil), rc.got...), rc.bad, rc.calls
}

func newWebhooks(t *testing.T, st store.Store, clk clock.Clock, srv *httptest.Server, attempts int) *export.Webhooks {
	t.Helper()
	w, err := export.NewWebhooks(export.WebhookOptions{Store: st, Clock: clk, Client: srv.Client(), MaxAttempts: attempts,
		Backoff: time.Second, MaxBackoff: 4 * time.Second, Timeout: 5 * time.Second})
	require.NoError(t, err)
	return w
}

func testAlert(id string) alert.Alert {
	return alert.Alert{ID: id, Tenant: tenant, Device: "meter-0017", Kind: alert.SIMIMEIMismatch, Severity: alert.High, Detector: "binding",
		FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: "SIM in a foreign device"}}
}

func delivery(t *testing.T, st store.Store, tn event.TenantID, id string) store.Delivery {
	t.Helper()
	var d store.Delivery
	require.NoError(t, st.View(context.Background(), func(tx store.Tx) (err error) {
		d, err = tx.Deliveries().Get(context.Background(), tn, id)
		return err
	}))
	return d
}

func deliveries(t *testing.T, st store.Store, tn event.TenantID, state store.DeliveryState) []store.Delivery {
	t.Helper()
	var ds []store.Delivery
	require.NoError(t, st.View(context.Background(), func(tx store.Tx) (err error) {
		ds, err = tx.Deliveries().List(context.Background(), tn, state, 0)
		return err
	}))
	return ds
}

// TestWebhookRetriesThenDelivers: a real server verifies the HMAC and
// timestamp and fails three times; the delivery backs off exponentially and
// then arrives once, as a CloudEvent carrying the alert.
func TestWebhookRetriesThenDelivers(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	clk := clock.NewManual(t0)
	rc := &receiver{t: t, secret: []byte("k3y"), clk: clk, fail: 3}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	addHook(t, st, tenant, "wh-soc", srv.URL+"/hook", "k3y", []string{export.TypeAlertRaised}, "")
	addHook(t, st, tenant, "wh-actions", srv.URL+"/other", "other", []string{export.TypeActionTaken}, "")
	addHook(t, st, "globex", "wh-g", srv.URL+"/g", "k3y", nil, "")
	w := newWebhooks(t, st, clk, srv, 8)

	a := testAlert("al-1")
	require.NoError(t, w.OnAlert(ctx, a, "al-1-1"))
	require.NoError(t, w.OnAlert(ctx, a, "al-1-1"), "a redelivered bus event")
	pending := deliveries(t, st, tenant, store.DeliveryPending)
	require.Len(t, pending, 1, "one webhook wants alerts; the duplicate is not queued; the other tenant's hook gets nothing")
	require.Empty(t, deliveries(t, st, "globex", ""))
	id := pending[0].ID

	var waits []time.Duration
	for i := 0; i < 3; i++ {
		n, err := w.DeliverDue(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		d := delivery(t, st, tenant, id)
		require.Equal(t, store.DeliveryPending, d.State)
		require.Equal(t, i+1, d.Attempts)
		require.Equal(t, "HTTP 500", d.LastError)
		waits = append(waits, d.NextAt.Sub(clk.Now()))
		// Not due before its back-off has passed.
		n, err = w.DeliverDue(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		clk.Set(d.NextAt)
	}
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, waits, "exponential back-off")
	n, err := w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	d := delivery(t, st, tenant, id)
	require.Equal(t, store.DeliveryDelivered, d.State)
	require.Equal(t, 4, d.Attempts)

	got, bad, calls := rc.snapshot()
	require.Zero(t, bad, "every request was signed correctly")
	require.Equal(t, 4, calls)
	require.Len(t, got, 1)
	ce := got[0]
	require.Equal(t, "1.0", ce.SpecVersion)
	require.Equal(t, "io.garrison.alert.raised", ce.Type)
	require.Equal(t, "al-1-1", ce.ID)
	require.Equal(t, "acme", ce.Tenant)
	require.Equal(t, "device/meter-0017", ce.Subject)
	var data export.AlertData
	require.NoError(t, json.Unmarshal(ce.Data, &data))
	require.Equal(t, a.ID, data.Alert.ID)
	require.Equal(t, alert.SIMIMEIMismatch, data.Alert.Kind)

	// Nothing left to send.
	n, err = w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestWebhookDeadLetterAndRedrive: a delivery that keeps failing goes to
// the dead-letter list after MaxAttempts (audited); a redrive sends it again.
func TestWebhookDeadLetterAndRedrive(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	clk := clock.NewManual(t0)
	rc := &receiver{t: t, secret: []byte("k3y"), clk: clk, fail: 1000, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	addHook(t, st, tenant, "wh", srv.URL, "k3y", nil, "")
	w := newWebhooks(t, st, clk, srv, 3)
	require.NoError(t, w.OnAlert(ctx, testAlert("al-2"), "ev-2"))
	for i := 0; i < 3; i++ {
		n, err := w.DeliverDue(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		clk.Set(clk.Now().Add(time.Hour))
	}
	dead := deliveries(t, st, tenant, store.DeliveryDead)
	require.Len(t, dead, 1)
	require.Equal(t, 3, dead[0].Attempts)
	require.Equal(t, "HTTP 503", dead[0].LastError)
	n, err := w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "a dead delivery is not retried")
	rec := lastAudit(t, st)
	require.Equal(t, "delivery.dead", rec.Action)

	_, err = w.Redrive(ctx, tenant, "nope", "op-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = w.Redrive(ctx, "globex", dead[0].ID, "op-1")
	require.ErrorIs(t, err, store.ErrNotFound, "another tenant's delivery")

	rc.mu.Lock()
	rc.fail = 0
	rc.mu.Unlock()
	d, err := w.Redrive(ctx, tenant, dead[0].ID, "op-1")
	require.NoError(t, err)
	require.Equal(t, store.DeliveryPending, d.State)
	require.Zero(t, d.Attempts)
	require.Equal(t, "delivery.redrive", lastAudit(t, st).Action)
	_, err = w.Redrive(ctx, tenant, dead[0].ID, "op-1")
	require.ErrorIs(t, err, store.ErrConflict, "only a dead delivery can be redriven")
	n, err = w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, store.DeliveryDelivered, delivery(t, st, tenant, dead[0].ID).State)
	got, bad, _ := rc.snapshot()
	require.Len(t, got, 1)
	require.Zero(t, bad)
}

func lastAudit(t *testing.T, st store.Store) store.AuditRecord {
	t.Helper()
	var r store.AuditRecord
	require.NoError(t, st.View(context.Background(), func(tx store.Tx) (err error) {
		r, err = tx.Audit().Head(context.Background(), tenant)
		return err
	}))
	rep, err := audit.Verify(context.Background(), st, tenant)
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
	return r
}

// TestWebhookSurvivesRestart: a queued delivery is in the store, so a new
// process (a new store handle on the same file) sends it.
func TestWebhookSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	st, path := newStore(t)
	clk := clock.NewManual(t0)
	rc := &receiver{t: t, secret: []byte("k3y"), clk: clk}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	addHook(t, st, tenant, "wh", srv.URL, "k3y", nil, "")
	w := newWebhooks(t, st, clk, srv, 3)
	require.NoError(t, w.OnAction(ctx, store.Action{Tenant: tenant, ID: "ac-1", Device: "meter-0017", Kind: "open_incident",
		State: store.ActionDone, UpdatedAt: t0}, "inc-7", "ev-ac-1"))
	require.NoError(t, st.Close())

	st2 := openStore(t, path)
	w2 := newWebhooks(t, st2, clk, srv, 3)
	n, err := w2.DeliverDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, _, _ := rc.snapshot()
	require.Len(t, got, 1)
	require.Equal(t, "io.garrison.action.taken", got[0].Type)
	var data export.ActionData
	require.NoError(t, json.Unmarshal(got[0].Data, &data))
	require.Equal(t, "inc-7", data.IncidentID, "the incident travels with the action")
	require.Equal(t, "ac-1", data.Action.ID)
}

// TestWebhookRunLoop drives the real worker loop with the wall clock.
func TestWebhookRunLoop(t *testing.T) {
	st, _ := newStore(t)
	clk := clock.Real{}
	rc := &receiver{t: t, secret: []byte("k3y"), clk: clk, fail: 1}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	addHook(t, st, tenant, "wh", srv.URL, "k3y", nil, "")
	w, err := export.NewWebhooks(export.WebhookOptions{Store: st, Clock: clk, Client: srv.Client(), Backoff: 10 * time.Millisecond, Poll: 10 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	require.NoError(t, w.OnAlert(ctx, testAlert("al-3"), "ev-3"))
	require.Eventually(t, func() bool { got, _, _ := rc.snapshot(); return len(got) == 1 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

// TestNotifyAndIncidentChanges: the playbook's notify step reaches the
// webhooks of its channel, and incident changes are queued in their own
// transaction.
func TestNotifyAndIncidentChanges(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	clk := clock.NewManual(t0)
	rc := &receiver{t: t, secret: []byte("k3y"), clk: clk}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	addHook(t, st, tenant, "wh-default", srv.URL+"/d", "k3y", nil, "")
	addHook(t, st, tenant, "wh-oncall", srv.URL+"/o", "k3y", []string{export.TypeNotification}, "oncall")
	w := newWebhooks(t, st, clk, srv, 3)
	a := testAlert("al-4")
	require.NoError(t, w.Notify(ctx, respond.Notification{Tenant: tenant, Device: a.Device, Alert: a, Playbook: "pb", Channel: "oncall", ActionID: "ac-9"}))
	require.NoError(t, w.Notify(ctx, respond.Notification{Tenant: tenant, Device: a.Device, Alert: a, Playbook: "pb", ActionID: "ac-10"}))
	ds := deliveries(t, st, tenant, "")
	require.Len(t, ds, 2)
	hooks := map[string]bool{}
	for _, d := range ds {
		hooks[d.Webhook] = true
		require.Equal(t, export.TypeNotification, d.Type)
	}
	require.Equal(t, map[string]bool{"wh-default": true, "wh-oncall": true}, hooks, "each notify reached its channel only")

	svc, err := incident.New(incident.Options{Store: st, Clock: clk, Outbox: w})
	require.NoError(t, err)
	inc, err := svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "Manual"})
	require.NoError(t, err)
	_, err = svc.Transition(ctx, tenant, inc.ID, store.IncidentContained, "op-1", "")
	require.NoError(t, err)
	n, err := w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 4, n, "two notifications, incident opened and its state change (to the default hook)")
	got, bad, _ := rc.snapshot()
	require.Zero(t, bad)
	var types []string
	for _, ce := range got {
		types = append(types, ce.Type)
	}
	require.ElementsMatch(t, []string{"io.garrison.notification", "io.garrison.notification", "io.garrison.incident.opened", "io.garrison.incident.state"}, types)
}

func TestVerifyRefusesTamperingAndReplay(t *testing.T) {
	body := []byte(`{"specversion":"1.0"}`)
	h := export.Sign([]byte("k"), body, t0)
	require.NoError(t, export.Verify([]byte("k"), h, body, t0.Add(time.Minute), 5*time.Minute))
	require.ErrorIs(t, export.Verify([]byte("k"), h, []byte(`{"specversion":"1.1"}`), t0, 5*time.Minute), export.ErrSignature)
	require.ErrorIs(t, export.Verify([]byte("other"), h, body, t0, 5*time.Minute), export.ErrSignature)
	require.ErrorIs(t, export.Verify([]byte("k"), h, body, t0.Add(10*time.Minute), 5*time.Minute), export.ErrStale, "replayed later")
	require.ErrorIs(t, export.Verify([]byte("k"), "garbage", body, t0, 5*time.Minute), export.ErrSignature)
}

func TestValidateURL(t *testing.T) {
	for _, ok := range []string{"https://soc.example/hook", "http://10.0.0.1:8080/x?y=1"} {
		require.NoError(t, export.ValidateURL(ok), ok)
	}
	for _, bad := range []string{"", "ftp://x/", "https://", "https://u:p@x/", "https://x/#f", "/relative", "javascript:alert(1)"} {
		require.Error(t, export.ValidateURL(bad), bad)
	}
	require.NoError(t, export.ValidateEvents([]string{"alert.raised", "incident.state"}))
	require.Error(t, export.ValidateEvents([]string{"alert.*"}))
}

// TestClientRefusesPrivateAddresses: the default client will not post to
// the platform's own network.
func TestClientRefusesPrivateAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	_, err := export.NewClient(time.Second, false).Post(srv.URL, "text/plain", nil)
	require.ErrorIs(t, err, export.ErrPrivateAddress)
	resp, err := export.NewClient(time.Second, true).Post(srv.URL, "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	for a, want := range map[string]bool{"8.8.8.8": true, "127.0.0.1": false, "10.1.2.3": false, "169.254.169.254": false, "::1": false, "fd00::1": false, "2001:4860::1": true} {
		require.Equal(t, want, export.Public(netip.MustParseAddr(a)), a)
	}
}
