package app

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BenchmarkMassServe runs the mass actions of issue 7 through the runner
// serve assembles (startMass): a running app on SQLite with its embedded
// bus, its MQTT broker (no live sessions: a kick still looks each device
// up) and its identity service. GARRISON_BENCH_DEVICES (default 100,000)
// active devices, each with a certificate issued by the tenant's CA
// (IssueBatch; setup not timed), are quarantined, then revoked (state and
// every certificate), then kicked, one job after the other, each timed
// from Submit until the job is reported done. Each job is then checked in
// the store: every device moved, every certificate revoked, the audit
// records written. Metrics per job: wall seconds, devices/s and process
// CPU seconds (the steadier figure on a loaded machine); "all" is the sum;
// KIND-events-s is from Submit until a consumer of the bus's SECURITY
// stream got the job's last device.state event (the events follow the
// job, published in the background); crl-s is the regeneration of the CRL
// listing every revoked certificate.
// GARRISON_BENCH_CPUPROFILE=FILE writes a CPU profile of the jobs alone.
func BenchmarkMassServe(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("GARRISON_BENCH_DEVICES")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	const tenant = event.TenantID("acme")
	for range b.N {
		b.StopTimer()
		a := massApp(ctx, b)
		massSetup(ctx, b, a, tenant, n)
		massCRL(ctx, b, a, tenant, 0) // cached now: the revoke job must make it stale
		svc, err := a.response.get()
		if err != nil {
			b.Fatal(err)
		}
		var wallAll, cpuAll float64
		// The device.state events of the quarantine and revoke jobs are
		// published behind the jobs: a consumer of the SECURITY stream
		// notes when the n-th and the 2n-th was delivered.
		var states atomic.Int64
		var stored [2]atomic.Int64 // unix nanoseconds
		c, err := a.Bus().Consume(ctx, bus.ConsumerOptions{Name: "mass-bench", Stream: bus.Security,
			Handler: func(_ context.Context, e *event.Event) error {
				if e.Kind == event.DeviceState && e.Tenant == tenant {
					if k := states.Add(1); k%int64(n) == 0 && k <= int64(2*n) {
						stored[k/int64(n)-1].Store(time.Now().UnixNano())
					}
				}
				return nil
			}})
		if err != nil {
			b.Fatal(err)
		}
		if path := os.Getenv("GARRISON_BENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				b.Fatal(err)
			}
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
		b.StartTimer()
		for _, kind := range []string{respond.MassQuarantine, respond.MassRevoke, respond.MassKick} {
			after := auditHead(ctx, b, a, tenant)
			cpu0, t0 := cpuSeconds(), time.Now()
			j, err := svc.Submit(ctx, tenant, respond.MassRequest{Kind: kind, Selector: "model=bench-meter", Reason: "bench"}, "bench")
			if err != nil {
				b.Fatal(err)
			}
			for j.State == respond.JobRunning {
				time.Sleep(5 * time.Millisecond)
				if j, err = svc.Job(ctx, tenant, j.ID); err != nil {
					b.Fatal(err)
				}
			}
			wall, cpu := time.Since(t0).Seconds(), cpuSeconds()-cpu0
			b.StopTimer()
			if j.State != respond.JobDone || j.Processed != n || j.Changed != n {
				b.Fatalf("%s job: %+v", kind, j)
			}
			massCheck(ctx, b, a, tenant, kind, j, n, after)
			if kind != respond.MassKick {
				last := &stored[0]
				if kind == respond.MassRevoke {
					last = &stored[1]
				}
				for deadline := time.Now().Add(5 * time.Minute); last.Load() == 0; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatalf("%s: %d device.state events delivered", kind, states.Load())
					}
				}
				b.ReportMetric(time.Unix(0, last.Load()).Sub(t0).Seconds(), kind+"-events-s")
			}
			if kind == respond.MassRevoke {
				t := time.Now()
				massCRL(ctx, b, a, tenant, n)
				b.ReportMetric(time.Since(t).Seconds(), "crl-s")
			}
			b.StartTimer()
			wallAll += wall
			cpuAll += cpu
			b.ReportMetric(wall, kind+"-s")
			b.ReportMetric(float64(n)/wall, kind+"-devices/s")
			b.ReportMetric(cpu, kind+"-cpu-s")
		}
		b.StopTimer()
		c.Stop()
		b.ReportMetric(wallAll, "all-s")
		b.ReportMetric(cpuAll, "all-cpu-s")
		b.ReportMetric(float64(n), "devices")
		if err := a.Stop(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// massApp starts an app as serve runs it (SQLite, bus, broker, identity,
// detection and response) on loopback ports.
func massApp(ctx context.Context, tb testing.TB) *App {
	tb.Helper()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(tb.TempDir(), "data")
	cfg.API.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Broker.Addr = "127.0.0.1:0"
	cfg.Log.Level = "error"
	a, err := New(cfg, nil, Options{KeyPassphrase: []byte("mass-bench-passphrase-not-secret")})
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	return a
}

// massSetup creates the tenant and n active devices, each with a
// certificate of the tenant's issuing CA (one CSR without a subject serves
// every device: identity binds the device id itself).
func massSetup(ctx context.Context, b testing.TB, a *App, tenant event.TenantID, n int) {
	b.Helper()
	now := time.Now().UTC()
	if err := a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for i := range n {
			d := store.Device{Tenant: tenant, ID: event.DeviceID(fmt.Sprintf("meter-%06d", i)), Model: "bench-meter",
				State: store.StateActive, CreatedAt: now, UpdatedAt: now}
			if err := tx.Devices().Create(ctx, d); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 5000
	var wg sync.WaitGroup
	errs := make(chan error, n/chunk+1)
	sem := make(chan struct{}, 2)
	for lo := 0; lo < n; lo += chunk {
		reqs := make([]identity.BatchRequest, 0, chunk)
		for i := lo; i < min(n, lo+chunk); i++ {
			reqs = append(reqs, identity.BatchRequest{Device: event.DeviceID(fmt.Sprintf("meter-%06d", i)), CSR: csr})
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := a.Identity().IssueBatch(ctx, tenant, reqs, identity.IssueOptions{Actor: "bench"})
			if err == nil {
				for _, r := range res {
					if r.Err != nil {
						err = r.Err
						break
					}
				}
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// massCRL fetches the CRL of the tenant's issuing CA, checks it lists want
// certificates, and returns the CA's id.
func massCRL(ctx context.Context, b testing.TB, a *App, tenant event.TenantID, want int) string {
	b.Helper()
	cas, err := a.Identity().ListCAs(ctx, tenant)
	if err != nil {
		b.Fatal(err)
	}
	for _, ca := range cas {
		if ca.Role != identity.RoleIssuing {
			continue
		}
		der, err := a.Identity().CRL(ctx, tenant, ca.ID)
		if err != nil {
			b.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			b.Fatal(err)
		}
		if got := len(crl.RevokedCertificateEntries); got != want {
			b.Fatalf("CRL of %s lists %d certificates, want %d", ca.ID, got, want)
		}
		return ca.ID
	}
	b.Fatal("no issuing CA")
	return ""
}

// auditHead is the tenant's last audit sequence number (0: none yet).
func auditHead(ctx context.Context, b testing.TB, a *App, tenant event.TenantID) int64 {
	b.Helper()
	var seq int64
	if err := a.Store().View(ctx, func(tx store.Tx) error {
		r, err := tx.Audit().Head(ctx, tenant)
		seq = r.Seq
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return seq
}

// massCheck verifies in the store what a done job must have left: every
// device in the job's state, every certificate revoked after a revoke, and
// the job's audit records after sequence number after (mass.submit, one
// per page counting n devices in all, mass.done).
func massCheck(ctx context.Context, b testing.TB, a *App, tenant event.TenantID, kind string, j store.MassJob, n int, after int64) {
	b.Helper()
	want := map[string]store.DeviceState{respond.MassQuarantine: store.StateQuarantined,
		respond.MassRevoke: store.StateRevoked, respond.MassKick: store.StateRevoked}[kind]
	if err := a.Store().View(ctx, func(tx store.Tx) error {
		devs, err := tx.Devices().List(ctx, tenant, store.DeviceFilter{Model: "bench-meter"})
		if err != nil {
			return err
		}
		if len(devs) != n {
			return fmt.Errorf("%d devices listed, want %d", len(devs), n)
		}
		for _, d := range devs {
			if d.State != want {
				return fmt.Errorf("%s: device %s is %s, want %s", kind, d.ID, d.State, want)
			}
		}
		if kind == respond.MassRevoke {
			cas, err := tx.CAs().List(ctx, tenant)
			if err != nil {
				return err
			}
			revoked := 0
			for _, ca := range cas {
				rs, err := tx.Certificates().Revoked(ctx, tenant, ca.ID, time.Now())
				if err != nil {
					return err
				}
				revoked += len(rs)
			}
			if revoked != n {
				return fmt.Errorf("revoke: %d certificates revoked, want %d", revoked, n)
			}
		}
		actions, count, serials := map[string]int{}, 0, 0
		for {
			recs, err := tx.Audit().Range(ctx, tenant, after, 1000)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				break
			}
			for _, r := range recs {
				after = r.Seq
				if r.Target != "mass:"+j.ID {
					continue
				}
				actions[r.Action]++
				if r.Action == "mass."+kind {
					var d struct {
						Count        int
						Certificates []string
					}
					if err := json.Unmarshal(r.Details, &d); err != nil {
						return err
					}
					count += d.Count
					serials += len(d.Certificates)
				}
			}
		}
		if actions["mass.submit"] != 1 || actions["mass.done"] != 1 || count != n {
			return fmt.Errorf("%s: audit records %v over %d devices, want %d", kind, actions, count, n)
		}
		if kind == respond.MassRevoke && serials != n {
			return fmt.Errorf("revoke: audit records list %d certificate serials, want %d", serials, n)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}
