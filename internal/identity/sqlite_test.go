package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/crypto/ocsp"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

func openSQLite(t testing.TB) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "garrison.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func auditCount(t testing.TB, st store.Store, tenant string) int {
	t.Helper()
	var n int
	err := st.View(context.Background(), func(tx store.Tx) error {
		recs, err := tx.Audit().Range(context.Background(), event.TenantID(tenant), 0, 1<<20)
		n = len(recs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSQLiteLifecycle runs the whole identity life on the embedded store:
// create, restart, concurrent issuance (group commit), batch issuance,
// rotation, revocation, CRL and OCSP.
func TestSQLiteLifecycle(t *testing.T) { testLifecycle(t, openSQLite(t)) }

// TestPostgresLifecycle is the same on PostgreSQL (skipped unless
// GARRISON_TEST_POSTGRES_URL is set).
func TestPostgresLifecycle(t *testing.T) { testLifecycle(t, pgtest.Open(t)) }

func testLifecycle(t *testing.T, db store.Store) {
	ctx := context.Background()
	f := newFixture(t, db)
	first, err := f.svc.Issue(ctx, "acme", "meter-0", deviceCSR(t, "meter-0"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Restart: a new Service on the same database reuses the CAs.
	g := newFixture(t, db)
	if _, err := g.svc.Verify(ctx, "acme", []*x509.Certificate{first.Cert}); err != nil {
		t.Fatal(err)
	}
	cas, _ := g.svc.ListCAs(ctx, "acme")
	if len(cas) != 1 {
		t.Fatalf("%d issuing CAs after restart", len(cas))
	}
	// Concurrent issuance shares transactions and loses nothing.
	const n = 40
	var wg sync.WaitGroup
	res := make([]Issued, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			dev := "meter-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			res[i], errs[i] = g.svc.Issue(ctx, "acme", deviceID(dev), deviceCSR(t, dev), IssueOptions{})
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if _, err := g.svc.Verify(ctx, "acme", []*x509.Certificate{res[i].Cert}); err != nil {
			t.Fatal(err)
		}
	}
	// Batch: good ones stored, bad one reported, audit per certificate.
	before := auditCount(t, db, "acme")
	out, err := g.svc.IssueBatch(ctx, "acme", []BatchRequest{
		{Device: "b-1", CSR: deviceCSR(t, "b-1")},
		{Device: "b-2", CSR: deviceCSR(t, "someone-else")},
		{Device: "b-3", CSR: deviceCSR(t, "b-3")},
	}, IssueOptions{Reason: "batch"})
	if err != nil || out[0].Err != nil || !errors.Is(out[1].Err, ErrBadCSR) || out[2].Err != nil {
		t.Fatalf("batch: %v %+v", err, out)
	}
	if got := auditCount(t, db, "acme"); got != before+2 {
		t.Fatalf("audit records %d -> %d, want +2", before, got)
	}
	if _, err := g.svc.Rotate(ctx, "acme", "op-1"); err != nil {
		t.Fatal(err)
	}
	if err := g.svc.Revoke(ctx, "acme", first.Record.Serial, ReasonKeyCompromise, "op-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := g.svc.Verify(ctx, "acme", []*x509.Certificate{first.Cert}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked verified: %v", err)
	}
	der, err := g.svc.CRL(ctx, "acme", first.Record.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("CRL %v %+v", err, crl)
	}
	if err := crl.CheckSignatureFrom(first.Chain[0]); err != nil {
		t.Fatal(err)
	}
	req, _ := ocsp.CreateRequest(first.Cert, first.Chain[0], nil)
	resp, err := g.svc.OCSP(ctx, "acme", req)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ocsp.ParseResponseForCert(resp, first.Cert, first.Chain[0])
	if err != nil || r.Status != ocsp.Revoked {
		t.Fatalf("OCSP %v %+v", err, r)
	}
	// Every change left an intact hash-chained audit record.
	rep, err := audit.Verify(ctx, db, "acme")
	if err != nil || !rep.OK || rep.HeadSeq != int64(auditCount(t, db, "acme")) || rep.HeadSeq < n+5 {
		t.Fatalf("audit chain: %v %s", err, rep)
	}
}
