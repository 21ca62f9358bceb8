package api

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/garrisonhq/garrison/internal/auth"
)

// Scope is where a route's data lives.
type Scope int

// Scopes.
const (
	ScopeNone     Scope = iota // no tenant: whoami, health, the document itself
	ScopeTenant                // the {tenant} path segment
	ScopePlatform              // the platform's own records (tenant "")
	// ScopeOwn is the caller's own tenant, for the short paths of the
	// issues' contracts (POST /api/v1/connectivity/events, POST
	// /api/v1/devices/{id}/commands) that a provider's webhook or a
	// device-management script calls with one tenant's token. A platform
	// token names no tenant and is refused with 400.
	ScopeOwn
)

// Route is one row of the route table.
type Route struct {
	Method  string
	Pattern string          // net/http pattern path, e.g. /api/v1/tenants/{tenant}
	Perm    auth.Permission // "" means public (no token)
	Scope   Scope
	Summary string
	Status  int          // success status
	Req     reflect.Type // nil when the route takes no body
	Resp    reflect.Type // nil when it returns no body (204)
	Query   []string     // query parameters it reads
	Raw     bool         // writes its own response (metrics, openapi)
	// Body is the content type of a request body that is not JSON (the
	// handler reads it itself), e.g. text/csv.
	Body string
	// ContentType of a Raw route's response.
	ContentType string

	handle func(s *Server, w http.ResponseWriter, c *call) error
}

// noBody marks a route without request or response body.
type noBody struct{}

// op builds a route whose handler takes a decoded Req and returns a Resp.
func op[Req, Resp any](method, pattern string, perm auth.Permission, scope Scope, status int, summary string,
	fn func(s *Server, ctx context.Context, c *call, req Req) (Resp, error)) Route {
	rt := Route{Method: method, Pattern: pattern, Perm: perm, Scope: scope, Status: status, Summary: summary}
	if t := reflect.TypeFor[Req](); t != reflect.TypeFor[noBody]() {
		rt.Req = t
	}
	if t := reflect.TypeFor[Resp](); t != reflect.TypeFor[noBody]() {
		rt.Resp = t
	}
	rt.handle = func(s *Server, w http.ResponseWriter, c *call) error {
		var req Req
		if rt.Req != nil {
			if err := decodeBody(c.r, w, s.opt.MaxBodyBytes, &req); err != nil {
				return err
			}
		} else if c.r.ContentLength > 0 {
			return errorf(http.StatusBadRequest, CodeBadRequest, "this route takes no body")
		}
		resp, err := fn(s, c.r.Context(), c, req)
		if err != nil {
			return err
		}
		if rt.Resp == nil {
			w.WriteHeader(status)
			return nil
		}
		writeJSON(w, status, resp)
		return nil
	}
	return rt
}

// raw builds a route that writes its own response.
func raw(method, pattern string, perm auth.Permission, summary, contentType string, h func(s *Server, w http.ResponseWriter, c *call) error) Route {
	return Route{Method: method, Pattern: pattern, Perm: perm, Summary: summary, Status: http.StatusOK, Raw: true, ContentType: contentType, handle: h}
}

