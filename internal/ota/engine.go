package ota

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// JobPublisher delivers a job payload to a device (the broker publishes
// it on devices/{id}/ota/job).
type JobPublisher interface {
	PublishJob(ctx context.Context, tenant event.TenantID, device event.DeviceID, payload []byte) error
}

// AlertCounter counts a tenant's security alerts first seen in [from, to)
// on any of devices.
type AlertCounter interface {
	CountAlerts(ctx context.Context, tenant event.TenantID, devices map[event.DeviceID]bool, from, to time.Time) (int, error)
}

// EngineOptions configure an [Engine].
type EngineOptions struct {
	Store     store.Store
	Clock     clock.Clock
	Logger    *slog.Logger
	Catalog   *Catalog
	Publisher JobPublisher
	Alerts    AlertCounter // nil: the alert gate always passes
	// ArtifactBase is the https://host:port devices download from; the
	// job URL is ArtifactBase + "/api/v1/firmware/artifacts/" + sha256.
	ArtifactBase string
	// MaxConcurrent caps the targets with a job in progress of a
	// campaign without its own cap (default 100).
	MaxConcurrent int
	// MaxDownloads caps the targets with a job in progress over all
	// campaigns together (0: no cap beyond each campaign's).
	MaxDownloads int
	// WaveTimeout ends a wave whose targets have not all reported
	// (default 1h); a campaign's gate may set its own.
	WaveTimeout time.Duration
	// Tick is how often Run steps (default 1s).
	Tick time.Duration
}

// Engine runs firmware campaigns: it selects targets, publishes jobs wave
// by wave within the concurrency cap and maintenance windows, advances
// targets on device status reports, checks each wave's gate and pauses or
// aborts on failure. Open campaigns live in the store and, on the one
// engine of a deployment that runs them, in memory: [Engine.Load] makes an
// engine the running one (after a restart, or when its node takes the
// campaign lease over) and [Engine.Unload] idles it again.
//
// Several nodes: every node's engine takes operator actions (Create,
// Pause, Resume, Cancel, Emergency), which are written to the shared store
// first, as a compare-and-set on the campaign's revision. The running
// engine re-reads the open campaigns at every [Engine.Step]: it loads
// campaigns created elsewhere, adopts the revisions other nodes wrote and
// drops campaigns they ended. Its own writes are compare-and-sets too: a
// step that finds a newer revision merges (the operator's state and spec,
// the engine's wave and its automated state change) instead of
// overwriting it. Reports and re-send requests reach the running engine
// however the platform carries them (the app: over the bus).
//
// Durability: operator actions (create, pause, resume, cancel, emergency)
// commit with their audit record before they return. Status reports change
// memory and are written by the next [Engine.Step] (every Tick) in one
// transaction, together with wave changes and the jobs sent; a job is
// published only after its "sent" state is committed. On restart, targets
// left "sent" are sent again (devices treat a repeated job id as the same
// job).
//
// Lock order: persist, then mu. persist serializes every write of the
// engine to the store, so an older snapshot never overwrites a newer one.
type Engine struct {
	o       EngineOptions
	log     *slog.Logger
	persist sync.Mutex
	mu      sync.Mutex
	runs    map[string]*run // tenant/campaign
	total   int             // in-flight targets over all campaigns
	live    bool            // Load was called: Create keeps new campaigns in memory
}

type run struct {
	c        store.Campaign // as the engine sees it (c.Rev: the revision it is based on)
	base     store.Campaign // the stored revision c is based on
	spec     Spec
	entry    Entry
	targets  map[event.DeviceID]*store.CampaignTarget
	waves    [][]event.DeviceID // dispatch order per wave
	cursor   []int              // next index to consider per wave
	counts   []map[string]int   // per wave, per state
	inflight int
	dirty    map[event.DeviceID]struct{}
	changed  bool          // the campaign record changed
	notes    []audit.Entry // automated audit records to write
	resend   []event.DeviceID
}

func rkey(t event.TenantID, id string) string { return string(t) + "/" + id }

// NewEngine validates o and returns an idle engine.
func NewEngine(o EngineOptions) (*Engine, error) {
	if o.Store == nil || o.Clock == nil || o.Catalog == nil || o.Publisher == nil {
		return nil, errors.New("ota engine: Store, Clock, Catalog and Publisher are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 100
	}
	if o.WaveTimeout <= 0 {
		o.WaveTimeout = time.Hour
	}
	if o.Tick <= 0 {
		o.Tick = time.Second
	}
	return &Engine{o: o, log: o.Logger, runs: map[string]*run{}}, nil
}

// Run steps the engine every Tick until ctx is done, then writes what is
// pending once more (without sending new jobs).
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = e.step(sctx, false)
			return nil
		case <-t.C:
			if err := e.Step(ctx); err != nil && ctx.Err() == nil {
				e.log.ErrorContext(ctx, "ota campaign step", "err", err)
			}
		}
	}
}

// Load makes this engine the running one: it forgets what it had in
// memory and resumes every open campaign from the store (after a restart,
// or when its node takes over from another), queueing again the jobs of
// targets left "sent". From then on Create keeps new campaigns in memory
// and every Step looks for changes made through other nodes.
func (e *Engine) Load(ctx context.Context) error {
	e.persist.Lock()
	defer e.persist.Unlock()
	e.mu.Lock()
	e.runs, e.total, e.live = map[string]*run{}, 0, true
	e.mu.Unlock()
	return e.refresh(ctx)
}

