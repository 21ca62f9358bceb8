package respond_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

var t0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

type recorder struct {
	mu       sync.Mutex
	notes    []respond.Notification
	alerts   []alert.Alert
	events   []*event.Event
	disc     []event.DeviceID
	failDisc int // fail this many Disconnect calls
}

func (r *recorder) Notify(_ context.Context, n respond.Notification) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, n)
	return nil
}

func (r *recorder) Raise(_ context.Context, a alert.Alert) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, a)
	return nil
}

func (r *recorder) Publish(_ context.Context, e *event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func (r *recorder) Disconnect(_ context.Context, t respond.Target) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failDisc > 0 {
		r.failDisc--
		return errors.New("broker unreachable")
	}
	r.disc = append(r.disc, t.Device)
	return nil
}

func (r *recorder) counts() (notes, alerts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.notes), len(r.alerts)
}

type fixture struct {
	st  store.Store
	clk *clock.Manual
	reg *registry.Registry
	rec *recorder
	eng *respond.Engine
}

func openStore(tb testing.TB) store.Store {
	tb.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "garrison.db"))
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, db.Close()) })
	return db
}

// newFixture builds an engine over SQLite with the registry as quarantine,
// SIM and revocation back-end; mod adjusts the options.
func newFixture(tb testing.TB, mod func(*respond.Options)) *fixture {
	tb.Helper()
	return newFixtureOn(tb, openStore(tb), mod)
}

func newFixtureOn(tb testing.TB, st store.Store, mod func(*respond.Options)) *fixture {
	tb.Helper()
	f := &fixture{st: st, clk: clock.NewManual(t0), rec: &recorder{}}
	var err error
	f.reg, err = registry.New(registry.Options{Store: f.st, Clock: f.clk})
	require.NoError(tb, err)
	rb := respond.RegistryBackend{Registry: f.reg}
	o := respond.Options{Store: f.st, Clock: f.clk, Quarantiner: rb, SIMBlocker: rb, Revoker: rb,
		Notifier: f.rec, Alerts: f.rec, Publisher: f.rec, RetryBackoff: time.Microsecond}
	if mod != nil {
		mod(&o)
	}
	f.eng, err = respond.New(o)
	require.NoError(tb, err)
	return f
}

// fleet registers n active devices dev-00000... in tenant.
func (f *fixture) fleet(tb testing.TB, tenant event.TenantID, n int) {
	tb.Helper()
	ctx := context.Background()
	pr, pw := io.Pipe()
	go func() {
		fmt.Fprintln(pw, "id,serial,model,imei,iccid,imsi")
		for i := 0; i < n; i++ {
			fmt.Fprintf(pw, "dev-%05d,SN%07d,acme-meter-2,35693803%07d,893401%013d,21401%010d\n", i, i, i, i, i)
		}
		_ = pw.Close()
	}()
	_, err := f.reg.Import(ctx, tenant, pr, "op")
	require.NoError(tb, err)
	_, err = f.reg.SetStateSelected(ctx, tenant, registry.Selector{}, store.StateActive, "op", "setup", 5000, nil)
	require.NoError(tb, err)
}

func (f *fixture) state(t *testing.T, tenant event.TenantID, id event.DeviceID) store.DeviceState {
	t.Helper()
	d, err := f.reg.Get(context.Background(), tenant, id)
	require.NoError(t, err)
	return d.State
}

func (f *fixture) action(t *testing.T, tenant event.TenantID, id string) store.Action {
	t.Helper()
	var a store.Action
	require.NoError(t, f.st.View(context.Background(), func(tx store.Tx) error {
		var err error
		a, err = tx.Actions().Get(context.Background(), tenant, id)
		return err
	}))
	return a
}

func (f *fixture) actions(t *testing.T, tenant event.TenantID, flt store.ActionFilter) []store.Action {
	t.Helper()
	var out []store.Action
	require.NoError(t, f.st.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.Actions().List(context.Background(), tenant, flt)
		return err
	}))
	return out
}

func (f *fixture) audit(t *testing.T, tenant event.TenantID) []store.AuditRecord {
	t.Helper()
	var out []store.AuditRecord
	require.NoError(t, f.st.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.Audit().Range(context.Background(), tenant, 0, 1_000_000)
		return err
	}))
	rep, err := audit.Verify(context.Background(), f.st, tenant)
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
	return out
}

