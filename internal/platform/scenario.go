package platform

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// ScenarioOptions configure [RunScenario].
type ScenarioOptions struct {
	// DataDir holds the platform's data; empty means a temporary directory
	// removed afterwards.
	DataDir string
	Tenant  event.TenantID // default "sim"
	Logger  *slog.Logger
	// Progress is called every few thousand events with the simulated time.
	Progress func(simTime time.Time, events int)
	// Observe is told of every alert as it is stored.
	Observe AlertObserver
	// OnAction is told of every response action as it is published.
	OnAction func(ev *event.Event)
	// Pace, if set, is called before each event is published and may sleep
	// to replay at a chosen speed (the demo); nil replays as fast as the
	// platform absorbs it.
	Pace func(ctx context.Context, simTime time.Time) error
	// Ready, if set, is called once the platform is up and the fleet is
	// registered, before the first event.
	Ready func(p *Platform) error
	// OnRegister, if set, is called after each device is registered (the
	// demo enrols it with the CA here).
	OnRegister func(ctx context.Context, d sim.Device) error
	// Clock, if set, is the platform's clock (set to the scenario's start
	// by Build); the demo shares it with the app's broker.
	Clock *clock.Manual
	// MQTT, if set, carries the devices' own MQTT traffic (connects,
	// disconnects, telemetry, agent reports) over real sessions to a
	// broker running on Clock, instead of the broker's payload decoder and
	// synthesised broker events. docs/SIMULATOR.md has the table.
	MQTT *MQTTFleet
}

// Platform is the set of subsystems a scenario runs through.
type Platform struct {
	Store     store.Store
	Bus       *bus.Bus
	Registry  *registry.Registry
	Detection *Detection
	Respond   *respond.Engine
	Clock     *clock.Manual // follows the simulated event time
	Tenant    event.TenantID
}

// RunScenario replays sc through the real ingestion bus, detection and
// response of a platform on embedded defaults (SQLite and embedded NATS in
// o.DataDir), and scores the alerts and actions it reads back through the API.
func RunScenario(ctx context.Context, sc *sim.Scenario, o ScenarioOptions) (rep *sim.Report, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	dir := o.DataDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "garrison-sim-*")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "garrison.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	b, err := bus.Open(ctx, bus.Options{DataDir: dir, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	p, err := Build(ctx, st, b, sc.Start, o)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Run(ctx, sc, o)
}