// table is THE route table: every route the server has, with the
// permission it requires. Nothing is registered anywhere else.
func (s *Server) table() []Route {
	const (
		get, post, del = http.MethodGet, http.MethodPost, http.MethodDelete
		ok, created    = http.StatusOK, http.StatusCreated
		none           = http.StatusNoContent
		t              = "/api/v1/tenants/{tenant}"
		p              = "/api/v1/platform"
	)
	rs := []Route{
		raw(get, "/healthz", "", "Liveness: the process serves HTTP.", "text/plain", (*Server).healthz),
		raw(get, "/readyz", "", "Readiness: the store and the bus are up.", "text/plain", (*Server).readyz),
		raw(get, "/metrics", auth.PermPlatform, "Prometheus metrics.", "text/plain", (*Server).metrics),
		raw(get, "/api/v1/openapi.json", auth.PermAuthenticated, "This document.", "application/json", (*Server).openapi),
		op(get, "/api/v1/whoami", auth.PermAuthenticated, ScopeNone, ok, "The caller's identity.", (*Server).whoami),

		op(post, "/api/v1/tenants", auth.PermPlatform, ScopePlatform, created, "Create a tenant.", (*Server).createTenant),
		op(get, "/api/v1/tenants", auth.PermPlatform, ScopePlatform, ok, "List tenants.", (*Server).listTenants),
		op(get, t, auth.PermTenantRead, ScopeTenant, ok, "Get a tenant.", (*Server).getTenant),
		op(del, t, auth.PermPlatform, ScopeTenant, none, "Delete a tenant.", (*Server).deleteTenant),

		op(post, t+"/operators", auth.PermOperatorsWrite, ScopeTenant, created, "Create an operator.", (*Server).createOperator),
		op(get, t+"/operators", auth.PermOperatorsRead, ScopeTenant, ok, "List operators.", (*Server).listOperators),
		op(get, t+"/operators/{id}", auth.PermOperatorsRead, ScopeTenant, ok, "Get an operator.", (*Server).getOperator),
		op(del, t+"/operators/{id}", auth.PermOperatorsWrite, ScopeTenant, none, "Delete an operator.", (*Server).deleteOperator),
		op(post, t+"/tokens", auth.PermTokensWrite, ScopeTenant, created, "Create an API token; the secret is returned once.", (*Server).createToken),
		op(get, t+"/tokens", auth.PermTokensRead, ScopeTenant, ok, "List API tokens (never their secrets).", (*Server).listTokens),
		op(del, t+"/tokens/{id}", auth.PermTokensWrite, ScopeTenant, none, "Revoke an API token.", (*Server).revokeToken),
		op(get, t+"/audit", auth.PermAuditRead, ScopeTenant, ok, "List audit records.", (*Server).listAudit),
		op(get, t+"/audit/verify", auth.PermAuditRead, ScopeTenant, ok, "Recompute the audit hash chain.", (*Server).verifyAudit),

		op(get, t+"/alerts", auth.PermTenantRead, ScopeTenant, ok, "List alerts, newest first.", (*Server).listAlerts),
		op(get, t+"/alerts/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get an alert with its evidence.", (*Server).getAlert),
		op(post, t+"/alerts/{id}/ack", auth.PermAlertsWrite, ScopeTenant, ok, "Acknowledge an open alert.", (*Server).ackAlert),
		op(post, t+"/alerts/{id}/resolve", auth.PermAlertsWrite, ScopeTenant, ok, "Resolve an open or acknowledged alert, or mark it a false positive.", (*Server).resolveAlert),
		op(get, t+"/actions", auth.PermTenantRead, ScopeTenant, ok, "List response actions, oldest first.", (*Server).listActions),
		op(get, t+"/devices", auth.PermTenantRead, ScopeTenant, ok, "List devices ordered by id.", (*Server).listDevices),
		op(get, t+"/devices/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get a device.", (*Server).getDevice),

		op(post, p+"/operators", auth.PermPlatform, ScopePlatform, created, "Create a platform admin.", (*Server).createOperator),
		op(get, p+"/operators", auth.PermPlatform, ScopePlatform, ok, "List platform admins.", (*Server).listOperators),
		op(get, p+"/operators/{id}", auth.PermPlatform, ScopePlatform, ok, "Get a platform admin.", (*Server).getOperator),
		op(del, p+"/operators/{id}", auth.PermPlatform, ScopePlatform, none, "Delete a platform admin.", (*Server).deleteOperator),
		op(post, p+"/tokens", auth.PermPlatform, ScopePlatform, created, "Create a platform API token; the secret is returned once.", (*Server).createToken),
		op(get, p+"/tokens", auth.PermPlatform, ScopePlatform, ok, "List platform API tokens.", (*Server).listTokens),
		op(del, p+"/tokens/{id}", auth.PermPlatform, ScopePlatform, none, "Revoke a platform API token.", (*Server).revokeToken),
		op(get, p+"/audit", auth.PermPlatform, ScopePlatform, ok, "List the platform's audit records.", (*Server).listAudit),
		op(get, p+"/audit/verify", auth.PermPlatform, ScopePlatform, ok, "Recompute the platform's audit hash chain.", (*Server).verifyAudit),
	}
	rs = append(rs, s.identityRoutes(t)...)
	rs = append(rs, s.deviceRoutes(t)...)
	rs = append(rs, s.incidentRoutes(t)...)
	rs = append(rs, s.exportRoutes(t)...)
	rs = append(rs, s.firmwareRoutes(t)...)
	rs = append(rs, s.responseRoutes(t)...)
	rs = append(rs, s.connectivityRoutes(t, p)...)
	rs = append(rs, s.commandRoutes(t)...)
	rs = append(rs, s.detectorRoutes(t, p)...)
	rs = append(rs, s.ruleRoutes(t)...)
	rs = append(rs, s.groupRoutes(t)...)
	rs = append(rs, s.passwordRoutes(t)...)
	for _, r := range rs {
		if ownAlias(r.Method, r.Pattern) {
			rs = append(rs, own(r, t))
		}
	}
	for i := range rs {
		switch rs[i].Pattern {
		case t + "/audit", p + "/audit":
			rs[i].Query = []string{"after", "limit"}
		case t + "/alerts":
			rs[i].Query = []string{"device", "kind", "state", "since", "before", "limit"}
		case t + "/approvals":
			rs[i].Query = []string{"after", "limit"}
		case t + "/mass":
			rs[i].Query = []string{"limit"}
		case t + "/mass/preview":
			rs[i].Query = []string{"selector", "sample"}
		case t + "/actions":
			rs[i].Query = []string{"device", "state", "after", "limit"}
		case t + "/devices":
			rs[i].Query = []string{"model", "state", "after", "limit"}
		case t + "/groups/{name}/members":
			rs[i].Query = []string{"after", "limit"}
		case t + "/incidents":
			if rs[i].Method == get {
				rs[i].Query = []string{"state", "device", "open", "limit"}
			}
		case t + "/deliveries":
			rs[i].Query = []string{"state", "limit"}
		case t + "/detectors", t + "/detectors/{name}/settings":
			rs[i].Query = []string{"group"}
		}
	}
	return rs
}

