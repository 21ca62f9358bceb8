package detect

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

// A small deterministic fleet generator for the detector tests. It follows
// the simulator seam (see docs/DETECTION.md) but is written independently.

const tenant = event.TenantID("t1")

var t0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC) // a Monday

type fleet struct {
	name, model     string
	n               int
	cadence         time.Duration
	bytes, cv       float64
	pattern         string // flat|diurnal|business
	mobility        string // static|vehicle
	outagesPerDay   float64
	dests           int
	listen          []int
	geofenceKm      float64
	home            Point
	fw              string
	networkPosEvery int // every Nth position is a network (cell) fix, 0 = never
	// lognormal draws each message's size from a log-normal with CV cv
	// (heavy right tail, as real payloads and the simulator have) instead
	// of a clamped normal
	lognormal bool
}

func digestOf(model, version string) string {
	s := sha256.Sum256([]byte(model + "@" + version))
	return hex.EncodeToString(s[:])
}

func devID(f fleet, i int) event.DeviceID { return event.DeviceID(fmt.Sprintf("%s-%04d", f.name, i+1)) }
func imeiOf(f fleet, i int) string        { return fmt.Sprintf("35%06d%06d0", hash32(f.name)%1000000, i) }
func imsiOf(f fleet, i int) string {
	return fmt.Sprintf("21407%010d", int(hash32(f.name)%1000)*100000+i)
}
func ipOf(f fleet, i int) string {
	h := hash32(f.name)
	return fmt.Sprintf("10.%d.%d.%d", 64+h%32, (i/250)%250, i%250+1)
}

type world struct {
	dir   *MemDirectory
	cat   *MemCatalog
	intel *ThreatIntel
	evs   []event.Event
}

func newWorld() *world {
	w := &world{dir: NewMemDirectory(), cat: NewMemCatalog(), intel: NewThreatIntel()}
	feed := "# test feed\n192.0.2.66\n203.0.113.200/32\n"
	for i := range 500 {
		feed += fmt.Sprintf("100.%d.%d.0/24\n", i/200, i%200)
	}
	if _, err := w.intel.Import("testfeed", strings.NewReader(feed)); err != nil {
		panic(err)
	}
	return w
}

func (w *world) add(e event.Event) {
	if e.Tenant == "" {
		e.Tenant = tenant
	}
	w.evs = append(w.evs, e)
}

func pattern(p string, t time.Time) float64 {
	h := float64(t.Hour()) + float64(t.Minute())/60
	switch p {
	case "diurnal":
		return 1 + 0.6*math.Sin((h-8)/24*2*math.Pi)
	case "business":
		wd := t.Weekday()
		if wd != time.Saturday && wd != time.Sunday && h >= 8 && h < 18 {
			return 1.6
		}
		return 0.3
	}
	return 1
}

