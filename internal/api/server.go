// Package api is Garrison's HTTP API: JSON over HTTPS under /api/v1, plus
// /healthz, /readyz and /metrics.
//
// Every route is one row of the route table ([Server.Routes]): method,
// pattern, the [auth.Permission] it needs, its scope, and a typed handler
// whose request and response types also generate the OpenAPI document
// served at /api/v1/openapi.json. Handlers return errors; one renderer turns
// them into {"error":{"code":...,"message":...}} with the stable codes
// listed in errors.go.
//
// Tenancy: a tenant-scoped route (…/tenants/{tenant}/…) answers 404 to any
// principal of another tenant, whatever its role, so existence never leaks;
// a principal of the right tenant whose role lacks the permission gets 403.
// Platform admins reach every tenant.
//
// Every mutating handler writes its audit record in the same store.Update
// as the change.
//
// Request bodies are application/json only, at most MaxBodyBytes, one JSON
// value, no unknown fields. Every response carries nosniff, a CSP of
// default-src 'none', and Cache-Control: no-store.
package api

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/store"
)

// PlatformChain is the audit chain of platform-level changes (tenants,
// platform admins and their tokens). It is not a valid tenant id, so no
// tenant can own it.
const PlatformChain event.TenantID = "_platform"

// Options are the server's dependencies.
type Options struct {
	Store  store.Store
	Clock  clock.Clock
	Logger *slog.Logger
	// Rand supplies ids and token secrets; crypto/rand when nil.
	Rand io.Reader
	// MaxBodyBytes limits request bodies (1 MiB when 0).
	MaxBodyBytes int64
	// TokenTTL is the lifetime of tokens created without one (90 days when 0).
	TokenTTL time.Duration
	// Ready reports whether dependencies are up (for /readyz); nil means always.
	Ready func(ctx context.Context) error
	// Registry receives the API's metrics and is served on /metrics; a new
	// one when nil.
	Registry *prometheus.Registry
	// Identity serves the CA, enrolment-token and revocation routes, and
	// Devices the registry's write routes; those routes answer 503 when nil.
	Identity CAService
	Devices  DeviceRegistry
	// Incidents serves the incident and runbook routes (503 when nil).
	Incidents IncidentService
	// WebhookSecrets seals webhook secrets before they are stored (serve
	// passes the key passphrase's sealer); without it webhooks cannot be
	// created (503).
	WebhookSecrets export.SecretSealer
	// Firmware serves the catalog routes and Campaigns the campaign
	// writes; those routes answer 503 when nil.
	Firmware  FirmwareCatalog
	Campaigns CampaignEngine
	// Response serves the playbook, approval and mass-action routes (503
	// when nil).
	Response ResponseService
	// Events receives alert.state_changed when an operator moves an alert
	// (the response engine restores devices after a false positive, exports
	// forward it); nil: nobody is told.
	Events EventPublisher
	// Connectivity ingests providers' webhook records (the route answers
	// 503 when nil); CellCache, optional, is told when a cell import
	// changed the table; CellImportMaxBytes bounds one import (1 GiB when 0).
	Connectivity       ConnectivityIngester
	CellCache          CellCache
	CellImportMaxBytes int64
	// Commands sends commands to devices and reads their outcomes (503 on
	// its routes when nil).
	Commands CommandService
	// Detectors is the running detection engine, told of detector settings
	// changes (detectors.go); nil: they apply at the next start.
	Detectors DetectorEngine
	// Rules serves the detection-rule routes (503 when nil).
	Rules RuleService
	// Groups serves the device-group routes (503 when nil).
	Groups GroupService
	// Passwords serves the device broker-password routes (503 when nil).
	Passwords PasswordService
	// Feeds lists the threat-intelligence feeds (none when nil).
	Feeds FeedLister
}

// Server is the API's http.Handler.
type Server struct {
	opt      Options
	auth     *auth.Authenticator
	mux      *http.ServeMux
	routes   []Route
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	detectorsMu sync.Mutex // serialises detector settings writes (detectors.go)
}

