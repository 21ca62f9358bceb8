package respond

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// Automation is the actor of every action the engine takes on its own.
const Automation = "automation"

// Errors of the engine, wrapped with the operation.
var (
	// ErrNotAwaiting: Approve or Reject of an action that is not waiting
	// for approval. It also matches store.ErrConflict.
	ErrNotAwaiting = errors.New("action is not awaiting approval")
)

// Guard bounds what automation may disable per tenant: within any sliding
// Window, automation acts disruptively (quarantine, disconnect, suspend_sim,
// revoke) on at most Cap(fleet) distinct devices, where
//
//	Cap(fleet) = max(MaxDevices, ceil(MaxPercent/100 * fleet))
//
// Beyond the cap, actions wait for approval with the reason, and one
// response.blast_radius alert per tenant and window says why. A device
// already acted on in the window does not count twice. Human-approved
// actions are not limited.
type Guard struct {
	MaxDevices int           // default 10
	MaxPercent float64       // default 2 (percent of the tenant's registered devices)
	Window     time.Duration // default 1h
}

// Guard defaults.
const (
	DefaultGuardDevices = 10
	DefaultGuardPercent = 2.0
	DefaultGuardWindow  = time.Hour
)

func (g Guard) withDefaults() Guard {
	if g.MaxDevices <= 0 {
		g.MaxDevices = DefaultGuardDevices
	}
	if g.MaxPercent <= 0 {
		g.MaxPercent = DefaultGuardPercent
	}
	if g.Window <= 0 {
		g.Window = DefaultGuardWindow
	}
	return g
}

// Cap returns how many devices automation may disable in one window in a
// fleet of the given size.
func (g Guard) Cap(fleet int) int {
	g = g.withDefaults()
	share := int(math.Ceil(g.MaxPercent / 100 * float64(fleet)))
	return max(g.MaxDevices, share)
}

// Options configure an [Engine]. Back-ends left nil make their steps record
// themselves as skipped, with the reason.
type Options struct {
	Store  store.Store  // required
	Clock  clock.Clock  // required
	Logger *slog.Logger // optional

	Quarantiner  Quarantiner
	Disconnecter Disconnecter
	SIMBlocker   SIMBlocker
	Revoker      Revoker
	Notifier     Notifier
	Incidents    Incidents
	Updates      Updates   // freeze_updates, schedule_update
	Alerts       AlertSink // where response.blast_radius alerts go
	Publisher    Publisher // action.taken events

	Guard Guard
	// EventTime makes the engine take an alert's LastSeen as "now" (for the
	// guard window and action times), so that a simulated week replays
	// with the guard behaving as it would live. The clock is used when
	// LastSeen is zero, and for human approvals.
	EventTime bool
	// MaxAttempts is how often a failing back-end call is tried (default 3),
	// waiting RetryBackoff (default 100ms), doubled each time, in between.
	MaxAttempts  int
	RetryBackoff time.Duration
}

// Engine turns alerts into actions. It is safe for concurrent use.
//
// Durability: an action is stored in state pending before its back-end is
// called and moved to done, failed or skipped after, each with its audit
// record in the same transaction. Handling an alert again (a repeat, a
// redelivery, a restart) finds the actions by their ids, derived from the
// alert id, playbook name and step index, and neither repeats a finished
// step nor loses a pending one: a pending step is called again, so back-ends
// must be idempotent.
//
// Concurrency: the guard's count and the pending record are made under a
// per-tenant lock, so concurrent alerts of one process cannot overshoot the
// cap. Several engine processes on one PostgreSQL store would need the
// store to serialize them (not done yet).
type Engine struct {
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	tenantMu map[event.TenantID]*sync.Mutex
	raised   map[event.TenantID]time.Time // window bucket of the last blast-radius alert
	cache    map[event.TenantID]cachedPlaybooks
	defaults defaultSet
}

