// Package platform runs detection and response over the bus: the plane
// between ingestion (broker, RADIUS, flows, simulator) and the operator.
//
//	ingestion --bus--> detect consumers (partitioned) --> Engine --> Raise
//	Raise: store the alert, publish alert.raised --bus--> respond consumer --> Responder
//
// Contract:
//   - Events of one device partition are handled by one consumer in stream
//     order, so per-device state lives in one place; the engine serialises
//     per device besides.
//   - An alert is stored before alert.raised is published, and alert.raised
//     is published before the triggering event is acknowledged: once
//     [Detection.Drain] returns, every event published before it has been
//     through detection and every alert it raised through response.
//   - Registry state changes (device.state events) update the detection
//     directory, so detectors see revocations and quarantines.
package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Responder acts on alerts (the response engine). Handle must be
// idempotent: an alert may be delivered again after a restart.
type Responder interface {
	Handle(ctx context.Context, a alert.Alert) error
}

// StateResponder is the optional ability of a Responder to act on an
// operator's move of an alert (alert.state_changed): the response engine
// restores devices after a false positive. It must tolerate the same
// change twice (a redelivery).
type StateResponder interface {
	AlertStateChanged(ctx context.Context, tenant event.TenantID, alertID string, to alert.State, actor string) error
}

// AlertObserver is told of every alert raised or updated, after it is stored
// (the demo prints them; exports will hang here).
type AlertObserver func(a alert.Alert)

// Options configure [Detection].
type Options struct {
	Bus       *bus.Bus
	Store     store.Store
	Directory Directory // default: an empty in-memory one
	Catalog   *detect.MemCatalog
	Intel     *detect.ThreatIntel
	Settings  detect.Settings
	Rules     *detect.RuleSet // operators' rules (see [Rules]); nil: none
	Responder Responder       // nil: alerts are stored and published, nobody acts
	Observe   AlertObserver
	Clock     clock.Clock
	Logger    *slog.Logger
	// Workers is the number of detect consumers per stream (default 1: one
	// consumer reads the whole stream in order). More than one spreads the
	// device partitions over consumers with multi-subject filters, which
	// needs NATS 2.10 or later and is slower on the server per message.
	Workers int
	// Name prefixes the durable consumer names (default "garrison").
	Name string
}

// Detection is the running detection and response plane.
type Detection struct {
	o      Options
	Engine *detect.Engine

	mu        sync.Mutex
	consumers []*bus.Consumer
	advanced  time.Time
}

