package respond

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// Mass-action kinds.
const (
	MassQuarantine = "quarantine" // registry state quarantined (the broker narrows live sessions)
	MassRevoke     = "revoke"     // registry state revoked and every certificate of the device revoked
	MassKick       = "kick"       // close live sessions (MQTT kick, RADIUS Disconnect when wired)
)

// Mass-job states.
const (
	JobRunning  = "running"
	JobDone     = "done"
	JobCanceled = "canceled"
)

// MaxMassRate bounds a job's rate (devices per second).
const MaxMassRate = 1_000_000

// revocationKeyCompromise is the RFC 5280 CRLReason of a mass revocation.
const revocationKeyCompromise = 1

// MassSelector picks the devices of a mass action: a registry selector
// plus last-seen and open-alert terms. Its text form adds to
// registry.ParseSelector's terms:
//
//	last_seen>24h      not seen for more than 24 hours, or never seen
//	last_seen<15m      seen within the last 15 minutes
//	alert=net.telnet_scan  has an open or acknowledged alert of that kind
//
// Durations are Go durations or whole days ("7d"). Relative times are taken
// from the job's creation, so a resumed job selects the same devices.
type MassSelector struct {
	Device     registry.Selector
	SeenOlder  time.Duration
	SeenWithin time.Duration
	OpenAlert  alert.Kind
}

func parseAge(v string) (time.Duration, bool) {
	var d time.Duration
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, false
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, false
		}
	}
	return d, d > 0 && d <= 10*365*24*time.Hour
}

func formatAge(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	return d.String()
}

// ParseMassSelector parses the text form of a [MassSelector]. Errors are
// *registry.SelectorError naming the bad term (they match
// registry.ErrSelector and store.ErrInvalid).
func ParseMassSelector(s string) (MassSelector, error) {
	var m MassSelector
	if len(s) > 1024 {
		return m, &registry.SelectorError{Text: s[:32] + "...", Msg: "longer than 1024 bytes"}
	}
	t := strings.TrimSpace(s)
	if t == "" || t == "*" {
		return m, nil
	}
	seen := map[string]bool{}
	for i, raw := range strings.Split(t, ",") {
		n := i + 1
		term := strings.TrimSpace(raw)
		bad := func(format string, a ...any) (MassSelector, error) {
			return MassSelector{}, &registry.SelectorError{Term: n, Text: term, Msg: fmt.Sprintf(format, a...)}
		}
		key := term
		if j := strings.IndexAny(term, "=<>^"); j >= 0 {
			key = strings.TrimSpace(term[:j])
		}
		if seen[key] && key != "" {
			return bad("key %q given twice", key)
		}
		seen[key] = true
		switch {
		case key == "last_seen":
			rest := strings.TrimSpace(strings.TrimPrefix(term, "last_seen"))
			if len(rest) < 2 || rest[0] != '<' && rest[0] != '>' {
				return bad("want last_seen>AGE (not seen for longer) or last_seen<AGE (seen within), e.g. last_seen>24h")
			}
			d, ok := parseAge(strings.TrimSpace(rest[1:]))
			if !ok {
				return bad("age must be a positive duration such as 30m, 24h or 7d (at most 10 years)")
			}
			if rest[0] == '>' {
				m.SeenOlder = d
			} else {
				m.SeenWithin = d
			}
		case key == "alert":
			_, v, _ := strings.Cut(term, "=")
			v = strings.TrimSpace(v)
			if !validKind(v) {
				return bad("alert kind must be domain.name in lower case, e.g. alert=net.telnet_scan")
			}
			m.OpenAlert = alert.Kind(v)
		default:
			one, err := registry.ParseSelector(term)
			if err != nil {
				var se *registry.SelectorError
				if errors.As(err, &se) {
					return bad("%s", se.Msg+"; mass actions also take last_seen>AGE, last_seen<AGE and alert=KIND")
				}
				return bad("%v", err)
			}
			d := &m.Device
			switch {
			case one.Model != "":
				d.Model = one.Model
			case one.Firmware != "":
				d.Firmware = one.Firmware
			case one.State != "":
				d.State = one.State
			case one.Group != "":
				d.Group = one.Group
			case one.TagKey != "":
				d.TagKey, d.TagValue = one.TagKey, one.TagValue
			case one.IMSIPrefix != "":
				d.IMSIPrefix = one.IMSIPrefix
			}
		}
	}
	return m, nil
}

