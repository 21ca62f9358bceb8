package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// RuleService is what the rule routes need (platform.Rules). Create,
// Update and Delete write their audit record in the change's transaction
// and make the engine run the new rules at once; Try changes nothing.
// Invalid rules come back as *detect.RuleError.
type RuleService interface {
	List(ctx context.Context, tenant event.TenantID) ([]store.Rule, error)
	Get(ctx context.Context, tenant event.TenantID, id string) (store.Rule, error)
	Create(ctx context.Context, r store.Rule, actor string) (store.Rule, error)
	Update(ctx context.Context, r store.Rule, actor string) (store.Rule, error)
	Delete(ctx context.Context, tenant event.TenantID, id, actor string) error
	Try(ctx context.Context, r store.Rule, events []event.Event) (*detect.CompiledRule, detect.TryResult, error)
}

// MaxRuleTestEvents bounds the events of one rule test.
const MaxRuleTestEvents = 10_000

func (s *Server) ruleRoutes(t string) []Route {
	const get, post, put, del = http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	const ok, created, none = http.StatusOK, http.StatusCreated, http.StatusNoContent
	return []Route{
		op(get, t+"/rules", auth.PermTenantRead, ScopeTenant, ok, "List the tenant's detection rules (CEL), ordered by id.", (*Server).listRules),
		op(post, t+"/rules", auth.PermRulesWrite, ScopeTenant, created, "Create a rule (disabled unless enabled is true); an invalid expression is refused naming its line and column.", (*Server).createRule),
		op(post, t+"/rules/test", auth.PermTenantRead, ScopeTenant, ok, "Evaluate a rule, saved or not, against events given as JSON lines: which match and the alerts it would raise. Nothing changes.", (*Server).testRule),
		op(get, t+"/rules/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get a rule.", (*Server).getRule),
		op(put, t+"/rules/{id}", auth.PermRulesWrite, ScopeTenant, ok, "Replace a rule as its next version (version, if given, must be the current one).", (*Server).putRule),
		op(del, t+"/rules/{id}", auth.PermRulesWrite, ScopeTenant, none, "Delete a rule.", (*Server).deleteRule),
	}
}

// RuleRequest is a rule as written by an operator (POST, PUT and test).
// Expr is a CEL expression over `event` and `device` that yields a bool
// (see docs/DETECTION.md); AlertKind defaults to rule.<id>; Severity is
// info, low, medium, high or critical; Events, if given, limits the rule
// to those event kinds. On PUT, ID may be left out and Version, if not 0,
// must be the current version.
type RuleRequest struct {
	ID          string       `json:"id,omitempty"`
	Name        string       `json:"name"`
	Description string       `json:"description,omitempty"`
	Expr        string       `json:"expr"`
	AlertKind   alert.Kind   `json:"alert_kind,omitempty"`
	Severity    string       `json:"severity"`
	Events      []event.Kind `json:"events,omitempty"`
	Enabled     bool         `json:"enabled"`
	Version     int          `json:"version,omitempty"`
}

func (r RuleRequest) rule(tenant event.TenantID) store.Rule {
	return store.Rule{Tenant: tenant, ID: r.ID, Name: r.Name, Description: r.Description, Expr: r.Expr, Kind: r.AlertKind,
		Severity: r.Severity, Events: r.Events, Enabled: r.Enabled, Version: r.Version}
}

func (s *Server) rules() (RuleService, error) {
	if s.opt.Rules == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "rules are not served by this server")
	}
	return s.opt.Rules, nil
}

// ruleError gives invalid rules and store outcomes their public form.
func ruleError(err error) error {
	var re *detect.RuleError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: "invalid rule: " + re.Error(), Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: "conflict: the rule exists or was changed meanwhile (see its version)", Err: err}
	case errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: "invalid rule", Err: err}
	}
	return err
}

func (s *Server) listRules(ctx context.Context, c *call, _ noBody) ([]store.Rule, error) {
	svc, err := s.rules()
	if err != nil {
		return nil, err
	}
	rs, err := svc.List(ctx, c.tenant)
	return nonNil(rs), ruleError(err)
}

func (s *Server) getRule(ctx context.Context, c *call, _ noBody) (store.Rule, error) {
	svc, err := s.rules()
	if err != nil {
		return store.Rule{}, err
	}
	r, err := svc.Get(ctx, c.tenant, c.r.PathValue("id"))
	return r, ruleError(err)
}

func (s *Server) createRule(ctx context.Context, c *call, req RuleRequest) (store.Rule, error) {
	svc, err := s.rules()
	if err != nil {
		return store.Rule{}, err
	}
	if req.Version != 0 {
		return store.Rule{}, errorf(http.StatusBadRequest, CodeInvalid, "version is set by the server on create")
	}
	r, err := svc.Create(ctx, req.rule(c.tenant), c.p.Actor())
	if err != nil {
		return store.Rule{}, ruleError(err)
	}
	s.opt.Logger.InfoContext(ctx, "rule created", "tenant", c.tenant, "rule", r.ID, "enabled", r.Enabled, "actor", c.p.Actor())
	return r, nil
}

func (s *Server) putRule(ctx context.Context, c *call, req RuleRequest) (store.Rule, error) {
	svc, err := s.rules()
	if err != nil {
		return store.Rule{}, err
	}
	id := c.r.PathValue("id")
	if req.ID != "" && req.ID != id {
		return store.Rule{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("id %q in the body is not the path's %q", req.ID, id))
	}
	req.ID = id
	r, err := svc.Update(ctx, req.rule(c.tenant), c.p.Actor())
	if err != nil {
		return store.Rule{}, ruleError(err)
	}
	s.opt.Logger.InfoContext(ctx, "rule updated", "tenant", c.tenant, "rule", r.ID, "version", r.Version, "enabled", r.Enabled, "actor", c.p.Actor())
	return r, nil
}

