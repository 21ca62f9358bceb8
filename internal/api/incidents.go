package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/store"
)

// IncidentService is what the incident and runbook routes need
// (*incident.Service). Every mutating method writes its own audit record,
// with the actor given, in the transaction of its change.
type IncidentService interface {
	Open(ctx context.Context, tenant event.TenantID, actor string, r incident.OpenRequest) (store.Incident, error)
	List(ctx context.Context, tenant event.TenantID, f store.IncidentFilter) ([]store.Incident, error)
	Get(ctx context.Context, tenant event.TenantID, id string) (incident.Detail, error)
	AttachAlert(ctx context.Context, tenant event.TenantID, id, alertID, actor string) (store.Incident, error)
	AddNote(ctx context.Context, tenant event.TenantID, id, actor, text string) (store.IncidentEntry, error)
	Transition(ctx context.Context, tenant event.TenantID, id string, to store.IncidentState, actor, note string) (store.Incident, error)
	Report(ctx context.Context, tenant event.TenantID, id string) (incident.Report, error)
	Runbook(ctx context.Context, tenant event.TenantID, k alert.Kind) (incident.Runbook, error)
	Runbooks(ctx context.Context, tenant event.TenantID, kinds []alert.Kind) ([]incident.Runbook, error)
	SetRunbook(ctx context.Context, tenant event.TenantID, k alert.Kind, markdown, actor string) (incident.Runbook, error)
	ResetRunbook(ctx context.Context, tenant event.TenantID, k alert.Kind, actor string) error
}

var _ IncidentService = (*incident.Service)(nil)

// incidentRoutes are the incident and runbook routes of a tenant.
func (s *Server) incidentRoutes(t string) []Route {
	const get, post, put, del = http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
	const ok, created, none = http.StatusOK, http.StatusCreated, http.StatusNoContent
	md := raw(get, t+"/incidents/{id}/report.md", auth.PermTenantRead, "The post-incident report in Markdown.", "text/markdown", (*Server).incidentReportMarkdown)
	md.Scope = ScopeTenant
	return []Route{
		op(get, t+"/incidents", auth.PermTenantRead, ScopeTenant, ok, "List incidents, newest first.", (*Server).listIncidents),
		op(post, t+"/incidents", auth.PermIncidentsWrite, ScopeTenant, created, "Open an incident by hand, optionally with alerts.", (*Server).openIncident),
		op(get, t+"/incidents/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get an incident with its timeline and durations.", (*Server).getIncident),
		op(post, t+"/incidents/{id}/alerts", auth.PermIncidentsWrite, ScopeTenant, ok, "Attach an alert (and the actions taken for it) to the incident.", (*Server).attachIncidentAlert),
		op(post, t+"/incidents/{id}/notes", auth.PermIncidentsWrite, ScopeTenant, created, "Add a note to the incident's timeline.", (*Server).addIncidentNote),
		op(post, t+"/incidents/{id}/transition", auth.PermIncidentsWrite, ScopeTenant, ok, "Move the incident to another state (open, contained, eradicated, recovered, closed).", (*Server).transitionIncident),
		op(get, t+"/incidents/{id}/report", auth.PermTenantRead, ScopeTenant, ok, "The post-incident report: durations, alerts, actions, timeline and runbook.", (*Server).incidentReport),
		md,
		op(get, t+"/runbooks", auth.PermTenantRead, ScopeTenant, ok, "List the runbooks the tenant follows (shipped or its own), per alert kind.", (*Server).listRunbooks),
		op(get, t+"/runbooks/{kind}", auth.PermTenantRead, ScopeTenant, ok, "Get the runbook of an alert kind.", (*Server).getRunbook),
		op(put, t+"/runbooks/{kind}", auth.PermIncidentsWrite, ScopeTenant, ok, "Replace the tenant's runbook of an alert kind (Markdown).", (*Server).putRunbook),
		op(del, t+"/runbooks/{kind}", auth.PermIncidentsWrite, ScopeTenant, none, "Delete the tenant's own runbook, so the shipped one applies again.", (*Server).resetRunbook),
	}
}

