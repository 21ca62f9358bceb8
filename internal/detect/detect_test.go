package detect

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

var (
	meters = fleet{name: "meter", model: "acme-meter-2", n: 40, cadence: 15 * time.Minute, bytes: 1200, cv: 0.4, pattern: "diurnal",
		mobility: "static", outagesPerDay: 0.1, dests: 2, geofenceKm: 25, home: Point{40.4168, -3.7038}, fw: "2.4.1"}
	vans = fleet{name: "van", model: "trackr-lte", n: 20, cadence: time.Minute, bytes: 300, cv: 0.4, pattern: "business",
		mobility: "vehicle", outagesPerDay: 0.1, dests: 3, home: Point{41.3874, 2.1686}, fw: "1.9.0", networkPosEvery: 7}
	gws = fleet{name: "gw", model: "edge-gw-1", n: 30, cadence: time.Hour, bytes: 2500, cv: 0.3, pattern: "flat",
		mobility: "static", outagesPerDay: 0.05, dests: 2, listen: []int{22}, home: Point{50.11, 8.68}, fw: "3.0.2"}
	sensors = fleet{name: "sensor", model: "envi-sense-4", n: 30, cadence: 30 * time.Second, bytes: 200, cv: 0.3, pattern: "flat",
		mobility: "static", outagesPerDay: 0.05, dests: 2, home: Point{51.5, -0.12}, fw: "4.2.0"}
)

// TestBenignWeek: a week of ordinary life for several fleets and cadences,
// with outages and catch-up bursts, moving vans with cell-accuracy fixes,
// noise (CV 0.4) and a cohort-wide signed firmware campaign: nothing fires.
func TestBenignWeek(t *testing.T) {
	w := newWorld()
	dur := 7 * 24 * time.Hour
	fl := []fleet{meters, vans, gws, sensors}
	for i := range fl {
		if testing.Short() {
			fl[i].n = min(fl[i].n, 10)
		}
		w.addFleet(uint64(i+1), fl[i], dur)
	}
	w.campaign(5, fl[0], "2.5.0", 80*time.Hour, 6*time.Hour)
	w.cat.SetMinVersion(tenant, meters.model, "2.4.0")
	sink := &recSink{}
	e := w.engine(sink, Settings{})
	evs := w.sorted()
	run(t, e, evs)
	if got := sink.firsts(); len(got) != 0 {
		t.Errorf("%d false alerts over %d events:\n%s", len(got), len(evs), describe(got))
	}
	t.Logf("%d events, %d devices", len(evs), e.Devices())
}

type attack struct {
	name   string
	fleet  fleet
	device int // index
	kind   alert.Kind
	within time.Duration
	inject func(w *world, f fleet, id event.DeviceID, at time.Time)
	// allowed lists other (device, kind) pairs the attack may also raise
	allowed []alert.Kind
}

func flow(id event.DeviceID, f fleet, i int, t time.Time, dst string, port float64, bytes float64) event.Event {
	return event.Event{Device: id, Kind: event.NetFlow, Time: t, Source: "flows", Attrs: map[string]any{"src_ip": ipOf(f, i), "src_port": 40000.0, "dst_ip": dst, "dst_port": port, "proto": 6.0, "bytes": bytes, "packets": 3.0}}
}

