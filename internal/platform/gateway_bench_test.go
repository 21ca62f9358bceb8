package platform

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
)

type discardPub struct{ n int }

func (d *discardPub) Publish(context.Context, *event.Event) error { d.n++; return nil }

// BenchmarkGateway measures the simulated APN's cost per record: encoding
// and the accounting server or collector handling it (publishing is a
// no-op here; the bus's cost is the bus benchmarks').
//
//	go test ./internal/platform -run XX -bench Gateway -benchmem
func BenchmarkGateway(b *testing.B) {
	dir := detect.NewMemDirectory()
	const devices = 200
	for i := range devices {
		dir.Put(detect.Profile{Tenant: "acme", ID: event.DeviceID(fmt.Sprintf("meter-%04d", i)), IMSI: fmt.Sprintf("2140100000%05d", i), IMEI: "490154203237518"})
	}
	setup := func(b *testing.B) (*apnGateway, *clock.Manual, *discardPub) {
		clk := clock.NewManual(gwStart)
		pub := &discardPub{}
		gw, err := newAPNGateway(pub, directorySIMs{dir}, clk, "acme", slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		return gw, clk, pub
	}
	session := func(i int, status string) *event.Event {
		return &event.Event{ID: "x", Tenant: "acme", Device: event.DeviceID(fmt.Sprintf("meter-%04d", i%devices)), Kind: event.NetSession, Time: gwStart,
			Attrs: map[string]any{"status": status, "session_id": fmt.Sprintf("%08x0001", i%devices), "imsi": fmt.Sprintf("2140100000%05d", i%devices),
				"imei": "490154203237518", "ip": netip.AddrFrom4([4]byte{10, 64, byte(i % devices / 254), byte(i%devices%254 + 1)}).String(),
				"apn": "meters.example.private", "cell": fmt.Sprintf("214-01-%d--186", 2020+i%devices/20), "lat": 40.41, "lon": -3.71, "accuracy_m": 2000.0,
				"bytes_up": 15000.0, "bytes_down": 3200.0}}
	}
	b.Run("session", func(b *testing.B) {
		gw, clk, pub := setup(b)
		ctx := context.Background()
		for i := range devices {
			if err := gw.Publish(ctx, session(i, "start")); err != nil {
				b.Fatal(err)
			}
		}
		evs := make([]*event.Event, devices)
		for i := range evs {
			evs[i] = session(i, "interim")
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			clk.Advance(time.Second)
			ev := evs[i%devices]
			ev.Time = clk.Now()
			if err := gw.Publish(ctx, ev); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(pub.n)/float64(b.N), "events/op")
	})
	b.Run("flow", func(b *testing.B) {
		gw, clk, pub := setup(b)
		ctx := context.Background()
		for i := range devices {
			if err := gw.Publish(ctx, session(i, "start")); err != nil {
				b.Fatal(err)
			}
		}
		evs := make([]*event.Event, devices)
		for i := range evs {
			s := session(i, "start")
			evs[i] = &event.Event{ID: "x", Tenant: "acme", Device: s.Device, Kind: event.NetFlow, Time: gwStart,
				Attrs: map[string]any{"src_ip": s.Attrs["ip"], "src_port": 40001.0, "dst_ip": "198.51.100.7", "dst_port": 8883.0, "proto": 6.0,
					"bytes": 12000.0, "packets": 30.0, "direction": "out"}}
		}
		pub.n = 0
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			clk.Advance(100 * time.Millisecond)
			ev := evs[i%devices]
			ev.Time = clk.Now()
			if err := gw.Publish(ctx, ev); err != nil {
				b.Fatal(err)
			}
		}
		if err := gw.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(pub.n)/float64(b.N), "events/op")
	})
}
