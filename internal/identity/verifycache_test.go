package identity

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// cached tells whether iss's chain is in the verified cache for the
// tenant's current trust pool.
func cached(t *testing.T, f *fixture, tenant event.TenantID, c *x509.Certificate) bool {
	t.Helper()
	p, err := f.svc.pool(context.Background(), tenant)
	if err != nil {
		t.Fatal(err)
	}
	f.svc.verified.mu.Lock()
	defer f.svc.verified.mu.Unlock()
	e, ok := f.svc.verified.m[verifiedKey{tenant, sha256.Sum256(c.Raw)}]
	return ok && e.gen == p.gen
}

func issueFor(t *testing.T, f *fixture, device string) Issued {
	t.Helper()
	iss, err := f.svc.Issue(context.Background(), "acme", deviceID(device), deviceCSR(t, device), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// A revoked certificate is refused on its next connect although its chain
// is in the verified cache: revocation is read on every Verify.
func TestVerifyCacheRevokedRefused(t *testing.T) {
	f := newFixture(t, newMemStore())
	ctx := context.Background()
	iss := issueFor(t, f, "meter-1")
	for range 2 {
		if _, err := f.svc.VerifyClient(ctx, []*x509.Certificate{iss.Cert}); err != nil {
			t.Fatal(err)
		}
	}
	if !cached(t, f, "acme", iss.Cert) {
		t.Fatal("verified chain not cached")
	}
	if err := f.svc.Revoke(ctx, "acme", iss.Record.Serial, 1, "op-1"); err != nil {
		t.Fatal(err)
	}
	if !cached(t, f, "acme", iss.Cert) {
		t.Fatal("revocation is not a trust change: the chain entry should stay")
	}
	if _, err := f.svc.VerifyClient(ctx, []*x509.Certificate{iss.Cert}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Verify of a revoked, cached certificate: %v", err)
	}
}

// A cached leaf is matched by its whole DER: the same certificate with a
// broken signature is verified, and refused.
func TestVerifyCacheTamperedLeaf(t *testing.T) {
	f := newFixture(t, newMemStore())
	ctx := context.Background()
	iss := issueFor(t, f, "meter-1")
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert}); err != nil {
		t.Fatal(err)
	}
	der := append([]byte(nil), iss.Cert.Raw...)
	der[len(der)-3] ^= 0x01 // inside the signature
	bad, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{bad}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("tampered copy of a cached certificate: %v", err)
	}
	// Nor does a cached chain of one tenant verify for another.
	if _, err := f.svc.Verify(ctx, "tenant-b", []*x509.Certificate{iss.Cert}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("other tenant: %v", err)
	}
}