func mkAlert(tenant event.TenantID, id string, dev event.DeviceID, kind alert.Kind, at time.Time) alert.Alert {
	return alert.Alert{ID: id, Tenant: tenant, Device: dev, Kind: kind, Severity: alert.High, Detector: "test",
		FirstSeen: at, LastSeen: at, Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: "test"}}
}

func TestDefaultPlaybookQuarantinesIdempotently(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 5)
	before := len(f.audit(t, "acme"))

	a := mkAlert("acme", "al-1", "dev-00003", alert.SIMIMEIMismatch, t0)
	require.NoError(t, f.eng.Handle(ctx, a))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00003"))

	q := f.action(t, "acme", respond.ActionID("al-1", "quarantine-compromised", 0))
	require.Equal(t, store.ActionDone, q.State)
	require.Equal(t, respond.Automation, q.Actor)
	require.Equal(t, "quarantine", q.Kind)
	require.Equal(t, "al-1", q.AlertID)
	require.Equal(t, "quarantine-compromised", q.Playbook)
	require.Equal(t, 1, q.Attempts)
	var u respond.Undo
	require.NoError(t, json.Unmarshal(q.Undo, &u))
	require.Equal(t, respond.Undo{Kind: respond.UndoReleaseQuarantine, From: store.StateActive}, u)
	n := f.action(t, "acme", respond.ActionID("al-1", "quarantine-compromised", 1))
	require.Equal(t, store.ActionDone, n.State)
	notes, _ := f.rec.counts()
	require.Equal(t, 1, notes)
	require.Equal(t, "default", f.rec.notes[0].Channel)

	recs := f.audit(t, "acme")
	// pending+done for each of two actions, plus the registry's state change.
	require.Len(t, recs, before+5)
	var done []store.AuditRecord
	for _, r := range recs[before:] {
		if r.Action == "action.done" {
			done = append(done, r)
		}
	}
	require.Len(t, done, 2)
	require.Equal(t, respond.Automation, done[0].Actor)
	require.Contains(t, string(done[0].Details), `"alert":"al-1"`)
	require.Contains(t, string(done[0].Details), `"playbook":"quarantine-compromised"`)

	// The same alert again (a repeat with a higher count): nothing repeats.
	a.Count, a.LastSeen = 2, t0.Add(time.Minute)
	require.NoError(t, f.eng.Handle(ctx, a))
	notes, _ = f.rec.counts()
	require.Equal(t, 1, notes)
	require.Len(t, f.audit(t, "acme"), before+5)
	require.Len(t, f.actions(t, "acme", store.ActionFilter{}), 2)
}

func TestNotifyOnlyAndNoMatch(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 2)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", alert.DataSpike, t0)))
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00001"))
	acts := f.actions(t, "acme", store.ActionFilter{})
	require.Len(t, acts, 1)
	require.Equal(t, "notify", acts[0].Kind)
	require.Equal(t, store.ActionDone, acts[0].State)
	// A custom kind no playbook names: nothing happens.
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00001", "rule.custom", t0)))
	require.Len(t, f.actions(t, "acme", store.ActionFilter{}), 1)
}

