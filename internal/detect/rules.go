package detect

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// Operator rules: a CEL expression over one event and its device, compiled
// once ([CompileRule]) and evaluated by the engine for every event of the
// rule's tenant (and of its event kinds, if it names any). A true result
// raises an alert of the rule's kind, with the rule and the event as
// evidence; repeats merge like every other alert.
//
// The expression sees two variables (fields as in docs/DETECTION.md):
//
//	event  RuleEvent:  id, tenant, device, kind, time (timestamp), source, attrs (map)
//	device RuleDevice: known, id, model, group, groups, state, firmware, imei, imsi, iccid, tags
//
// Evaluation is bounded: an expression is at most [MaxRuleExprBytes], and
// one evaluation at most [RuleCostLimit] CEL cost units (an evaluation that
// would exceed it stops with an error and counts as no match). There is no
// clock in the environment: rules run on event time like the detectors.

// Limits of a rule.
const (
	// MaxRuleExprBytes is the longest expression accepted.
	MaxRuleExprBytes = 4096
	// RuleCostLimit bounds the runtime cost of one evaluation (CEL cost
	// units: about one per operation, plus the size of strings and lists
	// walked). A typical rule costs under 50.
	RuleCostLimit = 10_000
	// MaxRuleEvents is how many event kinds a rule may filter on.
	MaxRuleEvents = 32
)

// RuleKindDomain is the alert-kind domain of rules: a rule that names no
// kind raises rule.<id> (dashes become underscores).
const RuleKindDomain = "rule"

// Rule is an operator rule as the engine runs it.
type Rule struct {
	Tenant      event.TenantID
	ID          string // 1-63 of [a-z0-9-], starting with a letter or digit
	Name        string
	Description string
	// Expr is a CEL expression that must yield a bool.
	Expr string
	// Kind is the alert kind raised: rule.NAME, or the kind of a built-in
	// detector (the alert then merges with that detector's alerts and the
	// playbooks of that kind act on it). Empty: rule.<id>.
	Kind     alert.Kind
	Severity alert.Severity
	// Events limits the rule to these event kinds (empty: every event).
	Events  []event.Kind
	Enabled bool
	Version int
}

// ErrRule reports an invalid rule; errors.As gives the [RuleError].
var ErrRule = errors.New("detect: invalid rule")

// RuleError says what is wrong with a rule: the field and, for a CEL error
// in Expr, the 1-based line and column.
type RuleError struct {
	Field        string
	Line, Column int // 0 when the error has no position
	Msg          string
}

func (e *RuleError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: line %d, column %d: %s", e.Field, e.Line, e.Column, e.Msg)
	}
	return e.Field + ": " + e.Msg
}

// Unwrap makes errors.Is(err, ErrRule) true.
func (e *RuleError) Unwrap() error { return ErrRule }

var (
	ruleIDRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	ruleKindRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,62}$`)
	evKindRe   = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,62}){0,3}$`)
)

// DefaultRuleKind is the alert kind of a rule that names none.
func DefaultRuleKind(id string) alert.Kind {
	return alert.Kind(RuleKindDomain + "." + strings.ReplaceAll(id, "-", "_"))
}

// ValidateRule checks every field but the expression, reporting the first
// problem.
func ValidateRule(r Rule) error {
	bad := func(field, format string, args ...any) error {
		return &RuleError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case !ruleIDRe.MatchString(r.ID):
		return bad("id", "must be 1-63 characters of [a-z0-9-], got %q", r.ID)
	case strings.TrimSpace(r.Name) == "" || len(r.Name) > 200:
		return bad("name", "must be 1-200 characters")
	case len(r.Description) > 2000:
		return bad("description", "must be at most 2000 characters")
	case strings.TrimSpace(r.Expr) == "":
		return bad("expr", "is empty")
	case len(r.Expr) > MaxRuleExprBytes:
		return bad("expr", "is %d bytes, more than %d", len(r.Expr), MaxRuleExprBytes)
	case r.Severity < alert.Info || r.Severity > alert.Critical:
		return bad("severity", "must be info, low, medium, high or critical")
	case len(r.Events) > MaxRuleEvents:
		return bad("events", "names %d event kinds, more than %d", len(r.Events), MaxRuleEvents)
	}
	if r.Kind != "" && !ruleKindAllowed(r.Kind) {
		return bad("alert_kind", "%q must be %s.NAME (lower case, [a-z0-9_]) or the kind of a built-in detector", r.Kind, RuleKindDomain)
	}
	for i, k := range r.Events {
		if !evKindRe.MatchString(string(k)) {
			return bad(fmt.Sprintf("events[%d]", i), "%q is not an event kind (domain.name, lower case)", k)
		}
	}
	return nil
}

