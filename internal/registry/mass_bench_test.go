package registry_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// BenchmarkMassQuarantine100k quarantines 100,000 active devices selected by
// model, in batches (each batch one transaction with every device's audit
// record), on SQLite. Setup writes the devices straight to the store
// (untimed). The target is under 10 s for quarantine, revoke and
// kick together; this measures the registry part.
func BenchmarkMassQuarantine100k(b *testing.B) {
	const n = 100_000
	for _, batch := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				f := newFixture(b)
				if err := f.st.Update(ctx, func(tx store.Tx) error {
					for j := 0; j < n; j++ {
						d := dev("acme", fmt.Sprintf("dev-%06d", j))
						d.State, d.CreatedAt, d.UpdatedAt = store.StateActive, t0, t0
						if err := tx.Devices().Create(ctx, d); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				sel, err := registry.ParseSelector("model=acme-meter-2,state=active")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				res, err := f.reg.SetStateSelected(ctx, event.TenantID("acme"), sel, store.StateQuarantined, "op", "bench", batch, nil)
				if err != nil || res.Changed != n {
					b.Fatalf("mass quarantine: %v (%+v)", err, res)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}
