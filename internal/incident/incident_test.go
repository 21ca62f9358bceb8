package incident_test

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

var t0 = time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)

const tenant event.TenantID = "acme"

type fixture struct {
	st  store.Store
	clk *clock.Manual
	svc *incident.Service
	eng *respond.Engine
	reg *registry.Registry
	ob  *outbox
}

// outbox records what the service asks to export, in the change's
// transaction.
type outbox struct {
	mu      sync.Mutex
	changes []incident.Change
}

func (o *outbox) Emit(_ context.Context, tx store.Tx, c incident.Change) error {
	if tx == nil {
		panic("no transaction")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.changes = append(o.changes, c)
	return nil
}

func (o *outbox) types() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, c := range o.changes {
		out = append(out, c.Type)
	}
	return out
}

const playbooks = `playbooks:
  - name: contain-and-track
    trigger:
      kinds: [sim.imei_mismatch, net.telnet_scan]
    mode: auto
    restore_on_false_positive: true
    steps:
      - quarantine
      - open_incident: {title: "Compromised device"}
  - name: track-only
    trigger:
      kinds: [location.geofence_exit]
    mode: auto
    steps:
      - open_incident
`

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st, clk: clock.NewManual(t0.Add(time.Hour)), ob: &outbox{}}
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		for _, tn := range []event.TenantID{tenant, "globex"} {
			if err := tx.Tenants().Create(ctx, store.Tenant{ID: tn, Name: string(tn), CreatedAt: t0}); err != nil {
				return err
			}
		}
		for _, d := range []event.DeviceID{"meter-1", "meter-2"} {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: d, Model: "m", State: store.StateActive, CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	}))
	f.svc, err = incident.New(incident.Options{Store: st, Clock: f.clk, Outbox: f.ob})
	require.NoError(t, err)
	f.reg, err = registry.New(registry.Options{Store: st, Clock: f.clk})
	require.NoError(t, err)
	rb := respond.RegistryBackend{Registry: f.reg}
	f.eng, err = respond.New(respond.Options{Store: st, Clock: f.clk, Quarantiner: rb, Incidents: f.svc, EventTime: true, RetryBackoff: time.Microsecond})
	require.NoError(t, err)
	_, err = f.eng.SetPlaybooks(ctx, tenant, []byte(playbooks), "op-admin")
	require.NoError(t, err)
	return f
}

func (f *fixture) raise(t *testing.T, id string, dev event.DeviceID, kind alert.Kind, sev alert.Severity, at time.Time, evidenceAt time.Time) alert.Alert {
	t.Helper()
	ctx := context.Background()
	a := alert.Alert{ID: id, Tenant: tenant, Device: dev, Kind: kind, Severity: sev, Detector: "test", FirstSeen: at, LastSeen: at,
		Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: string(kind) + " seen",
			Events: []event.Event{{ID: "e1", Tenant: tenant, Device: dev, Kind: event.NetSession, Time: evidenceAt}}}}
	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error { return tx.Alerts().Put(ctx, a) }))
	require.NoError(t, f.eng.Handle(ctx, a))
	return a
}

func (f *fixture) only(t *testing.T) incident.Detail {
	t.Helper()
	list, err := f.svc.List(context.Background(), tenant, store.IncidentFilter{})
	require.NoError(t, err)
	require.Len(t, list, 1)
	d, err := f.svc.Get(context.Background(), tenant, list[0].ID)
	require.NoError(t, err)
	return d
}

