package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/intel"
	"github.com/garrisonhq/garrison/internal/store"
)

// DetectorEngine is the running detection engine (*detect.Engine): it is
// given a tenant's detector settings after they are stored, so a change
// applies without a restart. When nil, stored settings apply at the next
// start of detection.
type DetectorEngine interface {
	SetTenantSettings(t event.TenantID, ts detect.TenantSettings) error
}

var _ DetectorEngine = (*detect.Engine)(nil)

// FeedLister reports the threat-intelligence feeds (*intel.Feeds). When
// nil, the server has no feeds and lists none.
type FeedLister interface {
	Status() []intel.Status
}

var _ FeedLister = (*intel.Feeds)(nil)

func (s *Server) detectorRoutes(t, p string) []Route {
	const get, put = http.MethodGet, http.MethodPut
	ok := http.StatusOK
	return []Route{
		op(get, "/api/v1/detectors", auth.PermAuthenticated, ScopeNone, ok, "List the built-in detectors: alert kind, severity, events read, typed settings with defaults.", (*Server).listDetectors),
		op(get, t+"/detectors", auth.PermTenantRead, ScopeTenant, ok, "List the detectors with the tenant's (or a group's) effective settings.", (*Server).listTenantDetectors),
		op(get, t+"/detectors/{name}/settings", auth.PermTenantRead, ScopeTenant, ok, "Get one detector's settings for the tenant (or ?group=): defaults, the override stored at that scope, effective values.", (*Server).getDetectorSettings),
		op(get, t+"/intel/feeds", auth.PermTenantRead, ScopeTenant, ok, "List the threat-intelligence feeds detection uses (platform-wide): source, entries, last refresh, last error.", (*Server).listFeeds),
		op(get, p+"/intel/feeds", auth.PermPlatform, ScopePlatform, ok, "List the threat-intelligence feeds: source, entries, last refresh, last error.", (*Server).listFeeds),
		op(put, t+"/detectors/{name}/settings", auth.PermDetectorsWrite, ScopeTenant, ok, "Replace the detector's override for the tenant (or ?group=): a JSON object of the fields to change, and \"disabled\"; {} removes it. Validated (a bad field is named and nothing changes), stored, audited and applied to the running engine.", (*Server).putDetectorSettings),
	}
}

// DetectorInfo describes a detector; the tenant-scoped routes add the
// tenant's (or group's) view of its settings.
type DetectorInfo struct {
	Name        string          `json:"name"`
	AlertKinds  []string        `json:"alert_kinds"`
	Severity    string          `json:"severity"`
	Description string          `json:"description"`
	Events      []string        `json:"events"`
	Fields      []detect.Field  `json:"fields"`
	Defaults    json.RawMessage `json:"defaults"`
	// Tenant-scoped routes only.
	Tenant    event.TenantID  `json:"tenant,omitempty"`
	Group     string          `json:"group,omitempty"`
	Override  json.RawMessage `json:"override,omitempty"`  // stored at this scope (tenant, or tenant/group)
	Effective json.RawMessage `json:"effective,omitempty"` // defaults + tenant + group overrides
	Disabled  bool            `json:"disabled"`
}

func detectorInfo(d detect.Info) DetectorInfo {
	evs := make([]string, len(d.Events))
	for i, k := range d.Events {
		evs[i] = string(k)
	}
	return DetectorInfo{Name: d.Name, AlertKinds: []string{string(d.Kind)}, Severity: d.Severity, Description: d.Description,
		Events: evs, Fields: detect.Fields(d.Name), Defaults: d.Settings}
}

func (s *Server) listDetectors(ctx context.Context, c *call, _ noBody) ([]DetectorInfo, error) {
	ds := detect.Detectors()
	out := make([]DetectorInfo, len(ds))
	for i, d := range ds {
		out[i] = detectorInfo(d)
	}
	return out, nil
}

// groupParam reads ?group= ("" is the tenant scope).
func groupParam(c *call) (string, error) {
	g := c.r.URL.Query().Get("group")
	if g == "" {
		return "", nil
	}
	if err := detect.ValidGroup(g); err != nil {
		return "", errorf(http.StatusBadRequest, CodeInvalid, "group must be 1-128 printable characters")
	}
	return g, nil
}

func loadDetectorSettings(ctx context.Context, tx store.Tx, tenant event.TenantID) (detect.TenantSettings, error) {
	var ts detect.TenantSettings
	b, err := tx.Settings().Get(ctx, tenant, detect.SettingsKey)
	if errors.Is(err, store.ErrNotFound) {
		return ts, nil
	}
	if err != nil {
		return ts, err
	}
	if err := json.Unmarshal(b, &ts); err != nil {
		return ts, fmt.Errorf("api: stored detector settings of %s: %w", tenant, err)
	}
	return ts, nil
}