func attacks() []attack {
	at := 50 * time.Hour
	_ = at
	return []attack{
		{name: "sim swap", fleet: meters, device: 16, kind: alert.SIMIMEIMismatch, within: time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Kind: event.NetSession, Time: at, Source: "radius", Attrs: map[string]any{"status": "start", "session_id": "x1", "imsi": imsiOf(f, 16), "iccid": "89" + imsiOf(f, 16), "imei": "356666666666660", "ip": "10.99.0.1", "lat": 41.0, "lon": -3.0, "accuracy_m": 2000.0}})
			}},
		{name: "impossible travel", fleet: vans, device: 11, kind: alert.ImpossibleTravel, within: 5 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 10 {
					w.add(event.Event{Device: id, Kind: event.Location, Time: at.Add(time.Duration(k)*time.Minute + 30*time.Second), Source: "agent", Attrs: map[string]any{"lat": 59.3293, "lon": 18.0686, "accuracy_m": 20.0, "source": "device"}})
				}
			}},
		{name: "impossible travel subtle 400km", fleet: vans, device: 3, kind: alert.ImpossibleTravel, within: 5 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Device: id, Kind: event.Location, Time: at.Add(30 * time.Second), Source: "agent", Attrs: map[string]any{"lat": 44.9, "lon": 2.1, "accuracy_m": 2500.0, "source": "network"}})
			}},
		{name: "geofence exit", fleet: meters, device: 32, kind: alert.GeofenceExit, within: 20 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 4 {
					w.add(event.Event{Device: id, Kind: event.Location, Time: at.Add(time.Duration(k) * 5 * time.Minute), Source: "agent", Attrs: map[string]any{"lat": 40.9429, "lon": -4.1088, "accuracy_m": 15.0, "source": "device"}})
				}
			}, allowed: []alert.Kind{alert.ImpossibleTravel}},
		{name: "data exfiltration x10", fleet: vans, device: 4, kind: alert.DataSpike, within: 30 * time.Minute, inject: scalePublishes(10, 2*time.Hour, false)},
		{name: "data exfiltration x4 meters", fleet: meters, device: 7, kind: alert.DataSpike, within: 3 * time.Hour, inject: scalePublishes(4, 3*time.Hour, false)},
		{name: "data exfiltration x5 hourly", fleet: gws, device: 7, kind: alert.DataSpike, within: 5 * time.Hour, inject: scalePublishes(5, 6*time.Hour, false)},
		{name: "message flood x30", fleet: vans, device: 8, kind: alert.MessageRateSpike, within: 10 * time.Minute, inject: scalePublishes(30, 20*time.Minute, true)},
		{name: "message flood x4 meters", fleet: meters, device: 9, kind: alert.MessageRateSpike, within: 2 * time.Hour, inject: scalePublishes(4, 3*time.Hour, true)},
		{name: "bruteforce 200/15m", fleet: gws, device: 20, kind: alert.Bruteforce, within: 10 * time.Minute, inject: authFails(200, 15*time.Minute, "bad_password", "203.0.113.9")},
		{name: "bruteforce 25/10m", fleet: meters, device: 20, kind: alert.Bruteforce, within: 10 * time.Minute, inject: authFails(25, 10*time.Minute, "bad_password", "203.0.113.9")},
		// a slow guesser (about one try a minute) stays under 20 per
		// window but is caught well within 10 minutes
		{name: "bruteforce slow 12/15m", fleet: meters, device: 21, kind: alert.Bruteforce, within: 10 * time.Minute, inject: authFails(12, 15*time.Minute, "bad_password", "203.0.113.10")},
		{name: "default credentials", fleet: gws, device: 5, kind: alert.DefaultCredentials, within: 10 * time.Minute, inject: authFails(12, 10*time.Minute, "default_credentials", "203.0.113.50")},
		{name: "revoked cert", fleet: gws, device: 6, kind: alert.RevokedCertUse, within: 2 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Device: id, Kind: event.CertRevoked, Time: at, Source: "identity", Attrs: map[string]any{"serial": "c-" + string(id), "reason": "retired"}})
				authFails(30, 10*time.Minute, "revoked_cert", ipOf(f, 6))(w, f, id, at.Add(time.Minute))
			}},
		{name: "clone", fleet: gws, device: 7, kind: alert.CloneSuspected, within: 5 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Device: id, Kind: event.MQTTConnect, Time: at, Source: "broker", Attrs: map[string]any{"remote": "198.18.7.7:5555", "client_id": string(id), "cert_serial": "c-" + string(id), "session_id": "clone-1", "protocol": "5"}})
			}},
		{name: "mirai 50 targets", fleet: sensors, device: 3, kind: alert.TelnetScan, within: 5 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 50 {
					w.add(flow(id, f, 3, at.Add(time.Duration(k)*30*time.Second), fmt.Sprintf("192.0.2.%d", k+1), []float64{23, 2323}[k%2], 120))
				}
			}},
		{name: "mirai slow 1 host a minute", fleet: sensors, device: 5, kind: alert.TelnetScan, within: 7 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 30 {
					w.add(flow(id, f, 5, at.Add(time.Duration(k)*time.Minute), fmt.Sprintf("198.51.100.%d", k+1), 23, 120))
				}
			}},
		{name: "port scan slow 60 targets in 20m", fleet: sensors, device: 6, kind: alert.PortScan, within: 6 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 60 {
					w.add(flow(id, f, 6, at.Add(time.Duration(k)*20*time.Second), fmt.Sprintf("10.201.0.%d", 1+k%5), float64(2000+k*11), 60))
				}
			}},
		{name: "port scan 50 targets", fleet: sensors, device: 4, kind: alert.PortScan, within: 10 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 50 {
					w.add(flow(id, f, 4, at.Add(time.Duration(k)*24*time.Second), "10.200.0.1", float64(1000+k*7), 60))
				}
			}},
		{name: "c2 beacon", fleet: sensors, device: 9, kind: alert.ThreatIntelHit, within: 5 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 24 {
					w.add(flow(id, f, 9, at.Add(time.Duration(k)*5*time.Minute), "100.1.7.33", 443, 900))
				}
			}},
		{name: "unapproved destination", fleet: sensors, device: 12, kind: alert.DestinationUnapproved, within: 10 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				for k := range 6 {
					w.add(flow(id, f, 12, at.Add(time.Duration(k)*2*time.Minute), "192.0.2.77", 8443, 3000))
				}
			}},
		{name: "rogue firmware", fleet: gws, device: 10, kind: alert.FirmwareUnapproved, within: 10 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Device: id, Kind: event.FirmwareReport, Time: at, Source: "agent", Attrs: map[string]any{"version": f.fw, "digest": digestOf("evil", "1")}})
			}},
		{name: "firmware rollback", fleet: gws, device: 11, kind: alert.FirmwareRollback, within: 10 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.cat.Put(tenant, f.model, "2.0.0", digestOf(f.model, "2.0.0"))
				w.cat.SetMinVersion(tenant, f.model, "3.0.0")
				w.add(event.Event{Device: id, Kind: event.FirmwareReport, Time: at, Source: "agent", Attrs: map[string]any{"version": "2.0.0", "digest": digestOf(f.model, "2.0.0")}})
			}},
		{name: "open port", fleet: gws, device: 12, kind: alert.UnexpectedListener, within: 10 * time.Minute,
			inject: func(w *world, f fleet, id event.DeviceID, at time.Time) {
				w.add(event.Event{Device: id, Kind: event.DeviceMetrics, Time: at, Source: "agent", Attrs: map[string]any{"listening_ports": []any{22.0, 23.0}, "fw_version": f.fw, "fw_digest": digestOf(f.model, f.fw)}})
			}},
	}
}