// Unload writes what is pending (without sending new jobs) and forgets
// every campaign: the engine is idle, as on a node that does not run
// campaigns, until the next Load. Operator actions keep working (through
// the store).
func (e *Engine) Unload(ctx context.Context) error {
	err := e.step(ctx, false)
	e.persist.Lock()
	defer e.persist.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.runs, e.total, e.live = map[string]*run{}, 0, false
	return err
}

// refresh brings memory in line with the store: open campaigns it does not
// have (created through another node, or before a restart) are loaded,
// newer revisions (an operator action through another node) adopted, and
// campaigns no longer open (cancelled elsewhere) take their final state,
// so that the step writes what they still have pending and drops them. A
// campaign that cannot be loaded is logged and tried again at the next
// step. Callers hold persist.
func (e *Engine) refresh(ctx context.Context) error {
	var open []store.Campaign
	if err := e.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		open, err = tx.Campaigns().Open(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("ota refresh: %w", err)
	}
	seen := make(map[string]bool, len(open))
	var fresh []store.Campaign
	var gone []*run
	e.mu.Lock()
	for _, c := range open {
		k := rkey(c.Tenant, c.ID)
		seen[k] = true
		switch r := e.runs[k]; {
		case r == nil:
			fresh = append(fresh, c)
		case c.Rev != r.base.Rev:
			e.adopt(r, c)
		}
	}
	for k, r := range e.runs {
		if !seen[k] && openState(r.c.State) {
			gone = append(gone, r)
		}
	}
	e.mu.Unlock()
	for _, r := range gone {
		var c store.Campaign
		if err := e.o.Store.View(ctx, func(tx store.Tx) error {
			var err error
			c, err = tx.Campaigns().Get(ctx, r.c.Tenant, r.c.ID)
			return err
		}); errors.Is(err, store.ErrNotFound) {
			e.log.WarnContext(ctx, "ota campaign gone from the store; dropped", "tenant", r.c.Tenant, "campaign", r.c.ID)
			e.mu.Lock()
			e.total -= r.inflight
			delete(e.runs, rkey(r.c.Tenant, r.c.ID))
			e.mu.Unlock()
			continue
		} else if err != nil {
			return fmt.Errorf("ota refresh %s: %w", r.c.ID, err)
		}
		e.mu.Lock()
		e.adopt(r, c)
		e.mu.Unlock()
	}
	for _, c := range fresh {
		r, err := e.loadRun(ctx, c)
		if err != nil {
			e.log.WarnContext(ctx, "ota campaign not loaded; retried at the next step", "tenant", c.Tenant, "campaign", c.ID, "err", err)
			continue
		}
		e.mu.Lock()
		if k := rkey(c.Tenant, c.ID); e.runs[k] == nil {
			e.runs[k] = r
			e.total += r.inflight
		}
		e.mu.Unlock()
		e.log.InfoContext(ctx, "ota campaign loaded", "tenant", c.Tenant, "campaign", c.ID, "state", c.State, "wave", c.Wave, "resend", len(r.resend))
	}
	return nil
}

// loadRun reads a campaign's targets and builds its run; targets left
// "sent" are queued to be sent again (devices treat a repeated job id as
// the same job).
func (e *Engine) loadRun(ctx context.Context, c store.Campaign) (*run, error) {
	var ts []store.CampaignTarget
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		var after event.DeviceID
		for {
			page, err := tx.Campaigns().Targets(ctx, c.Tenant, c.ID, after, 10_000)
			if err != nil {
				return err
			}
			ts = append(ts, page...)
			if len(page) < 10_000 {
				return nil
			}
			after = page[len(page)-1].Device
		}
	})
	if err != nil {
		return nil, err
	}
	r, err := e.newRun(ctx, c, ts)
	if err != nil {
		return nil, err
	}
	for _, t := range ts {
		if t.State == TargetSent {
			r.resend = append(r.resend, t.Device)
		}
	}
	return r, nil
}

func openState(s store.CampaignState) bool {
	return s == store.CampaignRunning || s == store.CampaignPaused
}

// adopt makes stored, a newer revision of r's campaign, the one r is
// based on. A change of the engine's own not written yet (r.changed) is
// merged in and stays to be written; otherwise stored replaces r.c. When
// stored turned emergency on, the waves after the current one join it in
// memory as they did in the store. Callers hold mu.
func (e *Engine) adopt(r *run, stored store.Campaign) {
	c := stored
	if r.changed {
		c = mergeCampaign(stored, r.base, r.c)
		r.changed = !sameCampaign(c, stored)
	}
	var spec Spec
	if err := json.Unmarshal(c.Spec, &spec); err != nil {
		e.log.Error("ota campaign: stored spec unreadable; kept the previous one", "tenant", c.Tenant, "campaign", c.ID, "err", err)
		spec = r.spec
	}
	if spec.Emergency && !r.spec.Emergency {
		for w := c.Wave + 1; w < len(r.waves); w++ {
			for _, d := range r.waves[w] {
				t := r.targets[d]
				r.counts[w][t.State]--
				t.Wave = c.Wave
				r.counts[c.Wave][t.State]++
			}
			r.waves[c.Wave] = append(r.waves[c.Wave], r.waves[w]...)
			r.waves[w] = nil
		}
		// The operator's transaction moved the targets to the wave it
		// saw; if the engine had moved on meanwhile, write them again
		// with the engine's.
		for w := min(stored.Wave, c.Wave); w <= c.Wave && stored.Wave != c.Wave; w++ {
			for _, d := range r.waves[w] {
				r.dirty[d] = struct{}{}
			}
		}
	}
	if c.State != r.c.State {
		e.log.Info("ota campaign changed", "tenant", c.Tenant, "campaign", c.ID, "state", c.State, "reason", c.Reason, "rev", c.Rev)
	}
	r.c, r.base, r.spec = c, stored, spec
}