// String returns the canonical text form (parsed back to the same value).
func (m MassSelector) String() string {
	terms := []string{}
	if s := m.Device.String(); s != "" {
		terms = append(terms, s)
	}
	if m.SeenOlder > 0 {
		terms = append(terms, "last_seen>"+formatAge(m.SeenOlder))
	}
	if m.SeenWithin > 0 {
		terms = append(terms, "last_seen<"+formatAge(m.SeenWithin))
	}
	if m.OpenAlert != "" {
		terms = append(terms, "alert="+string(m.OpenAlert))
	}
	if len(terms) == 0 {
		return "*"
	}
	return strings.Join(terms, ",")
}

// Selection is the store form of the selector, relative times taken from now.
func (m MassSelector) Selection(now time.Time) store.MassSelection {
	s := store.MassSelection{Filter: m.Device.Filter(), OpenAlert: m.OpenAlert}
	if m.SeenOlder > 0 {
		s.SeenBefore = now.Add(-m.SeenOlder)
	}
	if m.SeenWithin > 0 {
		s.SeenSince = now.Add(-m.SeenWithin)
	}
	return s
}

// Sessions re-authorises a device's live sessions after a registry state
// change (broker.Broker has this method).
type Sessions interface {
	SetState(t event.TenantID, d event.DeviceID, s store.DeviceState) bool
}

// PageDisconnecter is a [Disconnecter] that closes the live sessions of a
// page of devices at once (serve's: sessions on this node at once, one
// published group of kicks for the other nodes). A kick job uses it when
// its Disconnecter has it, one call per page.
type PageDisconnecter interface {
	DisconnectPage(ctx context.Context, ts []Target) error
}

// Revocations learns of certificates a revoke job revoked in the store, so
// cached revocation data (CRLs) is regenerated (identity.Service has this
// method).
type Revocations interface {
	CertificatesRevoked(t event.TenantID)
}

// MassOptions configure a [Mass] runner.
type MassOptions struct {
	Store  store.Store  // required
	Clock  clock.Clock  // required
	Logger *slog.Logger // optional
	// Publisher receives a device.state event per device changed (and an
	// identity.cert_revoked per certificate a revoke job revoked), after
	// each page commits (the broker narrows or closes live sessions from
	// them). A publisher with PublishGroup (the bus) gets each page, or
	// the pages queued together, as one group, stored in few messages; one
	// with PublishAsync and Flush is used asynchronously, flushed once per
	// page.
	Publisher Publisher
	// Disconnecter closes the live sessions of a kick job's devices.
	Disconnecter Disconnecter
	// Sessions, if set, applies each committed state change to the live
	// sessions of this node at once (the broker: quarantined narrows the
	// ACL, revoked closes the session), without waiting for the events.
	Sessions Sessions
	// Revocations, if set, is told after each committed page of a revoke
	// job that revoked certificates.
	Revocations Revocations
	// Batch is the page size (default 1000): one transaction per page.
	Batch int
	// DrainTimeout bounds how long Serve keeps publishing queued events
	// after its context ends (default 5s).
	DrainTimeout time.Duration
}

// Mass runs mass actions as durable jobs: a job is stored when submitted,
// each page of devices (in id order) is changed together with its audit
// record and the job's progress (cursor and counts) in one transaction,
// and a job interrupted by a restart resumes after its cursor, so no device
// is handled twice and none is skipped. One process runs jobs one at a
// time ([Mass.Serve]); several processes on one PostgreSQL store would each
// run them (not serialized yet).
//
// Every method takes the tenant explicitly: a job's selection, its state
// changes and its kicks are all confined to that tenant.
type Mass struct {
	o    MassOptions
	log  *slog.Logger
	wake chan struct{}

	mu     sync.Mutex
	events chan []*event.Event // set while Serve runs: pages' events, published in the background
}

