package detect

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// benchStream is a realistic mixed stream: meters, vans (1-minute
// positions), hourly gateways and 30-second sensors over two days, with
// outages, catch-up bursts and a few attacks so that alerts are raised.
func benchStream(tb testing.TB) (*world, []event.Event) {
	tb.Helper()
	w := newWorld()
	for i, f := range []fleet{meters, vans, gws, sensors} {
		f.n *= 2
		w.addFleet(uint64(i+1), f, 48*time.Hour)
	}
	at := t0.Add(30 * time.Hour)
	authFails(200, 15*time.Minute, "bad_password", "203.0.113.9")(w, gws, devID(gws, 3), at)
	for k := range 400 {
		w.add(flow(devID(sensors, 2), sensors, 2, at.Add(time.Duration(k)*4*time.Second), fmt.Sprintf("192.0.2.%d", k%250+1), 23, 60))
	}
	scalePublishes(10, 2*time.Hour, false)(w, vans, devID(vans, 1), at)
	return w, w.sorted()
}

// latSink records the delay from the start of the Process call that raised
// an alert to the Raise call.
type latSink struct {
	start time.Time
	lat   []time.Duration
}

func (s *latSink) Raise(_ context.Context, _ alert.Alert) error {
	s.lat = append(s.lat, time.Since(s.start))
	return nil
}

// BenchmarkEngine: one goroutine feeding the whole stream through a fresh
// engine with every detector on.
func BenchmarkEngine(b *testing.B) {
	w, evs := benchStream(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var lat []time.Duration
	var total int
	start := time.Now()
	for b.Loop() {
		s := &latSink{}
		e := w.engine(s, Settings{})
		for i := range evs {
			s.start = time.Now()
			_ = e.Process(ctx, &evs[i])
		}
		if len(s.lat) == 0 {
			b.Fatal("no alerts raised: the stream exercises nothing")
		}
		lat = append(lat, s.lat...)
		total += len(evs)
	}
	el := time.Since(start)
	b.ReportMetric(float64(total)/el.Seconds(), "events/s")
	b.ReportMetric(float64(el.Nanoseconds())/float64(total), "ns/event")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-raise-µs")
	}
}