// New returns an Engine.
func New(o Options) (*Engine, error) {
	if o.Store == nil {
		return nil, errors.New("respond: Options.Store is required")
	}
	if o.Clock == nil {
		return nil, errors.New("respond: Options.Clock is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.RetryBackoff < 0 {
		o.RetryBackoff = 0
	} else if o.RetryBackoff == 0 {
		o.RetryBackoff = 100 * time.Millisecond
	}
	o.Guard = o.Guard.withDefaults()
	defs, err := loadDefaults()
	if err != nil {
		return nil, fmt.Errorf("respond: default playbooks: %w", err)
	}
	return &Engine{o: o, log: o.Logger, tenantMu: map[event.TenantID]*sync.Mutex{},
		raised: map[event.TenantID]time.Time{}, cache: map[event.TenantID]cachedPlaybooks{}, defaults: defs}, nil
}

func (e *Engine) lockTenant(t event.TenantID) func() {
	e.mu.Lock()
	m := e.tenantMu[t]
	if m == nil {
		m = &sync.Mutex{}
		e.tenantMu[t] = m
	}
	e.mu.Unlock()
	m.Lock()
	return m.Unlock
}

func (e *Engine) now(a *alert.Alert) time.Time {
	if e.o.EventTime && a != nil && !a.LastSeen.IsZero() {
		return a.LastSeen.UTC()
	}
	return e.o.Clock.Now().UTC()
}

// ActionID returns the id of the action of step index of a playbook for an
// alert: "ALERT/PLAYBOOK/INDEX".
func ActionID(alertID, playbook string, index int) string {
	return alertID + "/" + playbook + "/" + strconv.Itoa(index)
}

func splitActionID(id string) (alertID, playbook string, index int, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 {
		return "", "", 0, false
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil || n < 0 {
		return "", "", 0, false
	}
	j := strings.LastIndexByte(id[:i], '/')
	if j < 0 {
		return "", "", 0, false
	}
	return id[:j], id[j+1 : i], n, true
}

func findPlaybook(pbs []Playbook, name string) *Playbook {
	for i := range pbs {
		if pbs[i].Name == name {
			return &pbs[i]
		}
	}
	return nil
}

// Handle runs every playbook of the alert's tenant whose trigger matches the
// alert (kind, severity, device selector). An alert resolved as a false
// positive restores what playbooks with restore_on_false_positive did; a
// resolved alert does nothing. Handling the same alert again does not repeat
// a step (see [Engine]). Back-end failures are recorded on their actions
// (state failed, with the reason) and logged, not returned; the returned
// error is a store failure or invalid input.
func (e *Engine) Handle(ctx context.Context, a alert.Alert) error {
	if a.Tenant == "" || a.ID == "" || a.Kind == "" {
		return fmt.Errorf("respond handle: %w: alert needs tenant, id and kind", store.ErrInvalid)
	}
	if strings.ContainsRune(a.ID, '/') {
		return fmt.Errorf("respond handle: %w: alert id %q contains '/'", store.ErrInvalid, a.ID)
	}
	switch a.State {
	case alert.FalsePositive:
		return e.restore(ctx, a, Automation)
	case alert.Resolved:
		return nil
	}
	var pbs []Playbook
	var dev store.Device
	devFound := false
	alertStored := false
	selected := map[int]bool{} // playbooks whose device selector picks the alert's device
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if pbs, err = e.loadPlaybooks(ctx, tx, a.Tenant); err != nil {
			return err
		}
		if a.Device != "" {
			dev, err = tx.Devices().Get(ctx, a.Tenant, a.Device)
			switch {
			case err == nil:
				devFound = true
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
		}
		if devFound {
			// A selector's group term may name a dynamic group: resolve it here.
			for i := range pbs {
				if pbs[i].Trigger.Selector != (Playbook{}).Trigger.Selector {
					if selected[i], err = registry.MatchTx(ctx, tx, a.Tenant, pbs[i].Trigger.Selector, dev); err != nil {
						return err
					}
				}
			}
		}
		_, err = tx.Alerts().Get(ctx, a.Tenant, a.ID)
		switch {
		case err == nil:
			alertStored = true
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("respond handle %s/%s: %w", a.Tenant, a.ID, err)
	}
	var matched []*Playbook
	for i := range pbs {
		pb := &pbs[i]
		if !pb.Matches(a) {
			continue
		}
		if pb.Trigger.Selector != (Playbook{}).Trigger.Selector && (!devFound || !selected[i]) {
			continue
		}
		matched = append(matched, pb)
	}
	if len(matched) == 0 {
		return nil
	}
	// Actions refer to their alert; it is kept on record (with the first
	// action) so that approvals and restores can find it.
	putAlert := !alertStored
	var errs []error
	for _, pb := range matched {
		if err := e.run(ctx, a, pb, 0, "", &putAlert); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("respond handle %s/%s: %w", a.Tenant, a.ID, err)
	}
	return nil
}

// run executes the playbook's steps from index start. approvedBy is the
// operator who approved a wait_approval gate ("" when automation runs on its
// own): steps then run as that operator, outside the guard and the mode.
// If *putAlert, the alert is stored with the first record written.
func (e *Engine) run(ctx context.Context, a alert.Alert, pb *Playbook, start int, approvedBy string, putAlert *bool) error {
	for i := start; i < len(pb.Steps); i++ {
		st := pb.Steps[i]
		act, execute, stop, err := e.prepare(ctx, a, pb, i, st, approvedBy, putAlert)
		if err != nil {
			return err
		}
		if execute {
			if err := e.execute(ctx, a, pb.Name, st, act); err != nil {
				return err
			}
		}
		if stop {
			return nil
		}
	}
	return nil
}

// prepare decides what happens to step i and records it: an existing action
// is left alone (or resumed if pending); a new one is stored as pending,
// approval or (for a gate) approval that stops the run.
func (e *Engine) prepare(ctx context.Context, a alert.Alert, pb *Playbook, i int, st Step, approvedBy string, putAlert *bool) (act store.Action, execute, stop bool, err error) {
	id := ActionID(a.ID, pb.Name, i)
	now := e.now(&a)
	if approvedBy != "" {
		now = e.o.Clock.Now().UTC()
	}
	disruptive := st.Kind.Disruptive()
	guarded := disruptive && approvedBy == "" && a.Device != ""
	if guarded {
		defer e.lockTenant(a.Tenant)()
	}
	var blast *guardState
	err = e.o.Store.Update(ctx, func(tx store.Tx) error {
		blast = nil
		if *putAlert {
			if err := tx.Alerts().Put(ctx, a); err != nil {
				return err
			}
		}
		old, err := tx.Actions().Get(ctx, a.Tenant, id)
		switch {
		case err == nil:
			act = old
			switch old.State {
			case store.ActionPending:
				execute = true
			case store.ActionApproval:
				stop = old.Kind == string(StepWaitApproval)
			}
			return nil
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		act = store.Action{Tenant: a.Tenant, ID: id, Device: a.Device, Kind: string(st.Kind), AlertID: a.ID,
			Playbook: pb.Name, Actor: Automation, State: store.ActionPending, CreatedAt: now, UpdatedAt: now}
		if approvedBy != "" {
			act.Actor = approvedBy
		}
		switch {
		case st.Kind == StepWaitApproval:
			act.State, act.Reason, stop = store.ActionApproval, "playbook step wait_approval: later steps wait for a human", true
		case disruptive && pb.Mode == ModeApprove && approvedBy == "":
			act.State, act.Reason = store.ActionApproval, "playbook mode approve"
		case guarded:
			g, err := e.checkGuard(ctx, tx, a.Tenant, a.Device, now)
			if err != nil {
				return err
			}
			if g.over {
				act.State, act.Reason = store.ActionApproval, g.reason()
				blast = &g
			}
		}
		execute = act.State == store.ActionPending
		if err := tx.Actions().Put(ctx, act); err != nil {
			return err
		}
		return auditAction(ctx, tx, act, now, "")
	})
	if err != nil {
		return act, false, false, fmt.Errorf("step %d (%s) of %s: %w", i, st.Kind, pb.Name, err)
	}
	*putAlert = false
	if blast != nil {
		e.raiseBlast(ctx, a.Tenant, *blast, now)
	}
	if act.State == store.ActionApproval && !execute {
		e.publishAction(ctx, act, now)
	}
	return act, execute, stop, nil
}

type guardState struct {
	over              bool
	count, cap, fleet int
	window            time.Duration
	maxDevices        int
	maxPercent        float64
}

func (g guardState) reason() string {
	return fmt.Sprintf("blast-radius guard: automation already acted on %d device(s) in the last %s; cap %d = max(%d, %g%% of %d devices)",
		g.count, g.window, g.cap, g.maxDevices, g.maxPercent, g.fleet)
}

// checkGuard reports whether acting on device now would exceed the cap.
func (e *Engine) checkGuard(ctx context.Context, tx store.Tx, tenant event.TenantID, device event.DeviceID, now time.Time) (guardState, error) {
	g := e.o.Guard
	since := now.Add(-g.Window)
	gs := guardState{window: g.Window, maxDevices: g.MaxDevices, maxPercent: g.MaxPercent}
	prior, err := tx.Actions().List(ctx, tenant, store.ActionFilter{Device: device, Since: since})
	if err != nil {
		return gs, err
	}
	for _, p := range prior {
		if StepKind(p.Kind).Disruptive() && (p.State == store.ActionDone || p.State == store.ActionPending) {
			return gs, nil // already counted in this window
		}
	}
	if gs.count, err = tx.Actions().CountDevices(ctx, tenant, DisruptiveKinds, since); err != nil {
		return gs, err
	}
	if gs.fleet, err = tx.Devices().Count(ctx, tenant, store.DeviceFilter{}); err != nil {
		return gs, err
	}
	gs.cap = g.Cap(gs.fleet)
	gs.over = gs.count >= gs.cap
	return gs, nil
}

// raiseBlast raises one response.blast_radius alert per tenant and window.
func (e *Engine) raiseBlast(ctx context.Context, tenant event.TenantID, g guardState, now time.Time) {
	bucket := now.Truncate(e.o.Guard.Window)
	e.mu.Lock()
	if last, ok := e.raised[tenant]; ok && !bucket.After(last) {
		e.mu.Unlock()
		return
	}
	e.raised[tenant] = bucket
	e.mu.Unlock()
	e.log.WarnContext(ctx, "blast-radius guard engaged", "tenant", tenant, "count", g.count, "cap", g.cap, "fleet", g.fleet)
	if e.o.Alerts == nil {
		return
	}
	a := alert.Alert{
		ID:        fmt.Sprintf("blast-radius-%d", bucket.Unix()),
		Tenant:    tenant,
		Kind:      alert.BlastRadiusGuardEngaged,
		Severity:  alert.High,
		Detector:  "respond.guard",
		FirstSeen: now,
		LastSeen:  now,
		Count:     1,
		State:     alert.Open,
		Evidence: alert.Evidence{
			Summary: g.reason() + "; further disruptive actions wait for approval",
			Values: map[string]any{"count": g.count, "cap": g.cap, "fleet": g.fleet,
				"window": g.window.String(), "max_devices": g.maxDevices, "max_percent": g.maxPercent},
		},
	}
	if err := e.o.Alerts.Raise(ctx, a); err != nil {
		e.log.ErrorContext(ctx, "blast-radius alert not raised", "tenant", tenant, "err", err)
	}
}

// execute calls the step's back-end (with retries) and records the outcome.
func (e *Engine) execute(ctx context.Context, a alert.Alert, playbook string, st Step, act store.Action) error {
	t := Target{Tenant: act.Tenant, Device: act.Device, ActionID: act.ID, AlertID: act.AlertID, Playbook: playbook,
		Actor: act.Actor, Reason: fmt.Sprintf("alert %s (%s), playbook %s", a.ID, a.Kind, playbook)}
	var undo *Undo
	var skip, incidentID string
	var callErr error
	attempts := 0
	call := func() error {
		attempts++
		var u Undo
		var err error
		switch st.Kind {
		case StepQuarantine:
			if e.o.Quarantiner == nil {
				skip = "no quarantine back-end configured"
				return nil
			}
			u, err = e.o.Quarantiner.Quarantine(ctx, t)
			undo = &u
		case StepDisconnect:
			if e.o.Disconnecter == nil {
				skip = "no disconnect back-end configured (MQTT kick, RADIUS Disconnect-Request)"
				return nil
			}
			err = e.o.Disconnecter.Disconnect(ctx, t)
			undo = &Undo{Kind: UndoNone, Note: "a disconnected device reconnects when allowed"}
		case StepSuspendSIM:
			if e.o.SIMBlocker == nil {
				skip = "no SIM suspension back-end configured"
				return nil
			}
			u, err = e.o.SIMBlocker.SuspendSIM(ctx, t)
			undo = &u
		case StepRevoke:
			if e.o.Revoker == nil {
				skip = "no revocation back-end configured"
				return nil
			}
			u, err = e.o.Revoker.Revoke(ctx, t)
			undo = &u
		case StepNotify:
			if e.o.Notifier == nil {
				skip = "no notifier configured"
				return nil
			}
			err = e.o.Notifier.Notify(ctx, Notification{Tenant: t.Tenant, Device: t.Device, Alert: a, Playbook: playbook,
				Channel: st.Params["channel"], ActionID: act.ID})
		case StepFreezeUpdates:
			if e.o.Updates == nil {
				skip = "no campaign engine configured"
				return nil
			}
			u, err = e.o.Updates.FreezeUpdates(ctx, t)
			undo = &u
		case StepScheduleUpdate:
			if e.o.Updates == nil {
				skip = "no campaign engine configured"
				return nil
			}
			u, err = e.o.Updates.ScheduleUpdate(ctx, t, st.Params["release"])
			undo = &u
		case StepOpenIncident:
			if e.o.Incidents == nil {
				skip = "no incident back-end configured"
				return nil
			}
			var id string
			id, err = e.o.Incidents.OpenIncident(ctx, IncidentRequest{Tenant: t.Tenant, Alert: a, Playbook: playbook,
				Title: st.Params["title"], ActionID: act.ID})
			if err == nil {
				skip = ""
				act.Reason = "incident " + id
				incidentID = id
			}
		default:
			return fmt.Errorf("%w: step %q cannot be executed", store.ErrInvalid, st.Kind)
		}
		return err
	}
	if st.Kind.needsDevice() && act.Device == "" {
		skip = "the alert names no device"
	} else {
		backoff := e.o.RetryBackoff
		for {
			callErr = call()
			if callErr == nil || permanent(callErr) || attempts >= e.o.MaxAttempts {
				break
			}
			e.log.WarnContext(ctx, "action failed, retrying", "tenant", act.Tenant, "device", act.Device, "action", act.ID, "attempt", attempts, "err", callErr)
			timer := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				timer.Stop()
				callErr = errors.Join(callErr, ctx.Err())
			case <-timer.C:
			}
			if ctx.Err() != nil {
				break
			}
			backoff *= 2
		}
	}
	now := e.now(&a)
	if act.Actor != Automation {
		now = e.o.Clock.Now().UTC()
	}
	act.Attempts += attempts
	act.UpdatedAt = now
	switch {
	case skip != "":
		act.State, act.Reason = store.ActionSkipped, skip
	case callErr != nil:
		act.State, act.Reason = store.ActionFailed, callErr.Error()
		e.log.ErrorContext(ctx, "action failed", "tenant", act.Tenant, "device", act.Device, "action", act.ID, "alert", act.AlertID, "err", callErr)
	default:
		act.State = store.ActionDone
		if undo != nil {
			b, err := json.Marshal(undo)
			if err != nil {
				return err
			}
			act.Undo = b
		}
	}
	// The outcome is recorded even if the caller's context ended.
	rctx := context.WithoutCancel(ctx)
	err := e.o.Store.Update(rctx, func(tx store.Tx) error {
		if err := tx.Actions().Put(rctx, act); err != nil {
			return err
		}
		return auditAction(rctx, tx, act, now, "")
	})
	if err != nil {
		return fmt.Errorf("record action %s: %w", act.ID, err)
	}
	if act.State != store.ActionDone {
		incidentID = ""
	}
	e.publishAction(ctx, act, now, incidentID)
	return nil
}

func auditAction(ctx context.Context, tx store.Tx, act store.Action, now time.Time, by string) error {
	d := map[string]any{"device": act.Device, "kind": act.Kind, "alert": act.AlertID, "playbook": act.Playbook,
		"state": act.State}
	if act.Reason != "" {
		d["reason"] = act.Reason
	}
	if len(act.Undo) > 0 {
		d["undo"] = json.RawMessage(act.Undo)
	}
	actor := act.Actor
	if by != "" {
		actor = by
	}
	return audit.Record(ctx, tx, act.Tenant, now, actor, "action."+string(act.State), "action:"+act.ID, d)
}

// publishAction publishes action.taken; incidentID, when an open_incident
// step opened or joined an incident, lets consumers (webhooks, syslog)
// correlate the action with it.
func (e *Engine) publishAction(ctx context.Context, act store.Action, now time.Time, incidentID ...string) {
	if e.o.Publisher == nil {
		return
	}
	ev := &event.Event{ID: event.NewID(now), Tenant: act.Tenant, Device: act.Device, Kind: event.ActionTaken, Time: now,
		Source: "respond", Attrs: map[string]any{"action": act.Kind, "action_id": act.ID, "alert_id": act.AlertID,
			"playbook": act.Playbook, "outcome": string(act.State)}}
	if len(incidentID) > 0 && incidentID[0] != "" {
		ev.Attrs["incident_id"] = incidentID[0]
	}
	if err := e.o.Publisher.Publish(ctx, ev); err != nil {
		e.log.WarnContext(ctx, "action event not published", "tenant", act.Tenant, "action", act.ID, "err", err)
	}
}

// MaxDecisionReason is the longest reason an operator may give for a
// decision on an action waiting for approval, in bytes.
const MaxDecisionReason = 500

// CheckDecisionReason validates the reason given with a decision: a
// rejection needs one (so that whoever reads the action later knows why it
// never ran); an approval may have one. A reason is one line of printable
// UTF-8 text of at most [MaxDecisionReason] bytes.
func CheckDecisionReason(reject bool, reason string) error {
	switch {
	case strings.TrimSpace(reason) == "" && reject:
		return errors.New("a rejection needs a reason (why the action must not run)")
	case len(reason) > MaxDecisionReason:
		return fmt.Errorf("reason is %d bytes; at most %d", len(reason), MaxDecisionReason)
	case !utf8.ValidString(reason):
		return errors.New("reason is not valid UTF-8")
	case strings.IndexFunc(reason, unicode.IsControl) >= 0:
		return errors.New("reason must be one line of printable text")
	}
	return nil
}

// Approve carries out an action waiting for approval, as operator, with an
// optional reason kept on the action and in the audit record. For a
// wait_approval step, the playbook's later steps then run as operator. The
// blast-radius guard does not apply to approved actions. An action of
// another tenant is not found; one not waiting returns an error matching
// [ErrNotAwaiting].
func (e *Engine) Approve(ctx context.Context, tenant event.TenantID, actionID, operator, reason string) error {
	return e.decide(ctx, tenant, actionID, operator, reason, true)
}

// Reject declines an action waiting for approval, as operator, for reason
// (required, see [CheckDecisionReason]): the action is stored rejected with
// "rejected by OPERATOR: REASON", audited, and published as action.taken.
// For a wait_approval step the playbook's later steps never run.
func (e *Engine) Reject(ctx context.Context, tenant event.TenantID, actionID, operator, reason string) error {
	return e.decide(ctx, tenant, actionID, operator, reason, false)
}

func (e *Engine) decide(ctx context.Context, tenant event.TenantID, actionID, operator, reason string, approve bool) error {
	op := "reject"
	if approve {
		op = "approve"
	}
	if operator == "" || operator == Automation {
		return fmt.Errorf("respond %s %s: %w: an operator must decide", op, actionID, store.ErrInvalid)
	}
	if err := CheckDecisionReason(!approve, reason); err != nil {
		return fmt.Errorf("respond %s %s: %w: %w", op, actionID, store.ErrInvalid, err)
	}
	reason = strings.TrimSpace(reason)
	by := " by " + operator
	if reason != "" {
		by += ": " + reason
	}
	now := e.o.Clock.Now().UTC()
	var act store.Action
	var a alert.Alert
	var pbs []Playbook
	err := e.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if act, err = tx.Actions().Get(ctx, tenant, actionID); err != nil {
			return err
		}
		if act.State != store.ActionApproval {
			return fmt.Errorf("%w (state %s): %w", ErrNotAwaiting, act.State, store.ErrConflict)
		}
		if approve {
			if a, err = tx.Alerts().Get(ctx, tenant, act.AlertID); err != nil {
				return fmt.Errorf("alert %s: %w", act.AlertID, err)
			}
			if pbs, err = e.loadPlaybooks(ctx, tx, tenant); err != nil {
				return err
			}
		}
		act.Actor, act.UpdatedAt = operator, now
		switch {
		case !approve:
			act.State, act.Reason = store.ActionRejected, "rejected"+by
		case act.Kind == string(StepWaitApproval):
			act.State, act.Reason = store.ActionDone, "approved"+by
		default:
			act.State, act.Reason = store.ActionPending, "approved"+by
		}
		if err := tx.Actions().Put(ctx, act); err != nil {
			return err
		}
		return auditAction(ctx, tx, act, now, operator)
	})
	if err != nil {
		return fmt.Errorf("respond %s %s/%s: %w", op, tenant, actionID, err)
	}
	if !approve || act.State == store.ActionDone {
		e.publishAction(ctx, act, now)
	}
	if !approve {
		return nil
	}
	_, pbName, idx, ok := splitActionID(actionID)
	pb := findPlaybook(pbs, pbName)
	if act.Kind == string(StepWaitApproval) {
		if !ok || pb == nil {
			return fmt.Errorf("respond approve %s/%s: playbook %q no longer exists: %w", tenant, actionID, pbName, store.ErrNotFound)
		}
		no := false
		return e.run(ctx, a, pb, idx+1, operator, &no)
	}
	st := Step{Kind: StepKind(act.Kind)}
	if ok && pb != nil && idx < len(pb.Steps) && pb.Steps[idx].Kind == st.Kind {
		st = pb.Steps[idx]
	}
	if err := e.execute(ctx, a, pbName, st, act); err != nil {
		return fmt.Errorf("respond approve %s/%s: %w", tenant, actionID, err)
	}
	return nil
}

// AlertStateChanged is the engine's side of an alert.state_changed event
// (an operator moved the alert elsewhere, through the API): a move to
// false_positive restores what the alert's playbooks did, as actor (see
// [Engine.RestoreFalsePositive]); other moves need nothing. It is safe to
// call again for the same change (a redelivered event): what is undone is
// not undone twice. An alert that is gone, or no longer a false positive,
// is not an error.
func (e *Engine) AlertStateChanged(ctx context.Context, tenant event.TenantID, alertID string, to alert.State, actor string) error {
	if to != alert.FalsePositive {
		return nil
	}
	if actor == "" {
		actor = Automation
	}
	err := e.RestoreFalsePositive(ctx, tenant, alertID, actor)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		e.log.WarnContext(ctx, "false positive not restored", "tenant", tenant, "alert", alertID, "err", err)
		return nil
	}
	return err
}

