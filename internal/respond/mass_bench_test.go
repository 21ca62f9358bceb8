package respond_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// countingKicker stands for the broker: a kick of a device without a live
// session is a map lookup there too.
type countingKicker struct{ n atomic.Int64 }

func (k *countingKicker) Disconnect(context.Context, respond.Target) error { k.n.Add(1); return nil }

func (k *countingKicker) SetState(event.TenantID, event.DeviceID, store.DeviceState) bool {
	k.n.Add(1)
	return false
}

// BenchmarkMass100k runs, on SQLite, the three mass actions of the issue's
// target one after the other over 100,000 active devices: quarantine (state
// and audit, set-based per page of 1000), revoke (state, certificates and
// audit) and kick (one Disconnect per device), each as a durable job with
// its progress committed per page. "bus" also publishes every device.state
// event to an embedded JetStream bus in the background (as serve does);
// events-drained-s is when the last of them was acknowledged.
// Setup (devices written straight to the store) is not timed.
func BenchmarkMass100k(b *testing.B) {
	const n = 100_000
	for _, withBus := range []bool{false, true} {
		name := "store"
		if withBus {
			name = "bus"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				f := newFixture(b, nil)
				if err := f.st.Update(ctx, func(tx store.Tx) error {
					if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "acme", CreatedAt: t0}); err != nil {
						return err
					}
					for j := 0; j < n; j++ {
						d := store.Device{Tenant: "acme", ID: event.DeviceID(fmt.Sprintf("dev-%06d", j)), Model: "acme-meter-2",
							State: store.StateActive, CreatedAt: t0, UpdatedAt: t0}
						if err := tx.Devices().Create(ctx, d); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				o := respond.MassOptions{Store: f.st, Clock: f.clk, Disconnecter: &countingKicker{}, Sessions: &countingKicker{},
					Logger: slog.New(slog.DiscardHandler), DrainTimeout: time.Hour}
				if withBus {
					bs, err := bus.Open(ctx, bus.Options{DataDir: b.TempDir()})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { _ = bs.Close() })
					o.Publisher = bs
				}
				m, err := respond.NewMass(o)
				if err != nil {
					b.Fatal(err)
				}
				sctx, stop := context.WithCancel(ctx)
				served := make(chan error, 1)
				go func() { served <- m.Serve(sctx) }()
				b.StartTimer()
				start := time.Now()
				for _, kind := range []string{respond.MassQuarantine, respond.MassRevoke, respond.MassKick} {
					t := time.Now()
					j, err := m.Submit(ctx, "acme", respond.MassRequest{Kind: kind, Selector: "model=acme-meter-2"}, "op")
					if err != nil {
						b.Fatal(err)
					}
					for j.State == respond.JobRunning {
						time.Sleep(2 * time.Millisecond)
						if j, err = m.Job(ctx, "acme", j.ID); err != nil {
							b.Fatal(err)
						}
					}
					if j.State != respond.JobDone || j.Changed != n {
						b.Fatalf("%s: %+v", kind, j)
					}
					b.ReportMetric(time.Since(t).Seconds(), kind+"-s")
				}
				b.ReportMetric(time.Since(start).Seconds(), "all-s")
				stop()
				if err := <-served; err != nil {
					b.Fatal(err)
				}
				// Serve returns once every queued device.state event is on the bus.
				b.ReportMetric(time.Since(start).Seconds(), "events-drained-s")
			}
		})
	}
}