func TestAbsentBackendIsSkippedAndFailuresRetried(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, func(o *respond.Options) { o.Quarantiner = nil; o.Notifier = nil })
	f.fleet(t, "acme", 2)
	doc := `playbooks:
  - name: kick
    trigger: {kinds: [net.port_scan]}
    steps: [disconnect, quarantine, open_incident, notify]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00000", alert.PortScan, t0)))
	d := f.action(t, "acme", "al-1/kick/0")
	require.Equal(t, store.ActionSkipped, d.State)
	require.Contains(t, d.Reason, "no disconnect back-end")
	for i, want := range []string{"no quarantine back-end", "no incident back-end", "no notifier"} {
		a := f.action(t, "acme", fmt.Sprintf("al-1/kick/%d", i+1))
		require.Equal(t, store.ActionSkipped, a.State)
		require.Contains(t, a.Reason, want)
	}
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00000"))

	// With a disconnecter that fails twice then works: done after 3 attempts.
	f2 := newFixture(t, func(o *respond.Options) { o.MaxAttempts = 3 })
	f2.rec.failDisc = 2
	f2.eng = mustEngine(t, f2, func(o *respond.Options) { o.Disconnecter = f2.rec })
	f2.fleet(t, "acme", 1)
	_, err = f2.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f2.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00000", alert.PortScan, t0)))
	a := f2.action(t, "acme", "al-1/kick/0")
	require.Equal(t, store.ActionDone, a.State)
	require.Equal(t, 3, a.Attempts)

	// Failing every time: failed, with the reason, after MaxAttempts.
	f2.rec.failDisc = 10
	require.NoError(t, f2.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00000", alert.PortScan, t0)))
	a = f2.action(t, "acme", "al-2/kick/0")
	require.Equal(t, store.ActionFailed, a.State)
	require.Equal(t, 3, a.Attempts)
	require.Contains(t, a.Reason, "broker unreachable")
}

func mustEngine(t *testing.T, f *fixture, mod func(*respond.Options)) *respond.Engine {
	t.Helper()
	rb := respond.RegistryBackend{Registry: f.reg}
	o := respond.Options{Store: f.st, Clock: f.clk, Quarantiner: rb, SIMBlocker: rb, Revoker: rb,
		Notifier: f.rec, Alerts: f.rec, Publisher: f.rec, RetryBackoff: time.Microsecond}
	mod(&o)
	e, err := respond.New(o)
	require.NoError(t, err)
	return e
}

func TestApproveModeAndTenantIsolation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 2)
	f.fleet(t, "other", 2)
	doc := `playbooks:
  - name: careful
    trigger: {kinds: [net.port_scan]}
    mode: approve
    steps: [quarantine, suspend_sim, notify]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", alert.PortScan, t0)))
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00001"))
	q := f.action(t, "acme", "al-1/careful/0")
	require.Equal(t, store.ActionApproval, q.State)
	require.Equal(t, "playbook mode approve", q.Reason)
	require.Equal(t, store.ActionApproval, f.action(t, "acme", "al-1/careful/1").State)
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/careful/2").State) // notify is not disruptive

	// Another tenant cannot approve it, nor can automation.
	require.ErrorIs(t, f.eng.Approve(ctx, "other", "al-1/careful/0", "op-9", ""), store.ErrNotFound)
	require.ErrorIs(t, f.eng.Approve(ctx, "acme", "al-1/careful/0", respond.Automation, ""), store.ErrInvalid)
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00001"))

	require.NoError(t, f.eng.Approve(ctx, "acme", "al-1/careful/0", "op-7", ""))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00001"))
	q = f.action(t, "acme", "al-1/careful/0")
	require.Equal(t, store.ActionDone, q.State)
	require.Equal(t, "op-7", q.Actor)
	require.ErrorIs(t, f.eng.Approve(ctx, "acme", "al-1/careful/0", "op-7", ""), respond.ErrNotAwaiting)

	require.NoError(t, f.eng.Reject(ctx, "acme", "al-1/careful/1", "op-7", "known maintenance window"))
	require.Equal(t, store.ActionRejected, f.action(t, "acme", "al-1/careful/1").State)
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00001"))
	require.Equal(t, store.StateActive, f.state(t, "other", "dev-00001"))

	rej := f.action(t, "acme", "al-1/careful/1")
	require.Equal(t, "rejected by op-7: known maintenance window", rej.Reason, "the reason is kept on the action")
	var rejectAudited, rejectPublished bool
	for _, r := range f.audit(t, "acme") {
		rejectAudited = rejectAudited || (r.Actor == "op-7" && r.Action == "action.rejected" && strings.Contains(string(r.Details), "known maintenance window"))
	}
	require.True(t, rejectAudited, "the rejection and its reason are audited")
	f.rec.mu.Lock()
	for _, ev := range f.rec.events {
		rejectPublished = rejectPublished || (ev.Kind == event.ActionTaken && ev.Attrs["action_id"] == "al-1/careful/1" && ev.Attrs["outcome"] == "rejected")
	}
	f.rec.mu.Unlock()
	require.True(t, rejectPublished)

	var approved bool
	for _, r := range f.audit(t, "acme") {
		if r.Actor == "op-7" && r.Action == "action.pending" && strings.Contains(string(r.Details), "approved by op-7") {
			approved = true
		}
	}
	require.True(t, approved, "approval is audited with the operator")
}

