package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// List limits of the alert, action and device routes.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
	maxNoteBytes     = 1000
)

// ident is the shape of device ids, alert kinds and model names accepted in
// query filters: anything else cannot match a stored value and is refused
// as a typo.
var ident = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// query reads the filters of a list route; each bad value is a 400 naming
// its parameter.
type query struct{ v url.Values }

func badParam(name, want string) *Error {
	return errorf(http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("query parameter %q must be %s", name, want))
}

func (q query) ident(name string) (string, error) {
	v := q.v.Get(name)
	if v != "" && !ident.MatchString(v) {
		return "", badParam(name, "1-128 letters, digits or ._:-")
	}
	return v, nil
}

func (q query) oneOf(name string, allowed ...string) (string, error) {
	v := q.v.Get(name)
	if v == "" {
		return "", nil
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", badParam(name, fmt.Sprintf("one of %v", allowed))
}

func (q query) limit() (int, error) {
	v := q.v.Get("limit")
	if v == "" {
		return defaultListLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxListLimit {
		return 0, badParam("limit", fmt.Sprintf("an integer in 1-%d", maxListLimit))
	}
	return n, nil
}

func (q query) since() (time.Time, error) {
	v := q.v.Get("since")
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badParam("since", "an RFC 3339 time such as 2026-11-24T12:00:00Z")
	}
	return t, nil
}

// --- alerts

var alertStates = []string{string(alert.Open), string(alert.Acknowledged), string(alert.Resolved), string(alert.FalsePositive)}

func (s *Server) listAlerts(ctx context.Context, c *call, _ noBody) ([]alert.Alert, error) {
	q := query{c.r.URL.Query()}
	var f store.AlertFilter
	dev, err := q.ident("device")
	if err != nil {
		return nil, err
	}
	kind, err := q.ident("kind")
	if err != nil {
		return nil, err
	}
	state, err := q.oneOf("state", alertStates...)
	if err != nil {
		return nil, err
	}
	if f.Since, err = q.since(); err != nil {
		return nil, err
	}
	if f.Limit, err = q.limit(); err != nil {
		return nil, err
	}
	if f.Before, err = q.ident("before"); err != nil {
		return nil, err
	}
	f.Device, f.Kind, f.State = event.DeviceID(dev), alert.Kind(kind), alert.State(state)
	var as []alert.Alert
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		as, err = tx.Alerts().List(ctx, c.tenant, f)
		return err
	})
	return nonNil(as), err
}

func (s *Server) getAlert(ctx context.Context, c *call, _ noBody) (alert.Alert, error) {
	var a alert.Alert
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		a, err = tx.Alerts().Get(ctx, c.tenant, c.r.PathValue("id"))
		return err
	})
	return a, err
}

// ResolveAlertRequest closes an alert: resolved, or false_positive when
// FalsePositive is set. Note is kept in the audit record.
type ResolveAlertRequest struct {
	FalsePositive bool   `json:"false_positive,omitempty"`
	Note          string `json:"note,omitempty"`
}

// alertCAS is the store's atomic state change (sqlstore's alerts have it):
// checking the state and then calling SetState would let two concurrent
// requests both move an alert on PostgreSQL, which writes at READ COMMITTED.
type alertCAS interface {
	CompareAndSetState(ctx context.Context, tenant event.TenantID, id string, from []alert.State, to alert.State) (bool, error)
}

