package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestIssueCertificateFields(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore(), func(o *Options) { o.BaseURL = "http://crl.example:8080/" })
	iss, err := f.svc.Issue(ctx, "acme", "meter-0017", deviceCSR(t, "meter-0017"), IssueOptions{Actor: "op-1", Reason: "enrol"})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	if c.Subject.CommonName != "meter-0017" || len(c.URIs) != 1 || c.URIs[0].String() != "garrison://acme/devices/meter-0017" {
		t.Fatalf("identity: CN %q URIs %v", c.Subject.CommonName, c.URIs)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.KeyUsage != x509.KeyUsageDigitalSignature || c.IsCA {
		t.Fatalf("usages: ext %v ku %v ca %v", c.ExtKeyUsage, c.KeyUsage, c.IsCA)
	}
	if got := c.NotAfter.Sub(t0); got != 90*24*time.Hour {
		t.Fatalf("lifetime %v", got)
	}
	if c.SerialNumber.BitLen() < 120 || c.SerialNumber.Sign() <= 0 {
		t.Fatalf("serial %x too short", c.SerialNumber)
	}
	wantCRL := "http://crl.example:8080/crl/acme/" + iss.Record.Issuer + ".crl"
	if !slices.Equal(c.CRLDistributionPoints, []string{wantCRL}) || !slices.Equal(c.OCSPServer, []string{"http://crl.example:8080/ocsp/acme"}) {
		t.Fatalf("CRL %v OCSP %v", c.CRLDistributionPoints, c.OCSPServer)
	}
	if err := c.CheckSignatureFrom(iss.Chain[0]); err != nil {
		t.Fatal(err)
	}
	// Persisted with its audit record, event published.
	st := f.st.(*memStore)
	rec, ok := st.certs["acme/"+c.SerialNumber.Text(16)]
	if !ok || !bytes.Equal(rec.DER, c.Raw) || rec.Device != "meter-0017" {
		t.Fatalf("stored cert %+v", rec)
	}
	last := st.audit[len(st.audit)-1]
	if last.Action != "cert.issue" || last.Actor != "op-1" || last.Target != "cert/"+rec.Serial || last.Tenant != "acme" {
		t.Fatalf("audit %+v", last)
	}
	if k := f.pub.kinds(); len(k) != 1 || k[0] != event.CertIssued {
		t.Fatalf("events %v", k)
	}
	id, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c})
	if err != nil || id.Device != "meter-0017" || id.Serial != rec.Serial {
		t.Fatalf("Verify %+v %v", id, err)
	}
	// Custom lifetime; expiry is enforced by Verify.
	short, err := f.svc.Issue(ctx, "acme", "meter-0018", deviceCSR(t, "meter-0018"), IssueOptions{Lifetime: 2 * time.Hour})
	if err != nil || short.Cert.NotAfter.Sub(t0) != 2*time.Hour {
		t.Fatalf("short: %v %v", short.Cert.NotAfter, err)
	}
	f.clk.Advance(3 * time.Hour)
	if id, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{short.Cert}); !errors.Is(err, ErrUntrusted) || !errors.Is(err, ErrExpired) || id.Device != "meter-0018" {
		t.Fatalf("expired cert verified: %v", err)
	}
}

func TestIssueRejectsBadCSR(t *testing.T) {
	p256 := newKey(t)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "meter-1"}})
	tampered := bytes.Clone(good)
	tampered[len(tampered)-5] ^= 0x01
	tests := []struct {
		name string
		csr  []byte
	}{
		{"garbage", []byte("not a csr")},
		{"empty", nil},
		{"oversized", make([]byte, MaxCSRSize+1)},
		{"bad signature", tampered},
		{"P-224", makeCSR(t, p224, nil)},
		{"P-521", makeCSR(t, p521, nil)},
		{"RSA 1024", makeCSR(t, rsa1024, nil)},
		{"CN of another device", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "meter-2"}})},
		{"URI of another tenant", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{mustURL("garrison://evil/devices/meter-1")}})},
		{"URI of another device", makeCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{mustURL("garrison://acme/devices/meter-2")}})},
		{"DNS of another device", makeCSR(t, p256, &x509.CertificateRequest{DNSNames: []string{"meter-2"}})},
		{"e-mail SAN", makeCSR(t, p256, &x509.CertificateRequest{EmailAddresses: []string{"a@b.c"}})},
		{"IP SAN", makeCSR(t, p256, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}})},
	}
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	st := f.st.(*memStore)
	nAudit, nEvents := len(st.audit), len(f.pub.kinds())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.svc.Issue(ctx, "acme", "meter-1", tc.csr, IssueOptions{})
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("Issue: %v, want ErrBadCSR", err)
			}
		})
	}
	if len(st.certs) != 0 || len(st.audit) != nAudit || len(f.pub.kinds()) != nEvents {
		t.Fatalf("bad CSRs changed state: %d certs, audit %d->%d", len(st.certs), nAudit, len(st.audit))
	}
	if _, err := f.svc.Issue(ctx, "acme", "meter-1", good, IssueOptions{}); err != nil {
		t.Fatalf("the good CSR of the same table: %v", err)
	}
	for _, bad := range []struct{ tenant, device string }{{"Acme", "m"}, {"acme", "a/b"}, {"acme", ""}, {"", "m"}} {
		if _, err := f.svc.Issue(ctx, event.TenantID(bad.tenant), event.DeviceID(bad.device), good, IssueOptions{}); !errors.Is(err, ErrBadID) {
			t.Fatalf("ids %q/%q: %v", bad.tenant, bad.device, err)
		}
	}
}

func TestIssueAcceptsKeyTypes(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	f := newFixture(t, newMemStore())
	for name, csr := range map[string][]byte{
		"P-256":   makeCSR(t, newKey(t), nil),
		"P-384":   makeCSR(t, p384, nil),
		"Ed25519": makeCSR(t, ed, nil),
		"RSA2048": makeCSR(t, rsa2048, &x509.CertificateRequest{URIs: []*url.URL{mustURL("garrison://acme/devices/d1")}, DNSNames: []string{"d1"}}),
	} {
		if _, err := f.svc.Issue(context.Background(), "acme", "d1", csr, IssueOptions{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestRenew(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	cur, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(80 * 24 * time.Hour)
	next, err := f.svc.Renew(ctx, "acme", []*x509.Certificate{cur.Cert}, deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if next.Record.Device != "meter-1" || !next.Cert.NotAfter.After(cur.Cert.NotAfter) {
		t.Fatalf("renewed %+v", next.Record)
	}
	// A CSR naming another device is refused even with a valid cert.
	if _, err := f.svc.Renew(ctx, "acme", []*x509.Certificate{next.Cert}, deviceCSR(t, "meter-2"), IssueOptions{}); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("renew for another device: %v", err)
	}
	// Revoked or expired certificates cannot renew.
	if err := f.svc.Revoke(ctx, "acme", next.Record.Serial, ReasonKeyCompromise, "op"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Renew(ctx, "acme", []*x509.Certificate{next.Cert}, deviceCSR(t, "meter-1"), IssueOptions{}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renew with revoked cert: %v", err)
	}
	f.clk.Advance(11 * 24 * time.Hour)
	if _, err := f.svc.Renew(ctx, "acme", []*x509.Certificate{cur.Cert}, deviceCSR(t, "meter-1"), IssueOptions{}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("renew with expired cert: %v", err)
	}
}