// ownAlias reports whether a tenant route also answers on a short path
// without the tenant, scoped to the caller's own tenant (ScopeOwn).
func ownAlias(method, pattern string) bool {
	switch method + " " + pattern {
	case "POST /api/v1/tenants/{tenant}/connectivity/events",
		"POST /api/v1/tenants/{tenant}/devices/{id}/commands":
		return true
	}
	return false
}

// own is rt on the short path: /api/v1/... without tenants/{tenant},
// for the caller's own tenant.
func own(rt Route, t string) Route {
	rt.Pattern = "/api/v1" + strings.TrimPrefix(rt.Pattern, t)
	rt.Scope = ScopeOwn
	rt.Summary += " On this path, the tenant is the token's own (a platform token gets 400: use the tenant's path)."
	return rt
}

func (s *Server) healthz(w http.ResponseWriter, c *call) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := w.Write([]byte("ok\n"))
	return err
}

func (s *Server) readyz(w http.ResponseWriter, c *call) error {
	if s.opt.Ready != nil {
		if err := s.opt.Ready(c.r.Context()); err != nil {
			return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "not ready", Err: err}
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := w.Write([]byte("ready\n"))
	return err
}

func (s *Server) metrics(w http.ResponseWriter, c *call) error {
	promhttp.HandlerFor(s.opt.Registry, promhttp.HandlerOpts{}).ServeHTTP(w, c.r)
	return nil
}

func (s *Server) openapi(w http.ResponseWriter, c *call) error {
	doc := s.OpenAPI()
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(doc)
}