func sameCampaign(a, b store.Campaign) bool {
	return a.Rev == b.Rev && a.State == b.State && a.Reason == b.Reason && a.Wave == b.Wave &&
		a.WaveAt.Equal(b.WaveAt) && a.UpdatedAt.Equal(b.UpdatedAt) && string(a.Spec) == string(b.Spec)
}

// mergeCampaign merges the engine's change (mine, made on base) into
// stored, a newer revision another writer made meanwhile: a final stored
// state (an operator's cancel) stands; otherwise the engine's wave and its
// automated state change (a gate's pause or abort, completion) are kept,
// over the operator's state, reason and spec. The result has stored's
// revision.
func mergeCampaign(stored, base, mine store.Campaign) store.Campaign {
	if !openState(stored.State) {
		return stored
	}
	out := stored
	if mine.Wave != base.Wave || !mine.WaveAt.Equal(base.WaveAt) {
		out.Wave, out.WaveAt = mine.Wave, mine.WaveAt
	}
	if mine.State != base.State || mine.Reason != base.Reason {
		out.State, out.Reason = mine.State, mine.Reason
	}
	if mine.UpdatedAt.After(out.UpdatedAt) {
		out.UpdatedAt = mine.UpdatedAt
	}
	return out
}

func (e *Engine) newRun(ctx context.Context, c store.Campaign, ts []store.CampaignTarget) (*run, error) {
	var spec Spec
	if err := json.Unmarshal(c.Spec, &spec); err != nil {
		return nil, fmt.Errorf("stored spec: %w", err)
	}
	ent, err := e.o.Catalog.Entry(ctx, c.Tenant, c.Release)
	if err != nil {
		return nil, err
	}
	r := &run{c: c, base: c, spec: spec, entry: ent, targets: make(map[event.DeviceID]*store.CampaignTarget, len(ts)),
		waves: make([][]event.DeviceID, len(spec.Waves)), cursor: make([]int, len(spec.Waves)),
		counts: make([]map[string]int, len(spec.Waves)), dirty: map[event.DeviceID]struct{}{}}
	for i := range r.counts {
		r.counts[i] = map[string]int{}
	}
	for i := range ts {
		t := ts[i]
		if t.Wave < 0 || t.Wave >= len(r.waves) {
			return nil, fmt.Errorf("target %s in wave %d of %d", t.Device, t.Wave, len(r.waves))
		}
		r.targets[t.Device] = &t
		r.waves[t.Wave] = append(r.waves[t.Wave], t.Device)
		r.counts[t.Wave][t.State]++
		if inFlight(t.State) {
			r.inflight++
		}
	}
	for w := range r.waves {
		sortCohort(c.ID, r.waves[w])
	}
	return r, nil
}

// sortCohort orders devices by SHA-256(campaign, device): a stable
// pseudo-random order, so wave 1 is a sample of the fleet and not the
// devices with the smallest ids.
func sortCohort(campaign string, ds []event.DeviceID) {
	type kd struct {
		k [32]byte
		d event.DeviceID
	}
	tmp := make([]kd, len(ds))
	for i, d := range ds {
		tmp[i] = kd{sha256.Sum256([]byte(campaign + "\x00" + string(d))), d}
	}
	slices.SortFunc(tmp, func(a, b kd) int { return slices.Compare(a.k[:], b.k[:]) })
	for i := range tmp {
		ds[i] = tmp[i].d
	}
}

func (e *Engine) auditEntry(tenant event.TenantID, actor, action, id string, details map[string]any) audit.Entry {
	d, _ := json.Marshal(details)
	return audit.Entry{Tenant: tenant, Time: e.o.Clock.Now(), Actor: actor, Action: action, Target: "campaign/" + id, Details: d}
}

