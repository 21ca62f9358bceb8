package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// ResponseService is what the playbook, approval and mass-action routes need
// (respond.Service: the response engine and the mass-action runner). Every
// mutating method writes its own audit record, with the actor given, in the
// transaction of its change.
type ResponseService interface {
	ListPlaybooks(ctx context.Context, tenant event.TenantID) ([]respond.PlaybookInfo, error)
	GetPlaybook(ctx context.Context, tenant event.TenantID, name string) (respond.PlaybookInfo, error)
	PlaybookVersions(ctx context.Context, tenant event.TenantID, name string) ([]store.PlaybookVersion, error)
	PlaybookVersion(ctx context.Context, tenant event.TenantID, name string, version int) (store.PlaybookVersion, error)
	PutPlaybook(ctx context.Context, tenant event.TenantID, name string, doc []byte, actor string) (respond.PlaybookInfo, error)
	SetPlaybookEnabled(ctx context.Context, tenant event.TenantID, name string, enabled bool, actor string) (respond.PlaybookInfo, error)

	Approve(ctx context.Context, tenant event.TenantID, actionID, operator, reason string) error
	Reject(ctx context.Context, tenant event.TenantID, actionID, operator, reason string) error

	Preview(ctx context.Context, tenant event.TenantID, sel string, sample int) (respond.MassPreview, error)
	Submit(ctx context.Context, tenant event.TenantID, r respond.MassRequest, actor string) (store.MassJob, error)
	Job(ctx context.Context, tenant event.TenantID, id string) (store.MassJob, error)
	Jobs(ctx context.Context, tenant event.TenantID, limit int) ([]store.MassJob, error)
	Cancel(ctx context.Context, tenant event.TenantID, id, actor string) (store.MassJob, error)
}

var _ ResponseService = respond.Service{}

// responseRoutes are the playbook, approval and mass-action routes of a
// tenant.
func (s *Server) responseRoutes(t string) []Route {
	const get, post, put = http.MethodGet, http.MethodPost, http.MethodPut
	const ok, accepted = http.StatusOK, http.StatusAccepted
	return []Route{
		op(get, t+"/playbooks", auth.PermTenantRead, ScopeTenant, ok, "List the tenant's playbooks: the defaults (as replaced or disabled) and its own.", (*Server).listPlaybooks),
		op(get, t+"/playbooks/{name}", auth.PermTenantRead, ScopeTenant, ok, "Get a playbook with its current YAML document.", (*Server).getPlaybook),
		op(put, t+"/playbooks/{name}", auth.PermPlaybooksWrite, ScopeTenant, ok, "Upload a playbook (YAML) as its next version; errors name the line.", (*Server).putPlaybook),
		op(get, t+"/playbooks/{name}/versions", auth.PermTenantRead, ScopeTenant, ok, "List a playbook's versions, oldest first (0 is the built-in default).", (*Server).listPlaybookVersions),
		op(get, t+"/playbooks/{name}/versions/{version}", auth.PermTenantRead, ScopeTenant, ok, "Get one version of a playbook.", (*Server).getPlaybookVersion),
		op(post, t+"/playbooks/{name}/enable", auth.PermPlaybooksWrite, ScopeTenant, ok, "Enable a playbook.", (*Server).enablePlaybook),
		op(post, t+"/playbooks/{name}/disable", auth.PermPlaybooksWrite, ScopeTenant, ok, "Disable a playbook (a default included).", (*Server).disablePlaybook),

		op(get, t+"/approvals", auth.PermTenantRead, ScopeTenant, ok, "List actions waiting for approval, oldest first.", (*Server).listApprovals),
		op(post, t+"/approvals", auth.PermResponseWrite, ScopeTenant, ok, "Approve (the action then runs) or reject (with a reason) an action waiting for approval.", (*Server).decideApproval),
		op(get, t+"/actions/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get one response action (its id ALERT/PLAYBOOK/STEP with each / escaped as %2F), decided or not.", (*Server).getAction),

		op(get, t+"/mass/preview", auth.PermTenantRead, ScopeTenant, ok, "Dry run of a mass action: how many devices a selector picks, and a sample. Nothing changes.", (*Server).previewMass),
		op(post, t+"/mass", auth.PermResponseWrite, ScopeTenant, accepted, "Start a mass action (quarantine, revoke, kick) over the devices a selector picks; returns the job.", (*Server).submitMass),
		op(get, t+"/mass", auth.PermTenantRead, ScopeTenant, ok, "List mass-action jobs, newest first.", (*Server).listMass),
		op(get, t+"/mass/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get a mass-action job and its progress.", (*Server).getMass),
		op(post, t+"/mass/{id}/cancel", auth.PermResponseWrite, ScopeTenant, ok, "Stop a running mass-action job after its current page.", (*Server).cancelMass),
	}
}

func (s *Server) response() (ResponseService, error) {
	if s.opt.Response == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "the response engine is not running on this server")
	}
	return s.opt.Response, nil
}