// Resolve sets an alert's state as operator (audited) and publishes
// alert.state_changed. Resolving it as a false positive restores devices as
// its playbooks allow (see Handle).
func (e *Engine) Resolve(ctx context.Context, tenant event.TenantID, alertID string, state alert.State, operator string) error {
	now := e.o.Clock.Now().UTC()
	var a alert.Alert
	err := e.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if a, err = tx.Alerts().Get(ctx, tenant, alertID); err != nil {
			return err
		}
		if err := tx.Alerts().SetState(ctx, tenant, alertID, state); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, operator, "alert.state", "alert:"+alertID, map[string]any{
			"from": a.State, "to": state})
	})
	if err != nil {
		return fmt.Errorf("respond resolve %s/%s: %w", tenant, alertID, err)
	}
	from := a.State
	a.State = state
	if e.o.Publisher != nil {
		if err := e.o.Publisher.Publish(ctx, alert.StateChanged(a, from, operator, "", now)); err != nil {
			e.log.WarnContext(ctx, "alert state event not published", "tenant", tenant, "alert", alertID, "err", err)
		}
	}
	if state != alert.FalsePositive {
		return nil
	}
	return e.restore(ctx, a, operator)
}

// RestoreFalsePositive undoes what the alert's playbooks did, as actor,
// after the alert was resolved as a false positive elsewhere (the API moves
// the alert's state itself): the done actions of playbooks with
// restore_on_false_positive are undone, newest first, and those still
// waiting are rejected. An alert of another tenant is not found; an alert
// not in state false_positive is refused with store.ErrConflict.
func (e *Engine) RestoreFalsePositive(ctx context.Context, tenant event.TenantID, alertID, actor string) error {
	var a alert.Alert
	err := e.o.Store.View(ctx, func(tx store.Tx) (err error) {
		a, err = tx.Alerts().Get(ctx, tenant, alertID)
		return err
	})
	if err != nil {
		return fmt.Errorf("respond restore %s/%s: %w", tenant, alertID, err)
	}
	if a.State != alert.FalsePositive {
		return fmt.Errorf("respond restore %s/%s: alert is %s, not %s: %w", tenant, alertID, a.State, alert.FalsePositive, store.ErrConflict)
	}
	return e.restore(ctx, a, actor)
}