// Create validates spec, selects its targets, assigns them to waves and
// stores the campaign running, with its audit record. The release must be
// in the tenant's catalog, unexpired, and target the selector's model. An
// engine that runs campaigns (Load) starts on it at once; the running
// engine of another node loads it at its next step.
func (e *Engine) Create(ctx context.Context, tenant event.TenantID, actor string, spec Spec) (store.Campaign, error) {
	if err := spec.normalize(); err != nil {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w", err)
	}
	ent, err := e.o.Catalog.Entry(ctx, tenant, spec.Release)
	if errors.Is(err, store.ErrNotFound) {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w: release %s is not in the catalog", store.ErrNotFound, spec.Release)
	}
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w", err)
	}
	now := e.o.Clock.Now().UTC()
	if !slices.Contains(ent.Models, spec.Selector.Model) {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w: release %s targets %v, not %s", firmware.ErrWrongModel, ent.Version, ent.Models, spec.Selector.Model)
	}
	if !now.Before(ent.Expires) {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w: release %s expired", firmware.ErrExpired, ent.Version)
	}
	spec.Version = ent.Version
	devs, err := e.selectDevices(ctx, tenant, spec.Selector)
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w", err)
	}
	if len(devs) == 0 {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w: the selector matches no device", ErrBadSpec)
	}
	spec.Targets = len(devs)
	id := newCampaignID()
	if spec.Emergency {
		spec.Waves = []float64{100}
	}
	sortCohort(id, devs)
	sizes := waveSizes(len(devs), spec.Waves)
	ts := make([]store.CampaignTarget, 0, len(devs))
	i := 0
	for w, n := range sizes {
		for _, d := range devs[i : i+n] {
			ts = append(ts, store.CampaignTarget{Tenant: tenant, Campaign: id, Device: d, Wave: w, State: TargetPending, UpdatedAt: now})
		}
		i += n
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return store.Campaign{}, err
	}
	c := store.Campaign{Tenant: tenant, ID: id, Release: spec.Release, Spec: b, State: store.CampaignRunning,
		CreatedBy: actor, CreatedAt: now, UpdatedAt: now, WaveAt: now}
	r, err := e.newRun(ctx, c, ts)
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w", err)
	}
	e.persist.Lock()
	defer e.persist.Unlock()
	err = e.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Campaigns().Create(ctx, c); err != nil {
			return err
		}
		if err := tx.Campaigns().PutTargets(ctx, ts); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, e.auditEntry(tenant, actor, "ota.campaign.create", id, map[string]any{
			"release": spec.Release, "version": spec.Version, "model": spec.Selector.Model, "targets": len(ts),
			"waves": spec.Waves, "emergency": spec.Emergency,
		}))
		return err
	})
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota create campaign: %w", err)
	}
	e.mu.Lock()
	if e.live {
		e.runs[rkey(tenant, id)] = r
	}
	e.mu.Unlock()
	e.log.InfoContext(ctx, "ota campaign created", "tenant", tenant, "campaign", id, "targets", len(ts), "version", spec.Version)
	return c, nil
}

// eligible reports whether a device in state s may be targeted.
func eligible(s store.DeviceState) bool {
	return s == store.StateActive || s == store.StateQuarantined || s == store.StateRegistered
}

func (e *Engine) selectDevices(ctx context.Context, tenant event.TenantID, sel Selector) ([]event.DeviceID, error) {
	var out []event.DeviceID
	want := map[event.DeviceID]bool{}
	for _, d := range sel.Devices {
		want[d] = true
	}
	err := e.o.Store.View(ctx, func(tx store.Tx) error {
		f := store.DeviceFilter{Model: sel.Model, Group: sel.Group, Tag: sel.Tag, Firmware: sel.Firmware, Limit: 10_000}
		for {
			page, err := tx.Devices().List(ctx, tenant, f)
			if err != nil {
				return err
			}
			for _, d := range page {
				if eligible(d.State) && (len(want) == 0 || want[d.ID]) {
					out = append(out, d.ID)
				}
			}
			if len(page) < f.Limit {
				return nil
			}
			f.After = page[len(page)-1].ID
		}
	})
	return out, err
}

// Pause stops sending new jobs (jobs in progress finish and are counted).
func (e *Engine) Pause(ctx context.Context, tenant event.TenantID, actor, id, reason string) (store.Campaign, error) {
	return e.transition(ctx, tenant, actor, id, "ota.campaign.pause", func(c *store.Campaign, _ *Spec) error {
		if c.State != store.CampaignRunning {
			return fmt.Errorf("%w: campaign is %s", ErrCampaignState, c.State)
		}
		c.State, c.Reason = store.CampaignPaused, reasonOr(reason, "paused by "+actor)
		return nil
	})
}

// Resume continues a paused campaign. If it was paused by a failed gate,
// the failed wave counts as passed: the operator has decided to go on.
func (e *Engine) Resume(ctx context.Context, tenant event.TenantID, actor, id string) (store.Campaign, error) {
	return e.transition(ctx, tenant, actor, id, "ota.campaign.resume", func(c *store.Campaign, spec *Spec) error {
		if c.State != store.CampaignPaused {
			return fmt.Errorf("%w: campaign is %s", ErrCampaignState, c.State)
		}
		if strings.HasPrefix(c.Reason, gatePrefix) && !slices.Contains(spec.Accepted, c.Wave) {
			spec.Accepted = append(spec.Accepted, c.Wave)
		}
		c.State, c.Reason = store.CampaignRunning, ""
		return nil
	})
}

// Cancel ends an open campaign: no more jobs are sent.
func (e *Engine) Cancel(ctx context.Context, tenant event.TenantID, actor, id, reason string) (store.Campaign, error) {
	return e.transition(ctx, tenant, actor, id, "ota.campaign.cancel", func(c *store.Campaign, _ *Spec) error {
		if c.State != store.CampaignRunning && c.State != store.CampaignPaused {
			return fmt.Errorf("%w: campaign is %s", ErrCampaignState, c.State)
		}
		c.State, c.Reason = store.CampaignCancelled, reasonOr(reason, "cancelled by "+actor)
		return nil
	})
}