func TestWaitApprovalGate(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 1)
	doc := `playbooks:
  - name: gated
    trigger: {kinds: [net.port_scan]}
    steps: [notify, wait_approval, quarantine, revoke]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	a := mkAlert("acme", "al-1", "dev-00000", alert.PortScan, t0)
	require.NoError(t, f.eng.Handle(ctx, a))
	require.NoError(t, f.eng.Handle(ctx, a))
	acts := f.actions(t, "acme", store.ActionFilter{})
	require.Len(t, acts, 2) // notify done, gate waiting; nothing after the gate yet
	require.Equal(t, store.ActionApproval, f.action(t, "acme", "al-1/gated/1").State)
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00000"))

	require.NoError(t, f.eng.Approve(ctx, "acme", "al-1/gated/1", "op-1", ""))
	require.Equal(t, store.StateRevoked, f.state(t, "acme", "dev-00000"))
	require.Equal(t, "op-1", f.action(t, "acme", "al-1/gated/3").Actor)
	notes, _ := f.rec.counts()
	require.Equal(t, 1, notes)
}

func TestBlastRadiusGuardFlood(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil) // defaults: max(10, 2% of fleet) per hour
	const fleet = 1000
	f.fleet(t, "acme", fleet)
	f.fleet(t, "other", 50)
	wantCap := respond.Guard{}.Cap(fleet)
	require.Equal(t, 20, wantCap)
	// Quarantine only (no notify), to keep the flood's commits down.
	doc := `playbooks:
  - name: contain
    trigger: {kinds: [net.telnet_scan, identity.clone_suspected]}
    steps: [quarantine]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)

	for i := 0; i < fleet; i++ {
		f.clk.Advance(time.Second)
		a := mkAlert("acme", fmt.Sprintf("al-%04d", i), event.DeviceID(fmt.Sprintf("dev-%05d", i)), alert.TelnetScan, f.clk.Now())
		require.NoError(t, f.eng.Handle(ctx, a))
	}
	quarantined, err := f.reg.Count(ctx, "acme", registry.Selector{State: store.StateQuarantined})
	require.NoError(t, err)
	require.Equal(t, wantCap, quarantined)
	require.Len(t, f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionDone}), wantCap)
	waiting := f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionApproval})
	require.Len(t, waiting, fleet-wantCap)
	require.Contains(t, waiting[0].Reason, "blast-radius guard")
	require.Contains(t, waiting[0].Reason, "cap 20 = max(10, 2% of 1000 devices)")
	_, raised := f.rec.counts()
	require.Equal(t, 1, raised, "one blast-radius alert per window")
	require.Equal(t, alert.BlastRadiusGuardEngaged, f.rec.alerts[0].Kind)
	require.Equal(t, event.TenantID("acme"), f.rec.alerts[0].Tenant)

	// Other tenants have their own budget.
	require.NoError(t, f.eng.Handle(ctx, mkAlert("other", "o-1", "dev-00001", alert.TelnetScan, f.clk.Now())))
	require.Equal(t, store.StateQuarantined, f.state(t, "other", "dev-00001"))

	// A human may approve beyond the cap.
	require.NoError(t, f.eng.Approve(ctx, "acme", waiting[0].ID, "op-1", ""))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", waiting[0].Device))

	// Once the window has passed, automation acts again (and may alert again).
	f.clk.Advance(time.Hour)
	var next []alert.Alert
	for i := 0; i < 25; i++ {
		next = append(next, mkAlert("acme", fmt.Sprintf("al2-%04d", i), event.DeviceID(fmt.Sprintf("dev-%05d", 100+i)), alert.CloneSuspected, f.clk.Now()))
	}
	for _, a := range next {
		require.NoError(t, f.eng.Handle(ctx, a))
	}
	q := f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionDone, Since: f.clk.Now()})
	require.Len(t, q, wantCap)
	_, raised = f.rec.counts()
	require.Equal(t, 2, raised)
}