// NewMass returns a mass-action runner.
func NewMass(o MassOptions) (*Mass, error) {
	if o.Store == nil || o.Clock == nil {
		return nil, errors.New("respond: MassOptions.Store and Clock are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Batch <= 0 {
		o.Batch = 1000
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 5 * time.Second
	}
	return &Mass{o: o, log: o.Logger, wake: make(chan struct{}, 1)}, nil
}

// MassPreview is a dry run: how many devices the selector picks now and a
// sample of them (by id). Nothing is changed.
type MassPreview struct {
	Selector string         `json:"selector"`
	Count    int            `json:"count"`
	Sample   []store.Device `json:"sample"`
}

// Preview counts the devices sel picks in the tenant and returns up to
// sample of them.
func (m *Mass) Preview(ctx context.Context, tenant event.TenantID, sel string, sample int) (MassPreview, error) {
	ms, err := ParseMassSelector(sel)
	if err != nil {
		return MassPreview{}, fmt.Errorf("respond mass preview: %w", err)
	}
	p := MassPreview{Selector: ms.String(), Sample: []store.Device{}}
	s := ms.Selection(m.o.Clock.Now().UTC())
	err = m.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if p.Count, err = tx.Mass().Count(ctx, tenant, s); err != nil {
			return err
		}
		refs, err := tx.Mass().Select(ctx, tenant, s, "", max(sample, 0))
		if err != nil || sample <= 0 {
			return err
		}
		for _, r := range refs {
			d, err := tx.Devices().Get(ctx, tenant, r.ID)
			if err != nil {
				return err
			}
			p.Sample = append(p.Sample, d)
		}
		return nil
	})
	if err != nil {
		return MassPreview{}, fmt.Errorf("respond mass preview %s: %w", tenant, err)
	}
	return p, nil
}

// MassRequest asks for a mass action.
type MassRequest struct {
	Kind     string // quarantine, revoke or kick
	Selector string // required; "*" for every device of the tenant
	Rate     int    // devices per second; 0 = as fast as the store allows
	Reason   string
}

// Submit validates r, stores a running job (audited as mass.submit with the
// selector and the count it selects now) and wakes [Mass.Serve]. Errors
// wrap store.ErrInvalid (or match registry.ErrSelector) for bad input.
func (m *Mass) Submit(ctx context.Context, tenant event.TenantID, r MassRequest, actor string) (store.MassJob, error) {
	switch r.Kind {
	case MassQuarantine, MassRevoke, MassKick:
	default:
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w: kind %q must be quarantine, revoke or kick", store.ErrInvalid, r.Kind)
	}
	if strings.TrimSpace(r.Selector) == "" {
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w: a selector is required (\"*\" selects every device)", store.ErrInvalid)
	}
	if r.Rate < 0 || r.Rate > MaxMassRate {
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w: rate must be 0 (unlimited) to %d devices per second", store.ErrInvalid, MaxMassRate)
	}
	if len(r.Reason) > 1000 {
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w: reason longer than 1000 bytes", store.ErrInvalid)
	}
	if actor == "" {
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w: an actor is required", store.ErrInvalid)
	}
	ms, err := ParseMassSelector(r.Selector)
	if err != nil {
		return store.MassJob{}, fmt.Errorf("respond mass submit: %w", err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return store.MassJob{}, err
	}
	now := m.o.Clock.Now().UTC()
	j := store.MassJob{Tenant: tenant, ID: "mj-" + strconv.FormatInt(now.Unix(), 36) + "-" + hex.EncodeToString(b[:]),
		Kind: r.Kind, Selector: ms.String(), Rate: r.Rate, State: JobRunning, Actor: actor, Reason: r.Reason,
		CreatedAt: now, UpdatedAt: now}
	err = m.o.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Tenants().Get(ctx, tenant); err != nil {
			return err
		}
		var err error
		if j.Total, err = tx.Mass().Count(ctx, tenant, ms.Selection(now)); err != nil {
			return err
		}
		if err := tx.Mass().CreateJob(ctx, j); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "mass.submit", "mass:"+j.ID, map[string]any{
			"kind": j.Kind, "selector": j.Selector, "rate": j.Rate, "total": j.Total, "reason": j.Reason})
	})
	if err != nil {
		return store.MassJob{}, fmt.Errorf("respond mass submit %s: %w", tenant, err)
	}
	m.log.InfoContext(ctx, "mass action submitted", "tenant", tenant, "job", j.ID, "kind", j.Kind, "selector", j.Selector, "total", j.Total, "actor", actor)
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return j, nil
}

// Job returns a job of the tenant (store.ErrNotFound for another tenant's).
func (m *Mass) Job(ctx context.Context, tenant event.TenantID, id string) (store.MassJob, error) {
	var j store.MassJob
	err := m.o.Store.View(ctx, func(tx store.Tx) (err error) {
		j, err = tx.Mass().Job(ctx, tenant, id)
		return err
	})
	return j, err
}

