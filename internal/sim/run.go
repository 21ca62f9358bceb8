package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Sink receives the simulated events, in non-decreasing time order.
type Sink interface {
	Publish(ctx context.Context, ev *event.Event) error
}

// Setup is what the simulator needs from the platform before and during
// the run.
type Setup interface {
	// RegisterDevice adds d to the registry (id, model, cohort, SIM
	// binding, home, geofence centred on d.Home, APN, declared destinations).
	RegisterDevice(ctx context.Context, d Device) error
	// AddRelease puts a signed firmware release in the catalog.
	AddRelease(ctx context.Context, model, version, digest string) error
	// SetMinVersion sets the model's minimum allowed version.
	SetMinVersion(ctx context.Context, model, version string) error
	// ImportThreatFeed imports a feed through the operator's import path.
	ImportThreatFeed(ctx context.Context, name string, feed []byte) error
	// RevokeDevice revokes the device's certificate, as an operator would.
	RevokeDevice(ctx context.Context, id event.DeviceID) error
}

// Results is what the platform reports back, read through the platform.
type Results interface {
	Alerts(ctx context.Context) ([]alert.Alert, error)
	Actions(ctx context.Context) ([]store.Action, error)
}

// RunOptions wires a run to the platform.
type RunOptions struct {
	Tenant  event.TenantID // default "sim"
	Sink    Sink           // required
	Setup   Setup          // optional: nil skips registration and catalog setup
	Results Results        // required
	// Progress, if set, is called every ProgressEvery events and at the end.
	Progress      func(simTime time.Time, events int)
	ProgressEvery int // default 10000
	// Drain waits until the platform processed everything (called before
	// reading the results).
	Drain func(ctx context.Context) error
	// Advance, if set, moves the platform's event-time watermark: it is
	// called with each simulated minute boundary the stream crosses, and
	// with the scenario's end.
	Advance func(ctx context.Context, t time.Time) error
	// PlatformRevokes: Setup.RevokeDevice publishes identity.cert_revoked
	// and device.state itself, so the simulator does not.
	PlatformRevokes bool
	// Clock measures wall_seconds (default the real clock).
	Clock clock.Clock
}

// ErrOptions is returned by [Run] for missing required options.
var ErrOptions = errors.New("sim: invalid run options")

// Prepare registers the fleet and the catalog the scenario needs through
// setup: every device, each cohort's release and minimum version, the
// releases of campaigns and of rollbacks (old but signed), and the threat
// feed when a c2_beacon is injected.
func Prepare(ctx context.Context, g *Generator, setup Setup) error {
	sc := g.sc
	for _, d := range g.devices {
		if err := setup.RegisterDevice(ctx, *d); err != nil {
			return fmt.Errorf("sim: register %s: %w", d.ID, err)
		}
	}
	models := map[string]string{}
	for i := range sc.Fleet {
		c := &sc.Fleet[i]
		if err := setup.AddRelease(ctx, c.Model, c.Firmware, Digest(c.Model, c.Firmware)); err != nil {
			return fmt.Errorf("sim: release %s %s: %w", c.Model, c.Firmware, err)
		}
		models[c.Name] = c.Model
	}
	for i := range sc.Events {
		e := &sc.Events[i]
		m := models[e.Cohort]
		if err := setup.AddRelease(ctx, m, e.To, Digest(m, e.To)); err != nil {
			return fmt.Errorf("sim: release %s %s: %w", m, e.To, err)
		}
	}
	cohortOf := map[event.DeviceID]*Device{}
	for _, d := range g.devices {
		cohortOf[d.ID] = d
	}
	for i := range sc.Attacks {
		a := &sc.Attacks[i]
		if a.Kind != "firmware_rollback" {
			continue
		}
		d := cohortOf[event.DeviceID(a.Device)]
		v := rollbackVersion(a, d.Firmware)
		if err := setup.AddRelease(ctx, d.Model, v, Digest(d.Model, v)); err != nil {
			return fmt.Errorf("sim: release %s %s: %w", d.Model, v, err)
		}
	}
	for i := range sc.Fleet {
		c := &sc.Fleet[i]
		if err := setup.SetMinVersion(ctx, c.Model, c.Firmware); err != nil {
			return fmt.Errorf("sim: min version %s: %w", c.Model, err)
		}
	}
	if g.NeedsThreatFeed() {
		if err := setup.ImportThreatFeed(ctx, "sim-"+sc.Name, g.ThreatFeed()); err != nil {
			return fmt.Errorf("sim: import threat feed: %w", err)
		}
	}
	return nil
}

// Run replays sc into the platform and scores what the platform reports.
func Run(ctx context.Context, sc *Scenario, opts RunOptions) (*Report, error) {
	if opts.Sink == nil || opts.Results == nil {
		return nil, fmt.Errorf("%w: Sink and Results are required", ErrOptions)
	}
	if opts.Tenant == "" {
		opts.Tenant = "sim"
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	every := opts.ProgressEvery
	if every <= 0 {
		every = 10000
	}
	began := opts.Clock.Now()
	g := NewGenerator(sc, opts.Tenant)
	g.PlatformRevokes = opts.PlatformRevokes
	if opts.Setup != nil {
		if err := Prepare(ctx, g, opts.Setup); err != nil {
			return nil, err
		}
	}
	var n int
	var mark time.Time // next minute boundary to announce
	for {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("sim: run: %w", err)
			}
		}
		ev, ctl, ok := g.Next()
		if !ok {
			break
		}
		t := sc.Start
		if ev != nil {
			t = ev.Time
		} else {
			t = ctl.Time
		}
		if opts.Advance != nil {
			if mark.IsZero() {
				mark = t.Truncate(time.Minute).Add(time.Minute)
			}
			for !t.Before(mark) {
				if err := opts.Advance(ctx, mark); err != nil {
					return nil, fmt.Errorf("sim: advance: %w", err)
				}
				mark = mark.Add(time.Minute)
			}
		}
		if ctl != nil {
			if opts.Setup != nil && ctl.RevokeDevice != "" {
				if err := opts.Setup.RevokeDevice(ctx, ctl.RevokeDevice); err != nil {
					return nil, fmt.Errorf("sim: revoke %s: %w", ctl.RevokeDevice, err)
				}
			}
			continue
		}
		if err := opts.Sink.Publish(ctx, ev); err != nil {
			return nil, fmt.Errorf("sim: publish: %w", err)
		}
		n++
		if opts.Progress != nil && n%every == 0 {
			opts.Progress(ev.Time, n)
		}
	}
	end := sc.Start.Add(sc.Duration.D)
	if opts.Advance != nil {
		if err := opts.Advance(ctx, end); err != nil {
			return nil, fmt.Errorf("sim: advance: %w", err)
		}
	}
	if opts.Progress != nil {
		opts.Progress(end, n)
	}
	if opts.Drain != nil {
		if err := opts.Drain(ctx); err != nil {
			return nil, fmt.Errorf("sim: drain: %w", err)
		}
	}
	alerts, err := opts.Results.Alerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("sim: read alerts: %w", err)
	}
	actions, err := opts.Results.Actions(ctx)
	if err != nil {
		return nil, fmt.Errorf("sim: read actions: %w", err)
	}
	rep := Score(sc, alerts, actions)
	rep.Events = int64(n)
	rep.WallSeconds = float64(opts.Clock.Now().Sub(began).Milliseconds()) / 1000
	return rep, nil
}
