package detect

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

// Sink receives alerts. A repeat merged into an open alert is raised again
// with the same ID, a higher Count and a later LastSeen.
type Sink interface {
	Raise(ctx context.Context, a alert.Alert) error
}

// Settings tunes detectors per tenant and group. Overrides maps a scope to
// per-detector JSON objects decoded over the detector's defaults (so only
// the fields that change need to be given). Scopes, applied in order:
// "*" (every tenant), "TENANT", "TENANT/GROUP". Every detector accepts
// {"disabled": true}.
type Settings struct {
	Overrides map[string]map[string]json.RawMessage `json:"overrides,omitempty"`
}

// Options configure an [Engine]. Directory, Catalog and Intel may be nil
// (the detectors that need them then see nothing); Sink must be set.
type Options struct {
	Directory Directory
	Catalog   Catalog
	Intel     *ThreatIntel
	Clock     clock.Clock // used only for logging/metrics, never for detection
	Logger    *slog.Logger
	Sink      Sink
	Settings  Settings
	// Rules are the operators' CEL rules (rules.go); nil: none.
	Rules *RuleSet

	// Credentials is the factory credentials list (nil: the built-in one).
	Credentials *Credentials
	// MergeWindow merges repeats of (tenant, device, kind); default 1h.
	MergeWindow time.Duration
	// Lateness is how far behind a device's latest event another event of
	// that device may be and still be processed; default 2m.
	Lateness time.Duration
}

const nShards = 64

type shard struct {
	mu sync.Mutex
	m  map[devKey]*devState
}

type mergeKey struct {
	t event.TenantID
	d event.DeviceID
	k alert.Kind
}

// Engine runs every enabled detector over events on event time. Process is
// safe for concurrent use; events of one device are serialised.
type Engine struct {
	opt    Options
	log    *slog.Logger
	creds  *Credentials
	byKind map[event.Kind][]int // event kind -> detector indexes

	shards [nShards]shard

	bundleMu    sync.RWMutex
	settings    Settings // replaced whole by SetSettings, never mutated
	settingsGen uint64   // bumped by every change of settings
	bundles     map[groupKey]*bundle

	cohortMu sync.Mutex
	cohorts  map[groupKey]*cohortState

	srcMu sync.Mutex
	srcs  map[string]*srcState // tenant \x00 remote host

	mergeMu sync.Mutex
	merge   map[mergeKey]*alert.Alert

	calls sync.Pool // *call, reused across Process calls

	watermark atomic.Int64 // unix nanos
	late      atomic.Int64
	ruleErrs  atomic.Int64
}

// New builds an engine. Invalid settings overrides are logged and ignored;
// check them first with [ValidateSettings].
func New(opt Options) *Engine {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = clock.Real{}
	}
	if opt.MergeWindow <= 0 {
		opt.MergeWindow = time.Hour
	}
	if opt.Lateness <= 0 {
		opt.Lateness = 2 * time.Minute
	}
	e := &Engine{
		opt:     opt,
		log:     opt.Logger,
		creds:   opt.Credentials,
		byKind:  map[event.Kind][]int{},
		cohorts: map[groupKey]*cohortState{},
		bundles: map[groupKey]*bundle{},
		srcs:    map[string]*srcState{},
		merge:   map[mergeKey]*alert.Alert{},
	}
	if e.creds == nil {
		e.creds = FactoryCredentials()
	}
	e.calls.New = func() any { return new(call) }
	for i := range e.shards {
		e.shards[i].m = map[devKey]*devState{}
	}
	for i, d := range builtins {
		for _, k := range d.Events {
			e.byKind[k] = append(e.byKind[k], i)
		}
	}
	if err := ValidateSettings(opt.Settings); err != nil {
		e.log.Warn("detect: ignoring invalid settings", "err", err)
	}
	e.settings = cloneSettings(opt.Settings)
	return e
}

// ErrSettings reports an override that names no detector or does not decode.
var ErrSettings = errors.New("detect: invalid settings")

// ValidateSettings checks every override with [ValidateOverride],
// reporting all problems at once.
func ValidateSettings(s Settings) error {
	var errs []error
	for _, scope := range sortedScopes(s) {
		for name, raw := range s.Overrides[scope] {
			if err := ValidateOverride(name, raw); err != nil {
				errs = append(errs, fmt.Errorf("scope %q: %w", scope, err))
			}
		}
	}
	return errors.Join(errs...)
}

// bundle is the resolved settings of every detector for one tenant/group.
type bundle struct {
	cfg []any
	off []bool
}

// groupKey names a tenant's group (cohort).
type groupKey struct {
	t event.TenantID
	g string
}

func (e *Engine) bundleFor(t event.TenantID, group string) *bundle {
	e.bundleMu.RLock()
	b := e.bundles[groupKey{t, group}]
	e.bundleMu.RUnlock()
	if b != nil {
		return b
	}
	return e.resolve(t, group)
}

