package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/stretchr/testify/require"
)

// platform wires the detection engine with in-memory directory, catalog
// and intel, as the simulator's Setup, Sink and Results. It has no response
// engine, so expectations that name a response cannot pass through it.
type platform struct {
	tenant event.TenantID
	dir    *detect.MemDirectory
	cat    *detect.MemCatalog
	intel  *detect.ThreatIntel
	eng    *detect.Engine

	mu     sync.Mutex
	alerts map[string]alert.Alert
}

func newPlatform(tenant event.TenantID) *platform {
	p := &platform{tenant: tenant, dir: detect.NewMemDirectory(), cat: detect.NewMemCatalog(), intel: detect.NewThreatIntel(), alerts: map[string]alert.Alert{}}
	p.eng = detect.New(detect.Options{Directory: p.dir, Catalog: p.cat, Intel: p.intel, Sink: p})
	return p
}

func (p *platform) Raise(_ context.Context, a alert.Alert) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.alerts[a.ID]; ok && old.FirstSeen.Before(a.FirstSeen) {
		a.FirstSeen = old.FirstSeen
	}
	p.alerts[a.ID] = a
	return nil
}

func (p *platform) Publish(ctx context.Context, ev *event.Event) error {
	return p.eng.Process(ctx, ev)
}

func (p *platform) RegisterDevice(_ context.Context, d sim.Device) error {
	home := detect.Point{Lat: d.Home.Lat, Lon: d.Home.Lon}
	pr := detect.Profile{Tenant: p.tenant, ID: d.ID, Model: d.Model, Cohort: d.Cohort, IMEI: d.IMEI, IMSI: d.IMSI, ICCID: d.ICCID,
		Home: &home, Destinations: append([]netip.Prefix(nil), d.Destinations...), State: "active"}
	if d.GeofenceKm > 0 {
		pr.Geofence = &detect.Fence{Center: home, RadiusKm: d.GeofenceKm}
	}
	p.dir.Put(pr)
	return nil
}

func (p *platform) AddRelease(_ context.Context, model, version, digest string) error {
	p.cat.Put(p.tenant, model, version, digest)
	return nil
}

func (p *platform) SetMinVersion(_ context.Context, model, version string) error {
	p.cat.SetMinVersion(p.tenant, model, version)
	return nil
}

func (p *platform) ImportThreatFeed(_ context.Context, name string, feed []byte) error {
	_, err := p.intel.Import(name, bytes.NewReader(feed))
	return err
}

func (p *platform) RevokeDevice(_ context.Context, id event.DeviceID) error {
	pr, ok := p.dir.Device(p.tenant, id)
	if ok {
		pr.State = "revoked"
		p.dir.Put(pr)
	}
	return nil
}

func (p *platform) Alerts(context.Context) ([]alert.Alert, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]alert.Alert, 0, len(p.alerts))
	for _, a := range p.alerts {
		out = append(out, a)
	}
	return out, nil
}

func (p *platform) Actions(context.Context) ([]store.Action, error) { return nil, nil }

// TestDetectScenarios drives internal/detect's engine with the generator
// over the shared scenarios (SIM_DETECT=1; SIM_DETECT_DIR overrides the
// folder, e.g. ../../scenarios). Responses are not scored (no response
// engine here); detections and false alerts are, and must pass.
func TestDetectScenarios(t *testing.T) {
	if os.Getenv("SIM_DETECT") == "" {
		t.Skip("set SIM_DETECT=1 to replay scenarios through internal/detect")
	}
	dir := os.Getenv("SIM_DETECT_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "shared", "scenarios")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			sc, err := sim.Load(f)
			require.NoError(t, err)
			p := newPlatform("sim")
			rep, err := sim.Run(context.Background(), sc, sim.RunOptions{
				Tenant: "sim", Sink: p, Setup: p, Results: p, PlatformRevokes: false,
				Advance: func(ctx context.Context, t time.Time) error { p.eng.Advance(ctx, t); return nil },
			})
			require.NoError(t, err)
			b, _ := json.MarshalIndent(rep, "", "  ")
			t.Logf("%s", b)
			all, _ := p.Alerts(context.Background())
			for _, a := range all {
				t.Logf("ALERT %s %s first=%s last=%s count=%d: %s %v", a.Device, a.Kind, a.FirstSeen.Format(time.RFC3339), a.LastSeen.Format(time.RFC3339), a.Count, a.Evidence.Summary, a.Evidence.Values)
			}
			for _, e := range rep.Expectations {
				require.True(t, e.Detected, "%s %s not detected", e.Device, e.Alert)
			}
			require.LessOrEqual(t, len(rep.FalseAlerts), sc.MaxFalseAlerts, "false alerts")
		})
	}
}