// scalePublishes multiplies the device's publish volume (or count) by
// factor for d from at.
func scalePublishes(factor float64, d time.Duration, count bool) func(w *world, f fleet, id event.DeviceID, at time.Time) {
	return func(w *world, f fleet, id event.DeviceID, at time.Time) {
		n := len(w.evs)
		for j := range n {
			e := w.evs[j]
			if e.Device != id || e.Kind != event.MQTTPublish || e.Time.Before(at) || !e.Time.Before(at.Add(d)) {
				continue
			}
			if !count {
				b, _ := e.Float("bytes")
				w.evs[j].Attrs = map[string]any{"topic_class": "telemetry", "bytes": b * factor, "qos": 1.0}
				continue
			}
			step := f.cadence / time.Duration(factor)
			for k := 1; k < int(factor); k++ {
				x := e
				x.Time = e.Time.Add(time.Duration(k) * step)
				w.evs = append(w.evs, x)
			}
		}
	}
}

func authFails(n int, d time.Duration, reason, remote string) func(w *world, f fleet, id event.DeviceID, at time.Time) {
	users := []string{"root", "admin", "support", "user", "guest"}
	return func(w *world, f fleet, id event.DeviceID, at time.Time) {
		for k := range n {
			user := string(id)
			if reason == "default_credentials" {
				user = users[k%len(users)]
			}
			w.add(event.Event{Device: id, Kind: event.MQTTAuthFailed, Time: at.Add(time.Duration(k) * d / time.Duration(n)), Source: "broker",
				Attrs: map[string]any{"reason": reason, "remote": fmt.Sprintf("%s:%d", remote, 50000+k), "username": user, "cert_serial": ""}})
		}
	}
}

