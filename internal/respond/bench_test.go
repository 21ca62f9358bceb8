package respond_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
)

// timedQuarantiner records when each quarantine took effect.
type timedQuarantiner struct {
	respond.Quarantiner
	done map[event.DeviceID]time.Time
}

func (q *timedQuarantiner) Quarantine(ctx context.Context, t respond.Target) (respond.Undo, error) {
	u, err := q.Quarantiner.Quarantine(ctx, t)
	q.done[t.Device] = time.Now()
	return u, err
}

// BenchmarkHandleFirstAction measures, on SQLite with the default playbooks
// and the registry as back-end, the latency from Handle(alert) to its first
// action taken (the device quarantined in the registry), and to Handle's
// return (the quarantine and the notify both recorded). Each iteration is one
// alert on a distinct device; the guard is raised out of the way.
func BenchmarkHandleFirstAction(b *testing.B) {
	ctx := context.Background()
	tq := &timedQuarantiner{done: map[event.DeviceID]time.Time{}}
	f := newFixture(b, func(o *respond.Options) {
		tq.Quarantiner = o.Quarantiner
		o.Quarantiner = tq
		o.Guard = respond.Guard{MaxDevices: 1 << 30}
	})
	const fleet = 5000
	f.fleet(b, "acme", fleet)
	first := make([]time.Duration, 0, b.N)
	whole := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dev := event.DeviceID(fmt.Sprintf("dev-%05d", i%fleet))
		a := mkAlert("acme", fmt.Sprintf("al-%d", i), dev, alert.SIMIMEIMismatch, t0)
		if i >= fleet { // every device is quarantined once; later alerts find it so
			a.Kind = alert.TelnetScan
		}
		start := time.Now()
		if err := f.eng.Handle(ctx, a); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		whole = append(whole, end.Sub(start))
		if at, ok := tq.done[dev]; ok && at.After(start) {
			first = append(first, at.Sub(start))
		}
	}
	b.StopTimer()
	q := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(first, 0.50), "p50-first-ms")
	b.ReportMetric(q(first, 0.99), "p99-first-ms")
	b.ReportMetric(q(whole, 0.99), "p99-handle-ms")
}