// Build assembles the registry, detection and response for o.Tenant on an
// open store and bus, creates the tenant, and starts detection. The
// platform's clock starts at start and follows the event time of what Run
// publishes.
func Build(ctx context.Context, st store.Store, b *bus.Bus, start time.Time, o ScenarioOptions) (*Platform, error) {
	if o.Tenant == "" {
		o.Tenant = "sim"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	clk := o.Clock
	if clk == nil {
		clk = clock.NewManual(start)
	}
	clk.Set(start)
	pub := busPublisher{b: b, onAction: o.OnAction}
	reg, err := registry.New(registry.Options{Store: st, Clock: clk, Logger: o.Logger, Publisher: pub})
	if err != nil {
		return nil, err
	}
	if err := createTenant(ctx, st, clk, o.Tenant); err != nil {
		return nil, fmt.Errorf("create tenant %s: %w", o.Tenant, err)
	}
	p := &Platform{Store: st, Bus: b, Registry: reg, Clock: clk, Tenant: o.Tenant}
	det, err := NewDetection(Options{Bus: b, Store: st, Clock: clk, Logger: o.Logger, Observe: o.Observe,
		Name:      "garrison-" + string(o.Tenant),
		Responder: responderFunc(func(ctx context.Context, a alert.Alert) error { return p.Respond.Handle(ctx, a) })})
	if err != nil {
		return nil, err
	}
	p.Detection = det
	p.Respond, err = respond.New(respond.Options{
		Store: st, Clock: clk, Logger: o.Logger, EventTime: true,
		Quarantiner: respond.RegistryBackend{Registry: reg}, SIMBlocker: respond.RegistryBackend{Registry: reg},
		Revoker: respond.RegistryBackend{Registry: reg}, Alerts: det, Publisher: pub,
	})
	if err != nil {
		return nil, err
	}
	if err := det.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Close stops detection and response.
func (p *Platform) Close() { p.Detection.Stop() }

// Run replays sc into p and scores what p reports through its HTTP API.
func (p *Platform) Run(ctx context.Context, sc *sim.Scenario, o ScenarioOptions) (*sim.Report, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	gw, err := newAPNGateway(busAsync{p.Bus}, directorySIMs{p.Detection.Directory()}, p.Clock, p.Tenant, log)
	if err != nil {
		return nil, err
	}
	setup := &simSetup{p: p, gw: gw, mqtt: o.MQTT, onRegister: o.OnRegister}
	sink := &simSink{p: p, gw: gw, pace: o.Pace, mqtt: o.MQTT}
	sink.beforeFirst = func() error {
		if o.Ready != nil {
			return o.Ready(p)
		}
		return nil
	}
	results, stop, err := p.scoringAPI(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	return sim.Run(ctx, sc, sim.RunOptions{
		Tenant: p.Tenant, Sink: sink, Setup: setup, Results: results,
		Progress: o.Progress, PlatformRevokes: true,
		Drain: func(ctx context.Context) error {
			if o.MQTT != nil {
				if _, err := o.MQTT.release(ctx, nil); err != nil {
					return err
				}
				if err := o.MQTT.sync(ctx); err != nil {
					return err
				}
				log.Info("mqtt fleet", "stats", fmt.Sprintf("%+v", o.MQTT.Stats()))
			}
			if err := gw.Flush(ctx); err != nil {
				return err
			}
			gw.logStats()
			t0 := time.Now()
			if err := p.Bus.Flush(ctx); err != nil {
				return err
			}
			t1 := time.Now()
			err := p.Detection.Drain(ctx)
			log.Info("scenario drained", "flush", t1.Sub(t0), "drain", time.Since(t1), "devices", p.Detection.Engine.Devices())
			return err
		},
	})
}

type responderFunc func(ctx context.Context, a alert.Alert) error

func (f responderFunc) Handle(ctx context.Context, a alert.Alert) error { return f(ctx, a) }

func createTenant(ctx context.Context, st store.Store, clk clock.Clock, id event.TenantID) error {
	return st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: id, Name: string(id), CreatedAt: clk.Now()}); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, audit.Entry{Tenant: id, Time: clk.Now(), Actor: "platform", Action: "tenant.create", Target: string(id)})
		return err
	})
}

// busPublisher publishes synchronously (state changes and actions are
// security records) and lets an observer watch actions.
type busPublisher struct {
	b        *bus.Bus
	onAction func(ev *event.Event)
}

func (p busPublisher) Publish(ctx context.Context, ev *event.Event) error {
	if ev.Kind == event.ActionTaken && p.onAction != nil {
		p.onAction(ev)
	}
	return p.b.Publish(ctx, ev)
}

// simSink feeds the simulator's events to the platform, moving the
// platform's clock along the simulated time: sessions and flows through
// the simulated APN gateway (RADIUS accounting, IPFIX), the agents'
// reports through the broker's payload decoder, the rest (the broker's own
// connection and publish events) straight on the bus. docs/SIMULATOR.md
// has the table.
type simSink struct {
	p           *Platform
	gw          *apnGateway
	agent       agentPath
	mqtt        *MQTTFleet // nil: the devices' MQTT traffic enters at the decoder and the bus
	pace        func(ctx context.Context, t time.Time) error
	beforeFirst func() error
	started     bool
}