// EventPublisher publishes events on the bus (*bus.Bus).
type EventPublisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// transition moves alert id to state to if its current state is one of
// from, with the audit record in the same transaction; 409 otherwise. After
// the commit it publishes alert.state_changed (a failure to publish is
// logged; the move stands).
func (s *Server) transition(ctx context.Context, c *call, to alert.State, action string, details map[string]string, from ...alert.State) (alert.Alert, error) {
	id := c.r.PathValue("id")
	var a alert.Alert
	var prev alert.State
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if a, err = tx.Alerts().Get(ctx, c.tenant, id); err != nil {
			return err
		}
		cas, ok := tx.Alerts().(alertCAS)
		if !ok {
			return fmt.Errorf("api: store %T cannot change alert states atomically", tx.Alerts())
		}
		moved, err := cas.CompareAndSetState(ctx, c.tenant, id, from, to)
		if err != nil {
			return err
		}
		if !moved {
			// Re-read: a concurrent change may have moved it since Get.
			if a, err = tx.Alerts().Get(ctx, c.tenant, id); err != nil {
				return err
			}
			return errorf(http.StatusConflict, CodeConflict, fmt.Sprintf("alert is %s; cannot move it to %s", a.State, to))
		}
		if details == nil {
			details = map[string]string{}
		}
		details["from"], details["to"] = string(a.State), string(to)
		prev = a.State
		a.State = to
		return s.audit(ctx, tx, c, c.tenant, action, "alert:"+id, details)
	})
	if err != nil {
		return alert.Alert{}, err
	}
	s.opt.Logger.InfoContext(ctx, "alert state changed", "tenant", c.tenant, "alert", id, "device", a.Device, "state", to, "actor", c.p.Actor())
	if s.opt.Events != nil {
		ev := alert.StateChanged(a, prev, c.p.Actor(), details["note"], s.opt.Clock.Now())
		if err := s.opt.Events.Publish(ctx, ev); err != nil {
			s.opt.Logger.ErrorContext(ctx, "alert.state_changed not published", "tenant", c.tenant, "alert", id, "err", err)
		}
	}
	return a, nil
}

func (s *Server) ackAlert(ctx context.Context, c *call, _ noBody) (alert.Alert, error) {
	return s.transition(ctx, c, alert.Acknowledged, "alert.ack", nil, alert.Open)
}

func (s *Server) resolveAlert(ctx context.Context, c *call, req ResolveAlertRequest) (alert.Alert, error) {
	if len(req.Note) > maxNoteBytes {
		return alert.Alert{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("note longer than %d bytes", maxNoteBytes))
	}
	to, action := alert.Resolved, "alert.resolve"
	if req.FalsePositive {
		to, action = alert.FalsePositive, "alert.false_positive"
	}
	var details map[string]string
	if req.Note != "" {
		details = map[string]string{"note": req.Note}
	}
	// A false positive's alert.state_changed makes the response engine
	// undo what playbooks with restore_on_false_positive did (each undo
	// audited with this operator), on whichever node consumes it.
	return s.transition(ctx, c, to, action, details, alert.Open, alert.Acknowledged)
}

// --- actions

var actionStates = []string{string(store.ActionPending), string(store.ActionApproval), string(store.ActionDone),
	string(store.ActionFailed), string(store.ActionRejected), string(store.ActionUndone), string(store.ActionSkipped)}

func (s *Server) listActions(ctx context.Context, c *call, _ noBody) ([]store.Action, error) {
	q := query{c.r.URL.Query()}
	var f store.ActionFilter
	dev, err := q.ident("device")
	if err != nil {
		return nil, err
	}
	state, err := q.oneOf("state", actionStates...)
	if err != nil {
		return nil, err
	}
	if f.Limit, err = q.limit(); err != nil {
		return nil, err
	}
	if f.After, err = q.ident("after"); err != nil {
		return nil, err
	}
	f.Device, f.State = event.DeviceID(dev), store.ActionState(state)
	var as []store.Action
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		as, err = tx.Actions().List(ctx, c.tenant, f)
		return err
	})
	return nonNil(as), err
}

// --- devices

var deviceStates = []string{string(store.StateRegistered), string(store.StateActive), string(store.StateQuarantined),
	string(store.StateSuspended), string(store.StateRevoked), string(store.StateDecommissioned)}

func (s *Server) listDevices(ctx context.Context, c *call, _ noBody) ([]store.Device, error) {
	q := query{c.r.URL.Query()}
	var f store.DeviceFilter
	var err error
	if f.Model, err = q.ident("model"); err != nil {
		return nil, err
	}
	state, err := q.oneOf("state", deviceStates...)
	if err != nil {
		return nil, err
	}
	after, err := q.ident("after")
	if err != nil {
		return nil, err
	}
	if f.Limit, err = q.limit(); err != nil {
		return nil, err
	}
	f.State, f.After = store.DeviceState(state), event.DeviceID(after)
	var ds []store.Device
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		ds, err = tx.Devices().List(ctx, c.tenant, f)
		return err
	})
	return nonNil(ds), err
}

func (s *Server) getDevice(ctx context.Context, c *call, _ noBody) (store.Device, error) {
	var d store.Device
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		d, err = tx.Devices().Get(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")))
		return err
	})
	return d, err
}