// TestPlaybookOpensIncidentAndGathersTimeline: the playbook's quarantine
// then open_incident opens one incident holding the alert and the
// quarantine (which contains it); a second alert on the device joins it;
// handling an alert again adds nothing.
func TestPlaybookOpensIncidentAndGathersTimeline(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a1 := f.raise(t, "al-1", "meter-1", alert.SIMIMEIMismatch, alert.High, t0, t0.Add(-3*time.Minute))
	d := f.only(t)
	inc := d.Incident
	require.Equal(t, "Compromised device", inc.Title)
	require.Equal(t, incident.Automation, inc.OpenedBy)
	require.Equal(t, alert.SIMIMEIMismatch, inc.Kind)
	require.Equal(t, event.DeviceID("meter-1"), inc.Device)
	require.Equal(t, store.IncidentContained, inc.State, "the done quarantine contained it")
	require.Equal(t, t0.Add(-3*time.Minute), inc.StartedAt, "first sign: the earliest evidence event")
	require.Equal(t, t0, inc.DetectedAt)
	require.NotNil(t, inc.ContainedAt)
	require.Equal(t, 180.0, *d.Metrics.TimeToDetect)
	require.Equal(t, 0.0, *d.Metrics.TimeToContain, "automation contained it at detection time")
	require.Nil(t, d.Metrics.TimeToClose)

	var kinds []string
	for _, e := range d.Timeline {
		kinds = append(kinds, e.Kind)
	}
	require.ElementsMatch(t, []string{store.EntryOpened, store.EntryAlert, store.EntryAction, store.EntryState}, kinds)
	act := respond.ActionID(a1.ID, "contain-and-track", 0)
	var actionEntry store.IncidentEntry
	for _, e := range d.Timeline {
		if e.Kind == store.EntryAction {
			actionEntry = e
		}
	}
	require.Equal(t, "action:"+act+"#done", actionEntry.ID)
	require.Contains(t, actionEntry.Text, "quarantine")

	// The incident step's action records which incident.
	var step store.Action
	require.NoError(t, f.st.View(ctx, func(tx store.Tx) (err error) {
		step, err = tx.Actions().Get(ctx, tenant, respond.ActionID(a1.ID, "contain-and-track", 1))
		return err
	}))
	require.Equal(t, store.ActionDone, step.State)
	require.Equal(t, "incident "+inc.ID, step.Reason)

	// The bus later tells the service about the quarantine: already there.
	require.NoError(t, f.svc.OnAction(ctx, tenant, act))
	require.NoError(t, f.svc.OnAction(ctx, tenant, "no-such-action"))
	// Same alert again (a redelivery): nothing new.
	require.NoError(t, f.eng.Handle(ctx, a1))
	id, err := f.svc.OpenIncident(ctx, respond.IncidentRequest{Tenant: tenant, Alert: a1})
	require.NoError(t, err)
	require.Equal(t, inc.ID, id)
	require.Len(t, f.only(t).Timeline, len(d.Timeline))

	// A second alert on the same device joins the open incident, raising
	// its severity; one on another device opens another incident.
	f.raise(t, "al-2", "meter-1", alert.TelnetScan, alert.Critical, t0.Add(10*time.Minute), t0.Add(9*time.Minute))
	d2 := f.only(t)
	require.Equal(t, alert.Critical, d2.Incident.Severity)
	var alerts int
	for _, e := range d2.Timeline {
		if e.Kind == store.EntryAlert {
			alerts++
		}
	}
	require.Equal(t, 2, alerts)
	f.raise(t, "al-3", "meter-2", alert.GeofenceExit, alert.Low, t0.Add(20*time.Minute), t0.Add(20*time.Minute))
	list, err := f.svc.List(ctx, tenant, store.IncidentFilter{})
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, store.IncidentOpen, list[0].State, "no disruptive action: still open")
	require.Equal(t, "location.geofence_exit on meter-2", list[0].Title)

	// Another tenant sees nothing.
	other, err := f.svc.List(ctx, "globex", store.IncidentFilter{})
	require.NoError(t, err)
	require.Empty(t, other)
	_, err = f.svc.Get(ctx, "globex", inc.ID)
	require.ErrorIs(t, err, store.ErrNotFound)

	// The alert turns out a false positive: the playbook releases the
	// device, and the undone quarantine joins the timeline as its own entry.
	require.NoError(t, f.eng.Resolve(ctx, tenant, a1.ID, alert.FalsePositive, "op-1"))
	require.NoError(t, f.svc.OnAction(ctx, tenant, act))
	tl, err := f.svc.Get(ctx, tenant, inc.ID)
	require.NoError(t, err)
	var outcomes []string
	for _, e := range tl.Timeline {
		if strings.HasPrefix(e.ID, "action:"+act) {
			outcomes = append(outcomes, strings.TrimPrefix(e.ID, "action:"+act))
		}
	}
	require.Equal(t, []string{"#done", "#undone"}, outcomes)
	report, err := f.svc.Report(ctx, tenant, inc.ID)
	require.NoError(t, err)
	require.Len(t, report.Actions, 2, "the quarantines of al-1 (two outcomes, listed once) and al-2")
	require.Equal(t, act, report.Actions[0].ID)
	require.Equal(t, store.ActionUndone, report.Actions[0].State)

	require.Contains(t, f.ob.types(), incident.ChangeOpened)
	require.Contains(t, f.ob.types(), incident.ChangeState)
	rep, err := audit.Verify(ctx, f.st, tenant)
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
}