// Distrusting a CA drops its certificates' cached chains, whether through
// this service or by another process (seen after the pool's TTL); a
// rotation or an import (a new anchor set) drops every entry of the tenant.
func TestVerifyCacheTrustChanges(t *testing.T) {
	f := newFixture(t, newMemStore())
	ctx := context.Background()
	old := issueFor(t, f, "meter-1")
	verify := func(c *x509.Certificate) error {
		_, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c})
		return err
	}
	if err := verify(old.Cert); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Rotate(ctx, "acme", "op-1"); err != nil {
		t.Fatal(err)
	}
	if cached(t, f, "acme", old.Cert) {
		t.Fatal("cache entry survived a rotation")
	}
	if err := verify(old.Cert); err != nil {
		t.Fatalf("certificate of the retired, still trusted CA: %v", err)
	}
	if !cached(t, f, "acme", old.Cert) {
		t.Fatal("not cached again")
	}
	// The pool is rebuilt after its TTL: same anchors, the entry stays.
	f.clk.Advance(poolTTL + time.Second)
	if !cached(t, f, "acme", old.Cert) {
		t.Fatal("cache entry dropped by a rebuild of an unchanged pool")
	}
	if err := f.svc.SetTrusted(ctx, "acme", old.Record.Issuer, false, "op-1"); err != nil {
		t.Fatal(err)
	}
	if err := verify(old.Cert); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("certificate of a distrusted CA: %v", err)
	}
	if err := f.svc.SetTrusted(ctx, "acme", old.Record.Issuer, true, "op-1"); err != nil {
		t.Fatal(err)
	}
	if err := verify(old.Cert); err != nil {
		t.Fatalf("trusted again: %v", err)
	}
	// Another process distrusts it: only the store knows.
	err := f.st.Update(ctx, func(tx store.Tx) error {
		c, err := tx.CAs().Get(ctx, "acme", old.Record.Issuer)
		if err != nil {
			return err
		}
		c.Trusted = false
		return tx.CAs().Put(ctx, c)
	})
	if err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(poolTTL + time.Second)
	if err := verify(old.Cert); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("certificate of a CA distrusted in the store: %v", err)
	}
	// An import changes the anchor set too.
	nw := issueFor(t, f, "meter-2")
	if err := verify(nw.Cert); err != nil || !cached(t, f, "acme", nw.Cert) {
		t.Fatalf("new certificate: %v", err)
	}
	other := newFixture(t, newMemStore())
	ext, err := other.svc.EnsureCA(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Import(ctx, "acme", ext.CertDER, RoleExternal, "op-1"); err != nil {
		t.Fatal(err)
	}
	if cached(t, f, "acme", nw.Cert) {
		t.Fatal("cache entry survived an import")
	}
}

// An entry never outlives the certificate: past NotAfter, Verify says
// expired.
func TestVerifyCacheExpiry(t *testing.T) {
	f := newFixture(t, newMemStore())
	ctx := context.Background()
	iss, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{Lifetime: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert}); err != nil {
		t.Fatal(err)
	}
	f.clk.Set(iss.Cert.NotAfter.Add(time.Second))
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert}); !errors.Is(err, ErrExpired) {
		t.Fatalf("Verify of an expired, cached certificate: %v", err)
	}
}

// The cache holds at most its bound, and evicted chains still verify.
func TestVerifyCacheBounded(t *testing.T) {
	f := newFixture(t, newMemStore())
	f.svc.verified = newVerifiedCache(4)
	ctx := context.Background()
	var certs []*x509.Certificate
	for i := range 10 {
		certs = append(certs, issueFor(t, f, fmt.Sprintf("meter-%d", i)).Cert)
	}
	for range 2 {
		for _, c := range certs {
			if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c}); err != nil {
				t.Fatal(err)
			}
			if n := f.svc.verified.len(); n > 4 {
				t.Fatalf("%d entries, bound 4", n)
			}
		}
	}
	if n := f.svc.verified.len(); n != 4 {
		t.Fatalf("%d entries after 20 verifications, want 4", n)
	}
}

// BenchmarkVerifyClient is the broker's per-handshake check of a client
// chain (64 devices reconnecting) with the verified-chain cache and
// without it, on the in-memory store: the difference is the chain
// verification the cache saves.
func BenchmarkVerifyClient(b *testing.B) {
	for _, mode := range []string{"cached", "uncached"} {
		b.Run(mode, func(b *testing.B) {
			f := newFixture(b, newMemStore())
			if mode == "uncached" {
				f.svc.verified = nil
			}
			ctx := context.Background()
			var chains [][]*x509.Certificate
			for i := range 64 {
				d := fmt.Sprintf("meter-%d", i)
				iss, err := f.svc.Issue(ctx, "acme", deviceID(d), deviceCSR(b, d), IssueOptions{})
				if err != nil {
					b.Fatal(err)
				}
				chains = append(chains, []*x509.Certificate{iss.Cert})
			}
			b.ReportAllocs()
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				if _, err := f.svc.VerifyClient(ctx, chains[i%len(chains)]); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, c0, b.N)
		})
	}
}