// NewDetection builds the engine; it starts nothing.
func NewDetection(o Options) (*Detection, error) {
	var errs []error
	if o.Bus == nil {
		errs = append(errs, errors.New("platform: bus missing"))
	}
	if o.Store == nil {
		errs = append(errs, errors.New("platform: store missing"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.Directory == nil {
		o.Directory = detect.NewMemDirectory()
	}
	if o.Catalog == nil {
		o.Catalog = detect.NewMemCatalog()
	}
	if o.Intel == nil {
		o.Intel = detect.NewThreatIntel()
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.Name == "" {
		o.Name = "garrison"
	}
	d := &Detection{o: o}
	d.Engine = detect.New(detect.Options{
		Directory: o.Directory, Catalog: o.Catalog, Intel: o.Intel, Settings: o.Settings, Rules: o.Rules,
		Clock: o.Clock, Logger: o.Logger, Sink: d,
	})
	return d, nil
}

// Directory returns the detection directory (device profiles).
func (d *Detection) Directory() Directory { return d.o.Directory }

// Directory is what detection knows about devices, and how the plane keeps
// it current (registry state changes, new registrations).
type Directory interface {
	detect.Directory
	Put(p detect.Profile)
}

var (
	_ Directory = (*detect.MemDirectory)(nil)
	_ Directory = (*StoreDirectory)(nil)
)

// StoreDirectory is a [Directory] over the registry in the store: profiles
// are cached in memory, a miss is looked up in the store (so devices
// registered after start are found on their first event), and a miss in the
// store is remembered for a minute so that traffic of unknown devices does
// not reach the database on every event.
type StoreDirectory struct {
	mem   *detect.MemDirectory
	st    store.Store
	clock clock.Clock

	mu   sync.Mutex
	miss map[string]time.Time
}

// NewStoreDirectory returns a directory over st.
func NewStoreDirectory(st store.Store, clk clock.Clock) *StoreDirectory {
	return &StoreDirectory{mem: detect.NewMemDirectory(), st: st, clock: clk, miss: map[string]time.Time{}}
}

// Put caches p.
func (s *StoreDirectory) Put(p detect.Profile) { s.mem.Put(p) }

// Device returns the device's profile, from the cache or the store.
func (s *StoreDirectory) Device(t event.TenantID, id event.DeviceID) (detect.Profile, bool) {
	if p, ok := s.mem.Device(t, id); ok {
		return p, true
	}
	return s.load("d/"+string(t)+"/"+string(id), func(ctx context.Context, tx store.Tx) (store.Device, error) {
		return tx.Devices().Get(ctx, t, id)
	})
}

// ByIMSI returns the profile of the device bound to imsi.
func (s *StoreDirectory) ByIMSI(t event.TenantID, imsi string) (detect.Profile, bool) {
	if p, ok := s.mem.ByIMSI(t, imsi); ok {
		return p, true
	}
	return s.load("i/"+string(t)+"/"+imsi, func(ctx context.Context, tx store.Tx) (store.Device, error) {
		return tx.Devices().ByIMSI(ctx, t, imsi)
	})
}

func (s *StoreDirectory) load(key string, get func(context.Context, store.Tx) (store.Device, error)) (detect.Profile, bool) {
	now := s.clock.Now()
	s.mu.Lock()
	if until, ok := s.miss[key]; ok && now.Before(until) {
		s.mu.Unlock()
		return detect.Profile{}, false
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var dev store.Device
	err := s.st.View(ctx, func(tx store.Tx) error {
		var err error
		dev, err = get(ctx, tx)
		return err
	})
	if err != nil {
		s.mu.Lock()
		if len(s.miss) > 100_000 {
			clear(s.miss)
		}
		s.miss[key] = now.Add(time.Minute)
		s.mu.Unlock()
		return detect.Profile{}, false
	}
	p := Profile(dev)
	s.mem.Put(p)
	return p, true
}

// Catalog returns the firmware catalog detection reads.
func (d *Detection) Catalog() *detect.MemCatalog { return d.o.Catalog }

// Intel returns the threat-intelligence table.
func (d *Detection) Intel() *detect.ThreatIntel { return d.o.Intel }

// Start creates the durable consumers: Workers per stream for detection and
// one for response.
func (d *Detection) Start(ctx context.Context) error {
	for _, st := range []bus.Stream{bus.Events, bus.Security} {
		for w := range d.o.Workers {
			// One worker reads the whole stream: multi-subject filters take
			// a slow path in the server. Several workers split partitions.
			var filters []string
			if d.o.Workers > 1 {
				for p := w; p < event.Partitions; p += d.o.Workers {
					filters = append(filters, bus.PartitionFilter(p))
				}
			}
			c, err := d.o.Bus.Consume(ctx, bus.ConsumerOptions{
				Name:    fmt.Sprintf("%s-detect-%d-%d", d.o.Name, st, w),
				Stream:  st,
				Filters: filters,
				Handler: d.handle,
				Batch:   1024,
			})
			if err != nil {
				d.Stop()
				return fmt.Errorf("platform: detect consumer: %w", err)
			}
			d.add(c)
		}
	}
	c, err := d.o.Bus.Consume(ctx, bus.ConsumerOptions{
		Name:    d.o.Name + "-respond",
		Stream:  d.o.Bus.StreamFor(event.AlertRaised),
		Filters: []string{bus.KindFilter(event.AlertRaised)},
		Handler: d.respond,
	})
	if err != nil {
		d.Stop()
		return fmt.Errorf("platform: respond consumer: %w", err)
	}
	d.add(c)
	if _, ok := d.o.Responder.(StateResponder); ok {
		c, err := d.o.Bus.Consume(ctx, bus.ConsumerOptions{
			Name:    d.o.Name + "-respond-state",
			Stream:  d.o.Bus.StreamFor(event.AlertStateChanged),
			Filters: []string{bus.KindFilter(event.AlertStateChanged)},
			Handler: d.respondState,
		})
		if err != nil {
			d.Stop()
			return fmt.Errorf("platform: respond-state consumer: %w", err)
		}
		d.add(c)
	}
	return nil
}

// respondState hands an operator's move of an alert to the response engine.
func (d *Detection) respondState(ctx context.Context, ev *event.Event) error {
	sr, ok := d.o.Responder.(StateResponder)
	if !ok {
		return nil
	}
	return sr.AlertStateChanged(ctx, ev.Tenant, ev.Str("alert_id"), alert.State(ev.Str("to")), ev.Str("actor"))
}

func (d *Detection) add(c *bus.Consumer) {
	d.mu.Lock()
	d.consumers = append(d.consumers, c)
	d.mu.Unlock()
}

// Stop stops every consumer; their durable positions stay on the server.
func (d *Detection) Stop() {
	d.mu.Lock()
	cs := d.consumers
	d.consumers = nil
	d.mu.Unlock()
	for _, c := range cs {
		c.Stop()
	}
}

// Drain waits until every consumer has caught up with everything published
// so far (see the package contract).
func (d *Detection) Drain(ctx context.Context) error {
	d.mu.Lock()
	cs := append([]*bus.Consumer(nil), d.consumers...)
	d.mu.Unlock()
	// Detect consumers publish alert.raised before acknowledging, so once
	// they are caught up the response consumer's backlog is complete; two
	// clean passes in a row make sure nothing was in flight between checks.
	clean := 0
	for clean < 2 {
		total := uint64(0)
		for _, c := range cs {
			n, err := c.Lag(ctx)
			if err != nil {
				return fmt.Errorf("platform: drain: %w", err)
			}
			total += n
		}
		if total == 0 {
			clean++
		} else {
			clean = 0
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (d *Detection) handle(ctx context.Context, ev *event.Event) error {
	switch ev.Kind {
	case event.AlertRaised, event.ActionTaken, event.AlertStateChanged:
		return nil
	case event.DeviceState:
		d.applyState(ev)
	}
	if err := d.Engine.Process(ctx, ev); err != nil {
		return err
	}
	// Housekeeping on event time: once per simulated/real minute.
	d.mu.Lock()
	due := ev.Time.Sub(d.advanced) >= time.Minute
	if due {
		d.advanced = ev.Time
	}
	d.mu.Unlock()
	if due {
		d.Engine.Advance(ctx, ev.Time)
	}
	return nil
}

func (d *Detection) applyState(ev *event.Event) {
	p, ok := d.o.Directory.Device(ev.Tenant, ev.Device)
	if !ok {
		return
	}
	if to := ev.Str("to"); to != "" {
		p.State = to
		d.o.Directory.Put(p)
	}
}

// Raise implements detect.Sink: store the alert, tell the observer, publish
// alert.raised.
func (d *Detection) Raise(ctx context.Context, a alert.Alert) error {
	if err := d.o.Store.Update(ctx, func(tx store.Tx) error { return tx.Alerts().Put(ctx, a) }); err != nil {
		return fmt.Errorf("platform: store alert: %w", err)
	}
	if d.o.Observe != nil {
		d.o.Observe(a)
	}
	ev := &event.Event{
		ID: a.ID + "-" + strconv.Itoa(a.Count), Tenant: a.Tenant, Device: a.Device, Kind: event.AlertRaised,
		Time: a.LastSeen, Source: "detect",
		Attrs: map[string]any{"alert_id": a.ID, "alert_kind": string(a.Kind), "severity": a.Severity.String(), "count": float64(a.Count)},
	}
	if err := d.o.Bus.Publish(ctx, ev); err != nil {
		return fmt.Errorf("platform: publish alert: %w", err)
	}
	return nil
}

func (d *Detection) respond(ctx context.Context, ev *event.Event) error {
	if d.o.Responder == nil {
		return nil
	}
	id := ev.Str("alert_id")
	var a alert.Alert
	err := d.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		a, err = tx.Alerts().Get(ctx, ev.Tenant, id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		d.o.Logger.Warn("alert.raised for a missing alert", "tenant", ev.Tenant, "alert", id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("platform: load alert: %w", err)
	}
	return d.o.Responder.Handle(ctx, a)
}

// Device tags that carry what detection needs beyond the registry columns.
const (
	TagCohort       = "cohort"
	TagHome         = "home"        // "lat,lon"
	TagGeofenceKm   = "geofence_km" // radius around home
	TagDestinations = "destinations"
)

// Profile derives the detection profile of a registry device.
func Profile(dev store.Device) detect.Profile {
	p := detect.Profile{
		Tenant: dev.Tenant, ID: dev.ID, Model: dev.Model, Cohort: dev.Tags[TagCohort],
		IMEI: dev.IMEI, IMSI: dev.IMSI, ICCID: dev.ICCID, State: string(dev.State),
		Groups: dev.Groups, Firmware: dev.Firmware, Tags: dev.Tags,
	}
	if p.Cohort == "" && len(dev.Groups) > 0 {
		p.Cohort = dev.Groups[0]
	}
	if lat, lon, ok := strings.Cut(dev.Tags[TagHome], ","); ok {
		la, err1 := strconv.ParseFloat(lat, 64)
		lo, err2 := strconv.ParseFloat(lon, 64)
		if err1 == nil && err2 == nil {
			p.Home = &detect.Point{Lat: la, Lon: lo}
			if km, err := strconv.ParseFloat(dev.Tags[TagGeofenceKm], 64); err == nil && km > 0 {
				p.Geofence = &detect.Fence{Center: *p.Home, RadiusKm: km}
			}
		}
	}
	for _, s := range strings.Fields(strings.ReplaceAll(dev.Tags[TagDestinations], ",", " ")) {
		if pf, err := netip.ParsePrefix(s); err == nil {
			p.Destinations = append(p.Destinations, pf)
		}
	}
	return p
}

// LoadDirectory fills the directory from every device of every tenant.
func LoadDirectory(ctx context.Context, s store.Store, dir Directory) (int, error) {
	n := 0
	err := s.View(ctx, func(tx store.Tx) error {
		tenants, err := tx.Tenants().List(ctx)
		if err != nil {
			return err
		}
		for _, t := range tenants {
			var after event.DeviceID
			for {
				devs, err := tx.Devices().List(ctx, t.ID, store.DeviceFilter{After: after, Limit: 1000})
				if err != nil {
					return err
				}
				for _, dev := range devs {
					dir.Put(Profile(dev))
					n++
				}
				if len(devs) < 1000 {
					break
				}
				after = devs[len(devs)-1].ID
			}
		}
		return nil
	})
	return n, err
}

// LoadSettings reads every tenant's detector settings from the store
// (detect.SettingsKey) into one detect.Settings. A tenant whose stored
// document does not validate is skipped and logged (its detectors run on
// defaults) rather than stopping detection.
func LoadSettings(ctx context.Context, s store.Store, log *slog.Logger) (detect.Settings, error) {
	var out detect.Settings
	err := s.View(ctx, func(tx store.Tx) error {
		tenants, err := tx.Tenants().List(ctx)
		if err != nil {
			return err
		}
		for _, t := range tenants {
			b, err := tx.Settings().Get(ctx, t.ID, detect.SettingsKey)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var ts detect.TenantSettings
			if err := json.Unmarshal(b, &ts); err == nil {
				err = ts.Validate()
			}
			if err != nil {
				log.Error("stored detector settings ignored", "tenant", t.ID, "err", err)
				continue
			}
			ts.Apply(t.ID, &out)
		}
		return nil
	})
	if err != nil {
		return detect.Settings{}, fmt.Errorf("platform: load detector settings: %w", err)
	}
	return out, nil
}