// TestTransitions walks the state machine by hand: every allowed move is
// audited and timed, every other is refused and changes nothing.
func TestTransitions(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	inc, err := f.svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "Suspicious meter", Severity: "high", Device: "meter-1"})
	require.NoError(t, err)
	require.Equal(t, store.IncidentOpen, inc.State)

	for _, bad := range []store.IncidentState{store.IncidentEradicated, store.IncidentRecovered, store.IncidentOpen} {
		_, err := f.svc.Transition(ctx, tenant, inc.ID, bad, "op-1", "")
		require.ErrorIs(t, err, incident.ErrTransition, "open → %s", bad)
	}
	_, err = f.svc.Transition(ctx, tenant, inc.ID, "burning", "op-1", "")
	require.ErrorIs(t, err, incident.ErrInvalid)
	_, err = f.svc.Transition(ctx, "globex", inc.ID, store.IncidentContained, "op-1", "")
	require.ErrorIs(t, err, store.ErrNotFound)

	head := func() int64 {
		var h store.AuditRecord
		require.NoError(t, f.st.View(ctx, func(tx store.Tx) (err error) { h, err = tx.Audit().Head(ctx, tenant); return err }))
		return h.Seq
	}
	steps := []store.IncidentState{store.IncidentContained, store.IncidentEradicated, store.IncidentRecovered, store.IncidentClosed}
	for i, to := range steps {
		before := head()
		f.clk.Set(t0.Add(time.Hour + time.Duration(i+1)*10*time.Minute))
		got, err := f.svc.Transition(ctx, tenant, inc.ID, to, "op-2", "step "+string(to))
		require.NoError(t, err)
		require.Equal(t, to, got.State)
		require.Equal(t, before+1, head(), "one audit record per move")
	}
	_, err = f.svc.Transition(ctx, tenant, inc.ID, store.IncidentOpen, "op-1", "")
	require.ErrorIs(t, err, incident.ErrTransition, "closed is final")
	_, err = f.svc.AddNote(ctx, tenant, inc.ID, "op-1", "post-mortem scheduled")
	require.NoError(t, err, "notes are still allowed on a closed incident")

	d, err := f.svc.Get(ctx, tenant, inc.ID)
	require.NoError(t, err)
	require.Equal(t, t0.Add(time.Hour+10*time.Minute), *d.Incident.ContainedAt)
	require.Equal(t, t0.Add(time.Hour+40*time.Minute), *d.Incident.ClosedAt)
	require.Equal(t, 600.0, *d.Metrics.TimeToContain, "opened by hand at clock time, contained 10 min later")
	require.Equal(t, 2400.0, *d.Metrics.TimeToClose)
	require.Equal(t, 0.0, *d.Metrics.TimeToDetect)
	var states []string
	for _, e := range d.Timeline {
		if e.Kind == store.EntryState {
			states = append(states, e.Text)
		}
	}
	require.Equal(t, []string{"state open → contained: step contained", "state contained → eradicated: step eradicated",
		"state eradicated → recovered: step recovered", "state recovered → closed: step closed"}, states)

	var recs []store.AuditRecord
	require.NoError(t, f.st.View(ctx, func(tx store.Tx) (err error) { recs, err = tx.Audit().Range(ctx, tenant, 0, 1000); return err }))
	var moves int
	for _, r := range recs {
		if r.Action == "incident.state" {
			moves++
			require.Equal(t, "op-2", r.Actor)
			require.Equal(t, "incident:"+inc.ID, r.Target)
		}
	}
	require.Equal(t, 4, moves)
}

