package bus

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// benchBus opens a bus for a benchmark: "embedded" in a temp dir or
// "external" on GARRISON_TEST_NATS_URL (skipped when unset).
func benchBus(b *testing.B, mode string) *Bus {
	b.Helper()
	o := Options{DataDir: b.TempDir()}
	if mode == "external" {
		url := os.Getenv(natsURLEnv)
		if url == "" {
			b.Skipf("%s not set: external benchmark skipped", natsURLEnv)
		}
		var tok [6]byte
		for i := range tok {
			tok[i] = "abcdefghijklmnopqrstuvwxyz"[time.Now().UnixNano()%26]
			time.Sleep(time.Nanosecond)
		}
		o = Options{URL: url, StreamPrefix: "B" + string(tok[:]) + "_", SubjectPrefix: "b" + string(tok[:])}
	}
	bus, err := Open(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if mode == "external" {
			if err := bus.DeleteStreams(context.Background()); err != nil {
				b.Error(err)
			}
		}
		_ = bus.Close()
	})
	return bus
}

// benchEvents are realistic net.flow events over 1000 devices.
func benchEvents() []*event.Event {
	evs := make([]*event.Event, 1024)
	for i := range evs {
		evs[i] = &event.Event{
			ID: fmt.Sprintf("bench-%06d", i), Tenant: "acme", Device: event.DeviceID(fmt.Sprintf("meter-%04d", i%1000)),
			Kind: event.NetFlow, Time: t0.Add(time.Duration(i) * time.Second), Source: "flows",
			Attrs: map[string]any{"src_ip": "10.0.0.7", "src_port": float64(40000 + i), "dst_ip": "192.0.2.10",
				"dst_port": float64(443), "proto": float64(6), "bytes": float64(1200), "packets": float64(3), "exporter": "10.0.0.1"},
		}
	}
	return evs
}

var benchModes = []string{"embedded", "external"}

// BenchmarkPublishAsync: events/s stored (acknowledged) with a window of
// outstanding acks; one Flush at the end so every event counted was acked.
func BenchmarkPublishAsync(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode, func(b *testing.B) {
			bus := benchBus(b, mode)
			evs := benchEvents()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := bus.PublishAsync(ctx, evs[i%len(evs)]); err != nil {
					b.Fatal(err)
				}
			}
			if err := bus.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkPublishSync: one round trip per event (Publish waits for the ack).
func BenchmarkPublishSync(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode, func(b *testing.B) {
			bus := benchBus(b, mode)
			evs := benchEvents()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := bus.Publish(ctx, evs[i%len(evs)]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkPublishConsume: events/s published (async, acknowledged) and
// handled by a durable consumer (batched AckAll acks) at the same time; the
// clock stops when the consumer has handled the last one. "single" sends one
// JetStream message per event (PublishAsync), "batched" gathers events per
// subject (PublishBatched, default linger and limits); same events, same run.
func BenchmarkPublishConsume(b *testing.B) {
	for _, mode := range benchModes {
		for _, way := range []string{"single", "batched"} {
			b.Run(mode+"/"+way, func(b *testing.B) {
				bus := benchBus(b, mode)
				publish := bus.PublishAsync
				if way == "batched" {
					publish = bus.PublishBatched
				}
				benchPublishConsume(b, bus, publish)
			})
		}
	}
}

func benchPublishConsume(b *testing.B, bus *Bus, publish func(context.Context, *event.Event) error) {
	evs := benchEvents()
	ctx := context.Background()
	var handled atomic.Int64
	done := make(chan struct{})
	target := int64(b.N)
	c, err := bus.Consume(ctx, ConsumerOptions{Name: "bench", Deliver: DeliverNew, Batch: 1024, Handler: func(context.Context, *event.Event) error {
		if handled.Add(1) == target {
			close(done)
		}
		return nil
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := publish(ctx, evs[i%len(evs)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := bus.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("consumer handled %d of %d", handled.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.StopTimer()
	c.Stop()
}

// BenchmarkConsume: events/s handled and acknowledged by one durable
// consumer draining a stream filled beforehand (publishing not timed).
func BenchmarkConsume(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode, func(b *testing.B) {
			bus := benchBus(b, mode)
			evs := benchEvents()
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				if err := bus.PublishAsync(ctx, evs[i%len(evs)]); err != nil {
					b.Fatal(err)
				}
			}
			if err := bus.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			var handled atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			c, err := bus.Consume(ctx, ConsumerOptions{Name: "drain", Batch: 1024, Handler: func(context.Context, *event.Event) error {
				if handled.Add(1) == target {
					close(done)
				}
				return nil
			}})
			if err != nil {
				b.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				b.Fatalf("consumer handled %d of %d", handled.Load(), b.N)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			b.StopTimer()
			c.Stop()
		})
	}
}
