package respond

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// A tenant's playbooks are the built-in defaults overlaid by the playbooks
// the tenant uploaded, by name: uploading a playbook with a default's name
// replaces that default for the tenant, and any playbook (default or not)
// can be disabled. Each upload is a new version (1, 2, ...) kept forever;
// version 0 is the built-in default. Stored with store.Playbooks: a head
// per name (current version, enabled) and every version's YAML.

// Playbook sources.
const (
	SourceDefault = "default" // built in, version 0
	SourceTenant  = "tenant"  // uploaded by the tenant
)

// PlaybookInfo describes one of a tenant's playbooks.
type PlaybookInfo struct {
	Name                   string       `json:"name"`
	Version                int          `json:"version"` // 0: the built-in default
	Enabled                bool         `json:"enabled"`
	Source                 string       `json:"source"` // default or tenant
	Mode                   Mode         `json:"mode"`
	Kinds                  []alert.Kind `json:"kinds"`
	MinSeverity            string       `json:"min_severity"`
	Selector               string       `json:"selector,omitempty"`
	Steps                  []StepKind   `json:"steps"`
	RestoreOnFalsePositive bool         `json:"restore_on_false_positive"`
	UpdatedAt              *time.Time   `json:"updated_at,omitempty"`
	UpdatedBy              string       `json:"updated_by,omitempty"`
	YAML                   string       `json:"yaml,omitempty"` // the current version's document (get only)
}

func infoOf(pb Playbook, version int, enabled bool) PlaybookInfo {
	in := PlaybookInfo{Name: pb.Name, Version: version, Enabled: enabled, Source: SourceTenant, Mode: pb.Mode,
		Kinds: pb.Trigger.Kinds, MinSeverity: pb.Trigger.MinSeverity.String(), Selector: pb.Trigger.Selector.String(),
		RestoreOnFalsePositive: pb.RestoreOnFalsePositive}
	if version == 0 {
		in.Source = SourceDefault
	}
	for _, st := range pb.Steps {
		in.Steps = append(in.Steps, st.Kind)
	}
	return in
}

// defaultSet is the parsed default playbooks, each with its own document.
type defaultSet struct {
	names []string
	docs  map[string]string
	pbs   map[string]Playbook
}

func loadDefaults() (defaultSet, error) {
	names, docs, err := defaultDocs()
	if err != nil {
		return defaultSet{}, err
	}
	d := defaultSet{names: names, docs: docs, pbs: map[string]Playbook{}}
	for _, n := range names {
		pb, err := ParseOne([]byte(docs[n]), n)
		if err != nil {
			return defaultSet{}, fmt.Errorf("default %s: %w", n, err)
		}
		d.pbs[n] = pb
	}
	return d, nil
}

type cachedPlaybooks struct {
	key string
	pbs []Playbook
}

// loadPlaybooks returns the tenant's effective playbooks (enabled ones, in
// name order: defaults first, then the tenant's), read inside tx. Parsed
// playbooks are cached by the heads they came from.
func (e *Engine) loadPlaybooks(ctx context.Context, tx store.Tx, tenant event.TenantID) ([]Playbook, error) {
	heads, err := tx.Playbooks().Heads(ctx, tenant)
	if err != nil {
		return nil, err
	}
	var key strings.Builder
	for _, h := range heads {
		fmt.Fprintf(&key, "%s@%d:%t;", h.Name, h.Version, h.Enabled)
	}
	e.mu.Lock()
	c, ok := e.cache[tenant]
	e.mu.Unlock()
	if ok && c.key == key.String() {
		return c.pbs, nil
	}
	byName := map[string]store.PlaybookHead{}
	for _, h := range heads {
		byName[h.Name] = h
	}
	var out []Playbook
	for _, n := range e.defaults.names {
		if h, ok := byName[n]; !ok || h.Enabled && h.Version == 0 {
			out = append(out, e.defaults.pbs[n])
		}
	}
	for _, h := range heads {
		if !h.Enabled || h.Version == 0 {
			continue
		}
		v, err := tx.Playbooks().Version(ctx, tenant, h.Name, h.Version)
		if err != nil {
			return nil, err
		}
		pb, err := ParseOne([]byte(v.YAML), h.Name)
		if err != nil {
			return nil, fmt.Errorf("stored playbook %s version %d: %w", h.Name, h.Version, err)
		}
		out = append(out, pb)
	}
	e.mu.Lock()
	e.cache[tenant] = cachedPlaybooks{key: key.String(), pbs: out}
	e.mu.Unlock()
	return out, nil
}

