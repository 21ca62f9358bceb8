package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// BenchmarkAuditedWrite measures audit-logged writes: each write is one
// device created plus its audit record appended, in the same transaction.
// batch writes share one Update (one commit, one fsync). The writes/s metric
// is what an operator would see; ns/op is per write, not per Update.
func BenchmarkAuditedWrite(b *testing.B) {
	for _, be := range backends {
		for _, batch := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/batch=%d", be.name, batch), func(b *testing.B) {
				s, _ := be.open(b)
				ctx := context.Background()
				details := json.RawMessage(`{"model":"meter-x","state":"registered","source":"api"}`)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for done := 0; done < b.N; {
					n := min(batch, b.N-done)
					err := s.Update(ctx, func(tx store.Tx) error {
						for j := range n {
							id := event.DeviceID(fmt.Sprintf("d%09d", done+j))
							if err := tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: id, Model: "meter-x",
								IMSI: fmt.Sprintf("2341500%08d", done+j), State: store.StateRegistered, CreatedAt: t0, UpdatedAt: t0}); err != nil {
								return err
							}
							if _, err := Append(ctx, tx, Entry{Tenant: "acme", Time: t0, Actor: "op:ann",
								Action: "device.create", Target: "device/" + string(id), Details: details}); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
					done += n
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
			})
		}
	}
}

// BenchmarkAuditedWriteParallel is BenchmarkAuditedWrite with one write per
// Update from 8 goroutines per CPU, each goroutine its own tenant: SQLite
// serializes them on its one writer, PostgreSQL runs them side by side.
func BenchmarkAuditedWriteParallel(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			s, _ := be.open(b)
			ctx := context.Background()
			var next atomic.Int64
			b.SetParallelism(8)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				tenant := event.TenantID(fmt.Sprintf("t%d", next.Add(1)))
				for i := 0; pb.Next(); i++ {
					id := event.DeviceID(fmt.Sprintf("d%09d", i))
					err := s.Update(ctx, func(tx store.Tx) error {
						if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: id, Model: "meter-x",
							State: store.StateRegistered, CreatedAt: t0, UpdatedAt: t0}); err != nil {
							return err
						}
						_, err := Append(ctx, tx, Entry{Tenant: tenant, Time: t0, Actor: "op:ann",
							Action: "device.create", Target: "device/" + string(id)})
						return err
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
		})
	}
}