// TestAttacks: each attack fires its alert on its device within the
// window, and nothing else fires anywhere in the fleet.
func TestAttacks(t *testing.T) {
	for i, a := range attacks() {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld()
			f := a.fleet
			f.n = max(12, a.device+1)
			dur := 60 * time.Hour
			w.addFleet(uint64(100+i), f, dur)
			id := devID(f, a.device)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			at := t0.Add(48*time.Hour + time.Duration(rng.Int64N(int64(time.Hour))))
			a.inject(w, f, id, at)
			sink := &recSink{}
			run(t, w.engine(sink, Settings{}), w.sorted())
			got := sink.firsts()
			al, ok := got[pair{id, a.kind}]
			if !ok {
				t.Fatalf("%s on %s not raised; got:\n%s", a.kind, id, describe(got))
			}
			if lag := al.FirstSeen.Sub(at); lag > a.within {
				t.Errorf("raised after %s, want within %s", lag, a.within)
			}
			if al.Evidence.Summary == "" || len(al.Evidence.Events) == 0 || len(al.Evidence.Values) == 0 {
				t.Errorf("alert without evidence: %+v", al.Evidence)
			}
			for k := range got {
				if k == (pair{id, a.kind}) {
					continue
				}
				allowed := false
				for _, ak := range a.allowed {
					allowed = allowed || (k.d == id && k.k == ak)
				}
				if !allowed {
					t.Errorf("unexpected alert %s on %s at %s: %s %v", k.k, k.d, got[k].FirstSeen, got[k].Evidence.Summary, got[k].Evidence.Values)
				}
			}
			t.Logf("detected after %s: %s", al.FirstSeen.Sub(at), al.Evidence.Summary)
		})
	}
}

// TestReplayDeterministic: the same events give the same alerts, ids included.
func TestReplayDeterministic(t *testing.T) {
	w := newWorld()
	f := gws
	f.n = 12
	w.addFleet(3, f, 60*time.Hour)
	at := t0.Add(50 * time.Hour)
	authFails(100, 10*time.Minute, "bad_password", "203.0.113.9")(w, f, devID(f, 2), at)
	w.add(event.Event{Device: devID(f, 3), Kind: event.FirmwareReport, Time: at, Source: "agent", Attrs: map[string]any{"version": "9", "digest": "ab"}})
	evs := w.sorted()
	var outs [2][]byte
	for i := range outs {
		sink := &recSink{}
		run(t, w.engine(sink, Settings{}), evs)
		if len(sink.alerts) == 0 {
			t.Fatal("no alerts")
		}
		outs[i], _ = json.Marshal(sink.alerts)
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatal("replay gave different alerts")
	}
}

// TestSnapshotContinues: an engine restored from a mid-run snapshot raises
// exactly what the original raises for the rest of the stream.
func TestSnapshotContinues(t *testing.T) {
	w := newWorld()
	f := vans
	f.n = 12
	w.addFleet(4, f, 60*time.Hour)
	at := t0.Add(50 * time.Hour)
	scalePublishes(10, 2*time.Hour, false)(w, f, devID(f, 1), at)
	authFails(60, 10*time.Minute, "bad_password", "203.0.113.9")(w, f, devID(f, 2), at.Add(-10*time.Minute))
	evs := w.sorted()
	cut := 0
	for cut < len(evs) && evs[cut].Time.Before(at) {
		cut++
	}
	sa := &recSink{}
	a := w.engine(sa, Settings{})
	run(t, a, evs[:cut])
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sb := &recSink{}
	b := w.engine(sb, Settings{})
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	sa.alerts = nil
	run(t, a, evs[cut:])
	run(t, b, evs[cut:])
	ja, _ := json.Marshal(sa.alerts)
	jb, _ := json.Marshal(sb.alerts)
	if len(sa.alerts) == 0 {
		t.Fatal("no alerts after the cut: the test proves nothing")
	}
	if !bytes.Equal(ja, jb) {
		t.Fatalf("restored engine diverged:\n%s\n%s", ja, jb)
	}
	if a.Risk(tenant, devID(f, 1)) != b.Risk(tenant, devID(f, 1)) || a.Risk(tenant, devID(f, 1)) <= 0 {
		t.Fatalf("risk differs or is zero: %v %v", a.Risk(tenant, devID(f, 1)), b.Risk(tenant, devID(f, 1)))
	}
	if err := b.Restore([]byte("garbage")); err == nil {
		t.Fatal("garbage restored")
	}
}