// Playbooks returns the playbooks that run for the tenant's alerts.
func (e *Engine) Playbooks(ctx context.Context, tenant event.TenantID) ([]Playbook, error) {
	var pbs []Playbook
	err := e.o.Store.View(ctx, func(tx store.Tx) (err error) {
		pbs, err = e.loadPlaybooks(ctx, tx, tenant)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("respond playbooks %s: %w", tenant, err)
	}
	return pbs, nil
}

// ListPlaybooks describes every playbook of the tenant, enabled or not:
// the defaults (as replaced or disabled by the tenant) and the tenant's
// own, ordered by name.
func (e *Engine) ListPlaybooks(ctx context.Context, tenant event.TenantID) ([]PlaybookInfo, error) {
	var out []PlaybookInfo
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		heads, err := tx.Playbooks().Heads(ctx, tenant)
		if err != nil {
			return err
		}
		byName := map[string]store.PlaybookHead{}
		for _, h := range heads {
			byName[h.Name] = h
		}
		for _, n := range e.defaults.names {
			if _, ok := byName[n]; !ok {
				out = append(out, infoOf(e.defaults.pbs[n], 0, true))
			}
		}
		for _, h := range heads {
			in, err := e.describe(ctx, tx, h)
			if err != nil {
				return err
			}
			out = append(out, in)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("respond list playbooks %s: %w", tenant, err)
	}
	sortInfos(out)
	return out, nil
}

func sortInfos(in []PlaybookInfo) {
	for i := 1; i < len(in); i++ {
		for j := i; j > 0 && in[j].Name < in[j-1].Name; j-- {
			in[j], in[j-1] = in[j-1], in[j]
		}
	}
}

func (e *Engine) describe(ctx context.Context, tx store.Tx, h store.PlaybookHead) (PlaybookInfo, error) {
	if h.Version == 0 {
		pb, ok := e.defaults.pbs[h.Name]
		if !ok {
			return PlaybookInfo{}, fmt.Errorf("playbook %s: head names version 0 of no default: %w", h.Name, store.ErrInvalid)
		}
		in := infoOf(pb, 0, h.Enabled)
		in.UpdatedAt, in.YAML = &h.UpdatedAt, e.defaults.docs[h.Name]
		return in, nil
	}
	v, err := tx.Playbooks().Version(ctx, h.Tenant, h.Name, h.Version)
	if err != nil {
		return PlaybookInfo{}, err
	}
	pb, err := ParseOne([]byte(v.YAML), h.Name)
	if err != nil {
		return PlaybookInfo{}, fmt.Errorf("stored playbook %s version %d: %w", h.Name, h.Version, err)
	}
	in := infoOf(pb, h.Version, h.Enabled)
	in.UpdatedAt, in.UpdatedBy, in.YAML = &h.UpdatedAt, v.Actor, v.YAML
	return in, nil
}

// GetPlaybook describes one playbook with its current document;
// store.ErrNotFound if the tenant has none of that name.
func (e *Engine) GetPlaybook(ctx context.Context, tenant event.TenantID, name string) (PlaybookInfo, error) {
	var in PlaybookInfo
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		h, err := tx.Playbooks().Head(ctx, tenant, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			pb, ok := e.defaults.pbs[name]
			if !ok {
				return fmt.Errorf("no playbook %q: %w", name, store.ErrNotFound)
			}
			in = infoOf(pb, 0, true)
			in.YAML = e.defaults.docs[name]
			return nil
		case err != nil:
			return err
		}
		in, err = e.describe(ctx, tx, h)
		return err
	})
	if err != nil {
		return PlaybookInfo{}, fmt.Errorf("respond get playbook %s/%s: %w", tenant, name, err)
	}
	return in, nil
}

