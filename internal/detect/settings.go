package detect

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/garrisonhq/garrison/internal/event"
)

// SettingsKey is the store settings key (per tenant) under which a
// tenant's detector overrides are kept, as JSON of [TenantSettings].
const SettingsKey = "detect.settings"

// TenantSettings is one tenant's detector overrides: for the tenant as a
// whole and per group (cohort). Each value is a JSON object of the
// detector's settings fields (only the fields that change), optionally
// with "disabled".
type TenantSettings struct {
	Tenant map[string]json.RawMessage            `json:"tenant,omitempty"`
	Groups map[string]map[string]json.RawMessage `json:"groups,omitempty"`
}

// Scope returns the overrides at group ("" = the tenant scope).
func (ts TenantSettings) Scope(group string) map[string]json.RawMessage {
	if group == "" {
		return ts.Tenant
	}
	return ts.Groups[group]
}

// With returns a copy of ts in which detector name's override at group is
// raw (an empty or null raw removes it). It does not validate.
func (ts TenantSettings) With(group, name string, raw json.RawMessage) TenantSettings {
	out := TenantSettings{Tenant: maps.Clone(ts.Tenant), Groups: make(map[string]map[string]json.RawMessage, len(ts.Groups))}
	for g, m := range ts.Groups {
		out.Groups[g] = maps.Clone(m)
	}
	m := out.Scope(group)
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	if emptyOverride(raw) {
		delete(m, name)
	} else {
		m[name] = append(json.RawMessage(nil), raw...)
	}
	switch {
	case group == "" && len(m) == 0:
		out.Tenant = nil
	case group == "":
		out.Tenant = m
	case len(m) == 0:
		delete(out.Groups, group)
	default:
		out.Groups[group] = m
	}
	if len(out.Groups) == 0 {
		out.Groups = nil
	}
	return out
}

func emptyOverride(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return true
	}
	var m map[string]json.RawMessage
	return json.Unmarshal(raw, &m) == nil && len(m) == 0
}