func (s *Server) incidents() (IncidentService, error) {
	if s.opt.Incidents == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "incidents are not running on this server")
	}
	return s.opt.Incidents, nil
}

// incidentError gives the incident package's input and state errors their
// public form; the rest goes to the common renderer.
func incidentError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, incident.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: fromSentinel(err, incident.ErrInvalid), Err: err}
	case errors.Is(err, incident.ErrTransition):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: fromSentinel(err, incident.ErrTransition), Err: err}
	}
	return err
}

// fromSentinel is the part of err from the sentinel on ("invalid incident
// input: title must be ..."), without the operation prefixes that name ids.
func fromSentinel(err, sentinel error) string {
	msg, s := err.Error(), sentinel.Error()
	for i := 0; i+len(s) <= len(msg); i++ {
		if msg[i:i+len(s)] == s {
			return msg[i:]
		}
	}
	return s
}

var incidentStates = []string{string(store.IncidentOpen), string(store.IncidentContained), string(store.IncidentEradicated),
	string(store.IncidentRecovered), string(store.IncidentClosed)}

func (s *Server) listIncidents(ctx context.Context, c *call, _ noBody) ([]store.Incident, error) {
	svc, err := s.incidents()
	if err != nil {
		return nil, err
	}
	q := query{c.r.URL.Query()}
	var f store.IncidentFilter
	state, err := q.oneOf("state", incidentStates...)
	if err != nil {
		return nil, err
	}
	dev, err := q.ident("device")
	if err != nil {
		return nil, err
	}
	if v := q.v.Get("open"); v != "" {
		if f.Open, err = strconv.ParseBool(v); err != nil {
			return nil, badParam("open", "true or false")
		}
	}
	if f.Limit, err = q.limit(); err != nil {
		return nil, err
	}
	f.State, f.Device = store.IncidentState(state), event.DeviceID(dev)
	list, err := svc.List(ctx, c.tenant, f)
	return nonNil(list), err
}

func (s *Server) openIncident(ctx context.Context, c *call, req incident.OpenRequest) (store.Incident, error) {
	svc, err := s.incidents()
	if err != nil {
		return store.Incident{}, err
	}
	if req.Kind != "" && !incident.ValidKind(req.Kind) {
		return store.Incident{}, errorf(http.StatusBadRequest, CodeInvalid, "kind must be an alert kind (domain.name)")
	}
	if req.Device != "" && !ident.MatchString(string(req.Device)) {
		return store.Incident{}, errorf(http.StatusBadRequest, CodeInvalid, "device must be 1-128 letters, digits or ._:-")
	}
	inc, err := svc.Open(ctx, c.tenant, c.p.Actor(), req)
	return inc, incidentError(err)
}

func (s *Server) getIncident(ctx context.Context, c *call, _ noBody) (incident.Detail, error) {
	svc, err := s.incidents()
	if err != nil {
		return incident.Detail{}, err
	}
	return svc.Get(ctx, c.tenant, c.r.PathValue("id"))
}

// AttachAlertRequest attaches an alert to an incident.
type AttachAlertRequest struct {
	AlertID string `json:"alert_id"`
}

func (s *Server) attachIncidentAlert(ctx context.Context, c *call, req AttachAlertRequest) (store.Incident, error) {
	svc, err := s.incidents()
	if err != nil {
		return store.Incident{}, err
	}
	if req.AlertID == "" {
		return store.Incident{}, errorf(http.StatusBadRequest, CodeInvalid, "alert_id is required")
	}
	inc, err := svc.AttachAlert(ctx, c.tenant, c.r.PathValue("id"), req.AlertID, c.p.Actor())
	return inc, incidentError(err)
}

// NoteRequest adds a note to an incident's timeline.
type NoteRequest struct {
	Text string `json:"text"`
}