// PlaybookVersions lists every version of a playbook, oldest first; a
// default's list starts with version 0, the built-in document.
func (e *Engine) PlaybookVersions(ctx context.Context, tenant event.TenantID, name string) ([]store.PlaybookVersion, error) {
	var out []store.PlaybookVersion
	if doc, ok := e.defaults.docs[name]; ok {
		out = append(out, store.PlaybookVersion{Tenant: tenant, Name: name, Version: 0, YAML: doc, Actor: "built-in"})
	}
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		vs, err := tx.Playbooks().Versions(ctx, tenant, name)
		out = append(out, vs...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("respond playbook versions %s/%s: %w", tenant, name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("respond playbook versions %s/%s: no playbook %q: %w", tenant, name, name, store.ErrNotFound)
	}
	return out, nil
}

// PlaybookVersion returns one version (0: the built-in default).
func (e *Engine) PlaybookVersion(ctx context.Context, tenant event.TenantID, name string, version int) (store.PlaybookVersion, error) {
	if version == 0 {
		if doc, ok := e.defaults.docs[name]; ok {
			return store.PlaybookVersion{Tenant: tenant, Name: name, Version: 0, YAML: doc, Actor: "built-in"}, nil
		}
	}
	var v store.PlaybookVersion
	err := e.o.Store.View(ctx, func(tx store.Tx) (err error) {
		v, err = tx.Playbooks().Version(ctx, tenant, name, version)
		return err
	})
	if err != nil {
		return v, fmt.Errorf("respond playbook version %s/%s@%d: %w", tenant, name, version, err)
	}
	return v, nil
}

// PutPlaybook validates doc (see [ParseOne]) and stores it as the next
// version of the tenant's playbook name, which then runs (a disabled
// playbook stays disabled). The change is audited as playbook.put. An
// invalid document changes nothing and returns the *[ParseError].
func (e *Engine) PutPlaybook(ctx context.Context, tenant event.TenantID, name string, doc []byte, actor string) (PlaybookInfo, error) {
	pb, err := ParseOne(doc, name)
	if err != nil {
		return PlaybookInfo{}, fmt.Errorf("respond put playbook %s/%s: %w", tenant, name, err)
	}
	now := e.o.Clock.Now().UTC()
	var in PlaybookInfo
	err = e.o.Store.Update(ctx, func(tx store.Tx) error {
		in, err = e.putTx(ctx, tx, tenant, pb, doc, actor, now, false)
		return err
	})
	if err != nil {
		return PlaybookInfo{}, fmt.Errorf("respond put playbook %s/%s: %w", tenant, name, err)
	}
	return in, nil
}

func (e *Engine) putTx(ctx context.Context, tx store.Tx, tenant event.TenantID, pb Playbook, doc []byte, actor string, now time.Time, enable bool) (PlaybookInfo, error) {
	p := tx.Playbooks()
	vs, err := p.Versions(ctx, tenant, pb.Name)
	if err != nil {
		return PlaybookInfo{}, err
	}
	version := len(vs) + 1
	enabled := true
	if h, err := p.Head(ctx, tenant, pb.Name); err == nil {
		enabled = h.Enabled || enable
	} else if !errors.Is(err, store.ErrNotFound) {
		return PlaybookInfo{}, err
	}
	if err := p.PutVersion(ctx, store.PlaybookVersion{Tenant: tenant, Name: pb.Name, Version: version, YAML: string(doc),
		Actor: actor, CreatedAt: now}); err != nil {
		return PlaybookInfo{}, err
	}
	if err := p.PutHead(ctx, store.PlaybookHead{Tenant: tenant, Name: pb.Name, Version: version, Enabled: enabled, UpdatedAt: now}); err != nil {
		return PlaybookInfo{}, err
	}
	sum := sha256.Sum256(doc)
	if err := audit.Record(ctx, tx, tenant, now, actor, "playbook.put", "playbook:"+pb.Name, map[string]any{
		"version": version, "sha256": fmt.Sprintf("%x", sum), "enabled": enabled,
	}); err != nil {
		return PlaybookInfo{}, err
	}
	in := infoOf(pb, version, enabled)
	in.UpdatedAt, in.UpdatedBy, in.YAML = &now, actor, string(doc)
	return in, nil
}

// SetPlaybookEnabled enables or disables one of the tenant's playbooks
// (a default included), audited as playbook.enable or playbook.disable.
// store.ErrNotFound if the tenant has no playbook of that name.
func (e *Engine) SetPlaybookEnabled(ctx context.Context, tenant event.TenantID, name string, enabled bool, actor string) (PlaybookInfo, error) {
	now := e.o.Clock.Now().UTC()
	var in PlaybookInfo
	err := e.o.Store.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Playbooks().Head(ctx, tenant, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if _, ok := e.defaults.pbs[name]; !ok {
				return fmt.Errorf("no playbook %q: %w", name, store.ErrNotFound)
			}
			h = store.PlaybookHead{Tenant: tenant, Name: name, Version: 0}
		case err != nil:
			return err
		}
		h.Enabled, h.UpdatedAt = enabled, now
		if err := tx.Playbooks().PutHead(ctx, h); err != nil {
			return err
		}
		action := "playbook.disable"
		if enabled {
			action = "playbook.enable"
		}
		if err := audit.Record(ctx, tx, tenant, now, actor, action, "playbook:"+name, map[string]any{"version": h.Version}); err != nil {
			return err
		}
		in, err = e.describe(ctx, tx, h)
		return err
	})
	if err != nil {
		return PlaybookInfo{}, fmt.Errorf("respond set playbook enabled %s/%s: %w", tenant, name, err)
	}
	return in, nil
}