// Jobs lists the tenant's jobs, newest first.
func (m *Mass) Jobs(ctx context.Context, tenant event.TenantID, limit int) ([]store.MassJob, error) {
	var js []store.MassJob
	err := m.o.Store.View(ctx, func(tx store.Tx) (err error) {
		js, err = tx.Mass().Jobs(ctx, tenant, "", limit)
		return err
	})
	return js, err
}

// Cancel stops a running job after its current page (audited as
// mass.cancel); store.ErrConflict if it is not running.
func (m *Mass) Cancel(ctx context.Context, tenant event.TenantID, id, actor string) (store.MassJob, error) {
	now := m.o.Clock.Now().UTC()
	var j store.MassJob
	err := m.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if j, err = tx.Mass().Job(ctx, tenant, id); err != nil {
			return err
		}
		if j.State != JobRunning {
			return fmt.Errorf("job is %s, not running: %w", j.State, store.ErrConflict)
		}
		j.State, j.UpdatedAt = JobCanceled, now
		if err := tx.Mass().UpdateJob(ctx, j); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "mass.cancel", "mass:"+id, map[string]any{"processed": j.Processed})
	})
	if err != nil {
		return store.MassJob{}, fmt.Errorf("respond mass cancel %s/%s: %w", tenant, id, err)
	}
	return j, nil
}