// tenantView fills the tenant-scoped part of each detector's info.
func tenantView(tenant event.TenantID, group string, ts detect.TenantSettings, only string) []DetectorInfo {
	var s detect.Settings
	ts.Apply(tenant, &s)
	eff := detect.Resolve(s, tenant, group)
	var out []DetectorInfo
	for i, d := range detect.Detectors() {
		if only != "" && d.Name != only {
			continue
		}
		info := detectorInfo(d)
		info.Tenant, info.Group = tenant, group
		info.Override = ts.Scope(group)[d.Name]
		info.Effective, info.Disabled = eff[i].Settings, eff[i].Disabled
		out = append(out, info)
	}
	return out
}

func (s *Server) listTenantDetectors(ctx context.Context, c *call, _ noBody) ([]DetectorInfo, error) {
	group, err := groupParam(c)
	if err != nil {
		return nil, err
	}
	var ts detect.TenantSettings
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		ts, err = loadDetectorSettings(ctx, tx, c.tenant)
		return err
	}); err != nil {
		return nil, err
	}
	return tenantView(c.tenant, group, ts, ""), nil
}

func detectorName(c *call) (string, error) {
	name := c.r.PathValue("name")
	if detect.Fields(name) == nil {
		return "", errorf(http.StatusNotFound, CodeNotFound, "no detector "+fmt.Sprintf("%q", name))
	}
	return name, nil
}

func (s *Server) getDetectorSettings(ctx context.Context, c *call, _ noBody) (DetectorInfo, error) {
	name, err := detectorName(c)
	if err != nil {
		return DetectorInfo{}, err
	}
	group, err := groupParam(c)
	if err != nil {
		return DetectorInfo{}, err
	}
	var ts detect.TenantSettings
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		ts, err = loadDetectorSettings(ctx, tx, c.tenant)
		return err
	}); err != nil {
		return DetectorInfo{}, err
	}
	return tenantView(c.tenant, group, ts, name)[0], nil
}

func (s *Server) putDetectorSettings(ctx context.Context, c *call, req map[string]json.RawMessage) (DetectorInfo, error) {
	name, err := detectorName(c)
	if err != nil {
		return DetectorInfo{}, err
	}
	group, err := groupParam(c)
	if err != nil {
		return DetectorInfo{}, err
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return DetectorInfo{}, errorf(http.StatusBadRequest, CodeBadRequest, "settings cannot be encoded")
	}
	if err := detect.ValidateOverride(name, raw); err != nil {
		msg := err.Error()
		if len(msg) > 1000 {
			msg = msg[:1000]
		}
		return DetectorInfo{}, &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: msg, Err: err}
	}
	// One writer at a time, so the engine is given the settings in the
	// order they were committed.
	s.detectorsMu.Lock()
	defer s.detectorsMu.Unlock()
	var next detect.TenantSettings
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := loadDetectorSettings(ctx, tx, c.tenant)
		if err != nil {
			return err
		}
		prev := cur.Scope(group)[name]
		next = cur.With(group, name, raw)
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if err := tx.Settings().Put(ctx, c.tenant, detect.SettingsKey, b); err != nil {
			return err
		}
		target := "detector:" + name
		if group != "" {
			target += "/group:" + group
		}
		return s.audit(ctx, tx, c, c.tenant, "detector.settings.set", target,
			map[string]any{"detector": name, "group": group, "from": prev, "to": next.Scope(group)[name]})
	})
	if err != nil {
		return DetectorInfo{}, err
	}
	if s.opt.Detectors != nil {
		if err := s.opt.Detectors.SetTenantSettings(c.tenant, next); err != nil {
			// Validated above: only a stored document of an older version
			// could fail; it is stored and applies at the next start.
			s.opt.Logger.ErrorContext(ctx, "detector settings stored but not applied", "tenant", c.tenant, "detector", name, "err", err)
		}
	}
	s.opt.Logger.InfoContext(ctx, "detector settings changed", "tenant", c.tenant, "detector", name, "group", group, "actor", c.p.Actor())
	return tenantView(c.tenant, group, next, name)[0], nil
}

// FeedInfo is one threat-intelligence feed.
type FeedInfo struct {
	Name        string     `json:"name"`
	Source      string     `json:"source"` // file path, or URL without query or user info
	Refresh     string     `json:"refresh"`
	Entries     int        `json:"entries"`
	BadLines    int        `json:"bad_lines"`
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Failures    int        `json:"failures"`
}

func (s *Server) listFeeds(ctx context.Context, c *call, _ noBody) ([]FeedInfo, error) {
	out := []FeedInfo{}
	if s.opt.Feeds == nil {
		return out, nil
	}
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	for _, f := range s.opt.Feeds.Status() {
		out = append(out, FeedInfo{Name: f.Name, Source: f.Source, Refresh: f.Refresh.String(), Entries: f.Entries, BadLines: f.Bad,
			LastRefresh: opt(f.LastRefresh), LastAttempt: opt(f.LastAttempt), LastError: f.LastError, Failures: f.Failures})
	}
	return out, nil
}