// addFleet generates dur of ordinary life for f.
func (w *world) addFleet(seed uint64, f fleet, dur time.Duration) {
	w.cat.Put(tenant, f.model, f.fw, digestOf(f.model, f.fw))
	for i := range f.n {
		rng := rand.New(rand.NewPCG(seed, uint64(i)+uint64(hash32(f.name))<<32))
		id := devID(f, i)
		p := Profile{Tenant: tenant, ID: id, Model: f.model, Cohort: f.name, IMEI: imeiOf(f, i), IMSI: imsiOf(f, i), ICCID: "89" + imsiOf(f, i)}
		home := Point{f.home.Lat + (rng.Float64()-0.5)*0.1, f.home.Lon + (rng.Float64()-0.5)*0.1}
		p.Home = &home
		if f.geofenceKm > 0 {
			p.Geofence = &Fence{Center: f.home, RadiusKm: f.geofenceKm}
		}
		w.dir.Put(p)
		ip := ipOf(f, i)
		var dsts []string
		for d := range max(f.dests, 1) {
			dsts = append(dsts, fmt.Sprintf("198.51.100.%d", 10+(i+d)%5))
		}
		lat, lon := home.Lat, home.Lon
		heading, speed := rng.Float64()*2*math.Pi, 0.0
		sess := 0
		startSession := func(t time.Time) {
			sess++
			sid := fmt.Sprintf("%s-s%d", id, sess)
			w.add(event.Event{Device: id, Kind: event.NetSession, Time: t, Source: "radius", Attrs: map[string]any{"status": "start", "session_id": sid, "imsi": p.IMSI, "iccid": p.ICCID, "imei": p.IMEI, "ip": ip, "lat": lat, "lon": lon, "accuracy_m": 1500.0}})
			w.add(event.Event{Device: id, Kind: event.MQTTConnect, Time: t.Add(2 * time.Second), Source: "broker", Attrs: map[string]any{"remote": fmt.Sprintf("%s:%d", ip, 40000+sess), "client_id": string(id), "cert_serial": "c-" + string(id), "session_id": sid, "protocol": "5"}})
			w.add(event.Event{Device: id, Kind: event.FirmwareReport, Time: t.Add(3 * time.Second), Source: "agent", Attrs: map[string]any{"version": f.fw, "digest": digestOf(f.model, f.fw)}})
		}
		stopSession := func(t time.Time) {
			sid := fmt.Sprintf("%s-s%d", id, sess)
			w.add(event.Event{Device: id, Kind: event.MQTTDisconnect, Time: t, Source: "broker", Attrs: map[string]any{"reason": "network", "session_id": sid}})
			w.add(event.Event{Device: id, Kind: event.NetSession, Time: t.Add(time.Second), Source: "radius", Attrs: map[string]any{"status": "stop", "session_id": fmt.Sprintf("%s-s%d", id, sess), "imsi": p.IMSI, "iccid": p.ICCID, "imei": p.IMEI, "ip": ip}})
		}
		t := t0.Add(time.Duration(rng.Int64N(int64(f.cadence))))
		startSession(t.Add(-10 * time.Second))
		end := t0.Add(dur)
		var outageEnd time.Time
		var buffered []event.Event
		nextHour := t.Add(time.Duration(rng.Int64N(int64(time.Hour))))
		npos := 0
		for ; t.Before(end); t = t.Add(f.cadence + time.Duration(rng.NormFloat64()*float64(f.cadence)/50)) {
			if outageEnd.IsZero() && rng.Float64() < f.outagesPerDay*float64(f.cadence)/float64(24*time.Hour) {
				outageEnd = t.Add(time.Hour + time.Duration(rng.Int64N(int64(5*time.Hour))))
				stopSession(t.Add(-time.Second))
			}
			if !outageEnd.IsZero() && !t.Before(outageEnd) {
				startSession(t)
				for j, b := range buffered { // catch-up burst
					b.Time = t.Add(5*time.Second + time.Duration(j)*time.Duration(200+rng.IntN(3000))*time.Millisecond)
					w.add(b)
				}
				buffered, outageEnd = nil, time.Time{}
			}
			noise := math.Max(0.05, 1+f.cv*rng.NormFloat64())
			if f.lognormal {
				sg := math.Sqrt(math.Log(1 + f.cv*f.cv))
				noise = math.Exp(sg*rng.NormFloat64() - sg*sg/2)
			}
			pub := event.Event{Device: id, Kind: event.MQTTPublish, Time: t, Source: "broker", Attrs: map[string]any{"topic_class": "telemetry", "bytes": math.Round(f.bytes * pattern(f.pattern, t) * noise), "qos": 1.0}}
			var loc *event.Event
			if f.mobility == "vehicle" {
				// drive at plausible speeds, turning now and then
				if rng.Float64() < 0.1 {
					heading += rng.NormFloat64()
					speed = rng.Float64() * 130
				}
				km := speed * f.cadence.Hours()
				lat += km / 111 * math.Cos(heading)
				lon += km / (111 * math.Cos(lat*math.Pi/180)) * math.Sin(heading)
				if haversineKm(lat, lon, home.Lat, home.Lon) > 60 { // head home
					heading += math.Pi
				}
				npos++
				acc, src, rlat, rlon := 5+rng.Float64()*25, "device", lat, lon
				if f.networkPosEvery > 0 && npos%f.networkPosEvery == 0 {
					acc, src = 500+rng.Float64()*2500, "network"
					rlat += (rng.Float64() - 0.5) * 2 * acc / 1000 / 111
					rlon += (rng.Float64() - 0.5) * 2 * acc / 1000 / 111
				}
				loc = &event.Event{Device: id, Kind: event.Location, Time: t, Source: "agent", Attrs: map[string]any{"lat": rlat, "lon": rlon, "accuracy_m": acc, "source": src}}
			}
			if !outageEnd.IsZero() {
				buffered = append(buffered, pub)
				continue
			}
			w.add(pub)
			if loc != nil {
				w.add(*loc)
			}
			if !t.Before(nextHour) {
				nextHour = nextHour.Add(time.Hour)
				if f.mobility == "static" {
					w.add(event.Event{Device: id, Kind: event.Location, Time: t, Source: "agent", Attrs: map[string]any{"lat": home.Lat, "lon": home.Lon, "accuracy_m": 10.0, "source": "device"}})
				}
				for k, d := range dsts {
					port := []float64{443, 8883, 123}[k%3]
					w.add(event.Event{Device: id, Kind: event.NetFlow, Time: t.Add(time.Second), Source: "flows", Attrs: map[string]any{"src_ip": ip, "src_port": float64(30000 + rng.IntN(20000)), "dst_ip": d, "dst_port": port, "proto": 6.0, "bytes": float64(2000 + rng.IntN(5000)), "packets": 12.0}})
				}
				ports := make([]any, len(f.listen))
				for k, lp := range f.listen {
					ports[k] = float64(lp)
				}
				w.add(event.Event{Device: id, Kind: event.DeviceMetrics, Time: t.Add(2 * time.Second), Source: "agent", Attrs: map[string]any{"listening_ports": ports, "connections": 2.0, "processes": 40.0, "fw_version": f.fw, "fw_digest": digestOf(f.model, f.fw)}})
				w.add(event.Event{Device: id, Kind: event.NetSession, Time: t.Add(3 * time.Second), Source: "radius", Attrs: map[string]any{"status": "interim", "session_id": fmt.Sprintf("%s-s%d", id, sess), "imsi": p.IMSI, "iccid": p.ICCID, "imei": p.IMEI, "ip": ip, "bytes_up": 5000.0}})
			}
		}
	}
}