func (s *Server) deleteRule(ctx context.Context, c *call, _ noBody) (noBody, error) {
	svc, err := s.rules()
	if err != nil {
		return noBody{}, err
	}
	id := c.r.PathValue("id")
	if err := svc.Delete(ctx, c.tenant, id, c.p.Actor()); err != nil {
		return noBody{}, ruleError(err)
	}
	s.opt.Logger.InfoContext(ctx, "rule deleted", "tenant", c.tenant, "rule", id, "actor", c.p.Actor())
	return noBody{}, nil
}

// RuleTestRequest tries a rule: Rule as for POST (ID is required but the
// rule need not exist), Events the recorded events as JSON lines, one
// event envelope per line (id, tenant, device, kind, time, source, attrs;
// tenant may be left out). Blank lines are skipped.
type RuleTestRequest struct {
	Rule   RuleRequest `json:"rule"`
	Events string      `json:"events"`
}

// RuleTestMatch is one event the rule matched, by its line.
type RuleTestMatch struct {
	Line    int            `json:"line"`
	EventID string         `json:"event_id,omitempty"`
	Device  event.DeviceID `json:"device"`
	Kind    event.Kind     `json:"kind"`
	Time    time.Time      `json:"time"`
	AlertID string         `json:"alert_id"`
	Count   int            `json:"count"` // the alert's count after this event
}

// RuleTestError is one event the rule failed to evaluate (a missing
// attribute, a type mismatch, the cost limit): it counts as no match.
type RuleTestError struct {
	Line  int    `json:"line"`
	Error string `json:"error"`
}

// RuleTestResponse says what the rule would have done: Events read,
// Evaluated (of the rule's event kinds and with a device), the matches, the
// failed evaluations (the first 100; ErrorCount counts all) and the alerts
// it would raise, merged as the engine merges repeats.
type RuleTestResponse struct {
	Rule       string          `json:"rule"`
	AlertKind  alert.Kind      `json:"alert_kind"`
	Events     int             `json:"events"`
	Evaluated  int             `json:"evaluated"`
	Matched    int             `json:"matched"`
	Matches    []RuleTestMatch `json:"matches"`
	Errors     []RuleTestError `json:"errors"`
	ErrorCount int             `json:"error_count"`
	Alerts     []alert.Alert   `json:"alerts"`
}

// eventLine is one line of a rule test: the envelope, with the wire
// codec's version field tolerated.
type eventLine struct {
	V int `json:"v,omitempty"`
	event.Event
}

// parseEventLines reads JSON lines of event envelopes for tenant, naming
// the line of the first problem.
func parseEventLines(text string, tenant event.TenantID) ([]event.Event, []int, error) {
	var evs []event.Event
	var lines []int
	sc := bufio.NewScanner(bytes.NewReader([]byte(text)))
	sc.Buffer(nil, len(text)+1)
	n := 0
	for sc.Scan() {
		n++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		bad := func(msg string) error {
			return errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("events line %d: %s", n, msg))
		}
		if len(evs) == MaxRuleTestEvents {
			return nil, nil, bad(fmt.Sprintf("more than %d events", MaxRuleTestEvents))
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var l eventLine
		if err := dec.Decode(&l); err != nil {
			return nil, nil, bad("not an event envelope: " + trimJSON(err.Error()))
		}
		if dec.More() {
			return nil, nil, bad("more than one JSON value")
		}
		ev := l.Event
		if ev.Tenant == "" {
			ev.Tenant = tenant
		}
		if ev.Tenant != tenant {
			return nil, nil, bad(fmt.Sprintf("tenant %q is not %q", ev.Tenant, tenant))
		}
		if err := ev.Validate(); err != nil {
			return nil, nil, bad(err.Error())
		}
		evs = append(evs, ev)
		lines = append(lines, n)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("events line %d: %v", n+1, err))
	}
	return evs, lines, nil
}

func (s *Server) testRule(ctx context.Context, c *call, req RuleTestRequest) (RuleTestResponse, error) {
	svc, err := s.rules()
	if err != nil {
		return RuleTestResponse{}, err
	}
	evs, lines, err := parseEventLines(req.Events, c.tenant)
	if err != nil {
		return RuleTestResponse{}, err
	}
	cr, res, err := svc.Try(ctx, req.Rule.rule(c.tenant), evs)
	if err != nil {
		return RuleTestResponse{}, ruleError(err)
	}
	out := RuleTestResponse{Rule: cr.ID, AlertKind: cr.AlertKind(), Events: len(evs), Evaluated: res.Evaluated, Matched: len(res.Matches),
		Matches: []RuleTestMatch{}, Errors: []RuleTestError{}, ErrorCount: res.ErrorCount, Alerts: nonNil(res.Alerts)}
	for _, m := range res.Matches {
		ev := evs[m.Index]
		out.Matches = append(out.Matches, RuleTestMatch{Line: lines[m.Index], EventID: ev.ID, Device: ev.Device, Kind: ev.Kind, Time: ev.Time,
			AlertID: m.AlertID, Count: m.Count})
	}
	for _, e := range res.Errors {
		out.Errors = append(out.Errors, RuleTestError{Line: lines[e.Index], Error: e.Error})
	}
	return out, nil
}