func (s *Server) addIncidentNote(ctx context.Context, c *call, req NoteRequest) (store.IncidentEntry, error) {
	svc, err := s.incidents()
	if err != nil {
		return store.IncidentEntry{}, err
	}
	e, err := svc.AddNote(ctx, c.tenant, c.r.PathValue("id"), c.p.Actor(), req.Text)
	return e, incidentError(err)
}

// TransitionRequest moves an incident to another state, with an optional
// note kept on the timeline and in the audit record.
type TransitionRequest struct {
	To   store.IncidentState `json:"to"`
	Note string              `json:"note,omitempty"`
}

func (s *Server) transitionIncident(ctx context.Context, c *call, req TransitionRequest) (store.Incident, error) {
	svc, err := s.incidents()
	if err != nil {
		return store.Incident{}, err
	}
	inc, err := svc.Transition(ctx, c.tenant, c.r.PathValue("id"), req.To, c.p.Actor(), req.Note)
	return inc, incidentError(err)
}

func (s *Server) incidentReport(ctx context.Context, c *call, _ noBody) (incident.Report, error) {
	svc, err := s.incidents()
	if err != nil {
		return incident.Report{}, err
	}
	return svc.Report(ctx, c.tenant, c.r.PathValue("id"))
}

func (s *Server) incidentReportMarkdown(w http.ResponseWriter, c *call) error {
	svc, err := s.incidents()
	if err != nil {
		return err
	}
	rep, err := svc.Report(c.r.Context(), c.tenant, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/markdown; charset=utf-8")
	_, err = w.Write(rep.Markdown())
	return err
}

func (s *Server) listRunbooks(ctx context.Context, c *call, _ noBody) ([]incident.Runbook, error) {
	svc, err := s.incidents()
	if err != nil {
		return nil, err
	}
	// The tenant's own runbooks for kinds without a shipped one: the kinds
	// of its alerts and incidents.
	var kinds []alert.Kind
	err = s.opt.Store.View(ctx, func(tx store.Tx) error {
		incs, err := tx.Incidents().List(ctx, c.tenant, store.IncidentFilter{Limit: 1000})
		if err != nil {
			return err
		}
		for _, i := range incs {
			if i.Kind != "" {
				kinds = append(kinds, i.Kind)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	list, err := svc.Runbooks(ctx, c.tenant, kinds)
	return nonNil(list), err
}

func runbookKind(c *call) (alert.Kind, error) {
	k := alert.Kind(c.r.PathValue("kind"))
	if !incident.ValidKind(k) {
		return "", errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("%q is not an alert kind (domain.name, lower case)", k))
	}
	return k, nil
}

func (s *Server) getRunbook(ctx context.Context, c *call, _ noBody) (incident.Runbook, error) {
	svc, err := s.incidents()
	if err != nil {
		return incident.Runbook{}, err
	}
	k, err := runbookKind(c)
	if err != nil {
		return incident.Runbook{}, err
	}
	rb, err := svc.Runbook(ctx, c.tenant, k)
	return rb, incidentError(err)
}

// RunbookRequest replaces a tenant's runbook.
type RunbookRequest struct {
	Markdown string `json:"markdown"`
}

func (s *Server) putRunbook(ctx context.Context, c *call, req RunbookRequest) (incident.Runbook, error) {
	svc, err := s.incidents()
	if err != nil {
		return incident.Runbook{}, err
	}
	k, err := runbookKind(c)
	if err != nil {
		return incident.Runbook{}, err
	}
	rb, err := svc.SetRunbook(ctx, c.tenant, k, req.Markdown, c.p.Actor())
	return rb, incidentError(err)
}

func (s *Server) resetRunbook(ctx context.Context, c *call, _ noBody) (noBody, error) {
	svc, err := s.incidents()
	if err != nil {
		return noBody{}, err
	}
	k, err := runbookKind(c)
	if err != nil {
		return noBody{}, err
	}
	return noBody{}, incidentError(svc.ResetRunbook(ctx, c.tenant, k, c.p.Actor()))
}