// Validate checks every override of ts with [ValidateOverride], reporting
// all problems at once.
func (ts TenantSettings) Validate() error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(ts.Tenant)) {
		if err := ValidateOverride(name, ts.Tenant[name]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, g := range slices.Sorted(maps.Keys(ts.Groups)) {
		if err := ValidGroup(g); err != nil {
			errs = append(errs, err)
		}
		for _, name := range slices.Sorted(maps.Keys(ts.Groups[g])) {
			if err := ValidateOverride(name, ts.Groups[g][name]); err != nil {
				errs = append(errs, fmt.Errorf("group %q: %w", g, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ValidGroup checks a group (cohort) name used as a settings scope.
func ValidGroup(g string) error {
	if g == "" || len(g) > 128 || strings.ContainsFunc(g, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w: group %q: want 1-128 printable characters", ErrSettings, g)
	}
	return nil
}

// Apply puts ts into s as the scopes "TENANT" and "TENANT/GROUP",
// replacing whatever s held for tenant t.
func (ts TenantSettings) Apply(t event.TenantID, s *Settings) {
	if s.Overrides == nil {
		s.Overrides = map[string]map[string]json.RawMessage{}
	}
	for scope := range s.Overrides {
		if scope == string(t) || strings.HasPrefix(scope, string(t)+"/") {
			delete(s.Overrides, scope)
		}
	}
	if len(ts.Tenant) > 0 {
		s.Overrides[string(t)] = maps.Clone(ts.Tenant)
	}
	for g, m := range ts.Groups {
		if len(m) > 0 {
			s.Overrides[string(t)+"/"+g] = maps.Clone(m)
		}
	}
}

// Field describes one typed setting of a detector.
type Field struct {
	Name string `json:"name"`
	Type string `json:"type"` // integer, number, boolean, duration, string list
}

// Fields lists a detector's settings fields (nil for an unknown name).
// Every detector also accepts "disabled" (boolean).
func Fields(name string) []Field {
	d := detectorByName(name)
	if d == nil {
		return nil
	}
	out := []Field{}
	t := reflect.TypeOf(d.defaults()).Elem()
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || tag == "-" || tag == "" {
			continue
		}
		out = append(out, Field{Name: tag, Type: typeName(f.Type)})
	}
	return out
}

func typeName(t reflect.Type) string {
	if t == reflect.TypeFor[Duration]() {
		return "duration"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	case reflect.Slice:
		return typeName(t.Elem()) + " list"
	}
	return t.Kind().String()
}

// ValidateOverride checks one override of detector name: a JSON object
// whose fields are settings of that detector (plus "disabled", a boolean),
// each of the field's type; numbers and durations must be finite and not
// negative. The error names the detector and the field.
func ValidateOverride(name string, raw json.RawMessage) error {
	d := detectorByName(name)
	if d == nil {
		return fmt.Errorf("%w: unknown detector %q", ErrSettings, name)
	}
	if emptyOverride(raw) {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%w: detector %q: want a JSON object of settings", ErrSettings, name)
	}
	cfg := reflect.ValueOf(d.defaults()).Elem()
	byTag := map[string]int{}
	for i := range cfg.NumField() {
		tag, _, _ := strings.Cut(cfg.Type().Field(i).Tag.Get("json"), ",")
		if tag != "" && tag != "-" && cfg.Type().Field(i).IsExported() {
			byTag[tag] = i
		}
	}
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		if k == "disabled" {
			var b bool
			if json.Unmarshal(v, &b) != nil {
				errs = append(errs, fmt.Errorf("%w: detector %q: field \"disabled\": want true or false", ErrSettings, name))
			}
			continue
		}
		i, ok := byTag[k]
		if !ok {
			known := slices.Sorted(maps.Keys(byTag))
			errs = append(errs, fmt.Errorf("%w: detector %q: unknown field %q (settings: %s)", ErrSettings, name, k, strings.Join(append(known, "disabled"), ", ")))
			continue
		}
		f := cfg.Type().Field(i)
		p := reflect.New(f.Type)
		if err := json.Unmarshal(v, p.Interface()); err != nil {
			errs = append(errs, fmt.Errorf("%w: detector %q: field %q: want %s", ErrSettings, name, k, typeName(f.Type)))
			continue
		}
		if err := checkValue(p.Elem()); err != nil {
			errs = append(errs, fmt.Errorf("%w: detector %q: field %q: %w", ErrSettings, name, k, err))
		}
	}
	return errors.Join(errs...)
}

func checkValue(v reflect.Value) error {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if v.Int() < 0 {
			return fmt.Errorf("must not be negative, got %v", v.Interface())
		}
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("must be a finite number, not negative, got %v", f)
		}
	}
	return nil
}

// Effective is a detector's resolved settings for one tenant and group.
type Effective struct {
	Name     string          `json:"name"`
	Disabled bool            `json:"disabled"`
	Settings json.RawMessage `json:"settings"`
}

// Resolve returns every detector's effective settings for tenant t and
// group under s (defaults, then the scopes "*", "TENANT", "TENANT/GROUP"),
// in registry order: the same resolution the engine applies.
func Resolve(s Settings, t event.TenantID, group string) []Effective {
	b := resolveBundle(s, t, group)
	out := make([]Effective, len(builtins))
	for i, d := range builtins {
		raw, _ := json.Marshal(b.cfg[i])
		out[i] = Effective{Name: d.Name, Disabled: b.off[i], Settings: raw}
	}
	return out
}

// cloneSettings copies s deeply enough that later changes to the caller's
// maps do not reach the engine.
func cloneSettings(s Settings) Settings {
	out := Settings{Overrides: make(map[string]map[string]json.RawMessage, len(s.Overrides))}
	for scope, m := range s.Overrides {
		out.Overrides[scope] = maps.Clone(m)
	}
	return out
}

// SetSettings validates s and, if it is valid, makes it the engine's
// settings: events processed after SetSettings returns use them (learned
// state is kept). It is safe to call concurrently with Process. On error
// nothing changes.
func (e *Engine) SetSettings(s Settings) error {
	if err := ValidateSettings(s); err != nil {
		return err
	}
	s = cloneSettings(s)
	e.bundleMu.Lock()
	defer e.bundleMu.Unlock()
	e.settings = s
	e.settingsGen++
	clear(e.bundles)
	return nil
}

// SetTenantSettings replaces tenant t's scopes ("TENANT", "TENANT/GROUP")
// with ts, keeping every other scope; see [Engine.SetSettings].
func (e *Engine) SetTenantSettings(t event.TenantID, ts TenantSettings) error {
	if err := ts.Validate(); err != nil {
		return err
	}
	e.bundleMu.Lock()
	defer e.bundleMu.Unlock()
	s := cloneSettings(e.settings)
	ts.Apply(t, &s)
	e.settings = s
	e.settingsGen++
	clear(e.bundles)
	return nil
}

// Settings returns a copy of the engine's current settings.
func (e *Engine) Settings() Settings {
	e.bundleMu.RLock()
	defer e.bundleMu.RUnlock()
	return cloneSettings(e.settings)
}

// sortedScopes returns the scopes of s in a stable order (for messages).
func sortedScopes(s Settings) []string {
	out := make([]string, 0, len(s.Overrides))
	for k := range s.Overrides {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