func ruleKindAllowed(k alert.Kind) bool {
	if !ruleKindRe.MatchString(string(k)) {
		return false
	}
	if strings.HasPrefix(string(k), RuleKindDomain+".") {
		return true
	}
	for _, d := range builtins {
		if d.Kind == k {
			return true
		}
	}
	return false
}

// RuleEvent is the `event` variable of a rule.
type RuleEvent struct {
	ID     string         `cel:"id"`
	Tenant string         `cel:"tenant"`
	Device string         `cel:"device"`
	Kind   string         `cel:"kind"`
	Time   time.Time      `cel:"time"`
	Source string         `cel:"source"`
	Attrs  map[string]any `cel:"attrs"`
}

// RuleDevice is the `device` variable of a rule: the directory's profile
// of the event's device. Known is false (and every other field empty) when
// the directory does not know the device.
type RuleDevice struct {
	Known    bool              `cel:"known"`
	ID       string            `cel:"id"`
	Model    string            `cel:"model"`
	Group    string            `cel:"group"` // the cohort baselines use
	Groups   []string          `cel:"groups"`
	State    string            `cel:"state"`
	Firmware string            `cel:"firmware"`
	IMEI     string            `cel:"imei"`
	IMSI     string            `cel:"imsi"`
	ICCID    string            `cel:"iccid"`
	Tags     map[string]string `cel:"tags"`
}

// ruleEnv is the one CEL environment every rule compiles in; it is built
// once and never changed.
var ruleEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(ext.ParseStructTags(true), reflect.TypeFor[RuleEvent](), reflect.TypeFor[RuleDevice]()),
		cel.Variable("event", cel.ObjectType("detect.RuleEvent")),
		cel.Variable("device", cel.ObjectType("detect.RuleDevice")),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Network(),
		cel.ParserExpressionSizeLimit(MaxRuleExprBytes),
		cel.ParserRecursionLimit(64),
	)
})

// CompiledRule is a rule ready to evaluate. It is immutable and safe for
// concurrent use.
type CompiledRule struct {
	Rule
	det     Detector    // name rule:<id>, the alert kind and severity
	prg     cel.Program // with the runtime cost limit
	hot     cel.Program // what the engine runs: prg, or untracked if bounded
	bounded bool        // the static worst case is within RuleCostLimit
	errors  atomic.Int64
}

// eventSized sizes every value a rule reads at most as large as the
// largest encoded event (event.MaxEncodedSize): strings in bytes, lists
// and maps in entries. Events reach the engine through the bus codec,
// which refuses larger ones.
type eventSized struct{}

func (eventSized) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	if n.ComputedSize() != nil {
		return nil
	}
	return &cost.SizeEstimate{Min: 0, Max: event.MaxEncodedSize}
}

func (eventSized) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

// Errors returns how many evaluations of the rule failed (a missing
// attribute, a type mismatch, the cost limit); each counts as no match.
func (cr *CompiledRule) Errors() int64 { return cr.errors.Load() }

// AlertKind is the kind of alert the rule raises.
func (cr *CompiledRule) AlertKind() alert.Kind { return cr.det.Kind }

