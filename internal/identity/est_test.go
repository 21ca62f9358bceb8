package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/smallstep/pkcs7"
)

func estServer(t *testing.T, s *Service) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	s.ESTRoutes(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

type estResp struct {
	status int
	body   []byte
}

func estDo(t *testing.T, srv *httptest.Server, method, path string, body []byte, user, pass string, cert *tls.Certificate) estResp {
	t.Helper()
	tr := srv.Client().Transport.(*http.Transport).Clone()
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return estResp{resp.StatusCode, b}
}

func p7certs(t *testing.T, body []byte) []*x509.Certificate {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.NewReplacer("\r", "", "\n", "").Replace(string(body)))
	if err != nil {
		t.Fatalf("not base64: %v: %q", err, body)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	return p7.Certificates
}

func TestEST(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	f := newFixture(t, st)
	srv := estServer(t, f.svc)
	register(t, st, "acme", "meter-1", "m100")
	tok, _, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Device: "meter-1"}, "op-1")
	if err != nil {
		t.Fatal(err)
	}
	base := "/.well-known/est/acme/"

	r := estDo(t, srv, "GET", base+"cacerts", nil, "", "", nil)
	chain, _ := f.svc.Chain(ctx, "acme")
	if got := p7certs(t, r.body); r.status != 200 || len(got) != 2 || !got[0].Equal(chain[0]) || !got[1].Equal(chain[1]) {
		t.Fatalf("cacerts: %d %d certs", r.status, len(got))
	}

	key := newKey(t)
	csr := []byte(base64.StdEncoding.EncodeToString(makeCSR(t, key, nil)))
	if r := estDo(t, srv, "POST", base+"simpleenroll", csr, "", "", nil); r.status != 401 {
		t.Fatalf("no auth: %d %s", r.status, r.body)
	}
	if r := estDo(t, srv, "POST", base+"simpleenroll", []byte("!!!"), "meter-1", tok, nil); r.status != 400 {
		t.Fatalf("bad body: %d %s", r.status, r.body)
	}
	r = estDo(t, srv, "POST", base+"simpleenroll", csr, "meter-1", tok, nil)
	if r.status != 200 {
		t.Fatalf("simpleenroll: %d %s", r.status, r.body)
	}
	certs := p7certs(t, r.body)
	if len(certs) != 1 || certs[0].URIs[0].String() != "garrison://acme/devices/meter-1" {
		t.Fatalf("enrolled %v", certs)
	}
	if r := estDo(t, srv, "POST", base+"simpleenroll", csr, "meter-1", tok, nil); r.status != 401 || !strings.Contains(string(r.body), "already used") {
		t.Fatalf("replay: %d %s", r.status, r.body)
	}
	if r := estDo(t, srv, "POST", "/.well-known/est/other/simpleenroll", csr, "meter-1", tok, nil); r.status != 401 {
		t.Fatalf("foreign tenant: %d %s", r.status, r.body)
	}

	cur := &tls.Certificate{Certificate: [][]byte{certs[0].Raw}, PrivateKey: key.(crypto.Signer)}
	if r := estDo(t, srv, "POST", base+"simplereenroll", csr, "", "", nil); r.status != 401 {
		t.Fatalf("reenroll without cert: %d", r.status)
	}
	key2 := newKey(t)
	csr2 := []byte(base64.StdEncoding.EncodeToString(makeCSR(t, key2, nil)))
	r = estDo(t, srv, "POST", base+"simplereenroll", csr2, "", "", cur)
	if r.status != 200 {
		t.Fatalf("simplereenroll: %d %s", r.status, r.body)
	}
	if c := p7certs(t, r.body); len(c) != 1 || c[0].Subject.CommonName != "meter-1" || c[0].SerialNumber.Cmp(certs[0].SerialNumber) == 0 {
		t.Fatalf("re-enrolled %v", c)
	}
	// After revocation the old certificate can no longer re-enrol.
	if _, err := f.svc.RevokeDevice(ctx, "acme", "meter-1", ReasonKeyCompromise, "op"); err != nil {
		t.Fatal(err)
	}
	if r := estDo(t, srv, "POST", base+"simplereenroll", csr2, "", "", cur); r.status != 401 {
		t.Fatalf("reenroll with revoked cert: %d %s", r.status, r.body)
	}

	r = estDo(t, srv, "GET", base+"csrattrs", nil, "", "", nil)
	der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(r.body)))
	var raw asn1.RawValue
	if r.status != 200 || err != nil {
		t.Fatalf("csrattrs %d %v", r.status, err)
	}
	if rest, err := asn1.Unmarshal(der, &raw); err != nil || len(rest) != 0 || raw.Tag != asn1.TagSequence {
		t.Fatalf("csrattrs not a SEQUENCE: %v", err)
	}
}

func TestDecodeESTBody(t *testing.T) {
	der := makeCSR(t, newKey(t), nil)
	b64 := base64.StdEncoding.EncodeToString(der)
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"base64", []byte(b64), true},
		{"base64 with CRLF", base64Lines(der), true},
		{"raw DER", der, true},
		{"empty", nil, false},
		{"not base64", []byte("%%%"), false},
		{"oversized", bytes.Repeat([]byte("A"), maxESTBody+1), false},
	}
	for _, tc := range tests {
		got, err := DecodeESTBody(tc.in)
		if tc.ok != (err == nil) || (tc.ok && !bytes.Equal(got, der)) {
			t.Errorf("%s: err %v", tc.name, err)
		}
		if err != nil && !errors.Is(err, ErrBadESTBody) {
			t.Errorf("%s: %v does not wrap ErrBadESTBody", tc.name, err)
		}
	}
}

// FuzzESTBody: the EST body decoder followed by CSR validation never
// panics and only accepts what ParseCSR accepts.
func FuzzESTBody(f *testing.F) {
	der := makeCSR(f, newKey(f), nil)
	f.Add([]byte(base64.StdEncoding.EncodeToString(der)))
	f.Add(base64Lines(der))
	f.Add(der)
	f.Add([]byte("MIIB"))
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := DecodeESTBody(body)
		if err != nil {
			return
		}
		if _, err := ParseCSR(csr, "acme", "meter-1"); err != nil && !errors.Is(err, ErrBadCSR) {
			t.Fatalf("unexpected error class: %v", err)
		}
	})
}