func (e *Engine) resolve(t event.TenantID, group string) *bundle {
	for {
		e.bundleMu.RLock()
		s, gen := e.settings, e.settingsGen
		e.bundleMu.RUnlock()
		b := resolveBundle(s, t, group)
		e.bundleMu.Lock()
		if e.settingsGen != gen { // changed meanwhile: resolve again
			e.bundleMu.Unlock()
			continue
		}
		if old := e.bundles[groupKey{t, group}]; old != nil {
			b = old
		} else {
			e.bundles[groupKey{t, group}] = b
		}
		e.bundleMu.Unlock()
		return b
	}
}

// resolveBundle decodes every detector's settings for a tenant and group:
// defaults, then the scopes "*", "TENANT", "TENANT/GROUP". Overrides that
// do not validate are ignored (New logs them).
func resolveBundle(s Settings, t event.TenantID, group string) *bundle {
	key := string(t) + "/" + group
	b := &bundle{cfg: make([]any, len(builtins)), off: make([]bool, len(builtins))}
	for i, d := range builtins {
		cfg := d.defaults()
		for _, scope := range []string{"*", string(t), key} {
			raw, ok := s.Overrides[scope][d.Name]
			if !ok || emptyOverride(raw) || ValidateOverride(d.Name, raw) != nil {
				continue
			}
			_ = json.Unmarshal(raw, cfg)
			var off struct {
				Disabled *bool `json:"disabled"`
			}
			if json.Unmarshal(raw, &off) == nil && off.Disabled != nil {
				b.off[i] = *off.Disabled
			}
		}
		b.cfg[i] = cfg
	}
	return b
}

// pending is an alert a detector wants raised.
type pending struct {
	det    *Detector
	tenant event.TenantID
	device event.DeviceID
	at     time.Time
	ev     Evidence
}

// Evidence is what a detector attaches; it becomes alert.Evidence.
type Evidence = alert.Evidence

// call carries one event through the detectors.
type call struct {
	e       *Engine
	ev      *event.Event
	key     devKey
	st      *devState
	prof    Profile
	hasProf bool
	b       *bundle
	now     int64 // ev.Time in unix seconds
	out     []pending

	use      *usageObs // set for mqtt.publish by usagePrepare (points at useObs)
	useObs   usageObs
	intelHit bool // net.threat_intel matched this flow
}

func (c *call) raise(d *Detector, summary string, values map[string]any, evs ...event.Event) {
	if len(evs) > maxEvidenceEvents {
		evs = evs[len(evs)-maxEvidenceEvents:]
	}
	c.out = append(c.out, pending{det: d, tenant: c.key.t, device: c.key.d, at: c.ev.Time, ev: Evidence{Summary: summary, Values: values, Events: evs}})
}

const maxEvidenceEvents = 5

func shardOf(k devKey) int {
	return int(fnvAdd(fnvAdd(fnvOffset, string(k.t)), string(k.d)) % nShards)
}

// Process runs the detectors over one event. It returns the first error of
// the sink, if any; detection state is updated regardless.
func (e *Engine) Process(ctx context.Context, ev *event.Event) error {
	if ev == nil || ev.Tenant == "" || ev.Time.IsZero() {
		return nil
	}
	c := e.calls.Get().(*call)
	*c = call{e: e, ev: ev, now: ev.Time.Unix(), out: c.out[:0]}
	defer e.calls.Put(c)
	dev := ev.Device
	if ev.Kind == event.MQTTAuthFailed {
		c.out = e.trackSource(ev, c.out)
	}
	if dev == "" && ev.Kind == event.NetSession && e.opt.Directory != nil {
		if p, ok := e.opt.Directory.ByIMSI(ev.Tenant, ev.Str("imsi")); ok {
			dev = p.ID
		}
	}
	if dev != "" {
		c.key = devKey{ev.Tenant, dev}
		if e.opt.Directory != nil {
			c.prof, c.hasProf = e.opt.Directory.Device(ev.Tenant, dev)
		}
		sh := &e.shards[shardOf(c.key)]
		sh.mu.Lock()
		st := sh.m[c.key]
		if st == nil {
			st = &devState{Born: c.now}
			sh.m[devKey{event.TenantID(cloneStr(string(ev.Tenant))), event.DeviceID(cloneStr(string(dev)))}] = st
			e.cohort(ev.Tenant, c.group()).join()
		}
		t := ev.Time.UnixNano()
		if st.Last != 0 && t < st.Last-int64(e.opt.Lateness) {
			sh.mu.Unlock()
			e.late.Add(1)
			return nil
		}
		if t > st.Last {
			st.Last = t
		}
		c.st = st
		c.b = e.bundleFor(ev.Tenant, c.prof.Cohort)
		usagePrepare(c)
		for _, i := range e.byKind[ev.Kind] {
			if !c.b.off[i] {
				builtins[i].run(c, builtins[i], c.b.cfg[i])
			}
		}
		usageLearn(c)
		sh.mu.Unlock()
		c.evalRules(e.opt.Rules) // stateless: outside the device lock
	}
	return e.emit(ctx, c.out)
}