// CompileRule validates r and compiles its expression. A CEL error comes
// back as a *[RuleError] on field expr with its line and column.
func CompileRule(r Rule) (*CompiledRule, error) {
	if err := ValidateRule(r); err != nil {
		return nil, err
	}
	env, err := ruleEnv()
	if err != nil {
		return nil, fmt.Errorf("detect: rule environment: %w", err)
	}
	ast, iss := env.Compile(r.Expr)
	if iss != nil && iss.Err() != nil {
		errs := iss.Errors()
		re := &RuleError{Field: "expr", Msg: iss.Err().Error()}
		if len(errs) > 0 {
			re.Msg = errs[0].Message
			if l := errs[0].Location; l != nil && l.Line() > 0 {
				re.Line, re.Column = l.Line(), l.Column()+1
			}
			if len(errs) > 1 {
				re.Msg += fmt.Sprintf(" (and %d more)", len(errs)-1)
			}
		}
		return nil, re
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, &RuleError{Field: "expr", Line: 1, Column: 1, Msg: fmt.Sprintf("must yield a bool, yields %s", t)}
	}
	prg, err := env.Program(ast, cel.CostLimit(RuleCostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, &RuleError{Field: "expr", Msg: err.Error()}
	}
	cr := &CompiledRule{Rule: r, prg: prg, hot: prg}
	// A rule whose worst case over inputs the size of the largest event is
	// within the limit cannot exceed it on a bus event: the engine then
	// runs it without the (costly) runtime tracking.
	if est, err := env.EstimateCost(ast, eventSized{}); err == nil && est.Max <= RuleCostLimit {
		if fast, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize)); err == nil {
			cr.hot, cr.bounded = fast, true
		}
	}
	cr.Events = slices.Clone(r.Events)
	kind := r.Kind
	if kind == "" {
		kind = DefaultRuleKind(r.ID)
	}
	cr.det = Detector{Name: "rule:" + r.ID, Kind: kind, Severity: r.Severity, Description: r.Name}
	return cr, nil
}

// ruleVars is the activation of one event, shared by every rule it is
// evaluated against.
type ruleVars struct {
	ev  RuleEvent
	dev RuleDevice
}

func (v *ruleVars) ResolveName(name string) (any, bool) {
	switch name {
	case "event":
		return &v.ev, true
	case "device":
		return &v.dev, true
	}
	return nil, false
}

func (v *ruleVars) Parent() interpreter.Activation { return nil }

func (v *ruleVars) fill(ev *event.Event, p Profile, known bool) {
	v.ev = RuleEvent{ID: ev.ID, Tenant: string(ev.Tenant), Device: string(ev.Device), Kind: string(ev.Kind),
		Time: ev.Time, Source: ev.Source, Attrs: ev.Attrs}
	if known {
		v.dev = RuleDevice{Known: true, ID: string(p.ID), Model: p.Model, Group: p.Cohort, Groups: p.Groups, State: p.State,
			Firmware: p.Firmware, IMEI: p.IMEI, IMSI: p.IMSI, ICCID: p.ICCID, Tags: p.Tags}
	} else {
		v.dev = RuleDevice{ID: string(ev.Device)}
	}
	if !plainAttrs(ev.Attrs) {
		v.ev.Attrs = sanitizeAttrs(ev.Attrs)
	}
}

// Match evaluates the rule on one event and the profile of its device
// (known false if the directory has none). An evaluation error is returned
// (and counted) with false.
func (cr *CompiledRule) Match(ev *event.Event, p Profile, known bool) (bool, error) {
	var v ruleVars
	v.fill(ev, p, known)
	return cr.eval(&v)
}

func (cr *CompiledRule) applies(k event.Kind) bool {
	return len(cr.Events) == 0 || slices.Contains(cr.Events, k)
}

// eval runs the runtime-limited program (tests of recorded events, whose
// sizes the bus did not bound).
func (cr *CompiledRule) eval(v *ruleVars) (bool, error) { return cr.run(cr.prg, v) }

// evalHot runs the engine's program.
func (cr *CompiledRule) evalHot(v *ruleVars) (bool, error) { return cr.run(cr.hot, v) }

func (cr *CompiledRule) run(prg cel.Program, v *ruleVars) (ok bool, err error) {
	defer func() {
		if r := recover(); r != nil { // a CEL library bug must not take the engine down
			ok, err = false, fmt.Errorf("rule %s: evaluation failed: %v", cr.ID, r)
		}
		if err != nil {
			cr.errors.Add(1)
		}
	}()
	out, _, err := prg.Eval(v)
	if err != nil {
		return false, fmt.Errorf("rule %s: %w", cr.ID, err)
	}
	b, isBool := out.Value().(bool)
	if !isBool {
		return false, fmt.Errorf("rule %s: result is %s, not a bool", cr.ID, out.Type().TypeName())
	}
	return b, nil
}

// plainAttrs reports whether every attribute value is of a JSON type (what
// the wire codec produces), checked one level deep; nested values of odd
// types are left to CEL, which reports them as errors.
func plainAttrs(m map[string]any) bool {
	for _, v := range m {
		switch v.(type) {
		case nil, string, float64, bool, []any, map[string]any:
		default:
			return false
		}
	}
	return true
}

