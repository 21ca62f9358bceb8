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
// aborts on failure. Open campaigns live in memory and in the store;
// [Engine.Load] resumes them after a restart.
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
}

type run struct {
	c        store.Campaign
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
// pending once more.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = e.Step(sctx)
			return nil
		case <-t.C:
			if err := e.Step(ctx); err != nil && ctx.Err() == nil {
				e.log.ErrorContext(ctx, "ota campaign step", "err", err)
			}
		}
	}
}

// Load resumes every open campaign from the store (after a restart).
func (e *Engine) Load(ctx context.Context) error {
	var open []store.Campaign
	if err := e.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		open, err = tx.Campaigns().Open(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("ota engine load: %w", err)
	}
	for _, c := range open {
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
			return fmt.Errorf("ota engine load %s: %w", c.ID, err)
		}
		r, err := e.newRun(ctx, c, ts)
		if err != nil {
			return fmt.Errorf("ota engine load %s: %w", c.ID, err)
		}
		for _, t := range ts {
			if t.State == TargetSent {
				r.resend = append(r.resend, t.Device)
			}
		}
		e.mu.Lock()
		e.runs[rkey(c.Tenant, c.ID)] = r
		e.total += r.inflight
		e.mu.Unlock()
		e.log.InfoContext(ctx, "ota campaign resumed", "tenant", c.Tenant, "campaign", c.ID, "state", c.State, "wave", c.Wave)
	}
	return nil
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
	r := &run{c: c, spec: spec, entry: ent, targets: make(map[event.DeviceID]*store.CampaignTarget, len(ts)),
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
// in the tenant's catalog, unexpired, and target the selector's model.
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
	e.runs[rkey(tenant, id)] = r
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

// transition applies an operator action to an open campaign: the change
// and its audit record commit together, then memory follows.
func (e *Engine) transition(ctx context.Context, tenant event.TenantID, actor, id, action string, fn func(*store.Campaign, *Spec) error) (store.Campaign, error) {
	e.persist.Lock()
	defer e.persist.Unlock()
	e.mu.Lock()
	r := e.runs[rkey(tenant, id)]
	var c store.Campaign
	var moved []store.CampaignTarget
	if r == nil {
		e.mu.Unlock()
		// Not open on this node: a final campaign, or none.
		err := e.o.Store.View(ctx, func(tx store.Tx) error {
			var err error
			c, err = tx.Campaigns().Get(ctx, tenant, id)
			return err
		})
		if err != nil {
			return store.Campaign{}, fmt.Errorf("ota campaign %s: %w", id, err)
		}
		var spec Spec
		_ = json.Unmarshal(c.Spec, &spec)
		if err := fn(&c, &spec); err != nil {
			return store.Campaign{}, fmt.Errorf("ota campaign %s: %w", id, err)
		}
		return store.Campaign{}, fmt.Errorf("ota campaign %s: %w: not loaded", id, ErrCampaignState)
	}
	c = r.c
	spec := r.spec
	spec.Accepted = slices.Clone(r.spec.Accepted)
	err := fn(&c, &spec)
	emergency := err == nil && spec.Emergency && !r.spec.Emergency
	c.Spec, _ = json.Marshal(spec)
	if emergency {
		for w := c.Wave + 1; w < len(r.waves); w++ {
			for _, d := range r.waves[w] {
				t := *r.targets[d]
				t.Wave = c.Wave
				moved = append(moved, t)
			}
		}
	}
	e.mu.Unlock()
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota campaign %s: %w", id, err)
	}
	c.UpdatedAt = e.o.Clock.Now().UTC()
	err = e.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Campaigns().Update(ctx, c); err != nil {
			return err
		}
		if len(moved) > 0 {
			if err := tx.Campaigns().PutTargets(ctx, moved); err != nil {
				return err
			}
		}
		_, err := audit.Append(ctx, tx, e.auditEntry(tenant, actor, action, id, map[string]any{"state": c.State, "reason": c.Reason, "wave": c.Wave}))
		return err
	})
	if err != nil {
		return store.Campaign{}, fmt.Errorf("ota campaign %s: %w", id, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	// Keep what reports changed meanwhile; take the new state.
	r.c.State, r.c.Reason, r.c.UpdatedAt, r.c.Spec = c.State, c.Reason, c.UpdatedAt, c.Spec
	r.spec = spec
	if emergency {
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
	}
	if c.State != store.CampaignRunning && c.State != store.CampaignPaused {
		e.total -= r.inflight
		delete(e.runs, rkey(tenant, id))
	}
	e.log.InfoContext(ctx, "ota campaign "+action[len("ota.campaign."):], "tenant", tenant, "campaign", id, "actor", actor)
	return r.c, nil
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

// Step runs one round: it checks gates, advances waves, picks the jobs
// to send within the caps and windows, writes every change since the last
// step in one transaction, then publishes the jobs.
func (e *Engine) Step(ctx context.Context) error {
	e.persist.Lock()
	defer e.persist.Unlock()
	now := e.o.Clock.Now().UTC()

	// Alert gates need the store; find which waves are due first.
	e.mu.Lock()
	var checks []gateCheck
	for _, r := range e.runs {
		if r.c.State == store.CampaignRunning && e.waveDone(r, now) && e.o.Alerts != nil && r.spec.Gate.MaxAlertRise >= 0 {
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
	var camps []store.Campaign
	var targets []store.CampaignTarget
	var notes []audit.Entry
	for _, r := range e.runs {
		if r.c.State == store.CampaignRunning {
			e.gate(r, now, rise)
		}
		if r.c.State == store.CampaignRunning {
			jobs = append(jobs, e.dispatch(ctx, r, now, keysDocs)...)
		}
		if r.changed {
			camps = append(camps, r.c)
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
			for _, c := range camps {
				if err := tx.Campaigns().Update(ctx, c); err != nil {
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
			for _, c := range camps {
				if r := e.runs[rkey(c.Tenant, c.ID)]; r != nil {
					r.changed = true
				}
			}
			e.mu.Unlock()
			// Jobs whose "sent" did not commit are not published; they
			// stay sent in memory and are re-sent after a restart.
			return fmt.Errorf("ota step: %w", err)
		}
	}
	for _, j := range jobs {
		if err := e.o.Publisher.PublishJob(ctx, j.tenant, j.device, j.payload); err != nil {
			e.log.WarnContext(ctx, "ota job publish failed", "tenant", j.tenant, "device", j.device, "err", err)
		}
	}
	return nil
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