// SetPlaybooks replaces the tenant's whole set with the playbooks of doc
// (see [Parse]): each is stored as its next version and enabled, and every
// other playbook of the tenant, defaults included, is disabled; all in one
// audited transaction. It returns how many playbooks doc held. An invalid
// document changes nothing and returns the *[ParseError].
func (e *Engine) SetPlaybooks(ctx context.Context, tenant event.TenantID, doc []byte, actor string) (int, error) {
	pbs, err := Parse(doc)
	if err != nil {
		return 0, fmt.Errorf("respond set playbooks %s: %w", tenant, err)
	}
	// Each playbook keeps its own lines of doc, so its stored version is
	// a standalone document (and reports the same lines as doc would).
	lines := strings.SplitAfter(string(doc), "\n")
	now := e.o.Clock.Now().UTC()
	err = e.o.Store.Update(ctx, func(tx store.Tx) error {
		keep := map[string]bool{}
		for i, pb := range pbs {
			keep[pb.Name] = true
			end := len(lines)
			if i+1 < len(pbs) {
				end = pbs[i+1].Line - 1
			}
			one := "# from a document of " + strconv.Itoa(len(pbs)) + " playbooks\nplaybooks:\n" + strings.Join(lines[pb.Line-1:end], "")
			pb.Line = 0
			if _, err := ParseOne([]byte(one), pb.Name); err != nil {
				return fmt.Errorf("playbook %s on its own: %w", pb.Name, err)
			}
			if _, err := e.putTx(ctx, tx, tenant, pb, []byte(one), actor, now, true); err != nil {
				return err
			}
		}
		heads, err := tx.Playbooks().Heads(ctx, tenant)
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, h := range heads {
			have[h.Name] = true
			if !keep[h.Name] && h.Enabled {
				h.Enabled, h.UpdatedAt = false, now
				if err := tx.Playbooks().PutHead(ctx, h); err != nil {
					return err
				}
			}
		}
		for _, n := range e.defaults.names {
			if !keep[n] && !have[n] {
				if err := tx.Playbooks().PutHead(ctx, store.PlaybookHead{Tenant: tenant, Name: n, Version: 0, UpdatedAt: now}); err != nil {
					return err
				}
			}
		}
		sum := sha256.Sum256(doc)
		return audit.Record(ctx, tx, tenant, now, actor, "playbooks.replace", "playbooks", map[string]any{
			"count": len(pbs), "sha256": fmt.Sprintf("%x", sum)})
	})
	if err != nil {
		return 0, fmt.Errorf("respond set playbooks %s: %w", tenant, err)
	}
	return len(pbs), nil
}