// New builds the server and its mux. It has no side effects beyond
// registering metrics on opt.Registry.
func New(opt Options) (*Server, error) {
	if opt.Rand == nil {
		opt.Rand = rand.Reader
	}
	if opt.MaxBodyBytes == 0 {
		opt.MaxBodyBytes = 1 << 20
	}
	if opt.TokenTTL == 0 {
		opt.TokenTTL = 90 * 24 * time.Hour
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Registry == nil {
		opt.Registry = prometheus.NewRegistry()
	}
	s := &Server{
		opt:  opt,
		auth: &auth.Authenticator{Store: opt.Store, Clock: opt.Clock},
		mux:  http.NewServeMux(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "garrison_api_requests_total", Help: "API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "garrison_api_request_seconds", Help: "API request latency by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}, []string{"route"}),
	}
	for _, c := range []prometheus.Collector{s.requests, s.latency} {
		if err := opt.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	s.routes = s.table()
	for _, rt := range s.routes {
		s.mux.Handle(rt.Method+" "+rt.Pattern, s.wrap(rt))
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		renderError(s.opt.Logger, w, r, errorf(http.StatusNotFound, CodeNotFound, "no such route"))
	})
	return s, nil
}

// Routes returns the route table.
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// ServeHTTP serves the API with security headers on every response.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	s.mux.ServeHTTP(w, r)
}

// call is what a handler knows about its request.
type call struct {
	r      *http.Request
	p      auth.Principal
	tenant event.TenantID // the scope: path tenant (or the token's, ScopeOwn), or "" on platform routes
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// wrap authenticates, scopes and authorizes a request, then runs the
// route's handler, recording metrics.
func (s *Server) wrap(rt Route) http.Handler {
	name := rt.Method + " " + rt.Pattern
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.opt.Clock.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			s.requests.WithLabelValues(name, strconv.Itoa(sw.code)).Inc()
			s.latency.WithLabelValues(name).Observe(s.opt.Clock.Now().Sub(start).Seconds())
		}()
		c, err := s.admit(r, rt)
		if err == nil {
			err = rt.handle(s, sw, c)
		}
		if err != nil {
			renderError(s.opt.Logger, sw, r, err)
		}
	})
}

// admit decides whether the request may run: authentication, tenant
// scope (404 for a foreign tenant), then permission (403).
func (s *Server) admit(r *http.Request, rt Route) (*call, error) {
	c := &call{r: r}
	if rt.Perm == "" {
		return c, nil
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthenticated, Message: "missing or invalid token"}
	}
	p, err := s.auth.Authenticate(r.Context(), strings.TrimSpace(tok))
	if err != nil {
		return nil, err
	}
	c.p = p
	switch rt.Scope {
	case ScopeTenant:
		c.tenant = event.TenantID(r.PathValue("tenant"))
		if p.Role != store.RolePlatformAdmin && p.Tenant != c.tenant {
			return nil, errNotFound
		}
		if p.Role == store.RolePlatformAdmin {
			if err := s.opt.Store.View(r.Context(), func(tx store.Tx) error {
				_, err := tx.Tenants().Get(r.Context(), c.tenant)
				return err
			}); err != nil {
				return nil, err
			}
		}
	case ScopePlatform:
		c.tenant = ""
	case ScopeOwn:
		if p.Tenant == "" {
			return nil, errorf(http.StatusBadRequest, CodeInvalid, "a platform token belongs to no tenant: use /api/v1/tenants/{tenant}/... on this route")
		}
		c.tenant = p.Tenant
	}
	if !auth.Can(p.Role, rt.Perm) {
		return nil, errorf(http.StatusForbidden, CodeForbidden, "role "+string(p.Role)+" lacks permission "+string(rt.Perm))
	}
	return c, nil
}

// Pattern returns the mux pattern that would serve r ("" for the
// catch-all not-found handler). Tests use it to hold the OpenAPI document
// to the mux.
func (s *Server) Pattern(r *http.Request) string {
	_, p := s.mux.Handler(r)
	if p == "/" {
		return ""
	}
	return p
}