// sanitizeAttrs turns attribute values of Go types (set by in-process
// producers) into their JSON equivalents so that a rule sees the same thing
// whether the event came over the wire or not.
func sanitizeAttrs(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = plainValue(v, 0)
	}
	return out
}

func plainValue(v any, depth int) any {
	if depth > 8 {
		return nil
	}
	switch x := v.(type) {
	case nil, string, float64, bool:
		return x
	case int:
		return float64(x)
	case int8:
		return float64(x)
	case int16:
		return float64(x)
	case int32:
		return float64(x)
	case int64:
		return float64(x)
	case uint:
		return float64(x)
	case uint8:
		return float64(x)
	case uint16:
		return float64(x)
	case uint32:
		return float64(x)
	case uint64:
		return float64(x)
	case float32:
		return float64(x)
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plainValue(e, depth+1)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = plainValue(e, depth+1)
		}
		return out
	case map[string]string:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = e
		}
		return out
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case time.Duration:
		return x.Seconds()
	case fmt.Stringer:
		return x.String()
	case error:
		return x.Error()
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = plainValue(rv.Index(i).Interface(), depth+1)
		}
		return out
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return fmt.Sprint(v)
		}
		out := make(map[string]any, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			out[it.Key().String()] = plainValue(it.Value().Interface(), depth+1)
		}
		return out
	case reflect.String:
		return rv.String()
	case reflect.Bool:
		return rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return float64(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return rv.Float()
	}
	return fmt.Sprint(v)
}

// RuleSet holds every tenant's enabled rules for an [Engine]. Reads are
// lock-free (a copy-on-write map swapped atomically); Set may be called at
// any time, from any goroutine, and takes effect for the next event.
type RuleSet struct {
	mu   sync.Mutex // serialises writers
	m    atomic.Pointer[map[event.TenantID]*tenantRules]
	errs atomic.Int64
}

type tenantRules struct {
	all    []*CompiledRule                // sorted by id
	any    []*CompiledRule                // rules without an event filter
	byKind map[event.Kind][]*CompiledRule // filtered rules of the kind, plus any
}

// NewRuleSet returns an empty set.
func NewRuleSet() *RuleSet {
	s := &RuleSet{}
	m := map[event.TenantID]*tenantRules{}
	s.m.Store(&m)
	return s
}

