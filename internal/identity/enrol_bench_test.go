package identity

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// BenchmarkEnrolment is the issue's benchmark in one run: first the
// crypto-bound rate on every core (CSR parse and signature check, then
// certificate signing, no store), then end-to-end token enrolments (CSR
// in, token checked and spent, certificate out, stored with its audit
// records and fsync'd; concurrent enrolments share commits) on SQLite and,
// when GARRISON_TEST_POSTGRES_URL is set, PostgreSQL. The end-to-end
// sub-benchmarks report "of-crypto", their rate over the crypto bound of
// the same run. Run with -cpu 2 (GOMAXPROCS 2):
//
//	go test -run XXX -bench Enrolment -benchmem -cpu 2 -benchtime 3s ./internal/identity
func BenchmarkEnrolment(b *testing.B) {
	var bound float64
	b.Run("crypto-bound", func(b *testing.B) {
		f := newFixture(b, newMemStore())
		ctx := context.Background()
		if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
			b.Fatal(err)
		}
		csrs := csrPool(b, 64)
		var n atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		c0 := cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				csr, err := ParseCSR(csrs[i%int64(len(csrs))], "acme", "meter-1")
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := f.svc.sign(ctx, "acme", "meter-1", csr.PublicKey, &IssueOptions{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportCPU(b, c0, b.N)
		bound = float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(bound, "certs/s")
	})
	stores := map[string]func(testing.TB) store.Store{"sqlite": func(t testing.TB) store.Store { return openSQLite(t) }}
	if os.Getenv("GARRISON_TEST_POSTGRES_URL") != "" {
		stores["postgres"] = func(t testing.TB) store.Store { return pgtest.Open(t) }
	}
	for _, name := range []string{"sqlite", "postgres"} {
		open, ok := stores[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			b.SetParallelism(32)
			benchEnrol(b, open(b), bound)
		})
	}
}

// countingStore counts Updates, to report how many enrolments a commit
// carries.
type countingStore struct {
	store.Store
	updates atomic.Int64
}

func (s *countingStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	s.updates.Add(1)
	return s.Store.Update(ctx, fn)
}

func benchEnrol(b *testing.B, real store.Store, bound float64) {
	st := &countingStore{Store: real}
	f := newFixture(b, st)
	ctx := context.Background()
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	// The registry knows every device before it enrols (a manifest).
	prefix := fmt.Sprintf("n%d-", b.N)
	for lo := 0; lo < b.N; lo += 5000 {
		err := st.Update(ctx, func(tx store.Tx) error {
			for i := lo; i < min(lo+5000, b.N); i++ {
				d := store.Device{Tenant: "acme", ID: deviceID(fmt.Sprintf("%s%d", prefix, i)), Model: "m100", State: store.StateRegistered}
				if err := tx.Devices().Create(ctx, d); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	secret, _, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Count: max(b.N, 1), Models: []string{"m100"}}, "op-1")
	if err != nil {
		b.Fatal(err)
	}
	csrs := csrPool(b, 64)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime()
	u0 := st.updates.Load()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1) - 1
			if _, err := f.svc.Enrol(ctx, "acme", deviceID(fmt.Sprintf("%s%d", prefix, i)), secret, csrs[i%int64(len(csrs))]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, c0, b.N)
	b.ReportMetric(float64(b.N)/float64(max(1, st.updates.Load()-u0)), "enrolments/commit")
	rate := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(rate, "enrolments/s")
	if bound > 0 {
		b.ReportMetric(rate/bound, "of-crypto")
	}
}