// Emergency switches an open campaign to emergency mode: every remaining
// target joins the current wave, maintenance windows no longer apply, and
// a paused campaign runs again.
func (e *Engine) Emergency(ctx context.Context, tenant event.TenantID, actor, id string) (store.Campaign, error) {
	return e.transition(ctx, tenant, actor, id, "ota.campaign.emergency", func(c *store.Campaign, spec *Spec) error {
		if c.State != store.CampaignRunning && c.State != store.CampaignPaused {
			return fmt.Errorf("%w: campaign is %s", ErrCampaignState, c.State)
		}
		if strings.HasPrefix(c.Reason, gatePrefix) && !slices.Contains(spec.Accepted, c.Wave) {
			spec.Accepted = append(spec.Accepted, c.Wave)
		}
		spec.Emergency = true
		c.State, c.Reason = store.CampaignRunning, ""
		return nil
	})
}

func reasonOr(r, def string) string {
	if r == "" {
		return def
	}
	if len(r) > maxReasonLen {
		return r[:maxReasonLen]
	}
	return r
}

// transition applies an operator action to a campaign in the store, on
// whichever node takes it: the change (a compare-and-set on the campaign's
// revision, read again on conflict), the targets emergency moves and the
// audit record commit together; then this engine's memory follows if it
// runs the campaign. The running engine of another node adopts the new
// revision at its next step.
func (e *Engine) transition(ctx context.Context, tenant event.TenantID, actor, id, action string, fn func(*store.Campaign, *Spec) error) (store.Campaign, error) {
	e.persist.Lock()
	defer e.persist.Unlock()
	var c store.Campaign
	now := e.o.Clock.Now().UTC()
	err := e.o.Store.Update(ctx, func(tx store.Tx) error {
		for attempt := 0; ; attempt++ {
			cur, err := tx.Campaigns().Get(ctx, tenant, id)
			if err != nil {
				return err
			}
			var spec Spec
			if err := json.Unmarshal(cur.Spec, &spec); err != nil {
				return fmt.Errorf("stored spec: %w", err)
			}
			wasEmergency := spec.Emergency
			c = cur
			if err := fn(&c, &spec); err != nil {
				return err
			}
			if c.Spec, err = json.Marshal(spec); err != nil {
				return err
			}
			c.UpdatedAt = now
			err = tx.Campaigns().Update(ctx, c)
			if errors.Is(err, store.ErrConflict) && attempt < 5 {
				continue // a step or another node wrote meanwhile: apply to that
			}
			if err != nil {
				return err
			}
			c.Rev++
			if spec.Emergency && !wasEmergency {
				if err := moveToWave(ctx, tx, c); err != nil {
					return err
				}
			}
			_, err = audit.Append(ctx, tx, e.auditEntry(tenant, actor, action, id, map[string]any{"state": c.State, "reason": c.Reason, "wave": c.Wave}))
			return err
		}
	})
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota campaign %s: %w", id, err)
	}
	e.mu.Lock()
	if r := e.runs[rkey(tenant, id)]; r != nil {
		e.adopt(r, c)
		c = r.c
	}
	e.mu.Unlock()
	e.log.InfoContext(ctx, "ota campaign "+action[len("ota.campaign."):], "tenant", tenant, "campaign", id, "actor", actor)
	return c, nil
}

// moveToWave puts every target of a wave after c's current one into it
// (emergency mode).
func moveToWave(ctx context.Context, tx store.Tx, c store.Campaign) error {
	var after event.DeviceID
	for {
		page, err := tx.Campaigns().Targets(ctx, c.Tenant, c.ID, after, 10_000)
		if err != nil {
			return err
		}
		var moved []store.CampaignTarget
		for _, t := range page {
			if t.Wave > c.Wave {
				t.Wave = c.Wave
				moved = append(moved, t)
			}
		}
		if len(moved) > 0 {
			if err := tx.Campaigns().PutTargets(ctx, moved); err != nil {
				return err
			}
		}
		if len(page) < 10_000 {
			return nil
		}
		after = page[len(page)-1].Device
	}
}

// Resend queues again the job of every open campaign in which device was
// sent a job and has not answered yet; the next step publishes it (within
// or outside maintenance windows: the device already had its turn). The
// platform calls it when the device subscribes to its job topic after a
// reconnect, so a job published while it was offline is not lost. It
// returns how many jobs were queued.
func (e *Engine) Resend(tenant event.TenantID, device event.DeviceID) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, r := range e.runs {
		if r.c.Tenant != tenant {
			continue
		}
		if t := r.targets[device]; t != nil && t.State == TargetSent && !slices.Contains(r.resend, device) {
			r.resend = append(r.resend, device)
			n++
		}
	}
	return n
}

// Report applies a device's ota/status payload. tenant and device are
// who the broker authenticated; a report for a job of another device is
// refused with ErrUnknownJob. Duplicate and late reports for a final
// target are ignored, except rolled_back after succeeded.
func (e *Engine) Report(ctx context.Context, tenant event.TenantID, device event.DeviceID, payload []byte) error {
	s, err := ParseStatus(payload)
	if err != nil {
		return err
	}
	return e.ReportStatus(ctx, tenant, device, s)
}

