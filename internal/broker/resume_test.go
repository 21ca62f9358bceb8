package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// A device that resumes a TLS 1.3 session is checked like one that does
// not, with the production identity service and its cache of verified
// chains: after its certificate is revoked, or its CA distrusted, the
// resumed handshake completes but the connection is refused.
func TestResumedSessionRechecked(t *testing.T) {
	ctx := context.Background()
	f := newConnFixture(t, 2)
	bt := f.startGarrison(t)
	conf := func(i int) *tls.Config {
		return &tls.Config{RootCAs: f.srv.pool, Certificates: []tls.Certificate{f.tcs[i]}, ServerName: "localhost",
			ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	}
	revoked, distrusted := conf(0), conf(1)
	for _, c := range []*tls.Config{revoked, distrusted} {
		for i := range 2 {
			id := f.devs[0]
			if c == distrusted {
				id = f.devs[1]
			}
			resumed, err := loadConnect(bt.addr, c, id)
			if err != nil {
				t.Fatalf("connect %d: %v", i, err)
			}
			if resumed != (i == 1) {
				t.Fatalf("connect %d: resumed %v", i, resumed)
			}
		}
	}
	if err := f.id.Revoke(ctx, "acme", f.tcs[0].Leaf.SerialNumber.Text(16), 1, "test"); err != nil {
		t.Fatal(err)
	}
	if resumed, err := loadConnect(bt.addr, revoked, f.devs[0]); err == nil || !resumed {
		t.Fatalf("revoked certificate on a resumed session: resumed %v, err %v", resumed, err)
	}
	// Distrust: rotate so the device's CA is no longer the active one,
	// then distrust it.
	if _, err := f.id.Rotate(ctx, "acme", "test"); err != nil {
		t.Fatal(err)
	}
	if resumed, err := loadConnect(bt.addr, distrusted, f.devs[1]); err != nil || !resumed {
		t.Fatalf("after rotation, the old CA still trusted: resumed %v, err %v", resumed, err)
	}
	issuer := issuerID(t, f.tcs[1].Leaf, f)
	if err := f.id.SetTrusted(ctx, "acme", issuer, false, "test"); err != nil {
		t.Fatal(err)
	}
	if resumed, err := loadConnect(bt.addr, distrusted, f.devs[1]); err == nil || !resumed {
		t.Fatalf("distrusted CA on a resumed session: resumed %v, err %v", resumed, err)
	}
}

// issuerID is the identity service's id of the CA that issued leaf.
func issuerID(t *testing.T, leaf *x509.Certificate, f *connFixture) string {
	t.Helper()
	cas, err := f.id.ListCAs(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cas {
		ca, err := x509.ParseCertificate(c.CertDER)
		if err == nil && leaf.CheckSignatureFrom(ca) == nil {
			return c.ID
		}
	}
	t.Fatal("issuer not found")
	return ""
}
