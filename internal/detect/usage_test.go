package detect

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// TestVariablePayloadsQuiet: fleets whose payload sizes vary a lot from
// one message to the next (CV 0.7 to 0.9, at hourly and quarter-hourly
// cadences) live a week without a usage alert. A recent window holding a
// single large message is not a rate.
func TestVariablePayloadsQuiet(t *testing.T) {
	hourly := gws
	hourly.name, hourly.cv, hourly.n = "gwv", 0.9, 30
	quarter := meters
	quarter.name, quarter.cv, quarter.n = "meterv", 0.7, 30
	quietUsage(t, 40, 10, 7*24*time.Hour, hourly, quarter)
}

// quietUsage replays the fleets (n devices each, shortN with -short; seeds
// from seed) for d and fails on any usage alert.
func quietUsage(t *testing.T, seed uint64, shortN int, d time.Duration, fleets ...fleet) {
	t.Helper()
	w := newWorld()
	for i, f := range fleets {
		if testing.Short() {
			f.n = shortN
		}
		w.addFleet(seed+uint64(i), f, d)
	}
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	for k, a := range sink.firsts() {
		if k.k == alert.DataSpike || k.k == alert.MessageRateSpike {
			t.Errorf("false %s on %s at %s: %s", k.k, k.d, a.FirstSeen.Format(time.RFC3339), a.Evidence.Summary)
		}
	}
}

// TestFastVariablePayloadsQuiet: minute-cadence devices with log-normal
// payloads (CV 0.75: now and then one message is 10-20x the mean) live four
// days without a usage alert. One or two large messages among many are not
// a spike: a fast device's recent window must hold several messages, and a
// few large ones are judged by their sizes, not as a rate.
func TestFastVariablePayloadsQuiet(t *testing.T) {
	fast := vans
	fast.name, fast.cv, fast.n, fast.pattern, fast.lognormal = "busv", 0.75, 60, "flat", true
	two := sensors
	two.name, two.cv, two.n, two.cadence, two.lognormal = "sensv", 0.7, 60, 2*time.Minute, true
	quietUsage(t, 60, 15, 4*24*time.Hour, fast, two)
}

// TestSingleHugeMessage: one message far outside the device's learned
// sizes fires usage.volume from the recent window by the next publish,
// before the long window closes.
func TestSingleHugeMessage(t *testing.T) {
	w := newWorld()
	f := gws
	f.n = 12
	w.addFleet(77, f, 60*time.Hour)
	id := devID(f, 3)
	at := t0.Add(50 * time.Hour)
	var hit time.Time
	for j := range w.evs {
		e := &w.evs[j]
		if e.Device == id && e.Kind == event.MQTTPublish && !e.Time.Before(at) {
			e.Attrs = map[string]any{"topic_class": "telemetry", "bytes": 400 * f.bytes, "qos": 1.0}
			hit = e.Time
			break
		}
	}
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	a, ok := sink.firsts()[pair{id, alert.DataSpike}]
	if !ok {
		t.Fatalf("no data spike on %s", id)
	}
	// An hourly device's window spans three hours, so some hours of its
	// week are still unlearned on day 3 and a spike there is confirmed by
	// the next publish.
	if lag := a.FirstSeen.Sub(hit); lag > 70*time.Minute {
		t.Errorf("raised %s after the message: %s", lag, a.Evidence.Summary)
	}
}

// TestSizeZ: the per-message size model learns a device's sizes, and a
// run of large messages does not become normal before it is judged.
func TestSizeZ(t *testing.T) {
	var u usageState
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		u.sizeZ(1000 * (1 + 0.3*rng.NormFloat64()))
	}
	if z := u.sizeZ(1100); z > 1.5 || z < -1.5 {
		t.Errorf("an ordinary message: z = %.2f", z)
	}
	zs := make([]float64, 5)
	for i := range zs {
		zs[i] = u.sizeZ(100000)
	}
	for i, z := range zs {
		if z < 5 {
			t.Errorf("large message %d: z = %.2f, want >= 5 (learned %v, %v)", i, z, u.LogL, u.LogV)
		}
	}
}