func TestConcurrentTransitionsOneWins(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	inc, err := f.svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "race"})
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.svc.Transition(ctx, tenant, inc.ID, store.IncidentContained, "op-1", "")
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else {
			require.True(t, errorsIsAny(err, incident.ErrTransition, store.ErrConflict), "%v", err)
		}
	}
	require.Equal(t, 1, ok)
	d, err := f.svc.Get(ctx, tenant, inc.ID)
	require.NoError(t, err)
	n := 0
	for _, e := range d.Timeline {
		if e.Kind == store.EntryState {
			n++
		}
	}
	require.Equal(t, 1, n)
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func TestOpenByHandWithAlertsAndBadInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a := alert.Alert{ID: "al-9", Tenant: tenant, Device: "meter-2", Kind: alert.PortScan, Severity: alert.High, FirstSeen: t0, LastSeen: t0,
		Count: 1, State: alert.Open, Evidence: alert.Evidence{Summary: "scan"}}
	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error { return tx.Alerts().Put(ctx, a) }))
	for name, r := range map[string]incident.OpenRequest{
		"empty title":    {Title: "  "},
		"long title":     {Title: strings.Repeat("x", 201)},
		"bad severity":   {Title: "x", Severity: "apocalyptic"},
		"unknown alert":  {Title: "x", Alerts: []string{"al-none"}},
		"foreign tenant": {Title: "x", Alerts: []string{"al-9"}},
	} {
		tn := tenant
		if name == "foreign tenant" {
			tn = "globex"
		}
		_, err := f.svc.Open(ctx, tn, "op-1", r)
		require.Error(t, err, name)
	}
	list, err := f.svc.List(ctx, tenant, store.IncidentFilter{})
	require.NoError(t, err)
	require.Empty(t, list, "refused input changes nothing")

	inc, err := f.svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "Scan", Alerts: []string{"al-9"}})
	require.NoError(t, err)
	require.Equal(t, alert.High, inc.Severity, "from the alert")
	require.Equal(t, alert.PortScan, inc.Kind)
	require.Equal(t, t0, inc.DetectedAt)
	_, err = f.svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "Again", Alerts: []string{"al-9"}})
	require.ErrorIs(t, err, store.ErrConflict, "an alert is on one incident")
	other, err := f.svc.Open(ctx, tenant, "op-1", incident.OpenRequest{Title: "Other"})
	require.NoError(t, err)
	_, err = f.svc.AttachAlert(ctx, tenant, other.ID, "al-9", "op-1")
	require.ErrorIs(t, err, store.ErrConflict)
	_, err = f.svc.AddNote(ctx, tenant, other.ID, "op-1", "")
	require.ErrorIs(t, err, incident.ErrInvalid)
	_, err = f.svc.AddNote(ctx, tenant, "inc-none", "op-1", "hello")
	require.ErrorIs(t, err, store.ErrNotFound)
}