func cloneStr(s string) string { return string([]byte(s)) }

func (e *Engine) emit(ctx context.Context, ps []pending) error {
	var first error
	for _, p := range ps {
		a := e.mergeAlert(p)
		if err := e.opt.Sink.Raise(ctx, a); err != nil && first == nil {
			first = fmt.Errorf("detect: raise %s: %w", a.Kind, err)
		}
	}
	return first
}

func alertID(k mergeKey, first time.Time) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(string(k.t) + "\x00" + string(k.d) + "\x00" + string(k.k) + "\x00" + strconv.FormatInt(first.UnixNano(), 10)))
	return strconv.FormatInt(first.UnixMilli(), 36) + "-" + hex.EncodeToString(h.Sum(nil))
}

var sevWeight = [...]float64{0, 2, 5, 15, 30, 50}

// mergeAlert folds p into the open alert of its (tenant, device, kind) if
// the last one is within the merge window, or opens a new one.
func (e *Engine) mergeAlert(p pending) alert.Alert {
	t := p.tenant
	k := mergeKey{t, p.device, p.det.Kind}
	e.mergeMu.Lock()
	defer e.mergeMu.Unlock()
	a := e.merge[k]
	weight := sevWeight[p.det.Severity]
	if a != nil && p.at.Sub(a.LastSeen) <= e.opt.MergeWindow {
		a.Count++
		if p.at.After(a.LastSeen) {
			a.LastSeen = p.at
		}
		if len(a.Evidence.Events) < maxEvidenceEvents && len(p.ev.Events) > 0 {
			a.Evidence.Events = append(a.Evidence.Events, p.ev.Events[0])
		}
		weight /= 10
	} else {
		a = &alert.Alert{
			ID: alertID(k, p.at), Tenant: t, Device: p.device, Kind: p.det.Kind,
			Severity: p.det.Severity, Detector: p.det.Name,
			FirstSeen: p.at, LastSeen: p.at, Count: 1, State: alert.Open, Evidence: p.ev,
		}
		e.merge[k] = a
	}
	e.addRisk(devKey{t, p.device}, weight, p.at)
	out := *a
	out.Evidence.Events = append([]event.Event(nil), a.Evidence.Events...)
	return out
}

// riskHalfLife is the half-life of a device's risk score.
const riskHalfLife = 24 * time.Hour

func decay(v float64, from, to int64) float64 {
	if to <= from {
		return v
	}
	return v * math.Exp2(-float64(to-from)/float64(riskHalfLife))
}

func (e *Engine) addRisk(k devKey, w float64, at time.Time) {
	sh := &e.shards[shardOf(k)]
	sh.mu.Lock() // emit runs after Process released the shard
	defer sh.mu.Unlock()
	st := sh.m[k]
	if st == nil {
		return
	}
	t := at.UnixNano()
	st.Risk = float32(decay(float64(st.Risk), st.RiskT, t) + w)
	if t > st.RiskT {
		st.RiskT = t
	}
}

// Risk returns the device's risk score in [0, 100]: the severity-weighted
// sum of its recent alerts, halving every 24h of event time (measured at
// the watermark, or at the device's latest event if later).
func (e *Engine) Risk(t event.TenantID, d event.DeviceID) float64 {
	k := devKey{t, d}
	sh := &e.shards[shardOf(k)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.m[k]
	if st == nil {
		return 0
	}
	now := max(e.watermark.Load(), st.Last)
	return math.Min(100, decay(float64(st.Risk), st.RiskT, now))
}

// Advance moves the event-time watermark to t (never backwards): merge
// entries older than the merge window are closed and idle source counters
// dropped.
func (e *Engine) Advance(_ context.Context, t time.Time) {
	n := t.UnixNano()
	for {
		old := e.watermark.Load()
		if n <= old || e.watermark.CompareAndSwap(old, n) {
			break
		}
	}
	wm := time.Unix(0, e.watermark.Load())
	e.mergeMu.Lock()
	for k, a := range e.merge {
		if wm.Sub(a.LastSeen) > e.opt.MergeWindow {
			delete(e.merge, k)
		}
	}
	e.mergeMu.Unlock()
	e.srcMu.Lock()
	for k, s := range e.srcs {
		if wm.Unix()-s.Last > int64(srcWindow/time.Second) {
			delete(e.srcs, k)
		}
	}
	e.srcMu.Unlock()
}

// Watermark returns the current event-time watermark.
func (e *Engine) Watermark() time.Time { return time.Unix(0, e.watermark.Load()).UTC() }

// Late returns how many events were dropped for arriving beyond the
// lateness bound.
func (e *Engine) Late() int64 { return e.late.Load() }

// Devices returns the number of devices with state.
func (e *Engine) Devices() int {
	n := 0
	for i := range e.shards {
		e.shards[i].mu.Lock()
		n += len(e.shards[i].m)
		e.shards[i].mu.Unlock()
	}
	return n
}