// responseError gives the response engine's input and state errors a clear
// public message (they name only the caller's own tenant's data).
func responseError(err error) error {
	var pe *respond.ParseError
	var se *registry.SelectorError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: pe.Error(), Err: err}
	case errors.As(err, &se):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: se.Error(), Err: err}
	case errors.Is(err, respond.ErrNotAwaiting):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: fromSentinel(err, respond.ErrNotAwaiting), Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: withoutOp(err), Err: err}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: withoutOp(err), Err: err}
	}
	return err
}

// withoutOp drops the "respond OPERATION TENANT/ID: " prefix of a response
// engine error.
func withoutOp(err error) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "respond ") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			return rest
		}
	}
	return msg
}

var playbookName = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

func pathName(c *call) (string, error) {
	n := c.r.PathValue("name")
	if !playbookName.MatchString(n) {
		return "", errorf(http.StatusBadRequest, CodeInvalid, "playbook name must be 1-63 characters of [a-z0-9-]")
	}
	return n, nil
}

func (s *Server) listPlaybooks(ctx context.Context, c *call, _ noBody) ([]respond.PlaybookInfo, error) {
	svc, err := s.response()
	if err != nil {
		return nil, err
	}
	list, err := svc.ListPlaybooks(ctx, c.tenant)
	for i := range list {
		list[i].YAML = ""
	}
	return nonNil(list), responseError(err)
}

func (s *Server) getPlaybook(ctx context.Context, c *call, _ noBody) (respond.PlaybookInfo, error) {
	svc, err := s.response()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	name, err := pathName(c)
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	in, err := svc.GetPlaybook(ctx, c.tenant, name)
	return in, responseError(err)
}

// PutPlaybookRequest uploads a playbook: YAML holds one playbook (name,
// trigger, mode, steps, restore_on_false_positive; the name may be left out)
// as documented in docs/RESPONSE.md.
type PutPlaybookRequest struct {
	YAML string `json:"yaml"`
}

func (s *Server) putPlaybook(ctx context.Context, c *call, req PutPlaybookRequest) (respond.PlaybookInfo, error) {
	svc, err := s.response()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	name, err := pathName(c)
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	in, err := svc.PutPlaybook(ctx, c.tenant, name, []byte(req.YAML), c.p.Actor())
	if err != nil {
		return respond.PlaybookInfo{}, responseError(err)
	}
	s.opt.Logger.InfoContext(ctx, "playbook uploaded", "tenant", c.tenant, "playbook", name, "version", in.Version, "actor", c.p.Actor())
	return in, nil
}

func (s *Server) listPlaybookVersions(ctx context.Context, c *call, _ noBody) ([]store.PlaybookVersion, error) {
	svc, err := s.response()
	if err != nil {
		return nil, err
	}
	name, err := pathName(c)
	if err != nil {
		return nil, err
	}
	vs, err := svc.PlaybookVersions(ctx, c.tenant, name)
	return nonNil(vs), responseError(err)
}

func (s *Server) getPlaybookVersion(ctx context.Context, c *call, _ noBody) (store.PlaybookVersion, error) {
	svc, err := s.response()
	if err != nil {
		return store.PlaybookVersion{}, err
	}
	name, err := pathName(c)
	if err != nil {
		return store.PlaybookVersion{}, err
	}
	v, err := strconv.Atoi(c.r.PathValue("version"))
	if err != nil || v < 0 {
		return store.PlaybookVersion{}, errorf(http.StatusBadRequest, CodeInvalid, "version must be a whole number (0 is the built-in default)")
	}
	pv, err := svc.PlaybookVersion(ctx, c.tenant, name, v)
	return pv, responseError(err)
}

func (s *Server) setPlaybookEnabled(ctx context.Context, c *call, enabled bool) (respond.PlaybookInfo, error) {
	svc, err := s.response()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	name, err := pathName(c)
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	in, err := svc.SetPlaybookEnabled(ctx, c.tenant, name, enabled, c.p.Actor())
	in.YAML = ""
	return in, responseError(err)
}

func (s *Server) enablePlaybook(ctx context.Context, c *call, _ noBody) (respond.PlaybookInfo, error) {
	return s.setPlaybookEnabled(ctx, c, true)
}

func (s *Server) disablePlaybook(ctx context.Context, c *call, _ noBody) (respond.PlaybookInfo, error) {
	return s.setPlaybookEnabled(ctx, c, false)
}

// --- approvals

func (s *Server) listApprovals(ctx context.Context, c *call, _ noBody) ([]store.Action, error) {
	q := query{c.r.URL.Query()}
	f := store.ActionFilter{State: store.ActionApproval}
	var err error
	if f.Limit, err = q.limit(); err != nil {
		return nil, err
	}
	if f.After = q.v.Get("after"); len(f.After) > 400 {
		return nil, badParam("after", "an action id")
	}
	var as []store.Action
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		as, err = tx.Actions().List(ctx, c.tenant, f)
		return err
	})
	return nonNil(as), err
}