// BenchmarkEngineParallel: two goroutines (this machine has two cores),
// each owning half of the device partitions, as the bus consumer would.
func BenchmarkEngineParallel(b *testing.B) {
	w, evs := benchStream(b)
	var parts [2][]*event.Event
	for i := range evs {
		p := event.Partition(evs[i].Device) % 2
		parts[p] = append(parts[p], &evs[i])
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	var total int
	start := time.Now()
	for b.Loop() {
		e := w.engine(&recSink{}, Settings{})
		var wg sync.WaitGroup
		for p := range parts {
			wg.Go(func() {
				for _, ev := range parts[p] {
					_ = e.Process(ctx, ev)
				}
			})
		}
		wg.Wait()
		total += len(evs)
	}
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkStateMemory measures the heap held per device after a warm-up
// day of realistic traffic (hourly publishes, positions, flows to three
// destinations, metrics with a listener, sessions), for 20,000 devices.
// Run with -benchtime=1x.
func BenchmarkStateMemory(b *testing.B) {
	const n = 20_000
	w := newWorld()
	f := gws
	for i := range n {
		id := devID(f, i)
		w.dir.Put(Profile{Tenant: tenant, ID: id, Model: f.model, Cohort: "gw", IMEI: imeiOf(f, i), IMSI: imsiOf(f, i)})
	}
	ctx := context.Background()
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		e := w.engine(&recSink{}, Settings{})
		for h := range 26 {
			for i := range n {
				id := devID(f, i)
				t := t0.Add(time.Duration(h)*time.Hour + time.Duration(i%3600)*time.Second)
				ip := ipOf(f, i)
				evs := []event.Event{
					{Tenant: tenant, Device: id, Kind: event.MQTTPublish, Time: t, Attrs: map[string]any{"bytes": float64(2000 + i%700)}},
					{Tenant: tenant, Device: id, Kind: event.MQTTPublish, Time: t.Add(20 * time.Minute), Attrs: map[string]any{"bytes": float64(2000 + i%500)}},
					{Tenant: tenant, Device: id, Kind: event.MQTTPublish, Time: t.Add(40 * time.Minute), Attrs: map[string]any{"bytes": float64(2000 + i%300)}},
					{Tenant: tenant, Device: id, Kind: event.Location, Time: t, Attrs: map[string]any{"lat": 50.1, "lon": 8.6, "accuracy_m": 20.0}},
					{Tenant: tenant, Device: id, Kind: event.NetFlow, Time: t, Attrs: map[string]any{"src_ip": ip, "dst_ip": "198.51.100.10", "dst_port": 443.0, "proto": 6.0, "bytes": 3000.0}},
					{Tenant: tenant, Device: id, Kind: event.NetFlow, Time: t, Attrs: map[string]any{"src_ip": ip, "dst_ip": "198.51.100.11", "dst_port": 8883.0, "proto": 6.0, "bytes": 3000.0}},
					{Tenant: tenant, Device: id, Kind: event.NetFlow, Time: t, Attrs: map[string]any{"src_ip": ip, "dst_ip": fmt.Sprintf("198.51.100.%d", 20+i%3), "dst_port": 123.0, "proto": 17.0, "bytes": 300.0}},
					{Tenant: tenant, Device: id, Kind: event.DeviceMetrics, Time: t, Attrs: map[string]any{"listening_ports": []any{22.0}}},
					{Tenant: tenant, Device: id, Kind: event.NetSession, Time: t, Attrs: map[string]any{"status": "interim", "imsi": imsiOf(f, i), "imei": imeiOf(f, i)}},
				}
				if h == 0 {
					evs = append(evs, event.Event{Tenant: tenant, Device: id, Kind: event.MQTTConnect, Time: t, Attrs: map[string]any{"remote": ip + ":4000", "session_id": "s1"}})
				}
				for k := range evs {
					_ = e.Process(ctx, &evs[k])
				}
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		if e.Devices() != n {
			b.Fatalf("%d devices", e.Devices())
		}
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "bytes/device")
		runtime.KeepAlive(e)
	}
}

// BenchmarkLatencyPaced feeds the stream at a steady 50,000 events/s (in
// 1 ms batches of 50) and reports the p99 delay from an event's arrival
// time (its slot in the schedule) to the Raise of the alert it caused.
// Run with -benchtime=1x.
func BenchmarkLatencyPaced(b *testing.B) {
	w, evs := benchStream(b)
	// warm the engine unpaced up to shortly before the attacks, then pace
	// 100,000 events (2 s) that include them
	half := 0
	for half < len(evs) && evs[half].Time.Before(t0.Add(30*time.Hour-time.Minute)) {
		half++
	}
	evs = evs[:min(len(evs), half+100_000)]
	ctx := context.Background()
	for b.Loop() {
		s := &latSink{}
		e := w.engine(s, Settings{})
		for i := range evs[:half] {
			_ = e.Process(ctx, &evs[i])
		}
		s.lat = s.lat[:0]
		var all []time.Duration
		start := time.Now()
		for i := half; i < len(evs); i++ {
			due := start.Add(time.Duration(i-half) * 20 * time.Microsecond) // 50k/s
			if (i-half)%50 == 0 {
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
			}
			s.start = due
			t0 := time.Now()
			_ = e.Process(ctx, &evs[i])
			all = append(all, time.Since(t0)+max(0, t0.Sub(due)))
		}
		slices.Sort(all)
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-event-µs")
		if len(s.lat) > 0 {
			slices.Sort(s.lat)
			b.ReportMetric(float64(s.lat[len(s.lat)*99/100].Microseconds()), "p99-raise-µs")
			b.ReportMetric(float64(len(s.lat)), "raises")
		}
	}
}
