// Package incident gathers alerts, response actions and operators' notes
// about one security problem on one timeline, moves it through its states,
// carries the runbook of its alert kind, and reports how fast it was
// detected, contained and closed.
//
// Contract:
//   - Incidents are opened by playbooks (the open_incident step: see
//     [Service.OpenIncident], which attaches the alert to the device's open
//     incident when there is one) or by hand ([Service.Open]).
//   - States move open → contained → eradicated → recovered → closed, one
//     step at a time, and any state but closed may also close directly
//     (a false alarm). Closed is final. Every move is a compare-and-set
//     ([store.Incidents.Update]), so two concurrent moves cannot both win.
//   - Every change (open, attach, note, state) writes its timeline entry and
//     its audit record, and tells the [Outbox] (webhooks), in the same store
//     transaction as the change.
//   - An alert is on at most one incident; attaching it again is a no-op
//     that returns the incident it is on. An action is recorded on every
//     incident holding its alert ([Service.OnAction]); a disruptive action
//     done by automation moves an open incident to contained.
//   - Every method takes the tenant explicitly; an incident of another
//     tenant is not found.
//
// Times: an incident opened by automation takes the alert's LastSeen as its
// opening time (so a replayed scenario reports the same durations as a live
// run); human changes take the injected clock.
package incident

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// Automation is the actor of changes made by playbooks.
const Automation = "automation"

// Errors, wrapped with the operation. Store errors (store.ErrNotFound,
// store.ErrConflict) pass through wrapped as well.
var (
	// ErrTransition: the state change is not allowed from the current state.
	ErrTransition = errors.New("transition not allowed")
	// ErrInvalid: bad input (empty title, unknown state, oversized note).
	ErrInvalid = errors.New("invalid incident input")
)

// Limits on operator input.
const (
	MaxTitleBytes = 200
	MaxNoteBytes  = 4000
)

// Change types told to the [Outbox].
const (
	ChangeOpened  = "incident.opened"  // a new incident
	ChangeUpdated = "incident.updated" // an alert, action or note was added
	ChangeState   = "incident.state"   // the state moved
)

// Change is what happened to an incident, for exporters.
type Change struct {
	Type     string               `json:"type"`
	Incident store.Incident       `json:"incident"`
	Entry    *store.IncidentEntry `json:"entry,omitempty"`
	Time     time.Time            `json:"time"`
}

// Outbox records a change for export inside the change's own transaction
// (package export's webhooks implement it).
type Outbox interface {
	Emit(ctx context.Context, tx store.Tx, c Change) error
}

// Options configure a [Service].
type Options struct {
	Store  store.Store // required
	Clock  clock.Clock // required
	Logger *slog.Logger
	Rand   io.Reader // ids; crypto/rand when nil
	Outbox Outbox    // nil: changes are not exported
}

// Service manages incidents. It is safe for concurrent use.
type Service struct {
	o   Options
	log *slog.Logger
}

var _ respond.Incidents = (*Service)(nil)

// New returns a Service; it starts nothing.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Clock == nil {
		return nil, errors.New("incident: store and clock are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	return &Service{o: o, log: o.Logger}, nil
}

// transitions lists the states each state may move to.
var transitions = map[store.IncidentState][]store.IncidentState{
	store.IncidentOpen:       {store.IncidentContained, store.IncidentClosed},
	store.IncidentContained:  {store.IncidentEradicated, store.IncidentClosed},
	store.IncidentEradicated: {store.IncidentRecovered, store.IncidentClosed},
	store.IncidentRecovered:  {store.IncidentClosed},
	store.IncidentClosed:     nil,
}

// States lists every state in order.
func States() []store.IncidentState {
	return []store.IncidentState{store.IncidentOpen, store.IncidentContained, store.IncidentEradicated, store.IncidentRecovered, store.IncidentClosed}
}

// CanMove reports whether an incident in state from may move to state to.
func CanMove(from, to store.IncidentState) bool {
	return slices.Contains(transitions[from], to)
}