func (s *Server) getAction(ctx context.Context, c *call, _ noBody) (store.Action, error) {
	id := c.r.PathValue("id")
	if id == "" || len(id) > 400 {
		return store.Action{}, errorf(http.StatusBadRequest, CodeInvalid, "id must be an action id (ALERT/PLAYBOOK/STEP)")
	}
	var a store.Action
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		a, err = tx.Actions().Get(ctx, c.tenant, id)
		return err
	})
	return a, err
}

// ApprovalRequest decides an action waiting for approval. Action is its id
// (ALERT/PLAYBOOK/STEP, as listed); Decision is approve or reject. Reason
// is required to reject (one line, at most 500 bytes) and optional to
// approve; it is kept on the action ("rejected by OPERATOR: REASON") and in
// the audit record.
type ApprovalRequest struct {
	Action   string `json:"action"`
	Decision string `json:"decision"`
	Reason   string `json:"reason,omitempty"`
}

func (s *Server) decideApproval(ctx context.Context, c *call, req ApprovalRequest) (store.Action, error) {
	svc, err := s.response()
	if err != nil {
		return store.Action{}, err
	}
	if req.Action == "" || len(req.Action) > 400 {
		return store.Action{}, errorf(http.StatusBadRequest, CodeInvalid, "action must be the id of an action waiting for approval")
	}
	if req.Decision != "approve" && req.Decision != "reject" {
		return store.Action{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("decision %q must be approve or reject", req.Decision))
	}
	if err := respond.CheckDecisionReason(req.Decision == "reject", req.Reason); err != nil {
		return store.Action{}, errorf(http.StatusBadRequest, CodeInvalid, err.Error())
	}
	if req.Decision == "approve" {
		err = svc.Approve(ctx, c.tenant, req.Action, c.p.Actor(), req.Reason)
	} else {
		err = svc.Reject(ctx, c.tenant, req.Action, c.p.Actor(), req.Reason)
	}
	if err != nil {
		return store.Action{}, responseError(err)
	}
	s.opt.Logger.InfoContext(ctx, "action decided", "tenant", c.tenant, "action", req.Action, "decision", req.Decision, "actor", c.p.Actor())
	var a store.Action
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		a, err = tx.Actions().Get(ctx, c.tenant, req.Action)
		return err
	})
	return a, err
}

// --- mass actions

// previewMass answers how many devices the selector query parameter picks,
// with a sample of them (sample: default 10, at most 100).
func (s *Server) previewMass(ctx context.Context, c *call, _ noBody) (respond.MassPreview, error) {
	svc, err := s.response()
	if err != nil {
		return respond.MassPreview{}, err
	}
	q := c.r.URL.Query()
	n := 10
	if v := q.Get("sample"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > 100 {
			return respond.MassPreview{}, badParam("sample", "an integer in 0-100")
		}
	}
	if !q.Has("selector") {
		return respond.MassPreview{}, badParam("selector", `a device selector ("*" for every device)`)
	}
	p, err := svc.Preview(ctx, c.tenant, q.Get("selector"), n)
	return p, responseError(err)
}

// MassRequest starts a mass action. Kind is quarantine, revoke or kick;
// Selector picks the devices ("*" for all); Rate is devices per second (0:
// as fast as the store allows).
type MassRequest struct {
	Kind     string `json:"kind"`
	Selector string `json:"selector"`
	Rate     int    `json:"rate,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func (s *Server) submitMass(ctx context.Context, c *call, req MassRequest) (store.MassJob, error) {
	svc, err := s.response()
	if err != nil {
		return store.MassJob{}, err
	}
	j, err := svc.Submit(ctx, c.tenant, respond.MassRequest{Kind: req.Kind, Selector: req.Selector, Rate: req.Rate, Reason: req.Reason}, c.p.Actor())
	return j, responseError(err)
}

func (s *Server) listMass(ctx context.Context, c *call, _ noBody) ([]store.MassJob, error) {
	svc, err := s.response()
	if err != nil {
		return nil, err
	}
	n, err := query{c.r.URL.Query()}.limit()
	if err != nil {
		return nil, err
	}
	js, err := svc.Jobs(ctx, c.tenant, n)
	return nonNil(js), responseError(err)
}

func (s *Server) getMass(ctx context.Context, c *call, _ noBody) (store.MassJob, error) {
	svc, err := s.response()
	if err != nil {
		return store.MassJob{}, err
	}
	j, err := svc.Job(ctx, c.tenant, c.r.PathValue("id"))
	return j, responseError(err)
}

func (s *Server) cancelMass(ctx context.Context, c *call, _ noBody) (store.MassJob, error) {
	svc, err := s.response()
	if err != nil {
		return store.MassJob{}, err
	}
	j, err := svc.Cancel(ctx, c.tenant, c.r.PathValue("id"), c.p.Actor())
	return j, responseError(err)
}