func (s *simSink) Publish(ctx context.Context, ev *event.Event) error {
	if !s.started {
		s.started = true
		if err := s.beforeFirst(); err != nil {
			return err
		}
	}
	if s.mqtt != nil {
		// A held telemetry publish goes first (with ev in it when ev is
		// its report's position), on its own time; publishes in flight
		// are stamped when the broker reads them.
		consumed, err := s.mqtt.release(ctx, ev)
		if err != nil || consumed {
			return err
		}
		if err := s.mqtt.settle(ctx, ev.Time); err != nil {
			return err
		}
	}
	if ev.Time.After(s.p.Clock.Now()) {
		s.p.Clock.Set(ev.Time)
	}
	if s.pace != nil {
		if err := s.pace(ctx, ev.Time); err != nil {
			return err
		}
	}
	if s.gw.handles(ev.Kind) {
		return s.gw.Publish(ctx, ev)
	}
	if err := s.gw.Before(ctx, ev); err != nil {
		return err
	}
	if s.mqtt != nil && s.mqtt.carries(ev) {
		return s.mqtt.send(ctx, ev)
	}
	if s.agent.handles(ev) {
		evs, err := s.agent.decode(ev)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := s.p.Bus.PublishAsync(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}
	return s.p.Bus.PublishAsync(ctx, ev)
}

// simSetup registers the simulated fleet through the registry, and the
// catalog and threat feed through the detection plane's import paths.
type simSetup struct {
	p          *Platform
	gw         *apnGateway
	mqtt       *MQTTFleet
	onRegister func(ctx context.Context, d sim.Device) error
}

func (s *simSetup) RegisterDevice(ctx context.Context, d sim.Device) error {
	var dests []string
	for _, pf := range d.Destinations {
		dests = append(dests, pf.String())
	}
	tags := map[string]string{
		TagCohort: d.Cohort,
		TagHome:   strconv.FormatFloat(d.Home.Lat, 'f', 6, 64) + "," + strconv.FormatFloat(d.Home.Lon, 'f', 6, 64),
		"apn":     d.APN,
	}
	if d.GeofenceKm > 0 {
		tags[TagGeofenceKm] = strconv.FormatFloat(d.GeofenceKm, 'f', -1, 64)
	}
	if len(dests) > 0 {
		tags[TagDestinations] = strings.Join(dests, ",")
	}
	dev, err := s.p.Registry.Register(ctx, store.Device{
		Tenant: s.p.Tenant, ID: d.ID, Model: d.Model, IMEI: d.IMEI, ICCID: d.ICCID, IMSI: d.IMSI,
		Firmware: d.Firmware, Groups: []string{d.Cohort}, Tags: tags, State: store.StateActive,
	}, "sim")
	if err != nil {
		return fmt.Errorf("register %s: %w", d.ID, err)
	}
	s.p.Detection.Directory().Put(Profile(dev))
	if s.onRegister != nil {
		return s.onRegister(ctx, d)
	}
	return nil
}

func (s *simSetup) AddRelease(_ context.Context, model, version, digest string) error {
	s.p.Detection.Catalog().Put(s.p.Tenant, model, version, digest)
	return nil
}

func (s *simSetup) SetMinVersion(_ context.Context, model, version string) error {
	s.p.Detection.Catalog().SetMinVersion(s.p.Tenant, model, version)
	return nil
}

func (s *simSetup) ImportThreatFeed(_ context.Context, name string, feed []byte) error {
	if _, err := s.p.Detection.Intel().Import(name, bytes.NewReader(feed)); err != nil {
		return fmt.Errorf("import feed %s: %w", name, err)
	}
	return nil
}

func (s *simSetup) RevokeDevice(ctx context.Context, id event.DeviceID) error {
	// The flows and publishes recorded before the revocation reach the
	// platform before it.
	if s.mqtt != nil {
		if _, err := s.mqtt.release(ctx, nil); err != nil {
			return err
		}
		if err := s.mqtt.sync(ctx); err != nil {
			return err
		}
	}
	if err := s.gw.Flush(ctx); err != nil {
		return err
	}
	_, err := s.p.Registry.SetState(ctx, s.p.Tenant, id, store.StateRevoked, "operator", "certificate revoked")
	if errors.Is(err, registry.ErrTransition) {
		return nil // already revoked or decommissioned
	}
	return err
}