func TestMergeAndRisk(t *testing.T) {
	w := newWorld()
	f := gws
	f.n = 1
	w.dir.Put(Profile{Tenant: tenant, ID: devID(f, 0), Model: f.model})
	sink := &recSink{}
	e := w.engine(sink, Settings{})
	ctx := context.Background()
	for k := range 3 {
		ev := event.Event{Tenant: tenant, Device: devID(f, 0), Kind: event.MQTTAuthFailed, Time: t0.Add(time.Duration(k) * 10 * time.Minute), Attrs: map[string]any{"reason": "revoked_cert"}}
		if err := e.Process(ctx, &ev); err != nil {
			t.Fatal(err)
		}
	}
	if len(sink.alerts) != 3 || sink.alerts[2].ID != sink.alerts[0].ID || sink.alerts[2].Count != 3 || !sink.alerts[2].LastSeen.Equal(t0.Add(20*time.Minute)) {
		t.Fatalf("merge: %+v", sink.alerts)
	}
	r0 := e.Risk(tenant, devID(f, 0))
	e.Advance(ctx, t0.Add(48*time.Hour))
	r1 := e.Risk(tenant, devID(f, 0))
	if r0 <= 0 || r1 >= r0/3 {
		t.Fatalf("risk %v then %v: want positive, decaying", r0, r1)
	}
	ev := event.Event{Tenant: tenant, Device: devID(f, 0), Kind: event.MQTTAuthFailed, Time: t0.Add(3 * time.Hour), Attrs: map[string]any{"reason": "revoked_cert"}}
	_ = e.Process(ctx, &ev)
	if a := sink.alerts[len(sink.alerts)-1]; a.ID == sink.alerts[0].ID {
		t.Fatal("a repeat after the merge window reused the alert")
	}
}

func TestSettingsOverride(t *testing.T) {
	s := Settings{Overrides: map[string]map[string]json.RawMessage{
		"t1":       {"auth.bruteforce": json.RawMessage(`{"threshold": 3, "window": "1m"}`)},
		"t1/meter": {"auth.bruteforce": json.RawMessage(`{"disabled": true}`)},
	}}
	if err := ValidateSettings(s); err != nil {
		t.Fatal(err)
	}
	e := New(Options{Sink: &recSink{}, Settings: s})
	got := e.SettingsFor("t1", "gw", "auth.bruteforce").(*BruteforceSettings)
	if got.Threshold != 3 || got.Window.D() != time.Minute || got.SourceThreshold != 20 {
		t.Fatalf("override: %+v", got)
	}
	if def := e.SettingsFor("t2", "", "auth.bruteforce").(*BruteforceSettings); def.Threshold != 8 {
		t.Fatalf("default: %+v", def)
	}
	if !e.bundleFor("t1", "meter").off[indexOf(bruteforceDetector)] {
		t.Fatal("group override did not disable")
	}
	bad := Settings{Overrides: map[string]map[string]json.RawMessage{"t1": {"nope": nil, "auth.bruteforce": json.RawMessage(`{"threshold":"x"}`)}}}
	if err := ValidateSettings(bad); err == nil {
		t.Fatal("bad settings accepted")
	}
}

