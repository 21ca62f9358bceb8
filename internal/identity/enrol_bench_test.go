package identity

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/garrisonhq/garrison/internal/event"
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
// the same run, "enrolments/commit" (how many share one transaction) and,
// for PostgreSQL on this machine, "server-cpu-µs/op": the CPU the server
// processes spent per enrolment, which competes for the same cores.
// 64 enrolments are in flight (SetParallelism 32 per GOMAXPROCS), or
// GARRISON_BENCH_INFLIGHT (a fleet enrolling at once keeps more).
// Run with -cpu 2 (GOMAXPROCS 2):
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
	par := inFlightPerProc(b)
	b.Run("sqlite", func(b *testing.B) {
		b.SetParallelism(par)
		benchEnrol(b, openSQLite(b), bound, nil, nil)
	})
	if os.Getenv(pgtest.EnvURL) != "" {
		b.Run("postgres", func(b *testing.B) {
			b.SetParallelism(par)
			db, serverCPU := openPGMeasured(b)
			// Planner statistics of the fresh schema, as a live database
			// has them (else plans change when autovacuum gets to it).
			analyze := func() {
				if _, err := db.Raw.Exec(context.Background(), `ANALYZE devices, settings, certificates, audit`); err != nil {
					b.Fatal(err)
				}
			}
			benchEnrol(b, db, bound, analyze, serverCPU)
		})
	}
}

// inFlightPerProc is the load generator's parallelism per GOMAXPROCS: 32
// (64 enrolments in flight on two cores), or GARRISON_BENCH_INFLIGHT
// enrolments in flight in all (a fleet enrolling at once keeps more).
func inFlightPerProc(b *testing.B) int {
	v := os.Getenv("GARRISON_BENCH_INFLIGHT")
	if v == "" {
		return 32
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("GARRISON_BENCH_INFLIGHT=%q: want a positive count", v)
	}
	return max(1, n/runtime.GOMAXPROCS(0))
}

// openPGMeasured opens a test store whose connections carry their own
// application_name, and returns with it a function that sums the CPU time
// of their server processes (from /proc: it reports 0 unless the server
// runs on this machine and its processes are readable).
func openPGMeasured(b *testing.B) (*pgtest.DB, func() time.Duration) {
	u, err := url.Parse(os.Getenv(pgtest.EnvURL))
	if err != nil {
		b.Fatal(err)
	}
	app := fmt.Sprintf("garrison-bench-%d", time.Now().UnixNano())
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	b.Setenv(pgtest.EnvURL, u.String())
	db := pgtest.Open(b)
	return db, func() time.Duration {
		rows, err := db.Raw.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, app)
		if err != nil {
			return 0
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return 0
		}
		var ticks int64
		for _, pid := range pids {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				return 0
			}
			// After the command (which may hold spaces) come state
			// (field 3) ... utime and stime (14, 15), in clock ticks.
			_, rest, _ := strings.Cut(string(stat), ") ")
			f := strings.Fields(rest)
			if len(f) < 13 {
				return 0
			}
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += ut + st
		}
		return time.Duration(ticks) * time.Second / 100 // USER_HZ
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

// benchEnrol runs prepare, if set, after registering the devices, and
// reports serverCPU's increase per enrolment, if set.
func benchEnrol(b *testing.B, real store.Store, bound float64, prepare func(), serverCPU func() time.Duration) {
	st := &countingStore{Store: real}
	f := newFixture(b, st)
	ctx := context.Background()
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	// The registry knows every device before it enrols (a manifest).
	// Prepared before the timer, as the crypto-bound CSRs are: the load
	// generator's own work is not the system under test.
	ids := make([]event.DeviceID, b.N)
	for i := range ids {
		ids[i] = deviceID(fmt.Sprintf("n%d-%d", b.N, i))
	}
	for lo := 0; lo < b.N; lo += 5000 {
		err := st.Update(ctx, func(tx store.Tx) error {
			for i := lo; i < min(lo+5000, b.N); i++ {
				d := store.Device{Tenant: "acme", ID: ids[i], Model: "m100", State: store.StateRegistered}
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
	if prepare != nil {
		prepare()
	}
	csrs := csrPool(b, 64)
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	c0, i0 := cpuTime(), idleTime()
	var s0 time.Duration
	if serverCPU != nil {
		s0 = serverCPU()
	}
	u0 := st.updates.Load()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1) - 1
			if _, err := f.svc.Enrol(ctx, "acme", ids[i], secret, csrs[i%int64(len(csrs))]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, c0, b.N)
	b.ReportMetric(float64((idleTime()-i0).Microseconds())/float64(b.N), "idle-µs/op")
	if serverCPU != nil {
		if s1 := serverCPU(); s0 > 0 && s1 > s0 {
			b.ReportMetric(float64((s1-s0).Microseconds())/float64(b.N), "server-cpu-µs/op")
		}
	}
	b.ReportMetric(float64(b.N)/float64(max(1, st.updates.Load()-u0)), "enrolments/commit")
	rate := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(rate, "enrolments/s")
	if bound > 0 {
		b.ReportMetric(rate/bound, "of-crypto")
	}
}