// TestReport: the JSON report carries the alerts, actions, timeline,
// durations and runbook; the Markdown report renders them, escaping what
// devices and operators wrote.
func TestReport(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.raise(t, "al-1", "meter-1", alert.SIMIMEIMismatch, alert.High, t0, t0.Add(-2*time.Minute))
	inc := f.only(t).Incident
	_, err := f.svc.AddNote(ctx, tenant, inc.ID, "op-1", "SIM found in a <script>phone</script> | pipe")
	require.NoError(t, err)
	f.clk.Set(t0.Add(3 * time.Hour))
	_, err = f.svc.Transition(ctx, tenant, inc.ID, store.IncidentClosed, "op-1", "SIM recovered")
	require.NoError(t, err)

	rep, err := f.svc.Report(ctx, tenant, inc.ID)
	require.NoError(t, err)
	require.Len(t, rep.Alerts, 1)
	require.Len(t, rep.Actions, 1)
	require.Equal(t, "quarantine", rep.Actions[0].Kind)
	require.Equal(t, 120.0, *rep.Metrics.TimeToDetect)
	require.Equal(t, 0.0, *rep.Metrics.TimeToContain)
	require.Equal(t, 3*3600.0, *rep.Metrics.TimeToClose)
	require.Equal(t, incident.SourceShipped, rep.Runbook.Source)
	require.Contains(t, rep.Runbook.Markdown, "SIM swap")
	raw, err := json.Marshal(rep)
	require.NoError(t, err)
	var back map[string]any
	require.NoError(t, json.Unmarshal(raw, &back))
	require.EqualValues(t, 10800, back["metrics"].(map[string]any)["time_to_close_seconds"])

	md := string(rep.Markdown())
	for _, want := range []string{"# Post-incident report: Compromised device", "## Key times", "- Time to detect: 2m0s",
		"- Time to contain: 0s", "- Time to close: 3h0m0s", "## Alerts (1)", "sim.imei_mismatch", "## Actions (1)", "quarantine",
		"## Timeline", "SIM recovered", "## Runbook", "### Triage", `&lt;script&gt;phone&lt;/script&gt; \| pipe`} {
		require.Contains(t, md, want)
	}
	require.NotContains(t, md, "<script>")

	_, err = f.svc.Report(ctx, "globex", inc.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
}

// TestRunbooks: one is shipped for every alert kind of the public contract;
// a tenant's edit overrides it for that tenant only and can be reset.
func TestRunbooks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	kinds := []alert.Kind{alert.SIMIMEIMismatch, alert.ImpossibleTravel, alert.GeofenceExit, alert.DataSpike, alert.MessageRateSpike,
		alert.Bruteforce, alert.DefaultCredentials, alert.TelnetScan, alert.PortScan, alert.ThreatIntelHit, alert.DestinationUnapproved,
		alert.CloneSuspected, alert.RevokedCertUse, alert.FirmwareUnapproved, alert.FirmwareRollback, alert.UnexpectedListener,
		alert.BlastRadiusGuardEngaged}
	for _, k := range kinds {
		md, ok := incident.Shipped(k)
		require.True(t, ok, "shipped runbook for %s", k)
		require.Contains(t, md, "`"+string(k)+"`")
		for _, section := range []string{"## Triage", "## Contain", "## Eradicate", "## Recover and close"} {
			require.Contains(t, md, section, k)
		}
	}
	require.ElementsMatch(t, kinds, incident.ShippedKinds())

	rb, err := f.svc.Runbook(ctx, tenant, alert.TelnetScan)
	require.NoError(t, err)
	require.Equal(t, incident.SourceShipped, rb.Source)
	_, err = f.svc.Runbook(ctx, tenant, "custom.rule")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.svc.Runbook(ctx, tenant, "../../etc/passwd")
	require.ErrorIs(t, err, incident.ErrInvalid)

	edited, err := f.svc.SetRunbook(ctx, tenant, alert.TelnetScan, "# Our telnet procedure\n\nCall the SOC.\n", "op-admin")
	require.NoError(t, err)
	require.Equal(t, incident.SourceTenant, edited.Source)
	rb, err = f.svc.Runbook(ctx, tenant, alert.TelnetScan)
	require.NoError(t, err)
	require.Equal(t, "# Our telnet procedure\n\nCall the SOC.\n", rb.Markdown)
	require.Equal(t, "op-admin", rb.UpdatedBy)
	rb, err = f.svc.Runbook(ctx, "globex", alert.TelnetScan)
	require.NoError(t, err)
	require.Equal(t, incident.SourceShipped, rb.Source, "other tenants keep the shipped one")

	_, err = f.svc.SetRunbook(ctx, tenant, "custom.rule", "# Custom", "op-admin")
	require.NoError(t, err)
	all, err := f.svc.Runbooks(ctx, tenant, []alert.Kind{"custom.rule"})
	require.NoError(t, err)
	require.Len(t, all, len(kinds)+1)

	for _, bad := range []string{"", "   ", strings.Repeat("x", incident.MaxRunbookBytes+1), "\xff\xfe"} {
		_, err := f.svc.SetRunbook(ctx, tenant, alert.TelnetScan, bad, "op-admin")
		require.ErrorIs(t, err, incident.ErrInvalid)
	}
	require.NoError(t, f.svc.ResetRunbook(ctx, tenant, alert.TelnetScan, "op-admin"))
	require.ErrorIs(t, f.svc.ResetRunbook(ctx, tenant, alert.TelnetScan, "op-admin"), store.ErrNotFound)
	rb, err = f.svc.Runbook(ctx, tenant, alert.TelnetScan)
	require.NoError(t, err)
	require.Equal(t, incident.SourceShipped, rb.Source)
}