func TestDetectorsMetadata(t *testing.T) {
	kinds := map[alert.Kind]bool{}
	for _, d := range Detectors() {
		if d.Name == "" || d.Description == "" || len(d.Settings) == 0 || len(d.Events) == 0 {
			t.Errorf("incomplete: %+v", d)
		}
		kinds[d.Kind] = true
	}
	for _, k := range []alert.Kind{alert.SIMIMEIMismatch, alert.ImpossibleTravel, alert.GeofenceExit, alert.DataSpike, alert.MessageRateSpike, alert.Bruteforce,
		alert.DefaultCredentials, alert.TelnetScan, alert.PortScan, alert.ThreatIntelHit, alert.DestinationUnapproved, alert.CloneSuspected,
		alert.RevokedCertUse, alert.FirmwareUnapproved, alert.FirmwareRollback, alert.UnexpectedListener} {
		if !kinds[k] {
			t.Errorf("no detector for %s", k)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"2.0.0", "3.0.0", -1}, {"3.1.0", "3.0.2", 1}, {"v1.10.0", "1.9.9", 1}, {"1.0.0-rc1", "1.0.0", -1}, {"1.0", "1.0.0", 0}} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("%s vs %s = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

var _ = fmt.Sprint

// TestConcurrentPartitions: two goroutines owning disjoint device
// partitions raise the same (device, kind) pairs as one sequential run.
func TestConcurrentPartitions(t *testing.T) {
	w := newWorld()
	f := sensors
	f.n = 12
	w.addFleet(9, f, 40*time.Hour)
	at := t0.Add(30 * time.Hour)
	for k := range 60 {
		w.add(flow(devID(f, 2), f, 2, at.Add(time.Duration(k)*5*time.Second), fmt.Sprintf("192.0.2.%d", k+1), 23, 60))
	}
	authFails(40, 5*time.Minute, "bad_password", "203.0.113.9")(w, f, devID(f, 5), at)
	evs := w.sorted()
	seq := &recSink{}
	run(t, w.engine(seq, Settings{}), evs)
	par := &recSink{}
	e := w.engine(par, Settings{})
	var wg sync.WaitGroup
	for p := range 2 {
		wg.Go(func() {
			for i := range evs {
				if event.Partition(evs[i].Device)%2 == p {
					_ = e.Process(context.Background(), &evs[i])
				}
			}
		})
	}
	wg.Wait()
	a, b := seq.firsts(), par.firsts()
	if len(a) < 2 || len(a) != len(b) {
		t.Fatalf("sequential:\n%s\nparallel:\n%s", describe(a), describe(b))
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			t.Errorf("parallel run missed %v", k)
		}
	}
}

// TestLateness: events slightly out of order are processed, events beyond
// the lateness bound are dropped and counted.
func TestLateness(t *testing.T) {
	w := newWorld()
	w.dir.Put(Profile{Tenant: tenant, ID: "d1", Model: "m"})
	sink := &recSink{}
	e := w.engine(sink, Settings{})
	ctx := context.Background()
	at := func(d time.Duration, reason string) *event.Event {
		return &event.Event{Tenant: tenant, Device: "d1", Kind: event.MQTTAuthFailed, Time: t0.Add(d), Attrs: map[string]any{"reason": reason}}
	}
	_ = e.Process(ctx, at(10*time.Minute, "bad_password"))
	_ = e.Process(ctx, at(9*time.Minute, "revoked_cert")) // 1 min late: processed
	if len(sink.alerts) != 1 || e.Late() != 0 {
		t.Fatalf("slightly late event: %d alerts, %d late", len(sink.alerts), e.Late())
	}
	_ = e.Process(ctx, at(5*time.Minute, "revoked_cert")) // 5 min late: dropped
	if len(sink.alerts) != 1 || e.Late() != 1 {
		t.Fatalf("too late event: %d alerts, %d late", len(sink.alerts), e.Late())
	}
}

// TestInboundFlowsAreNotScans: many remotes reaching the device (reported
// with direction "in") are neither a scan nor new destinations of it.
func TestInboundFlowsAreNotScans(t *testing.T) {
	w := newWorld()
	f := sensors
	f.n = 3
	w.addFleet(12, f, 40*time.Hour)
	id := devID(f, 1)
	at := t0.Add(30 * time.Hour)
	for k := range 300 {
		ev := flow(id, f, 1, at.Add(time.Duration(k)*2*time.Second), fmt.Sprintf("198.18.0.%d", k%250+1), float64(30000+k), 80)
		ev.Attrs["direction"] = "in"
		w.add(ev)
	}
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	if got := sink.firsts(); len(got) != 0 {
		t.Fatalf("inbound flows raised:\n%s", describe(got))
	}
}

// TestSIMSwapIMEISV: an IMEISV of the bound device is not a swap; one of
// another device is (RADIUS Access-Request decisions included).
func TestSIMSwapIMEISV(t *testing.T) {
	w := newWorld()
	w.dir.Put(Profile{Tenant: tenant, ID: "m1", Model: "m", IMEI: "359342780000160", IMSI: "214070000000001"})
	sink := &recSink{}
	e := w.engine(sink, Settings{})
	for i, c := range []struct {
		imeisv string
		alerts int
	}{{"3593427800001601", 0}, {"3566666666666601", 1}} {
		ev := event.Event{Tenant: tenant, Kind: event.NetSession, Time: t0.Add(time.Duration(i) * time.Minute), Attrs: map[string]any{"status": "auth", "decision": "reject", "imsi": "214070000000001", "imeisv": c.imeisv}}
		_ = e.Process(context.Background(), &ev)
		if len(sink.alerts) != c.alerts {
			t.Fatalf("imeisv %s: %d alerts, want %d", c.imeisv, len(sink.alerts), c.alerts)
		}
	}
	if sink.alerts[0].Device != "m1" || sink.alerts[0].Kind != alert.SIMIMEIMismatch {
		t.Fatalf("%+v", sink.alerts[0])
	}
}

// TestConnectRateIsNotGuessing: the broker's connect_rate refusals (a
// device or a NAT address reconnecting too fast, reported once a minute)
// are not password guessing: twenty minutes of them raise no
// auth.bruteforce, while the same count of bad passwords does.
func TestConnectRateIsNotGuessing(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   int
	}{{"connect_rate", 0}, {"bad_password", 1}} {
		w := newWorld()
		f := gws
		f.n = 1
		w.dir.Put(Profile{Tenant: tenant, ID: devID(f, 0), Model: f.model})
		sink := &recSink{}
		e := w.engine(sink, Settings{})
		for k := range 20 {
			ev := event.Event{Tenant: tenant, Device: devID(f, 0), Kind: event.MQTTAuthFailed, Time: t0.Add(time.Duration(k) * time.Minute),
				Attrs: map[string]any{"reason": tc.reason, "remote": "198.51.100.7:40000"}}
			if err := e.Process(context.Background(), &ev); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		for _, a := range sink.alerts {
			if a.Kind == alert.Bruteforce && a.Count == 1 {
				n++
			}
		}
		if n != tc.want {
			t.Fatalf("%s: %d auth.bruteforce alerts, want %d", tc.reason, n, tc.want)
		}
	}
}

// TestPortOpenedAfterUpdate: a signed update that starts a new service
// (port 8443 in every device's first report after it) is learned on every
// device, but a port one device opens hours after its update, while
// destinations are still being re-learned, is judged and fires.
func TestPortOpenedAfterUpdate(t *testing.T) {
	w := newWorld()
	f := gws
	f.n = 20
	w.addFleet(93, f, 60*time.Hour)
	w.campaign(6, f, "3.1.0", 30*time.Hour, 2*time.Hour)
	for j := range w.evs {
		e := &w.evs[j]
		if e.Kind == event.DeviceMetrics && e.Attrs["fw_version"] == "3.1.0" {
			a := map[string]any{}
			for k, v := range e.Attrs {
				a[k] = v
			}
			a["listening_ports"] = []any{22.0, 8443.0}
			e.Attrs = a
		}
	}
	id := devID(f, 9)
	at := t0.Add(34*time.Hour + 30*time.Minute) // after its update (by 32h) and its first report since (by 33h)
	w.add(event.Event{Device: id, Kind: event.DeviceMetrics, Time: at, Source: "agent",
		Attrs: map[string]any{"listening_ports": []any{22.0, 8443.0, 4444.0}, "fw_version": "3.1.0", "fw_digest": digestOf(f.model, "3.1.0")}})
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	got := sink.firsts()
	if _, ok := got[pair{id, alert.UnexpectedListener}]; !ok {
		t.Errorf("port 4444 opened after the update raised nothing")
	}
	for k, a := range got {
		if k.d != id {
			t.Errorf("false %s on %s: %s", k.k, k.d, a.Evidence.Summary)
		}
	}
}