// campaign rolls a signed release out to the whole fleet over spread.
func (w *world) campaign(seed uint64, f fleet, to string, at, spread time.Duration) {
	w.cat.Put(tenant, f.model, to, digestOf(f.model, to))
	rng := rand.New(rand.NewPCG(seed, 99))
	for i := range f.n {
		t := t0.Add(at + time.Duration(rng.Int64N(int64(spread))))
		id := devID(f, i)
		w.add(event.Event{Device: id, Kind: event.FirmwareReport, Time: t, Source: "agent", Attrs: map[string]any{"version": to, "digest": digestOf(f.model, to)}})
		// later metrics report the new version
		for j := range w.evs {
			e := &w.evs[j]
			if e.Device == id && e.Kind == event.DeviceMetrics && e.Time.After(t) {
				a := map[string]any{}
				for k, v := range e.Attrs {
					a[k] = v
				}
				a["fw_version"], a["fw_digest"] = to, digestOf(f.model, to)
				e.Attrs = a
			}
		}
	}
}

func (w *world) sorted() []event.Event {
	slices.SortStableFunc(w.evs, func(a, b event.Event) int { return a.Time.Compare(b.Time) })
	return w.evs
}

// recSink records alerts.
type recSink struct {
	mu     sync.Mutex
	alerts []alert.Alert
}

func (s *recSink) Raise(_ context.Context, a alert.Alert) error {
	s.mu.Lock()
	s.alerts = append(s.alerts, a)
	s.mu.Unlock()
	return nil
}

type pair struct {
	d event.DeviceID
	k alert.Kind
}

// firsts returns the first alert per (device, kind).
func (s *recSink) firsts() map[pair]alert.Alert {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[pair]alert.Alert{}
	for _, a := range s.alerts {
		k := pair{a.Device, a.Kind}
		if _, ok := m[k]; !ok {
			m[k] = a
		}
	}
	return m
}

func (w *world) engine(sink Sink, s Settings) *Engine {
	return New(Options{Directory: w.dir, Catalog: w.cat, Intel: w.intel, Clock: clock.NewManual(t0), Sink: sink, Settings: s})
}

// run feeds events in order, advancing the watermark every minute.
func run(t testing.TB, e *Engine, evs []event.Event) {
	t.Helper()
	ctx := context.Background()
	var wm time.Time
	for i := range evs {
		if evs[i].Time.Sub(wm) >= time.Minute {
			wm = evs[i].Time.Truncate(time.Minute)
			e.Advance(ctx, wm)
		}
		if err := e.Process(ctx, &evs[i]); err != nil {
			t.Fatal(err)
		}
	}
}

func describe(m map[pair]alert.Alert) string {
	var out []string
	for k, a := range m {
		out = append(out, fmt.Sprintf("%s %s at %s: %s", k.d, k.k, a.FirstSeen.Format(time.RFC3339), a.Evidence.Summary))
	}
	slices.SortFunc(out, cmp.Compare)
	return strings.Join(out, "\n")
}

var _ = netip.Addr{}
