package identity

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/store"
)

func TestRootCreatedOnceAndReloaded(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	f := newFixture(t, st)
	roots, err := f.svc.ListCAs(ctx, "")
	if err != nil || len(roots) != 1 || roots[0].Role != RoleRoot {
		t.Fatalf("roots = %+v, %v", roots, err)
	}
	if roots[0].KeyEnc != nil {
		t.Fatal("ListCAs returned a sealed key")
	}
	ca1, err := f.svc.EnsureCA(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	// A second service on the same store (a restart) loads, not creates.
	g := newFixture(t, st)
	roots2, _ := g.svc.ListCAs(ctx, "")
	ca2, err := g.svc.EnsureCA(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(roots2) != 1 || roots2[0].ID != roots[0].ID || ca2.ID != ca1.ID {
		t.Fatalf("restart made new CAs: %v %v", roots2, ca2.ID)
	}
	// It can sign with the reloaded issuing key.
	if _, err := g.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	// The issuing CA chains to the root and is a CA limited to path length 0.
	chain, _ := g.svc.Chain(ctx, "acme")
	if err := chain[0].CheckSignatureFrom(chain[1]); err != nil || !chain[0].IsCA || chain[0].MaxPathLen != 0 || !chain[0].MaxPathLenZero {
		t.Fatalf("issuing CA: %v isCA=%v maxpath=%d", err, chain[0].IsCA, chain[0].MaxPathLen)
	}
}

func TestWrongPassphraseRefusedAtStart(t *testing.T) {
	st := newMemStore()
	newFixture(t, st)
	sl, _ := NewSealer([]byte("not the operator passphrase"), WithScryptCost(10, 8, 1))
	svc, err := New(Options{Store: st, Sealer: sl})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("Start with wrong passphrase: %v", err)
	}
}

// TestNoPrivateKeyAtRest checks that neither the stored bytes nor the logs
// carry a private key in PEM or in PKCS#8 DER.
func TestNoPrivateKeyAtRest(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	f := newFixture(t, st)
	iss, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Rotate(ctx, "acme", "op-1"); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Revoke(ctx, "acme", iss.Record.Serial, ReasonKeyCompromise, "op-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CRL(ctx, "acme", iss.Record.Issuer); err != nil {
		t.Fatal(err)
	}
	var stored [][]byte
	var secrets [][]byte
	for _, c := range st.cas {
		stored = append(stored, c.CertDER, c.KeyEnc)
		e, err := f.svc.caByID(ctx, c.Tenant, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		sg, err := f.svc.signerOf(e)
		if err != nil {
			t.Fatal(err)
		}
		pk, _ := x509.MarshalPKCS8PrivateKey(sg)
		secrets = append(secrets, pk)
	}
	for _, c := range st.certs {
		stored = append(stored, c.DER)
	}
	for _, v := range st.settings {
		stored = append(stored, v)
	}
	for _, r := range st.audit {
		stored = append(stored, r.Details, []byte(r.Target))
	}
	stored = append(stored, f.logs.Bytes())
	if len(secrets) != 3 || len(f.logs.Bytes()) == 0 {
		t.Fatalf("expected 3 CA keys and some logs, got %d keys, %d log bytes", len(secrets), len(f.logs.Bytes()))
	}
	for _, b := range stored {
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Fatal("PEM private key in stored bytes or logs")
		}
		for _, s := range secrets {
			// The PKCS#8 DER and its private scalar (the last 32 bytes of
			// the inner key are public-key independent) must not appear.
			if bytes.Contains(b, s) || bytes.Contains(b, s[36:68]) {
				t.Fatal("private key bytes in stored bytes or logs")
			}
		}
	}
}

func TestRotateKeepsOldTrusted(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	old, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nca, err := f.svc.Rotate(ctx, "acme", "op-1")
	if err != nil {
		t.Fatal(err)
	}
	if nca.ID == old.Record.Issuer || !nca.Active {
		t.Fatal("rotation did not make a new active CA")
	}
	nw, err := f.svc.Issue(ctx, "acme", "meter-2", deviceCSR(t, "meter-2"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nw.Record.Issuer != nca.ID {
		t.Fatalf("new cert issued by %s, want %s", nw.Record.Issuer, nca.ID)
	}
	for _, iss := range []Issued{old, nw} {
		id, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert})
		if err != nil || id.Device != iss.Record.Device || id.Issuer != iss.Record.Issuer {
			t.Fatalf("Verify %s = %+v, %v", iss.Record.Device, id, err)
		}
	}
	cas, _ := f.svc.ListCAs(ctx, "acme")
	var active, trusted int
	for _, c := range cas {
		if c.Active {
			active++
		}
		if c.Trusted {
			trusted++
		}
	}
	if active != 1 || trusted != 2 {
		t.Fatalf("after rotate: %d active, %d trusted CAs", active, trusted)
	}
	// Distrusting the retired CA makes its certificates fail.
	if err := f.svc.SetTrusted(ctx, "acme", old.Record.Issuer, false, "op-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{old.Cert}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Verify after distrust: %v", err)
	}
	if err := f.svc.SetTrusted(ctx, "acme", nca.ID, false, "op-1"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("distrusting the active CA: %v", err)
	}
}

func TestTenantIsolation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	a, err := f.svc.Issue(ctx, "tenant-a", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Verify(ctx, "tenant-b", append([]*x509.Certificate{a.Cert}, a.Chain...)); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("tenant-a cert verified for tenant-b: %v", err)
	}
	if id, err := f.svc.VerifyClient(ctx, []*x509.Certificate{a.Cert}); err != nil || id.Tenant != "tenant-a" || id.Device != "meter-1" {
		t.Fatalf("VerifyClient: %+v %v", id, err)
	}
	pool, _ := f.svc.TrustPool(ctx, "tenant-b")
	if _, err := a.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: t0}); err == nil {
		t.Fatal("tenant-b trust pool accepts tenant-a certificate")
	}
}

// TestExternalCA imports a factory CA: its device certificates verify (CN
// as device id), a second trusted CA coexists, and a certificate whose
// URI SAN names another tenant is refused.
func TestExternalCA(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	caKey := newKey(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Factory CA"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	rec, err := f.svc.Import(ctx, "acme", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), RoleExternal, "op-1")
	if err != nil || rec.Role != RoleExternal || len(rec.KeyEnc) != 0 {
		t.Fatalf("Import = %+v, %v", rec, err)
	}
	if _, err := f.svc.Import(ctx, "acme", caDER, RoleExternal, "op-1"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second import: %v", err)
	}
	leaf := func(cn string, uri string) *x509.Certificate {
		k := newKey(t)
		tm := &x509.Certificate{SerialNumber: big.NewInt(99), Subject: pkix.Name{CommonName: cn}, NotBefore: t0.Add(-time.Hour),
			NotAfter: t0.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if uri != "" {
			u, _ := url.Parse(uri)
			tm.URIs = []*url.URL{u}
		}
		der, err := x509.CreateCertificate(rand.Reader, tm, caCert, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	id, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{leaf("cam-7", "")})
	if err != nil || id.Device != "cam-7" || id.Issuer != rec.ID {
		t.Fatalf("factory cert: %+v, %v", id, err)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{leaf("cam-7", "garrison://other/devices/cam-7")}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("foreign-tenant URI accepted: %v", err)
	}
	// Our own CA still issues and verifies next to the imported one.
	own, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{own.Cert}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Import(ctx, "acme", own.Cert.Raw, RoleExternal, "op-1"); err == nil {
		t.Fatal("a leaf certificate was imported as a CA")
	}
}
