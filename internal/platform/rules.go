package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// RulesOptions configure [Rules].
type RulesOptions struct {
	Store store.Store
	Clock clock.Clock
	// Logger, optional.
	Logger *slog.Logger
	// Set is the rule set the detection engine reads (detect.Options.Rules);
	// a new one when nil.
	Set *detect.RuleSet
	// Directory gives device profiles to Try (default: the devices' current
	// registry records, read from the store for each try).
	Directory detect.Directory
}

// Rules is the operators' rules service: it stores rules (every change with
// its audit record, in the change's transaction), validates and compiles
// them, and keeps the engine's [detect.RuleSet] equal to the stored enabled
// rules. Safe for concurrent use.
//
// After every change through it the tenant's rules are reloaded at once;
// [Rules.Load] reloads every tenant (at start, and periodically in serve so
// that a change made on another node is picked up).
type Rules struct {
	o RulesOptions

	mu    sync.Mutex // serialises reloads: read the store and swap the set as one step
	cache map[ruleKey]*detect.CompiledRule
}

type ruleKey struct {
	t  event.TenantID
	id string
}

// NewRules builds the service; it loads nothing (call Load).
func NewRules(o RulesOptions) (*Rules, error) {
	if o.Store == nil {
		return nil, errors.New("platform: rules: store missing")
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Set == nil {
		o.Set = detect.NewRuleSet()
	}
	return &Rules{o: o, cache: map[ruleKey]*detect.CompiledRule{}}, nil
}

// Set is the rule set to give the detection engine.
func (s *Rules) Set() *detect.RuleSet { return s.o.Set }

// Compile turns a stored rule into an engine rule. Errors are
// *detect.RuleError (field, and line and column for the expression).
func Compile(r store.Rule) (*detect.CompiledRule, error) {
	sev := alert.ParseSeverity(r.Severity)
	if sev == 0 {
		return nil, &detect.RuleError{Field: "severity", Msg: fmt.Sprintf("%q must be info, low, medium, high or critical", r.Severity)}
	}
	return detect.CompileRule(detect.Rule{Tenant: r.Tenant, ID: r.ID, Name: r.Name, Description: r.Description, Expr: r.Expr,
		Kind: r.Kind, Severity: sev, Events: r.Events, Enabled: r.Enabled, Version: r.Version})
}

// Load compiles every tenant's enabled rules into the set and returns how
// many are enabled. A stored rule that no longer compiles is logged and
// left out.
func (s *Rules) Load(ctx context.Context) (int, error) {
	var tenants []store.Tenant
	if err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		tenants, err = tx.Tenants().List(ctx)
		return err
	}); err != nil {
		return 0, fmt.Errorf("platform: load rules: %w", err)
	}
	n := 0
	seen := map[event.TenantID]bool{}
	for _, t := range tenants {
		k, err := s.Reload(ctx, t.ID)
		if err != nil {
			return n, err
		}
		n += k
		seen[t.ID] = true
	}
	for _, t := range s.tenantsInSet() {
		if !seen[t] { // a deleted tenant
			s.drop(t)
		}
	}
	return n, nil
}

func (s *Rules) drop(t event.TenantID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.cache {
		if k.t == t {
			delete(s.cache, k)
		}
	}
	s.o.Set.Set(t, nil)
}

func (s *Rules) tenantsInSet() []event.TenantID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event.TenantID
	seen := map[event.TenantID]bool{}
	for k := range s.cache {
		if !seen[k.t] {
			seen[k.t] = true
			out = append(out, k.t)
		}
	}
	return out
}

// Reload replaces the tenant's rules in the set with its stored enabled
// rules and returns how many there are.
func (s *Rules) Reload(ctx context.Context, tenant event.TenantID) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rs []store.Rule
	if err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		rs, err = tx.Rules().List(ctx, tenant)
		return err
	}); err != nil {
		return 0, fmt.Errorf("platform: reload rules of %s: %w", tenant, err)
	}
	var crs []*detect.CompiledRule
	keep := map[ruleKey]bool{}
	for _, r := range rs {
		if !r.Enabled {
			continue
		}
		k := ruleKey{tenant, r.ID}
		keep[k] = true
		cr := s.cache[k]
		if cr == nil || cr.Version != r.Version || cr.Expr != r.Expr {
			var err error
			if cr, err = Compile(r); err != nil {
				s.o.Logger.Warn("stored rule does not compile; left out", "tenant", tenant, "rule", r.ID, "err", err)
				delete(s.cache, k)
				continue
			}
			s.cache[k] = cr
		}
		crs = append(crs, cr)
	}
	for k := range s.cache {
		if k.t == tenant && !keep[k] {
			delete(s.cache, k)
		}
	}
	s.o.Set.Set(tenant, crs)
	return len(crs), nil
}

// List returns the tenant's rules ordered by id.
func (s *Rules) List(ctx context.Context, tenant event.TenantID) ([]store.Rule, error) {
	var rs []store.Rule
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		rs, err = tx.Rules().List(ctx, tenant)
		return err
	})
	return rs, err
}

