package identity

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// csrPool returns n CSRs with no subject, valid for any device.
func csrPool(b *testing.B, n int) [][]byte {
	b.Helper()
	out := make([][]byte, n)
	for i := range out {
		out[i] = makeCSR(b, newKey(b), nil)
	}
	return out
}

// BenchmarkCryptoBound is the crypto-bound rate of one issuance: CSR parse,
// validation and signature check, then certificate signing. Run with -cpu 1
// for the per-core figure.
func BenchmarkCryptoBound(b *testing.B) {
	f := newFixture(b, newMemStore())
	ctx := context.Background()
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	csrs := csrPool(b, 64)
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime()
	for i := 0; b.Loop(); i++ {
		csr, err := ParseCSR(csrs[i%len(csrs)], "acme", "meter-1")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.svc.sign(ctx, "acme", "meter-1", csr.PublicKey, &IssueOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, c0, b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

func benchIssue(b *testing.B, st store.Store) {
	f := newFixture(b, st)
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
			dev := deviceID(fmt.Sprintf("meter-%d", i))
			if _, err := f.svc.Issue(ctx, "acme", dev, csrs[i%int64(len(csrs))], IssueOptions{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, c0, b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// BenchmarkIssueSQLite is end-to-end Issue (CSR in, certificate out,
// stored with its audit record, fsync'd) on the embedded store, with
// concurrent callers sharing commits (-cpu sets GOMAXPROCS; RunParallel
// runs GOMAXPROCS callers, set -test.parallelism... via b.SetParallelism).
func BenchmarkIssueSQLite(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%dxP", par), func(b *testing.B) {
			b.SetParallelism(par)
			benchIssue(b, openSQLite(b))
		})
	}
}

func BenchmarkIssuePostgres(b *testing.B) {
	pgtest.URL(b)
	b.SetParallelism(16)
	benchIssue(b, pgtest.Open(b))
}

// BenchmarkIssueBatchSQLite issues 256 certificates per IssueBatch call.
func BenchmarkIssueBatchSQLite(b *testing.B) {
	f := newFixture(b, openSQLite(b))
	ctx := context.Background()
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	csrs := csrPool(b, 64)
	const size = 256
	reqs := make([]BatchRequest, size)
	total := 0
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime()
	for i := 0; b.Loop(); i++ {
		for j := range reqs {
			reqs[j] = BatchRequest{Device: deviceID(fmt.Sprintf("m-%d-%d", i, j)), CSR: csrs[j%len(csrs)]}
		}
		if _, err := f.svc.IssueBatch(ctx, "acme", reqs, IssueOptions{}); err != nil {
			b.Fatal(err)
		}
		total += size
	}
	reportCPU(b, c0, total)
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "certs/s")
}

// BenchmarkOCSP answers OCSP requests for a good certificate (parse, issuer
// match, store lookup, sign) on the SQLite store.
func BenchmarkOCSP(b *testing.B) {
	f := newFixture(b, openSQLite(b))
	ctx := context.Background()
	iss, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(b, "meter-1"), IssueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	req, _ := ocsp.CreateRequest(iss.Cert, iss.Chain[0], nil)
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.svc.OCSP(ctx, "acme", req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, c0, b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "responses/s")
}

// BenchmarkCRL100k generates the CRL of an issuing CA with 100,000 revoked
// certificates on the SQLite store (query, sort, sign), cache bypassed.
func BenchmarkCRL100k(b *testing.B) {
	db := openSQLite(b)
	f := newFixture(b, db)
	ctx := context.Background()
	ca, err := f.svc.EnsureCA(ctx, "acme")
	if err != nil {
		b.Fatal(err)
	}
	const n = 100_000
	now := f.clk.Now()
	err = db.Update(ctx, func(tx store.Tx) error {
		for i := range n {
			sn := new(big.Int).Lsh(big.NewInt(int64(i+1)), 64).Text(16)
			c := store.Certificate{Tenant: "acme", Serial: sn, Device: deviceID(fmt.Sprintf("d-%d", i)), Issuer: ca.ID,
				DER: []byte{0x30}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour)}
			if err := tx.Certificates().Create(ctx, c); err != nil {
				return err
			}
			if err := tx.Certificates().Revoke(ctx, "acme", sn, now, ReasonKeyCompromise); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var cpu time.Duration
	for b.Loop() {
		f.svc.mu.Lock()
		clear(f.svc.crls)
		f.svc.mu.Unlock()
		c0 := cpuTime()
		der, err := f.svc.CRL(ctx, "acme", ca.ID)
		cpu += cpuTime() - c0
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if crl, err := x509.ParseRevocationList(der); err != nil || len(crl.RevokedCertificateEntries) != n {
			b.Fatalf("CRL: %v", err)
		}
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}