func (s *Service) newID(prefix string) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(s.o.Rand, b[:]); err != nil {
		return "", fmt.Errorf("incident: random id: %w", err)
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// OpenRequest opens an incident by hand. Alerts are attached at once;
// Severity, Kind and Device default from the first alert.
type OpenRequest struct {
	Title    string         `json:"title"`
	Severity string         `json:"severity,omitempty"` // info|low|medium|high|critical (default medium)
	Kind     alert.Kind     `json:"kind,omitempty"`     // selects the runbook
	Device   event.DeviceID `json:"device,omitempty"`
	Alerts   []string       `json:"alerts,omitempty"`
}

// Open opens an incident on behalf of actor.
func (s *Service) Open(ctx context.Context, tenant event.TenantID, actor string, r OpenRequest) (store.Incident, error) {
	r.Title = strings.TrimSpace(r.Title)
	if r.Title == "" || len(r.Title) > MaxTitleBytes {
		return store.Incident{}, fmt.Errorf("incident open: %w: title must be 1-%d bytes", ErrInvalid, MaxTitleBytes)
	}
	sev := alert.Medium
	if r.Severity != "" {
		if sev = alert.ParseSeverity(r.Severity); sev == 0 {
			return store.Incident{}, fmt.Errorf("incident open: %w: unknown severity %q", ErrInvalid, r.Severity)
		}
	}
	if len(r.Alerts) > 100 {
		return store.Incident{}, fmt.Errorf("incident open: %w: at most 100 alerts", ErrInvalid)
	}
	id, err := s.newID("inc-")
	if err != nil {
		return store.Incident{}, err
	}
	now := s.o.Clock.Now().UTC()
	inc := store.Incident{Tenant: tenant, ID: id, Title: r.Title, State: store.IncidentOpen, Severity: sev, Kind: r.Kind,
		Device: r.Device, OpenedBy: actor, StartedAt: now, DetectedAt: now, OpenedAt: now, UpdatedAt: now}
	err = s.o.Store.Update(ctx, func(tx store.Tx) error {
		var alerts []alert.Alert
		for _, aid := range r.Alerts {
			a, err := tx.Alerts().Get(ctx, tenant, aid)
			if err != nil {
				return fmt.Errorf("alert %s: %w", aid, err)
			}
			on, err := tx.Incidents().WithEntry(ctx, tenant, alertRef(aid))
			if err != nil {
				return err
			}
			if len(on) > 0 {
				return fmt.Errorf("alert %s is on incident %s: %w", aid, on[0], store.ErrConflict)
			}
			alerts = append(alerts, a)
		}
		if len(alerts) > 0 {
			first := alerts[0]
			inc.StartedAt, inc.DetectedAt = startOf(first), first.FirstSeen.UTC()
			if r.Severity == "" {
				inc.Severity = first.Severity
			}
			if inc.Kind == "" {
				inc.Kind = first.Kind
			}
			if inc.Device == "" {
				inc.Device = first.Device
			}
		}
		if err := s.create(ctx, tx, inc, now); err != nil {
			return err
		}
		for _, a := range alerts {
			if err := s.attach(ctx, tx, &inc, a, actor, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return store.Incident{}, fmt.Errorf("incident open: %w", err)
	}
	s.log.InfoContext(ctx, "incident opened", "tenant", tenant, "incident", inc.ID, "actor", actor)
	return inc, nil
}

// create stores a new incident with its opened entry, audit record and
// export.
func (s *Service) create(ctx context.Context, tx store.Tx, inc store.Incident, now time.Time) error {
	if err := tx.Incidents().Create(ctx, inc); err != nil {
		return err
	}
	e := store.IncidentEntry{Tenant: inc.Tenant, Incident: inc.ID, ID: "opened", Time: inc.OpenedAt, Kind: store.EntryOpened,
		Actor: inc.OpenedBy, Text: "incident opened: " + inc.Title}
	if err := tx.Incidents().AddEntry(ctx, e); err != nil {
		return err
	}
	if err := audit.Record(ctx, tx, inc.Tenant, now, inc.OpenedBy, "incident.open", "incident:"+inc.ID,
		map[string]any{"title": inc.Title, "severity": inc.Severity.String(), "kind": inc.Kind, "device": inc.Device}); err != nil {
		return err
	}
	return s.emit(ctx, tx, Change{Type: ChangeOpened, Incident: inc, Entry: &e, Time: now})
}

func (s *Service) emit(ctx context.Context, tx store.Tx, c Change) error {
	if s.o.Outbox == nil {
		return nil
	}
	return s.o.Outbox.Emit(ctx, tx, c)
}

func alertRef(id string) string { return "alert:" + id }

// actionRef names the entry of one outcome of an action: an action that is
// done and later undone has two entries.
func actionRef(id string, st store.ActionState) string { return "action:" + id + "#" + string(st) }

// startOf is the first sign of an alert: its earliest evidence event, or
// its FirstSeen.
func startOf(a alert.Alert) time.Time {
	t := a.FirstSeen
	for _, e := range a.Evidence.Events {
		if !e.Time.IsZero() && e.Time.Before(t) {
			t = e.Time
		}
	}
	return t.UTC()
}

// attach puts alert a on inc's timeline (inc is updated in place and in the
// store), then every action already taken for it.
func (s *Service) attach(ctx context.Context, tx store.Tx, inc *store.Incident, a alert.Alert, actor string, now time.Time) error {
	data, _ := json.Marshal(map[string]any{"alert": a.ID, "kind": a.Kind, "device": a.Device, "severity": a.Severity.String(), "summary": a.Evidence.Summary})
	e := store.IncidentEntry{Tenant: inc.Tenant, Incident: inc.ID, ID: alertRef(a.ID), Time: a.FirstSeen.UTC(), Kind: store.EntryAlert,
		Actor: actor, Text: fmt.Sprintf("alert %s on %s: %s", a.Kind, a.Device, a.Evidence.Summary), Data: data}
	if err := tx.Incidents().AddEntry(ctx, e); err != nil {
		return err
	}
	prev := inc.State
	changed := false
	if a.Severity > inc.Severity {
		inc.Severity, changed = a.Severity, true
	}
	if st := startOf(a); st.Before(inc.StartedAt) {
		inc.StartedAt, changed = st, true
	}
	if fs := a.FirstSeen.UTC(); fs.Before(inc.DetectedAt) {
		inc.DetectedAt, changed = fs, true
	}
	if changed {
		inc.UpdatedAt = now
		if err := tx.Incidents().Update(ctx, *inc, prev); err != nil {
			return err
		}
	}
	if err := audit.Record(ctx, tx, inc.Tenant, now, actor, "incident.attach_alert", "incident:"+inc.ID,
		map[string]any{"alert": a.ID, "kind": a.Kind, "device": a.Device}); err != nil {
		return err
	}
	if err := s.emit(ctx, tx, Change{Type: ChangeUpdated, Incident: *inc, Entry: &e, Time: now}); err != nil {
		return err
	}
	// Actions already taken for the alert (a playbook's quarantine usually
	// runs before its incident step).
	acts, err := tx.Actions().List(ctx, inc.Tenant, store.ActionFilter{Device: a.Device})
	if err != nil {
		return err
	}
	for _, act := range acts {
		if act.AlertID != a.ID {
			continue
		}
		if err := s.recordAction(ctx, tx, inc, act, now); err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return nil
}

// recordAction puts an action's outcome on inc's timeline (each outcome
// once); a disruptive one done moves an open incident to contained.
// ErrConflict if that outcome is there already.
func (s *Service) recordAction(ctx context.Context, tx store.Tx, inc *store.Incident, act store.Action, now time.Time) error {
	switch act.State {
	case store.ActionPending, store.ActionApproval:
		return nil // recorded once it has an outcome
	}
	data, _ := json.Marshal(map[string]any{"action": act.ID, "kind": act.Kind, "device": act.Device, "state": act.State,
		"playbook": act.Playbook, "reason": act.Reason})
	at := act.UpdatedAt.UTC()
	if at.IsZero() {
		at = now
	}
	e := store.IncidentEntry{Tenant: inc.Tenant, Incident: inc.ID, ID: actionRef(act.ID, act.State), Time: at, Kind: store.EntryAction,
		Actor: act.Actor, Text: fmt.Sprintf("action %s on %s: %s", act.Kind, act.Device, act.State), Data: data}
	if err := tx.Incidents().AddEntry(ctx, e); err != nil {
		return err
	}
	if err := s.emit(ctx, tx, Change{Type: ChangeUpdated, Incident: *inc, Entry: &e, Time: now}); err != nil {
		return err
	}
	if act.State == store.ActionDone && inc.State == store.IncidentOpen && slices.Contains(respond.DisruptiveKinds, act.Kind) {
		return s.move(ctx, tx, inc, store.IncidentContained, Automation,
			fmt.Sprintf("contained by action %s (%s on %s)", act.ID, act.Kind, act.Device), at, now)
	}
	return nil
}

// move changes inc's state (compare-and-set) with its entry, audit record
// and export. at is when the state was reached.
func (s *Service) move(ctx context.Context, tx store.Tx, inc *store.Incident, to store.IncidentState, actor, note string, at, now time.Time) error {
	from := inc.State
	if !CanMove(from, to) {
		return fmt.Errorf("%w: incident is %s; it can move to %v", ErrTransition, from, transitions[from])
	}
	next := *inc
	next.State, next.UpdatedAt = to, now
	t := at.UTC()
	switch to {
	case store.IncidentContained:
		next.ContainedAt = &t
	case store.IncidentEradicated:
		next.EradicatedAt = &t
	case store.IncidentRecovered:
		next.RecoveredAt = &t
	case store.IncidentClosed:
		next.ClosedAt = &t
	}
	if err := tx.Incidents().Update(ctx, next, from); err != nil {
		return err
	}
	id, err := s.newID("state-")
	if err != nil {
		return err
	}
	text := fmt.Sprintf("state %s → %s", from, to)
	if note != "" {
		text += ": " + note
	}
	data, _ := json.Marshal(map[string]any{"from": from, "to": to})
	e := store.IncidentEntry{Tenant: inc.Tenant, Incident: inc.ID, ID: id, Time: t, Kind: store.EntryState, Actor: actor, Text: text, Data: data}
	if err := tx.Incidents().AddEntry(ctx, e); err != nil {
		return err
	}
	details := map[string]any{"from": from, "to": to}
	if note != "" {
		details["note"] = note
	}
	if err := audit.Record(ctx, tx, inc.Tenant, now, actor, "incident.state", "incident:"+inc.ID, details); err != nil {
		return err
	}
	*inc = next
	return s.emit(ctx, tx, Change{Type: ChangeState, Incident: next, Entry: &e, Time: now})
}

// OpenIncident implements respond.Incidents for the open_incident playbook
// step: the alert goes on the incident already holding it, else on the
// newest open incident of its device, else on a new incident. It returns
// the incident's id.
func (s *Service) OpenIncident(ctx context.Context, r respond.IncidentRequest) (string, error) {
	a := r.Alert
	now := a.LastSeen.UTC()
	if now.IsZero() {
		now = s.o.Clock.Now().UTC()
	}
	var id string
	opened := false
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		opened = false
		on, err := tx.Incidents().WithEntry(ctx, r.Tenant, alertRef(a.ID))
		if err != nil {
			return err
		}
		if len(on) > 0 {
			id = on[0]
			return nil
		}
		if a.Device != "" {
			open, err := tx.Incidents().List(ctx, r.Tenant, store.IncidentFilter{Device: a.Device, Open: true, Limit: 1})
			if err != nil {
				return err
			}
			if len(open) > 0 {
				inc := open[0]
				id = inc.ID
				return s.attach(ctx, tx, &inc, a, Automation, now)
			}
		}
		if id, err = s.newID("inc-"); err != nil {
			return err
		}
		title := strings.TrimSpace(r.Title)
		if title == "" {
			title = fmt.Sprintf("%s on %s", a.Kind, a.Device)
		}
		if len(title) > MaxTitleBytes {
			title = title[:MaxTitleBytes]
		}
		inc := store.Incident{Tenant: r.Tenant, ID: id, Title: title, State: store.IncidentOpen, Severity: a.Severity, Kind: a.Kind,
			Device: a.Device, OpenedBy: Automation, StartedAt: startOf(a), DetectedAt: a.FirstSeen.UTC(), OpenedAt: now, UpdatedAt: now}
		if err := s.create(ctx, tx, inc, now); err != nil {
			return err
		}
		opened = true
		return s.attach(ctx, tx, &inc, a, Automation, now)
	})
	if err != nil {
		return "", fmt.Errorf("incident for alert %s: %w", a.ID, err)
	}
	if opened {
		s.log.InfoContext(ctx, "incident opened", "tenant", r.Tenant, "incident", id, "alert", a.ID, "device", a.Device, "playbook", r.Playbook)
	}
	return id, nil
}

// OnAction records a response action on every incident holding its alert
// (called for each action.taken event). Unknown actions, actions without an
// alert and actions already recorded are ignored.
func (s *Service) OnAction(ctx context.Context, tenant event.TenantID, actionID string) error {
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		act, err := tx.Actions().Get(ctx, tenant, actionID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if act.AlertID == "" {
			return nil
		}
		ids, err := tx.Incidents().WithEntry(ctx, tenant, alertRef(act.AlertID))
		if err != nil {
			return err
		}
		now := act.UpdatedAt.UTC()
		if now.IsZero() {
			now = s.o.Clock.Now().UTC()
		}
		for _, id := range ids {
			inc, err := tx.Incidents().Get(ctx, tenant, id)
			if err != nil {
				return err
			}
			if err := s.recordAction(ctx, tx, &inc, act, now); err != nil && !errors.Is(err, store.ErrConflict) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("incident: record action %s: %w", actionID, err)
	}
	return nil
}

// AttachAlert puts an alert on an incident by hand; ErrConflict if the alert
// is on another incident. Attaching it again to the same incident changes
// nothing.
func (s *Service) AttachAlert(ctx context.Context, tenant event.TenantID, id, alertID, actor string) (store.Incident, error) {
	now := s.o.Clock.Now().UTC()
	var inc store.Incident
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if inc, err = tx.Incidents().Get(ctx, tenant, id); err != nil {
			return err
		}
		a, err := tx.Alerts().Get(ctx, tenant, alertID)
		if err != nil {
			return err
		}
		on, err := tx.Incidents().WithEntry(ctx, tenant, alertRef(alertID))
		if err != nil {
			return err
		}
		if len(on) > 0 {
			return fmt.Errorf("alert %s is on incident %s: %w", alertID, on[0], store.ErrConflict)
		}
		if inc.State == store.IncidentClosed {
			return fmt.Errorf("%w: incident is closed", ErrTransition)
		}
		return s.attach(ctx, tx, &inc, a, actor, now)
	})
	if err != nil {
		return store.Incident{}, fmt.Errorf("incident %s attach alert: %w", id, err)
	}
	return inc, nil
}

// AddNote writes an operator's note on the timeline.
func (s *Service) AddNote(ctx context.Context, tenant event.TenantID, id, actor, text string) (store.IncidentEntry, error) {
	text = strings.TrimSpace(text)
	if text == "" || len(text) > MaxNoteBytes {
		return store.IncidentEntry{}, fmt.Errorf("incident note: %w: text must be 1-%d bytes", ErrInvalid, MaxNoteBytes)
	}
	eid, err := s.newID("note-")
	if err != nil {
		return store.IncidentEntry{}, err
	}
	now := s.o.Clock.Now().UTC()
	e := store.IncidentEntry{Tenant: tenant, Incident: id, ID: eid, Time: now, Kind: store.EntryNote, Actor: actor, Text: text}
	err = s.o.Store.Update(ctx, func(tx store.Tx) error {
		inc, err := tx.Incidents().Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		if err := tx.Incidents().AddEntry(ctx, e); err != nil {
			return err
		}
		if err := audit.Record(ctx, tx, tenant, now, actor, "incident.note", "incident:"+id, map[string]any{"note": text}); err != nil {
			return err
		}
		return s.emit(ctx, tx, Change{Type: ChangeUpdated, Incident: inc, Entry: &e, Time: now})
	})
	if err != nil {
		return store.IncidentEntry{}, fmt.Errorf("incident %s note: %w", id, err)
	}
	return e, nil
}

// Transition moves an incident to state to on behalf of actor, with an
// optional note.
func (s *Service) Transition(ctx context.Context, tenant event.TenantID, id string, to store.IncidentState, actor, note string) (store.Incident, error) {
	if _, ok := transitions[to]; !ok {
		return store.Incident{}, fmt.Errorf("incident transition: %w: unknown state %q (want one of %v)", ErrInvalid, to, States())
	}
	if len(note) > MaxNoteBytes {
		return store.Incident{}, fmt.Errorf("incident transition: %w: note longer than %d bytes", ErrInvalid, MaxNoteBytes)
	}
	now := s.o.Clock.Now().UTC()
	var inc store.Incident
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if inc, err = tx.Incidents().Get(ctx, tenant, id); err != nil {
			return err
		}
		return s.move(ctx, tx, &inc, to, actor, strings.TrimSpace(note), now, now)
	})
	if err != nil {
		return store.Incident{}, fmt.Errorf("incident %s: %w", id, err)
	}
	s.log.InfoContext(ctx, "incident state changed", "tenant", tenant, "incident", id, "state", to, "actor", actor)
	return inc, nil
}

// List returns the tenant's incidents, newest first.
func (s *Service) List(ctx context.Context, tenant event.TenantID, f store.IncidentFilter) ([]store.Incident, error) {
	var out []store.Incident
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		out, err = tx.Incidents().List(ctx, tenant, f)
		return err
	})
	return out, err
}

// Detail is an incident with its timeline and durations.
type Detail struct {
	Incident store.Incident        `json:"incident"`
	Metrics  Metrics               `json:"metrics"`
	Timeline []store.IncidentEntry `json:"timeline"`
}

// Get returns an incident with its timeline.
func (s *Service) Get(ctx context.Context, tenant event.TenantID, id string) (Detail, error) {
	var d Detail
	err := s.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if d.Incident, err = tx.Incidents().Get(ctx, tenant, id); err != nil {
			return err
		}
		d.Timeline, err = tx.Incidents().Timeline(ctx, tenant, id)
		return err
	})
	if err != nil {
		return Detail{}, fmt.Errorf("incident %s: %w", id, err)
	}
	if d.Timeline == nil {
		d.Timeline = []store.IncidentEntry{}
	}
	d.Metrics = MetricsOf(d.Incident, s.o.Clock.Now())
	return d, nil
}