func TestGuardOnEventTime(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, func(o *respond.Options) {
		o.EventTime = true
		o.Guard = respond.Guard{MaxDevices: 3, MaxPercent: 1}
	})
	f.fleet(t, "acme", 20)
	// The wall clock never moves; the alerts' own times span two windows.
	handle := func(i int, at time.Time) {
		require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", fmt.Sprintf("al-%d", i), event.DeviceID(fmt.Sprintf("dev-%05d", i)), alert.TelnetScan, at)))
	}
	for i := 0; i < 5; i++ {
		handle(i, t0.Add(time.Duration(i)*time.Minute))
	}
	done := f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionDone})
	require.Len(t, done, 3)
	require.Equal(t, t0, done[0].CreatedAt)
	for i := 5; i < 10; i++ {
		handle(i, t0.Add(2*time.Hour+time.Duration(i)*time.Minute))
	}
	done = f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionDone})
	require.Len(t, done, 6)
}

func TestFalsePositiveRestores(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 2)
	doc := `playbooks:
  - name: contain
    trigger: {kinds: [sim.imei_mismatch]}
    restore_on_false_positive: true
    steps: [quarantine, suspend_sim, notify]
  - name: keep
    trigger: {kinds: [net.port_scan]}
    steps: [quarantine]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00000", alert.SIMIMEIMismatch, t0)))
	require.Equal(t, store.StateSuspended, f.state(t, "acme", "dev-00000"))
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00001", alert.PortScan, t0)))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00001"))

	require.NoError(t, f.eng.Resolve(ctx, "acme", "al-1", alert.FalsePositive, "op-3"))
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00000"))
	require.Equal(t, store.ActionUndone, f.action(t, "acme", "al-1/contain/0").State)
	require.Equal(t, store.ActionUndone, f.action(t, "acme", "al-1/contain/1").State)
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/contain/2").State)

	var published bool
	f.rec.mu.Lock()
	for _, ev := range f.rec.events {
		published = published || (ev.Kind == event.AlertStateChanged && ev.Attrs["alert_id"] == "al-1" &&
			ev.Attrs["from"] == "open" && ev.Attrs["to"] == "false_positive" && ev.Attrs["actor"] == "op-3" && ev.Device == "dev-00000")
	}
	f.rec.mu.Unlock()
	require.True(t, published, "Resolve publishes alert.state_changed")

	// The playbook without restore keeps its device quarantined.
	require.NoError(t, f.eng.Resolve(ctx, "acme", "al-2", alert.FalsePositive, "op-3"))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00001"))

	var a alert.Alert
	require.NoError(t, f.st.View(ctx, func(tx store.Tx) error {
		var err error
		a, err = tx.Alerts().Get(ctx, "acme", "al-1")
		return err
	}))
	require.Equal(t, alert.FalsePositive, a.State)
}

// TestAlertStateChangedRestores: the engine's side of alert.state_changed
// (serve's consumer calls it): a false positive set elsewhere restores as
// the operator, once even if the event comes twice; other moves, gone
// alerts and alerts that are not false positives do nothing.
func TestAlertStateChangedRestores(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 2)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00000", alert.TelnetScan, t0)))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00000"))
	qid := respond.ActionID("al-1", "quarantine-compromised", 0)

	require.NoError(t, f.eng.AlertStateChanged(ctx, "acme", "al-1", alert.Acknowledged, "op-3"))
	require.NoError(t, f.eng.AlertStateChanged(ctx, "acme", "al-1", alert.FalsePositive, "op-3"), "not a false positive in the store: nothing")
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00000"))

	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error { return tx.Alerts().SetState(ctx, "acme", "al-1", alert.FalsePositive) }))
	require.NoError(t, f.eng.AlertStateChanged(ctx, "acme", "al-1", alert.FalsePositive, "op-3"))
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00000"), "restored")
	act := f.action(t, "acme", qid)
	require.Equal(t, store.ActionUndone, act.State)
	n := len(f.audit(t, "acme"))
	require.NoError(t, f.eng.AlertStateChanged(ctx, "acme", "al-1", alert.FalsePositive, "op-3"), "redelivered")
	require.Len(t, f.audit(t, "acme"), n, "nothing undone twice")
	var undone bool
	for _, r := range f.audit(t, "acme") {
		undone = undone || (r.Action == "action.undone" && r.Actor == "op-3" && r.Target == "action:"+qid)
	}
	require.True(t, undone, "the undo is audited as the operator")
	require.NoError(t, f.eng.AlertStateChanged(ctx, "acme", "no-such-alert", alert.FalsePositive, "op-3"))
	require.NoError(t, f.eng.AlertStateChanged(ctx, "other", "al-1", alert.FalsePositive, "op-3"), "another tenant's id finds nothing")
}

func TestResumePendingAfterRestart(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 1)
	a := mkAlert("acme", "al-1", "dev-00000", alert.TelnetScan, t0)
	// A crash after the pending record was written and before the back-end
	// ran: the store holds the alert and a pending action, nothing else.
	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Alerts().Put(ctx, a); err != nil {
			return err
		}
		return tx.Actions().Put(ctx, store.Action{Tenant: "acme", ID: respond.ActionID("al-1", "quarantine-compromised", 0),
			Device: "dev-00000", Kind: "quarantine", AlertID: "al-1", Playbook: "quarantine-compromised",
			Actor: respond.Automation, State: store.ActionPending, CreatedAt: t0, UpdatedAt: t0})
	}))
	restarted := mustEngine(t, f, func(*respond.Options) {})
	require.NoError(t, restarted.Resume(ctx, "acme"))
	require.Equal(t, store.StateQuarantined, f.state(t, "acme", "dev-00000"))
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/quarantine-compromised/0").State)
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/quarantine-compromised/1").State)
	require.NoError(t, restarted.Resume(ctx, "acme"))
	notes, _ := f.rec.counts()
	require.Equal(t, 1, notes)
}

func TestSetPlaybooksRefusesInvalidAndReplacesTheSet(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	pbs, err := f.eng.Playbooks(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, pbs, 2, "the defaults")
	_, err = f.eng.SetPlaybooks(ctx, "acme", []byte("playbooks:\n  - name: x\n    trigger: {kinds: [a.b]}\n    steps: [explode]\n"), "op")
	require.ErrorIs(t, err, respond.ErrPlaybook)
	require.Contains(t, err.Error(), "line 4: unknown step \"explode\"")
	require.Empty(t, f.audit(t, "acme"))
	doc := "playbooks:\n  - name: only\n    trigger: {kinds: [a.b]}\n    steps: [notify]\n"
	for i := 0; i < 2; i++ {
		n, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	pbs, err = f.eng.Playbooks(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, pbs, 1, "the document replaced the set: defaults disabled")
	require.Equal(t, "only", pbs[0].Name)
	vs, err := f.eng.PlaybookVersions(ctx, "acme", "only")
	require.NoError(t, err)
	require.Len(t, vs, 2)
	infos, err := f.eng.ListPlaybooks(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, infos, 3)
	for _, in := range infos {
		require.Equal(t, in.Name == "only", in.Enabled, in.Name)
	}
	// Putting the defaults back as a document brings them back (as tenant versions).
	n, err := f.eng.SetPlaybooks(ctx, "acme", respond.DefaultYAML(), "op")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	pbs, err = f.eng.Playbooks(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, pbs, 2)
}

func TestHandleRejectsBadAlerts(t *testing.T) {
	f := newFixture(t, nil)
	for _, a := range []alert.Alert{
		{ID: "x", Kind: alert.PortScan},
		{Tenant: "acme", Kind: alert.PortScan},
		{Tenant: "acme", ID: "a/b", Kind: alert.PortScan},
	} {
		require.ErrorIs(t, f.eng.Handle(context.Background(), a), store.ErrInvalid)
	}
}

func TestBlastRadiusGuardConcurrent(t *testing.T) {
	testGuardConcurrent(t, newFixture(t, nil))
}

func testGuardConcurrent(t *testing.T, f *fixture) {
	ctx := context.Background()
	const fleet = 200
	f.fleet(t, "acme", fleet)
	wantCap := respond.Guard{}.Cap(fleet) // max(10, 4)
	require.Equal(t, 10, wantCap)
	var wg sync.WaitGroup
	errs := make(chan error, fleet)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < fleet; i += 8 {
				errs <- f.eng.Handle(ctx, mkAlert("acme", fmt.Sprintf("al-%04d", i), event.DeviceID(fmt.Sprintf("dev-%05d", i)), alert.TelnetScan, t0))
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	quarantined, err := f.reg.Count(ctx, "acme", registry.Selector{State: store.StateQuarantined})
	require.NoError(t, err)
	require.Equal(t, wantCap, quarantined)
	require.Len(t, f.actions(t, "acme", store.ActionFilter{Kind: "quarantine", State: store.ActionApproval}), fleet-wantCap)
	_, raised := f.rec.counts()
	require.Equal(t, 1, raised)
}

func TestRejectNeedsAReason(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 2)
	doc := `playbooks:
  - name: careful
    trigger: {kinds: [net.port_scan]}
    mode: approve
    steps: [quarantine]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", alert.PortScan, t0)))
	before := len(f.audit(t, "acme"))
	for _, tc := range []struct{ reason, want string }{
		{"", "a rejection needs a reason"},
		{"   ", "a rejection needs a reason"},
		{strings.Repeat("x", respond.MaxDecisionReason+1), "at most 500"},
		{"two\nlines", "one line"},
		{"bad \xff utf-8", "UTF-8"},
	} {
		err := f.eng.Reject(ctx, "acme", "al-1/careful/0", "op-7", tc.reason)
		require.ErrorIs(t, err, store.ErrInvalid, "%q", tc.reason)
		require.ErrorContains(t, err, tc.want)
	}
	require.Len(t, f.audit(t, "acme"), before, "a refused rejection changes nothing")
	require.Equal(t, store.ActionApproval, f.action(t, "acme", "al-1/careful/0").State)

	// An approval may carry a reason; it is kept too.
	require.ErrorIs(t, f.eng.Approve(ctx, "acme", "al-1/careful/0", "op-7", "two\nlines"), store.ErrInvalid)
	require.NoError(t, f.eng.Approve(ctx, "acme", "al-1/careful/0", "op-7", "confirmed with the site"))
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/careful/0").State)
	var kept bool
	for _, r := range f.audit(t, "acme") {
		kept = kept || (r.Action == "action.pending" && strings.Contains(string(r.Details), "approved by op-7: confirmed with the site"))
	}
	require.True(t, kept)
}