// restore undoes, newest first, the done actions of the alert whose
// playbook has restore_on_false_positive, and rejects its actions still
// waiting for approval.
func (e *Engine) restore(ctx context.Context, a alert.Alert, actor string) error {
	var acts []store.Action
	var pbs []Playbook
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if pbs, err = e.loadPlaybooks(ctx, tx, a.Tenant); err != nil {
			return err
		}
		all, err := tx.Actions().List(ctx, a.Tenant, store.ActionFilter{Device: a.Device})
		if err != nil {
			return err
		}
		for _, act := range all {
			if act.AlertID == a.ID {
				acts = append(acts, act)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("respond restore %s/%s: %w", a.Tenant, a.ID, err)
	}
	sort.SliceStable(acts, func(i, j int) bool {
		_, pi, ii, _ := splitActionID(acts[i].ID)
		_, pj, ij, _ := splitActionID(acts[j].ID)
		if pi != pj {
			return pi < pj
		}
		return ii > ij
	})
	var errs []error
	for _, act := range acts {
		pb := findPlaybook(pbs, act.Playbook)
		if pb == nil || !pb.RestoreOnFalsePositive {
			continue
		}
		if err := e.undoOne(ctx, a, act, actor); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("respond restore %s/%s: %w", a.Tenant, a.ID, err)
	}
	return nil
}

func (e *Engine) undoOne(ctx context.Context, a alert.Alert, act store.Action, actor string) error {
	now := e.o.Clock.Now().UTC()
	if e.o.EventTime && actor == Automation {
		now = e.now(&a)
	}
	switch act.State {
	case store.ActionApproval, store.ActionPending:
		act.State, act.Reason = store.ActionRejected, "alert resolved as a false positive"
	case store.ActionDone:
		var u Undo
		if len(act.Undo) > 0 {
			if err := json.Unmarshal(act.Undo, &u); err != nil {
				return fmt.Errorf("action %s: undo record: %w", act.ID, err)
			}
		}
		t := Target{Tenant: act.Tenant, Device: act.Device, ActionID: act.ID, AlertID: act.AlertID, Playbook: act.Playbook,
			Actor: actor, Reason: fmt.Sprintf("alert %s resolved as a false positive", a.ID)}
		var err error
		switch u.Kind {
		case UndoReleaseQuarantine:
			if e.o.Quarantiner == nil {
				return fmt.Errorf("action %s: no quarantine back-end to release", act.ID)
			}
			err = e.o.Quarantiner.Release(ctx, t, u)
		case UndoResumeSIM:
			if e.o.SIMBlocker == nil {
				return fmt.Errorf("action %s: no SIM back-end to resume", act.ID)
			}
			err = e.o.SIMBlocker.ResumeSIM(ctx, t, u)
		case UndoResumeCampaigns, UndoCancelCampaign:
			if e.o.Updates == nil {
				return fmt.Errorf("action %s: no campaign engine to undo with", act.ID)
			}
			if u.Kind == UndoResumeCampaigns {
				err = e.o.Updates.ThawUpdates(ctx, t, u)
			} else {
				err = e.o.Updates.CancelUpdate(ctx, t, u)
			}
		default:
			return nil // nothing to reverse (notify, disconnect, revoke needs re-enrolment)
		}
		if err != nil {
			act.Reason = "undo failed: " + err.Error()
			act.UpdatedAt = now
			_ = e.o.Store.Update(ctx, func(tx store.Tx) error {
				if err := tx.Actions().Put(ctx, act); err != nil {
					return err
				}
				return auditAction(ctx, tx, act, now, actor)
			})
			return fmt.Errorf("action %s: undo: %w", act.ID, err)
		}
		act.State, act.Reason = store.ActionUndone, "alert resolved as a false positive"
	default:
		return nil
	}
	act.UpdatedAt = now
	err := e.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Actions().Put(ctx, act); err != nil {
			return err
		}
		return auditAction(ctx, tx, act, now, actor)
	})
	if err != nil {
		return fmt.Errorf("action %s: %w", act.ID, err)
	}
	e.publishAction(ctx, act, now)
	return nil
}

// Resume re-runs the playbooks of every alert of the tenant with a pending
// action (after a restart): pending steps are called again, finished ones
// are not repeated.
func (e *Engine) Resume(ctx context.Context, tenant event.TenantID) error {
	var alerts []alert.Alert
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		pend, err := tx.Actions().List(ctx, tenant, store.ActionFilter{State: store.ActionPending})
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, p := range pend {
			if seen[p.AlertID] {
				continue
			}
			seen[p.AlertID] = true
			a, err := tx.Alerts().Get(ctx, tenant, p.AlertID)
			if err != nil {
				return fmt.Errorf("alert %s of pending action %s: %w", p.AlertID, p.ID, err)
			}
			alerts = append(alerts, a)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("respond resume %s: %w", tenant, err)
	}
	var errs []error
	for _, a := range alerts {
		if a.State == alert.FalsePositive || a.State == alert.Resolved {
			a.State = alert.Open // finish what was started; a later resolution restores
		}
		errs = append(errs, e.Handle(ctx, a))
	}
	return errors.Join(errs...)
}