// Get returns one rule or an error wrapping store.ErrNotFound.
func (s *Rules) Get(ctx context.Context, tenant event.TenantID, id string) (store.Rule, error) {
	var r store.Rule
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		r, err = tx.Rules().Get(ctx, tenant, id)
		return err
	})
	return r, err
}

func auditDetails(r store.Rule) map[string]any {
	return map[string]any{"version": r.Version, "enabled": r.Enabled, "expr": r.Expr, "severity": r.Severity,
		"alert_kind": string(r.Kind), "events": r.Events, "name": r.Name}
}

// Create validates, compiles and stores r as version 1 (ErrConflict if the
// id is taken), writes its audit record and reloads the tenant's rules.
func (s *Rules) Create(ctx context.Context, r store.Rule, actor string) (store.Rule, error) {
	if _, err := Compile(r); err != nil {
		return store.Rule{}, err
	}
	now := s.o.Clock.Now()
	r.Version, r.Actor, r.CreatedAt, r.UpdatedAt = 1, actor, now, now
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Rules().Create(ctx, r); err != nil {
			return err
		}
		return audit.Record(ctx, tx, r.Tenant, now, actor, "rule.create", "rule:"+r.ID, auditDetails(r))
	})
	if err != nil {
		return store.Rule{}, err
	}
	s.reloadAfterChange(ctx, r.Tenant)
	return s.Get(ctx, r.Tenant, r.ID)
}

// Update replaces the rule (tenant, id) with r as its next version. If
// r.Version is not 0 it must be the stored version (else ErrConflict), so
// that two editors do not overwrite each other silently.
func (s *Rules) Update(ctx context.Context, r store.Rule, actor string) (store.Rule, error) {
	if _, err := Compile(r); err != nil {
		return store.Rule{}, err
	}
	now := s.o.Clock.Now()
	expect := r.Version
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.Rules().Get(ctx, r.Tenant, r.ID)
		if err != nil {
			return err
		}
		if expect != 0 && expect != cur.Version {
			return fmt.Errorf("rule %s: %w: version %d is current, %d was edited", r.ID, store.ErrConflict, cur.Version, expect)
		}
		r.Version, r.Actor, r.CreatedAt, r.UpdatedAt = cur.Version+1, actor, cur.CreatedAt, now
		if err := tx.Rules().Update(ctx, r); err != nil {
			return err
		}
		return audit.Record(ctx, tx, r.Tenant, now, actor, "rule.update", "rule:"+r.ID, auditDetails(r))
	})
	if err != nil {
		return store.Rule{}, err
	}
	s.reloadAfterChange(ctx, r.Tenant)
	return s.Get(ctx, r.Tenant, r.ID)
}

// Delete removes the rule, writes its audit record and reloads the
// tenant's rules.
func (s *Rules) Delete(ctx context.Context, tenant event.TenantID, id, actor string) error {
	now := s.o.Clock.Now()
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		cur, err := tx.Rules().Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		if err := tx.Rules().Delete(ctx, tenant, id); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "rule.delete", "rule:"+id, map[string]any{"version": cur.Version})
	})
	if err != nil {
		return err
	}
	s.reloadAfterChange(ctx, tenant)
	return nil
}

// reloadAfterChange reloads a tenant after a committed change. A failure
// (the store went away between the commit and the read) is logged; the
// periodic Load catches up.
func (s *Rules) reloadAfterChange(ctx context.Context, tenant event.TenantID) {
	if _, err := s.Reload(context.WithoutCancel(ctx), tenant); err != nil {
		s.o.Logger.Error("reload rules after a change", "tenant", tenant, "err", err)
	}
}

// Try evaluates r (stored or not, enabled or not) against events as the
// engine would, with the devices' current profiles, and changes nothing.
func (s *Rules) Try(ctx context.Context, r store.Rule, events []event.Event) (*detect.CompiledRule, detect.TryResult, error) {
	r.Enabled = true
	cr, err := Compile(r)
	if err != nil {
		return nil, detect.TryResult{}, err
	}
	dir := s.o.Directory
	if dir == nil {
		if dir, err = s.profiles(ctx, r.Tenant, events); err != nil {
			return nil, detect.TryResult{}, err
		}
	}
	return cr, detect.TryRule(ctx, cr, events, dir), nil
}

// profiles reads the registry records of the tenant's devices named by
// events, in one read transaction.
func (s *Rules) profiles(ctx context.Context, tenant event.TenantID, events []event.Event) (detect.Directory, error) {
	dir := detect.NewMemDirectory()
	seen := map[event.DeviceID]bool{}
	err := s.o.Store.View(ctx, func(tx store.Tx) error {
		for _, ev := range events {
			if ev.Device == "" || ev.Tenant != tenant || seen[ev.Device] {
				continue
			}
			seen[ev.Device] = true
			dev, err := tx.Devices().Get(ctx, tenant, ev.Device)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			dir.Put(Profile(dev))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("platform: rule test: read devices: %w", err)
	}
	return dir, nil
}