// TestTriggerSelectorResolvesDynamicGroup: a playbook whose device
// selector is group=<dynamic> acts on the devices the group's selector
// matches when the alert arrives, and on its static members.
func TestTriggerSelectorResolvesDynamicGroup(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.fleet(t, "acme", 4)
	_, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "sim-21401", Kind: store.GroupDynamic, Selector: "imsi^=214010000000001"}, "op")
	require.NoError(t, err)
	doc := "playbooks:\n  - name: grp\n    trigger: {kinds: [a.b], selector: \"group=sim-21401\"}\n    steps: [notify]\n"
	_, err = f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", "a.b", t0)))
	require.Len(t, f.actions(t, "acme", store.ActionFilter{Device: "dev-00001"}), 1, "the selector of the group picks dev-00001")
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00002", "a.b", t0)))
	require.Empty(t, f.actions(t, "acme", store.ActionFilter{Device: "dev-00002"}), "dev-00002 is not in the group")
	// The selector moves: the next alert follows it.
	sel := "imsi^=214010000000002"
	_, err = f.reg.UpdateGroup(ctx, "acme", "sim-21401", registry.GroupUpdate{Selector: &sel}, "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-3", "dev-00002", "a.b", t0)))
	require.Len(t, f.actions(t, "acme", store.ActionFilter{Device: "dev-00002"}), 1)
}