// Set replaces the tenant's rules with the enabled ones of rules (nil or
// empty removes them all). Rules of another tenant are ignored.
func (s *RuleSet) Set(t event.TenantID, rules []*CompiledRule) {
	tr := &tenantRules{byKind: map[event.Kind][]*CompiledRule{}}
	for _, r := range rules {
		if r != nil && r.Enabled && r.Tenant == t {
			tr.all = append(tr.all, r)
		}
	}
	slices.SortFunc(tr.all, func(a, b *CompiledRule) int { return strings.Compare(a.ID, b.ID) })
	for _, r := range tr.all {
		if len(r.Events) == 0 {
			tr.any = append(tr.any, r)
		}
	}
	for _, r := range tr.all {
		for _, k := range r.Events {
			if _, ok := tr.byKind[k]; !ok {
				var l []*CompiledRule
				for _, x := range tr.all {
					if x.applies(k) {
						l = append(l, x)
					}
				}
				tr.byKind[k] = l
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.m.Load()
	m := make(map[event.TenantID]*tenantRules, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	if len(tr.all) == 0 {
		delete(m, t)
	} else {
		m[t] = tr
	}
	s.m.Store(&m)
}

// Len returns the number of enabled rules of every tenant.
func (s *RuleSet) Len() int {
	n := 0
	for _, tr := range *s.m.Load() {
		n += len(tr.all)
	}
	return n
}

// Errors returns how many evaluations of the set's rules failed, in every
// engine that reads it.
func (s *RuleSet) Errors() int64 { return s.errs.Load() }

// Rules returns the tenant's enabled rules, ordered by id.
func (s *RuleSet) Rules(t event.TenantID) []*CompiledRule {
	if tr := (*s.m.Load())[t]; tr != nil {
		return slices.Clone(tr.all)
	}
	return nil
}

func (s *RuleSet) forEvent(t event.TenantID, k event.Kind) []*CompiledRule {
	if s == nil {
		return nil
	}
	tr := (*s.m.Load())[t]
	if tr == nil {
		return nil
	}
	if l, ok := tr.byKind[k]; ok {
		return l
	}
	return tr.any
}

// evalRules appends a pending alert for every rule of the event's tenant
// that matches it.
func (c *call) evalRules(rs *RuleSet) {
	rules := rs.forEvent(c.ev.Tenant, c.ev.Kind)
	if len(rules) == 0 {
		return
	}
	var v ruleVars
	v.fill(c.ev, c.prof, c.hasProf)
	for _, r := range rules {
		ok, err := r.evalHot(&v)
		if err != nil {
			c.e.ruleErrs.Add(1)
			rs.errs.Add(1)
			continue
		}
		if ok {
			c.out = append(c.out, pending{det: &r.det, tenant: c.key.t, device: c.key.d, at: c.ev.Time, ev: r.evidence(c.ev)})
		}
	}
}

func (cr *CompiledRule) evidence(ev *event.Event) Evidence {
	return Evidence{
		Summary: fmt.Sprintf("rule %s (%s) matched a %s event", cr.ID, cr.Name, ev.Kind),
		Values:  map[string]any{"rule": cr.ID, "rule_name": cr.Name, "rule_version": cr.Version, "expr": cr.Expr},
		Events:  []event.Event{*ev},
	}
}

// RuleErrors returns how many rule evaluations failed in this engine.
func (e *Engine) RuleErrors() int64 { return e.ruleErrs.Load() }

// TryResult is what [TryRule] found.
type TryResult struct {
	// Evaluated counts the events of the rule's tenant and event kinds.
	Evaluated int
	// Matches lists the matching events by index, with the alert as it
	// stood after that event (merged like the engine merges).
	Matches []TryMatch
	// Errors lists failed evaluations (at most 100), by index.
	Errors []TryError
	// ErrorCount counts every failed evaluation.
	ErrorCount int
	// Alerts are the alerts the rule would raise, in their final state,
	// ordered by first raise.
	Alerts []alert.Alert
}

// TryMatch is one matching event.
type TryMatch struct {
	Index   int    `json:"index"`
	AlertID string `json:"alert_id"`
	Count   int    `json:"count"`
}

// TryError is one failed evaluation.
type TryError struct {
	Index int    `json:"index"`
	Error string `json:"error"`
}

// maxTryErrors caps TryResult.Errors.
const maxTryErrors = 100

// TryRule evaluates cr against events in order, as the engine would
// (events of another tenant, of other kinds or without a device are
// skipped), without changing anything: alerts are merged in a private
// engine and returned. dir may be nil. The rule is tried even if it is
// disabled.
func TryRule(ctx context.Context, cr *CompiledRule, events []event.Event, dir Directory) TryResult {
	e := New(Options{Sink: discardSink{}})
	var res TryResult
	index := map[string]int{}
	for i := range events {
		if ctx.Err() != nil {
			break
		}
		ev := &events[i]
		if ev.Tenant != cr.Tenant || ev.Device == "" || ev.Time.IsZero() || !cr.applies(ev.Kind) {
			continue
		}
		res.Evaluated++
		var p Profile
		known := false
		if dir != nil {
			p, known = dir.Device(ev.Tenant, ev.Device)
		}
		var v ruleVars
		v.fill(ev, p, known)
		ok, err := cr.eval(&v)
		if err != nil {
			res.ErrorCount++
			if len(res.Errors) < maxTryErrors {
				res.Errors = append(res.Errors, TryError{Index: i, Error: err.Error()})
			}
			continue
		}
		if !ok {
			continue
		}
		a := e.mergeAlert(pending{det: &cr.det, tenant: ev.Tenant, device: ev.Device, at: ev.Time, ev: cr.evidence(ev)})
		res.Matches = append(res.Matches, TryMatch{Index: i, AlertID: a.ID, Count: a.Count})
		if j, seen := index[a.ID]; seen {
			res.Alerts[j] = a
		} else {
			index[a.ID] = len(res.Alerts)
			res.Alerts = append(res.Alerts, a)
		}
	}
	return res
}

type discardSink struct{}

func (discardSink) Raise(context.Context, alert.Alert) error { return nil }