// TestListenerAlertsOncePerPort: a device that keeps reporting the same
// new listening port for days raises one alert for it, and a second new
// port later raises its own instead of being folded into the first
// port's alert (which the repeats would otherwise keep open).
func TestListenerAlertsOncePerPort(t *testing.T) {
	w := newWorld()
	f := gws
	f.n = 12
	w.addFleet(78, f, 100*time.Hour)
	id := devID(f, 4)
	for h := 40; h < 100; h++ {
		ports := []any{22.0, 23.0}
		if h >= 80 {
			ports = append(ports, 2323.0)
		}
		w.add(event.Event{Device: id, Kind: event.DeviceMetrics, Time: t0.Add(time.Duration(h) * time.Hour), Source: "agent",
			Attrs: map[string]any{"listening_ports": ports, "fw_version": f.fw, "fw_digest": digestOf(f.model, f.fw)}})
	}
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	ids := map[string]bool{}
	for _, a := range sink.alerts {
		if a.Device == id && a.Kind == alert.UnexpectedListener {
			ids[a.ID] = true
		}
	}
	if len(ids) != 2 {
		t.Errorf("%d listener alerts, want 2 (port 23, then port 2323)", len(ids))
	}
}

// TestLoneLargeMessageWaitsForConfirmation: on devices reporting every 5
// minutes, one message ten times the mean (beyond single_z by its own
// size, and 10x the hour's rate when it is alone in its recent window) is
// one observation: it starts a spike that the next messages do not
// confirm, so nothing fires. The same size on every message for an hour
// (an exfiltration) is confirmed and fires within 30 min. Six devices take
// the message at six phases of their recent windows.
func TestLoneLargeMessageWaitsForConfirmation(t *testing.T) {
	f := meters
	f.name, f.n, f.cadence, f.pattern, f.outagesPerDay, f.cv = "cam", 12, 5*time.Minute, "flat", 0, 0.3
	for _, exfil := range []bool{false, true} {
		w := newWorld()
		w.addFleet(91, f, 60*time.Hour)
		first := map[event.DeviceID]time.Time{}
		for d := range 6 {
			id := devID(f, d)
			at := t0.Add(50*time.Hour + time.Duration(d)*5*time.Minute)
			for j := range w.evs {
				e := &w.evs[j]
				if e.Device != id || e.Kind != event.MQTTPublish || e.Time.Before(at) || (exfil && e.Time.After(at.Add(time.Hour))) {
					continue
				}
				e.Attrs = map[string]any{"topic_class": "telemetry", "bytes": 10 * f.bytes, "qos": 1.0}
				if _, ok := first[id]; !ok {
					first[id] = e.Time
				}
				if !exfil {
					break
				}
			}
		}
		sink := &recSink{}
		run(t, w.engine(sink, Settings{}), w.sorted())
		for id, at := range first {
			a, ok := sink.firsts()[pair{id, alert.DataSpike}]
			switch {
			case !exfil && ok:
				t.Errorf("one large message raised %s on %s: %s", alert.DataSpike, id, a.Evidence.Summary)
			case exfil && !ok:
				t.Errorf("an hour of 10x messages raised no %s on %s", alert.DataSpike, id)
			case exfil && a.FirstSeen.Sub(at) > 30*time.Minute:
				t.Errorf("exfiltration raised on %s after %s", id, a.FirstSeen.Sub(at))
			}
		}
	}
}

// TestFloodOnSlowDevice: devices reporting every 15 minutes start
// publishing every 45 s (x20), each at another phase of its 45-minute
// recent window, which dilutes the flood when it started long before; the
// count of the last 10 minutes sees every flood within 10.
func TestFloodOnSlowDevice(t *testing.T) {
	f := meters
	f.n, f.outagesPerDay = 30, 0
	w := newWorld()
	w.addFleet(92, f, 60*time.Hour)
	starts := map[event.DeviceID]time.Time{}
	for d := range 6 {
		id := devID(f, 4*d)
		at := t0.Add(50*time.Hour + time.Duration(d)*8*time.Minute)
		starts[id] = at
		for k := range 40 {
			w.add(event.Event{Device: id, Kind: event.MQTTPublish, Time: at.Add(time.Duration(k) * 45 * time.Second), Source: "broker",
				Attrs: map[string]any{"topic_class": "telemetry", "bytes": f.bytes, "qos": 1.0}})
		}
	}
	sink := &recSink{}
	run(t, w.engine(sink, Settings{}), w.sorted())
	for id, at := range starts {
		a, ok := sink.firsts()[pair{id, alert.MessageRateSpike}]
		if !ok {
			t.Errorf("no %s on %s", alert.MessageRateSpike, id)
			continue
		}
		if lag := a.FirstSeen.Sub(at); lag > 10*time.Minute {
			t.Errorf("raised on %s %s after the flood started: %s", id, lag, a.Evidence.Summary)
		}
	}
}