// incidentsFake opens one incident per alert, as the incident service does.
type incidentsFake struct{}

func (incidentsFake) OpenIncident(_ context.Context, r respond.IncidentRequest) (string, error) {
	return "inc-" + r.Alert.ID, nil
}

// TestActionTakenCarriesIncidentID: the action.taken event of a done
// open_incident step names the incident, so webhook and syslog consumers
// can correlate; other steps' events carry none.
func TestActionTakenCarriesIncidentID(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, func(o *respond.Options) { o.Incidents = incidentsFake{} })
	f.fleet(t, "acme", 1)
	doc := `playbooks:
  - name: track
    trigger: {kinds: [net.port_scan]}
    steps: [quarantine, open_incident, notify]
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00000", alert.PortScan, t0)))
	require.Equal(t, "incident inc-al-1", f.action(t, "acme", "al-1/track/1").Reason)
	got := map[string]any{}
	f.rec.mu.Lock()
	for _, ev := range f.rec.events {
		if ev.Kind == event.ActionTaken {
			got[ev.Str("action_id")] = ev.Attrs["incident_id"]
		}
	}
	f.rec.mu.Unlock()
	require.Equal(t, map[string]any{"al-1/track/0": nil, "al-1/track/1": "inc-al-1", "al-1/track/2": nil}, got)
}