// ReportStatus is [Engine.Report] for a decoded status.
func (e *Engine) ReportStatus(_ context.Context, tenant event.TenantID, device event.DeviceID, s Status) error {
	cid, jd, ok := splitJob(s.Job)
	if !ok || jd != device {
		return fmt.Errorf("%w: job %q is not for device %s", ErrUnknownJob, s.Job, device)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.runs[rkey(tenant, cid)]
	if r == nil {
		return fmt.Errorf("%w: campaign %s is not open", ErrUnknownJob, cid)
	}
	t := r.targets[device]
	if t == nil {
		return fmt.Errorf("%w: device %s is not a target of campaign %s", ErrUnknownJob, device, cid)
	}
	next, reason := s.State, s.Reason
	if t.State == TargetPending {
		return fmt.Errorf("%w: no job was sent to %s yet", ErrUnknownJob, device)
	}
	if final(t.State) && !(t.State == TargetSucceeded && next == TargetRolledBack) {
		return nil
	}
	if next == TargetSucceeded && (s.Digest != r.entry.Digest || s.Version != r.entry.Version) {
		next, reason = TargetFailed, fmt.Sprintf("reported %s (%s) after the update, expected %s (%s)", s.Version, s.Digest, r.entry.Version, r.entry.Digest)
	}
	if next == t.State {
		return nil
	}
	e.move(r, t, next)
	t.Reason = reason
	if s.Version != "" {
		t.Version = s.Version
	}
	if s.Digest != "" {
		t.Digest = s.Digest
	}
	return nil
}

// move changes a target's state, keeping counts and slots. Callers hold mu.
func (e *Engine) move(r *run, t *store.CampaignTarget, next string) {
	if inFlight(t.State) && !inFlight(next) {
		r.inflight--
		e.total--
	} else if !inFlight(t.State) && inFlight(next) {
		r.inflight++
		e.total++
	}
	r.counts[t.Wave][t.State]--
	r.counts[t.Wave][next]++
	t.State = next
	t.UpdatedAt = e.o.Clock.Now().UTC()
	r.dirty[t.Device] = struct{}{}
}

type sendJob struct {
	tenant  event.TenantID
	device  event.DeviceID
	payload []byte
}

type gateCheck struct {
	r      *run
	cohort map[event.DeviceID]bool
	from   time.Time
}

// campWrite is a campaign record a step writes: c, the engine's change
// made on base (kept to merge again if the write meets a newer revision).
type campWrite struct{ c, mine, base store.Campaign }

// Step runs one round: it re-reads the open campaigns (changes made
// through other nodes), checks gates, advances waves, picks the jobs to
// send within the caps and windows, writes every change since the last
// step in one transaction, then publishes the jobs.
func (e *Engine) Step(ctx context.Context) error { return e.step(ctx, true) }

// step is Step; with active false it only writes what is pending (no
// refresh, no gate, no job).
func (e *Engine) step(ctx context.Context, active bool) error {
	e.persist.Lock()
	defer e.persist.Unlock()
	now := e.o.Clock.Now().UTC()
	if active {
		if err := e.refresh(ctx); err != nil {
			return fmt.Errorf("ota step: %w", err)
		}
	}

	// Alert gates need the store; find which waves are due first.
	e.mu.Lock()
	var checks []gateCheck
	for _, r := range e.runs {
		if active && r.c.State == store.CampaignRunning && e.waveDone(r, now) && e.o.Alerts != nil && r.spec.Gate.MaxAlertRise >= 0 {
			cohort := map[event.DeviceID]bool{}
			for _, d := range r.waves[r.c.Wave] {
				if r.targets[d].State == TargetSucceeded {
					cohort[d] = true
				}
			}
			checks = append(checks, gateCheck{r: r, cohort: cohort, from: r.c.WaveAt})
		}
	}
	e.mu.Unlock()
	rise := map[*run]int{}
	for _, g := range checks {
		if len(g.cohort) == 0 {
			continue
		}
		span := now.Sub(g.from)
		after, err := e.o.Alerts.CountAlerts(ctx, g.r.c.Tenant, g.cohort, g.from, now.Add(time.Microsecond))
		if err != nil {
			return fmt.Errorf("ota step: alerts: %w", err)
		}
		before, err := e.o.Alerts.CountAlerts(ctx, g.r.c.Tenant, g.cohort, g.from.Add(-span), g.from)
		if err != nil {
			return fmt.Errorf("ota step: alerts: %w", err)
		}
		rise[g.r] = after - before
	}

	keysDocs := map[event.TenantID][]byte{}
	e.mu.Lock()
	var jobs []sendJob
	var camps []campWrite
	var targets []store.CampaignTarget
	var notes []audit.Entry
	for _, r := range e.runs {
		if active && r.c.State == store.CampaignRunning {
			e.gate(r, now, rise)
		}
		if active && r.c.State == store.CampaignRunning {
			jobs = append(jobs, e.dispatch(ctx, r, now, keysDocs)...)
		}
		if r.changed {
			camps = append(camps, campWrite{c: r.c, mine: r.c, base: r.base})
			r.changed = false
		}
		for d := range r.dirty {
			targets = append(targets, *r.targets[d])
		}
		clear(r.dirty)
		notes = append(notes, r.notes...)
		r.notes = nil
		if r.c.State != store.CampaignRunning && r.c.State != store.CampaignPaused {
			e.total -= r.inflight
			delete(e.runs, rkey(r.c.Tenant, r.c.ID))
		}
	}
	e.mu.Unlock()

	if len(camps)+len(targets)+len(notes) > 0 {
		err := e.o.Store.Update(ctx, func(tx store.Tx) error {
			for i := range camps {
				if err := writeCampaign(ctx, tx, &camps[i]); err != nil {
					return err
				}
			}
			if err := tx.Campaigns().PutTargets(ctx, targets); err != nil {
				return err
			}
			if err := e.recordFirmware(ctx, tx, targets); err != nil {
				return err
			}
			for _, n := range notes {
				if _, err := audit.Append(ctx, tx, n); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			// Put what was not written back, so the next step retries.
			e.mu.Lock()
			for _, t := range targets {
				if r := e.runs[rkey(t.Tenant, t.Campaign)]; r != nil {
					r.dirty[t.Device] = struct{}{}
				}
			}
			for _, w := range camps {
				if r := e.runs[rkey(w.c.Tenant, w.c.ID)]; r != nil {
					r.changed = true
				}
			}
			e.mu.Unlock()
			// Jobs whose "sent" did not commit are not published; they
			// stay sent in memory and are re-sent after a restart.
			return fmt.Errorf("ota step: %w", err)
		}
		// Written: each record is now the stored revision its run is
		// based on (merged with another node's change, if there was one).
		e.mu.Lock()
		for _, w := range camps {
			if r := e.runs[rkey(w.c.Tenant, w.c.ID)]; r != nil {
				e.adopt(r, w.c)
			}
		}
		e.mu.Unlock()
	}
	for _, j := range jobs {
		if err := e.o.Publisher.PublishJob(ctx, j.tenant, j.device, j.payload); err != nil {
			e.log.WarnContext(ctx, "ota job publish failed", "tenant", j.tenant, "device", j.device, "err", err)
		}
	}
	return nil
}

// writeCampaign writes w.c as a compare-and-set on its revision. When
// another writer (an operator action through any node) got there first,
// it reads that revision, merges the engine's change into it and tries
// again. On return w.c is the record as stored, revision included.
func writeCampaign(ctx context.Context, tx store.Tx, w *campWrite) error {
	for attempt := 0; ; attempt++ {
		err := tx.Campaigns().Update(ctx, w.c)
		if err == nil {
			w.c.Rev++
			return nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt == 5 {
			return err
		}
		cur, err := tx.Campaigns().Get(ctx, w.c.Tenant, w.c.ID)
		if err != nil {
			return err
		}
		w.c = mergeCampaign(cur, w.base, w.mine)
		if sameCampaign(w.c, cur) {
			return nil // nothing of the engine's left to write
		}
	}
}

// recordFirmware sets the registry's firmware of every device whose update
// succeeded to the version it reported (which the engine checked against
// the release), audited, in the step's transaction: selectors by firmware
// and the next campaign see the fleet as it is.
func (e *Engine) recordFirmware(ctx context.Context, tx store.Tx, targets []store.CampaignTarget) error {
	for _, t := range targets {
		if t.State != TargetSucceeded || t.Version == "" {
			continue
		}
		d, err := tx.Devices().Get(ctx, t.Tenant, t.Device)
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted since
		} else if err != nil {
			return err
		}
		if d.Firmware == t.Version {
			continue
		}
		from := d.Firmware
		d.Firmware, d.UpdatedAt = t.Version, e.o.Clock.Now().UTC()
		if err := tx.Devices().Update(ctx, d); err != nil {
			return err
		}
		n := e.auditEntry(t.Tenant, "campaign/"+t.Campaign, "device.firmware", t.Campaign,
			map[string]any{"device": t.Device, "from": from, "to": t.Version, "digest": t.Digest})
		n.Target = "device/" + string(t.Device)
		if _, err := audit.Append(ctx, tx, n); err != nil {
			return err
		}
	}
	return nil
}

// waveDone reports whether the current wave is over: every target final,
// or the wave timed out. Callers hold mu.
func (e *Engine) waveDone(r *run, now time.Time) bool {
	w := r.c.Wave
	n := len(r.waves[w])
	fin := 0
	for s, k := range r.counts[w] {
		if final(s) {
			fin += k
		}
	}
	return fin == n || now.Sub(r.c.WaveAt) >= e.waveTimeout(r)
}

func (e *Engine) waveTimeout(r *run) time.Duration {
	if r.spec.Gate.WaveTimeoutS > 0 {
		return time.Duration(r.spec.Gate.WaveTimeoutS) * time.Second
	}
	return e.o.WaveTimeout
}

// gate checks the current wave of a running campaign: failures at once,
// the success ratio and the alert rise once the wave is over; it then
// advances, completes, pauses or aborts the campaign. Callers hold mu.
func (e *Engine) gate(r *run, now time.Time, rise map[*run]int) {
	w := r.c.Wave
	n := len(r.waves[w])
	if n == 0 {
		e.advance(r, now)
		return
	}
	if slices.Contains(r.spec.Accepted, w) {
		// An operator resumed after this wave's gate failed.
		if e.waveDone(r, now) {
			e.advance(r, now)
		}
		return
	}
	fails := r.counts[w][TargetFailed] + r.counts[w][TargetRolledBack] + r.counts[w][TargetRefused]
	maxFail := *r.spec.Gate.MaxFailure
	if float64(fails) > maxFail*float64(n) {
		e.fail(r, now, fmt.Sprintf(gatePrefix+"%d failed: failure ratio %.3f above %.3f (%d of %d)", w+1, float64(fails)/float64(n), maxFail, fails, n))
		return
	}
	if !e.waveDone(r, now) {
		return
	}
	// Targets that never answered time out.
	for _, d := range r.waves[w] {
		if t := r.targets[d]; !final(t.State) {
			e.move(r, t, TargetTimeout)
			t.Reason = "no final report before the wave timeout"
		}
	}
	ok := r.counts[w][TargetSucceeded]
	minOK := *r.spec.Gate.MinSuccess
	if float64(ok) < minOK*float64(n) {
		e.fail(r, now, fmt.Sprintf(gatePrefix+"%d failed: success ratio %.3f below %.3f (%d of %d)", w+1, float64(ok)/float64(n), minOK, ok, n))
		return
	}
	if d, has := rise[r]; has && d > r.spec.Gate.MaxAlertRise {
		e.fail(r, now, fmt.Sprintf(gatePrefix+"%d failed: security alerts of the updated devices rose by %d (allowed %d)", w+1, d, r.spec.Gate.MaxAlertRise))
		return
	}
	r.notes = append(r.notes, e.auditEntry(r.c.Tenant, "automation", "ota.campaign.gate_passed", r.c.ID, map[string]any{
		"wave": w + 1, "succeeded": ok, "failed": fails, "targets": n, "alert_rise": rise[r]}))
	e.advance(r, now)
}

func (e *Engine) advance(r *run, now time.Time) {
	r.changed = true
	if r.c.Wave+1 >= len(r.waves) {
		r.c.State, r.c.Reason, r.c.UpdatedAt = store.CampaignCompleted, "", now
		r.notes = append(r.notes, e.auditEntry(r.c.Tenant, "automation", "ota.campaign.complete", r.c.ID, map[string]any{"waves": len(r.waves)}))
		e.log.Info("ota campaign completed", "tenant", r.c.Tenant, "campaign", r.c.ID)
		return
	}
	r.c.Wave++
	r.c.WaveAt, r.c.UpdatedAt = now, now
	e.log.Info("ota campaign wave", "tenant", r.c.Tenant, "campaign", r.c.ID, "wave", r.c.Wave+1, "targets", len(r.waves[r.c.Wave]))
}

func (e *Engine) fail(r *run, now time.Time, reason string) {
	r.changed = true
	r.c.Reason, r.c.UpdatedAt = reason, now
	r.c.State = store.CampaignPaused
	action := "ota.campaign.gate_paused"
	if r.spec.Gate.OnFail == "abort" {
		r.c.State = store.CampaignAborted
		action = "ota.campaign.gate_aborted"
	}
	r.notes = append(r.notes, e.auditEntry(r.c.Tenant, "automation", action, r.c.ID, map[string]any{"wave": r.c.Wave + 1, "reason": reason}))
	e.log.Warn("ota campaign gate failed", "tenant", r.c.Tenant, "campaign", r.c.ID, "state", r.c.State, "reason", reason)
}

// dispatch picks the jobs to send now. Callers hold mu.
func (e *Engine) dispatch(ctx context.Context, r *run, now time.Time, keysDocs map[event.TenantID][]byte) []sendJob {
	if !r.spec.Emergency && !inWindow(r.spec.Windows, now) && len(r.resend) == 0 {
		return nil
	}
	capacity := e.o.MaxConcurrent
	if r.spec.MaxConcurrent > 0 {
		capacity = r.spec.MaxConcurrent
	}
	keys, ok := keysDocs[r.c.Tenant]
	if !ok {
		var err error
		keys, err = e.o.Catalog.Keys(ctx, r.c.Tenant)
		if err != nil {
			e.log.WarnContext(ctx, "ota campaign has no keys document to send", "tenant", r.c.Tenant, "campaign", r.c.ID, "err", err)
		}
		keysDocs[r.c.Tenant] = keys
	}
	if keys == nil {
		return nil
	}
	var out []sendJob
	mk := func(d event.DeviceID) sendJob {
		b, _ := json.Marshal(Job{Job: JobID(r.c.ID, d), Campaign: r.c.ID, Manifest: r.entry.Manifest, Keys: keys,
			URL: e.o.ArtifactBase + "/api/v1/firmware/artifacts/" + r.entry.Digest, Emergency: r.spec.Emergency})
		return sendJob{tenant: r.c.Tenant, device: d, payload: b}
	}
	for _, d := range r.resend {
		if t := r.targets[d]; t != nil && t.State == TargetSent {
			out = append(out, mk(d))
		}
	}
	r.resend = nil
	if !r.spec.Emergency && !inWindow(r.spec.Windows, now) {
		return out
	}
	w := r.c.Wave
	for r.cursor[w] < len(r.waves[w]) && r.inflight < capacity && (e.o.MaxDownloads == 0 || e.total < e.o.MaxDownloads) {
		d := r.waves[w][r.cursor[w]]
		r.cursor[w]++
		t := r.targets[d]
		if t.State != TargetPending {
			continue
		}
		e.move(r, t, TargetSent)
		out = append(out, mk(d))
	}
	return out
}

// ArtifactBase returns the base URL put into jobs.
func (e *Engine) ArtifactBase() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.o.ArtifactBase
}

// SetArtifactBase changes the base URL put into jobs (the app sets it
// once the API listens, when its port was :0).
func (e *Engine) SetArtifactBase(base string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.o.ArtifactBase = base
}