// Serve runs every running job of every tenant (oldest first), then waits
// for [Mass.Submit] to wake it, until ctx ends. A job interrupted by ctx
// stays running and is resumed by the next Serve.
//
// While Serve runs, the device.state events of each page are published by a
// background goroutine (a page's changes are committed, and applied to this
// node's sessions, before its events are queued), so a job's pace is the
// store's, not the bus's. On return Serve publishes what is queued, for at
// most MassOptions.DrainTimeout; events still queued then are logged as lost (the
// states are committed; the broker re-reads them at connect).
func (m *Mass) Serve(ctx context.Context) error {
	ch := make(chan []*event.Event, 64)
	drained := make(chan struct{})
	dctx, dcancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(drained)
		for evs := range ch {
			// Pages queued meanwhile go out with this one: under a backlog
			// the bus stores more events per message.
		gather:
			for len(evs) < maxPublishGroup {
				select {
				case more, ok := <-ch:
					if !ok {
						break gather
					}
					evs = append(evs, more...)
				default:
					break gather
				}
			}
			m.publishNow(dctx, evs)
		}
	}()
	m.mu.Lock()
	m.events = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.events = nil
		close(ch)
		m.mu.Unlock()
		t := time.AfterFunc(m.o.DrainTimeout, dcancel)
		<-drained
		t.Stop()
		dcancel()
	}()
	for {
		jobs, err := m.runnable(ctx)
		if err != nil && ctx.Err() == nil {
			m.log.ErrorContext(ctx, "mass jobs not listed", "err", err)
		}
		for _, j := range jobs {
			if _, err := m.Run(ctx, j.Tenant, j.ID); err != nil && ctx.Err() == nil {
				m.log.ErrorContext(ctx, "mass job failed", "tenant", j.Tenant, "job", j.ID, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		}
	}
}

func (m *Mass) runnable(ctx context.Context) ([]store.MassJob, error) {
	var out []store.MassJob
	err := m.o.Store.View(ctx, func(tx store.Tx) error {
		ts, err := tx.Tenants().List(ctx)
		if err != nil {
			return err
		}
		for _, t := range ts {
			js, err := tx.Mass().Jobs(ctx, t.ID, JobRunning, 0)
			if err != nil {
				return err
			}
			for i := len(js) - 1; i >= 0; i-- {
				out = append(out, js[i])
			}
		}
		return nil
	})
	return out, err
}

// maxPublishGroup bounds the events Serve's publisher gathers from queued
// pages into one publish.
const maxPublishGroup = 8192

// groupPublisher stores events known together in few messages and
// returns once they are stored (*bus.Bus has this method).
type groupPublisher interface {
	PublishGroup(ctx context.Context, evs []*event.Event) error
}

type asyncPublisher interface {
	PublishAsync(ctx context.Context, e *event.Event) error
	Flush(ctx context.Context) error
}

// Run carries out a job from its cursor until it is done, canceled, or ctx
// ends (the job then stays running, to be resumed). It returns the job as
// last stored.
func (m *Mass) Run(ctx context.Context, tenant event.TenantID, id string) (store.MassJob, error) {
	j, err := m.Job(ctx, tenant, id)
	if err != nil {
		return j, fmt.Errorf("respond mass run %s/%s: %w", tenant, id, err)
	}
	ms, err := ParseMassSelector(j.Selector)
	if err != nil {
		return j, fmt.Errorf("respond mass run %s/%s: stored selector: %w", tenant, id, err)
	}
	sel := ms.Selection(j.CreatedAt)
	batch := m.o.Batch
	if j.Rate > 0 {
		batch = min(batch, max(1, j.Rate/10))
	}
	var to store.DeviceState
	var from []store.DeviceState
	switch j.Kind {
	case MassQuarantine:
		to = store.StateQuarantined
	case MassRevoke:
		to = store.StateRevoked
	}
	if to != "" {
		for _, s := range []store.DeviceState{store.StateRegistered, store.StateActive, store.StateQuarantined,
			store.StateSuspended, store.StateRevoked, store.StateDecommissioned} {
			if registry.CanTransition(s, to) {
				from = append(from, s)
			}
		}
	}
	reason := fmt.Sprintf("mass %s %s by %s", j.Kind, j.ID, j.Actor)
	if j.Reason != "" {
		reason += ": " + j.Reason
	}
	start, base := time.Now(), j.Processed
	for j.State == JobRunning {
		if err := ctx.Err(); err != nil {
			return j, err
		}
		// A kick job closes sessions before it records the page: a crash
		// in between repeats kicks (harmless) rather than losing them.
		if j.Kind == MassKick {
			var refs []store.DeviceRef
			err := m.o.Store.View(ctx, func(tx store.Tx) (err error) {
				refs, err = tx.Mass().Select(ctx, tenant, sel, j.Cursor, batch)
				return err
			})
			if err != nil {
				return j, fmt.Errorf("respond mass run %s/%s: %w", tenant, id, err)
			}
			m.kick(ctx, tenant, j, refs, reason)
		}
		var changed []store.DeviceRef
		var certs []store.Certificate
		now := m.o.Clock.Now().UTC()
		err := m.o.Store.Update(ctx, func(tx store.Tx) error {
			changed, certs = changed[:0], nil
			cur, err := tx.Mass().Job(ctx, tenant, id)
			if err != nil {
				return err
			}
			if cur.State != JobRunning {
				j = cur
				return nil
			}
			refs, err := tx.Mass().Select(ctx, tenant, sel, cur.Cursor, batch)
			if err != nil {
				return err
			}
			cur.UpdatedAt = now
			if len(refs) == 0 {
				cur.State = JobDone
				if err := tx.Mass().UpdateJob(ctx, cur); err != nil {
					return err
				}
				j = cur
				return audit.Record(ctx, tx, tenant, now, cur.Actor, "mass.done", "mass:"+id, map[string]any{
					"kind": cur.Kind, "processed": cur.Processed, "changed": cur.Changed, "unchanged": cur.Unchanged, "refused": cur.Refused})
			}
			var ids []event.DeviceID
			devices := make([]map[string]string, 0, len(refs))
			for _, r := range refs {
				switch {
				case to == "":
					changed = append(changed, r)
				case r.State == to:
					cur.Unchanged++
				case registry.CanTransition(r.State, to):
					ids = append(ids, r.ID)
					changed = append(changed, r)
				default:
					cur.Refused++
				}
			}
			if len(ids) > 0 {
				n, err := tx.Mass().SetStates(ctx, tenant, ids, from, to, now)
				if err != nil {
					return err
				}
				if n != len(ids) {
					return fmt.Errorf("page changed under the job: %d of %d devices moved: %w", n, len(ids), store.ErrConflict)
				}
				if j.Kind == MassRevoke {
					if certs, err = tx.Mass().RevokeCertificates(ctx, tenant, ids, now, revocationKeyCompromise); err != nil {
						return err
					}
				}
			}
			for _, r := range changed {
				devices = append(devices, map[string]string{"id": string(r.ID), "from": string(r.State)})
			}
			cur.Changed += len(changed)
			cur.Processed += len(refs)
			cur.Cursor = refs[len(refs)-1].ID
			if err := tx.Mass().UpdateJob(ctx, cur); err != nil {
				return err
			}
			j = cur
			if len(changed) == 0 {
				return nil
			}
			details := map[string]any{"selector": cur.Selector, "reason": reason, "count": len(changed), "devices": devices}
			if cur.Kind == MassRevoke {
				serials := make([]string, len(certs))
				for i, c := range certs {
					serials[i] = c.Serial
				}
				details["certificates"] = serials
			}
			return audit.Record(ctx, tx, tenant, now, cur.Actor, "mass."+cur.Kind, "mass:"+id, details)
		})
		if err != nil {
			return j, fmt.Errorf("respond mass run %s/%s: %w", tenant, id, err)
		}
		if len(certs) > 0 && m.o.Revocations != nil {
			m.o.Revocations.CertificatesRevoked(tenant)
		}
		if to != "" {
			m.publish(ctx, tenant, changed, certs, to, reason, now)
		}
		if j.Rate > 0 && j.State == JobRunning {
			due := start.Add(time.Duration(float64(j.Processed-base) / float64(j.Rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
		}
	}
	m.log.InfoContext(ctx, "mass action finished", "tenant", tenant, "job", id, "state", j.State, "processed", j.Processed, "changed", j.Changed)
	return j, nil
}

func (m *Mass) kick(ctx context.Context, tenant event.TenantID, j store.MassJob, refs []store.DeviceRef, reason string) {
	if m.o.Disconnecter == nil {
		return
	}
	if pd, ok := m.o.Disconnecter.(PageDisconnecter); ok {
		ts := make([]Target, len(refs))
		for i, r := range refs {
			ts[i] = Target{Tenant: tenant, Device: r.ID, ActionID: j.ID, Actor: j.Actor, Reason: reason}
		}
		if err := pd.DisconnectPage(ctx, ts); err != nil {
			m.log.WarnContext(ctx, "mass kick failed", "tenant", tenant, "devices", len(ts), "job", j.ID, "err", err)
		}
		return
	}
	for _, r := range refs {
		t := Target{Tenant: tenant, Device: r.ID, ActionID: j.ID, Actor: j.Actor, Reason: reason}
		if err := m.o.Disconnecter.Disconnect(ctx, t); err != nil {
			m.log.WarnContext(ctx, "mass kick failed", "tenant", tenant, "device", r.ID, "job", j.ID, "err", err)
		}
	}
}

// publish applies a committed page to this node's sessions and publishes
// its device.state events (queued for Serve's publisher while it runs).
func (m *Mass) publish(ctx context.Context, tenant event.TenantID, changed []store.DeviceRef, certs []store.Certificate, to store.DeviceState, reason string, now time.Time) {
	if m.o.Sessions != nil {
		for _, r := range changed {
			m.o.Sessions.SetState(tenant, r.ID, to)
		}
	}
	if m.o.Publisher == nil || len(changed) == 0 {
		return
	}
	evs := make([]*event.Event, len(changed), len(changed)+len(certs))
	for i, r := range changed {
		evs[i] = registry.StateEvent(tenant, r.ID, r.State, to, reason, now)
	}
	// As identity publishes a revocation (its reason is key_compromise).
	for _, c := range certs {
		evs = append(evs, &event.Event{Tenant: tenant, Device: c.Device, Kind: event.CertRevoked, Time: now, Source: "identity",
			Attrs: map[string]any{"serial": c.Serial, "reason": "key_compromise"}})
	}
	m.mu.Lock()
	ch := m.events
	if ch != nil {
		// Sending under mu keeps Serve from closing ch meanwhile; the
		// publisher goroutine never takes mu, so it keeps draining.
		select {
		case ch <- evs:
			m.mu.Unlock()
			return
		case <-ctx.Done():
			m.mu.Unlock()
			m.log.WarnContext(ctx, "device state events not queued", "tenant", tenant, "count", len(evs))
			return
		}
	}
	m.mu.Unlock()
	m.publishNow(ctx, evs)
}

func (m *Mass) publishNow(ctx context.Context, evs []*event.Event) {
	if gp, ok := m.o.Publisher.(groupPublisher); ok {
		if err := gp.PublishGroup(ctx, evs); err != nil {
			m.log.WarnContext(ctx, "device state events not all stored", "count", len(evs), "err", err)
		}
		return
	}
	ap, async := m.o.Publisher.(asyncPublisher)
	for _, e := range evs {
		var err error
		if async {
			err = ap.PublishAsync(ctx, e)
		} else {
			err = m.o.Publisher.Publish(ctx, e)
		}
		if err != nil {
			m.log.WarnContext(ctx, "device state event not published", "tenant", e.Tenant, "device", e.Device, "err", err)
		}
	}
	if async {
		if err := ap.Flush(ctx); err != nil {
			m.log.WarnContext(ctx, "device state events not all stored", "err", err)
		}
	}
}

// Service is the response engine and the mass-action runner together, as
// the API uses them.
type Service struct {
	*Engine
	*Mass
}
