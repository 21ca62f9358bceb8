package identity

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func serve(t *testing.T, s *Service) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	s.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func writePEM(t *testing.T, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (apt-get install openssl); the real-client CRL/OCSP test needs it")
	}
}

func openssl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRevokeWithOpenSSL(t *testing.T) {
	needOpenSSL(t)
	ctx := context.Background()
	// OCSP responses carry the wall clock's producedAt (x/crypto/ocsp), so
	// this test runs the service on a clock near real time.
	f := newFixture(t, newMemStore(), func(o *Options) { o.CRLInterval = 6 * time.Hour })
	f.clk.Set(time.Now())
	srv := serve(t, f.svc)
	iss, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.svc.Issue(ctx, "acme", "meter-2", deviceCSR(t, "meter-2"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	issuer := writePEM(t, dir, "issuer.pem", iss.Chain[0])
	chain := writePEM(t, dir, "chain.pem", iss.Chain...)
	leaf := writePEM(t, dir, "leaf.pem", iss.Cert)
	ocspURL := srv.URL + "/ocsp/acme"
	ocspCheck := func(wantStatus string) string {
		t.Helper()
		out := openssl(t, "ocsp", "-issuer", issuer, "-cert", leaf, "-url", ocspURL, "-CAfile", chain, "-resp_text")
		if !strings.Contains(out, "Response verify OK") {
			t.Fatalf("OCSP response did not verify:\n%s", out)
		}
		if !strings.Contains(out, leaf+": "+wantStatus) {
			t.Fatalf("OCSP status: want %s\n%s", wantStatus, out)
		}
		return out
	}
	crl := func() string {
		t.Helper()
		resp, err := http.Get(srv.URL + "/crl/acme/" + iss.Record.Issuer + ".crl")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		der, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/pkix-crl" {
			t.Fatalf("CRL GET: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		p := filepath.Join(dir, "crl.der")
		_ = os.WriteFile(p, der, 0o600)
		out := openssl(t, "crl", "-inform", "DER", "-in", p, "-text", "-noout", "-CAfile", chain)
		if !strings.Contains(out, "verify OK") {
			t.Fatalf("CRL signature did not verify:\n%s", out)
		}
		return out
	}

	ocspCheck("good")
	before := crl()
	serialUpper := evenHex(iss.Record.Serial) // openssl prints whole bytes
	if strings.Contains(before, serialUpper) || !strings.Contains(before, "No Revoked Certificates") {
		t.Fatalf("CRL lists a certificate before revocation:\n%s", before)
	}
	if n := crlNumber(t, before); n != 1 {
		t.Fatalf("first CRL number %d, want 1", n)
	}
	wantNext := f.clk.Now().Add(6 * time.Hour).UTC().Format("Jan _2 15:04:05 2006 GMT")
	if !strings.Contains(before, "Next Update: "+wantNext) {
		t.Fatalf("Next Update: want %s\n%s", wantNext, before)
	}

	if err := f.svc.Revoke(ctx, "acme", iss.Record.Serial, ReasonKeyCompromise, "op-1"); err != nil {
		t.Fatal(err)
	}
	out := ocspCheck("revoked")
	if !strings.Contains(out, "Reason: keyCompromise") {
		t.Fatalf("OCSP reason:\n%s", out)
	}
	after := crl()
	if !strings.Contains(after, "Serial Number: "+serialUpper) || !strings.Contains(after, "Key Compromise") {
		t.Fatalf("CRL after revocation misses %s:\n%s", serialUpper, after)
	}
	if strings.Contains(after, evenHex(other.Record.Serial)) {
		t.Fatal("CRL lists an unrevoked certificate")
	}
	if crlNumber(t, before) >= crlNumber(t, after) {
		t.Fatalf("CRL number did not increase: %d then %d", crlNumber(t, before), crlNumber(t, after))
	}
	// The other device is still good.
	leaf2 := writePEM(t, dir, "leaf2.pem", other.Cert)
	out = openssl(t, "ocsp", "-issuer", issuer, "-cert", leaf2, "-url", ocspURL, "-CAfile", chain)
	if !strings.Contains(out, leaf2+": good") {
		t.Fatalf("other cert:\n%s", out)
	}
	if k := f.pub.kinds(); k[len(k)-1] != event.CertRevoked {
		t.Fatalf("events %v", k)
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Verify revoked: %v", err)
	}
}

func crlNumber(t *testing.T, text string) int {
	t.Helper()
	_, rest, ok := strings.Cut(text, "X509v3 CRL Number:")
	if !ok {
		t.Fatalf("no CRL number in\n%s", text)
	}
	var n int
	for _, f := range strings.Fields(rest)[:1] {
		for _, c := range f {
			if c < '0' || c > '9' {
				t.Fatalf("CRL number %q", f)
			}
			n = n*10 + int(c-'0')
		}
	}
	return n
}

func TestOCSPStatuses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	srv := serve(t, f.svc)
	iss, _ := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	foreign, _ := f.svc.Issue(ctx, "other", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	ask := func(tenant string, cert, issuer *x509.Certificate, get bool) (*ocsp.Response, []byte) {
		t.Helper()
		req, err := ocsp.CreateRequest(cert, issuer, nil)
		if err != nil {
			t.Fatal(err)
		}
		var resp *http.Response
		if get {
			resp, err = http.Get(srv.URL + "/ocsp/" + tenant + "/" + strings.ReplaceAll(b64(req), "/", "%2F"))
		} else {
			resp, err = http.Post(srv.URL+"/ocsp/"+tenant, "application/ocsp-request", bytes.NewReader(req))
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		r, _ := ocsp.ParseResponseForCert(body, cert, issuer)
		return r, body
	}
	for _, get := range []bool{false, true} {
		r, _ := ask("acme", iss.Cert, iss.Chain[0], get)
		if r == nil || r.Status != ocsp.Good || r.NextUpdate.Sub(r.ThisUpdate) != time.Hour {
			t.Fatalf("get=%v: %+v", get, r)
		}
	}
	// Another tenant's issuer is not ours to answer for.
	if _, body := ask("acme", foreign.Cert, foreign.Chain[0], false); !bytes.Equal(body, ocsp.UnauthorizedErrorResponse) {
		t.Fatalf("foreign issuer: %x", body)
	}
	// A serial we never issued is unknown.
	fake := *iss.Cert
	fake.SerialNumber = new(big.Int).Add(iss.Cert.SerialNumber, big.NewInt(1))
	if r, _ := ask("acme", &fake, iss.Chain[0], false); r == nil || r.Status != ocsp.Unknown {
		t.Fatalf("unknown serial: %+v", r)
	}
	// Malformed requests get a malformed-request response.
	resp, err := http.Post(srv.URL+"/ocsp/acme", "application/ocsp-request", strings.NewReader("junk"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(body, ocsp.MalformedRequestErrorResponse) {
		t.Fatalf("junk: %x", body)
	}
	if err := f.svc.Revoke(ctx, "acme", iss.Record.Serial, ReasonSuperseded, "op"); err != nil {
		t.Fatal(err)
	}
	if r, _ := ask("acme", iss.Cert, iss.Chain[0], false); r == nil || r.Status != ocsp.Revoked || r.RevocationReason != ReasonSuperseded {
		t.Fatalf("revoked: %+v", r)
	}
}

func TestRevokeDevice(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	var certs []Issued
	for range 3 {
		iss, err := f.svc.Issue(ctx, "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, iss)
	}
	keep, _ := f.svc.Issue(ctx, "acme", "meter-2", deviceCSR(t, "meter-2"), IssueOptions{})
	if err := f.svc.Revoke(ctx, "acme", certs[0].Record.Serial, ReasonUnspecified, "op"); err != nil {
		t.Fatal(err)
	}
	n, err := f.svc.RevokeDevice(ctx, "acme", "meter-1", ReasonCessationOfOperation, "op")
	if err != nil || n != 2 {
		t.Fatalf("RevokeDevice = %d, %v", n, err)
	}
	for _, c := range certs {
		if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c.Cert}); !errors.Is(err, ErrRevoked) {
			t.Fatalf("%s: %v", c.Record.Serial, err)
		}
	}
	if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{keep.Cert}); err != nil {
		t.Fatal(err)
	}
	// Revoking again is a no-op; unknown serials and bad reasons are errors.
	st := f.st.(*memStore)
	n0 := len(st.audit)
	if err := f.svc.Revoke(ctx, "acme", certs[1].Record.Serial, ReasonKeyCompromise, "op"); err != nil || len(st.audit) != n0 {
		t.Fatalf("second revoke: %v, audit %d->%d", err, n0, len(st.audit))
	}
	if st.certs["acme/"+certs[1].Record.Serial].RevocationReason != ReasonCessationOfOperation {
		t.Fatal("second revoke changed the reason")
	}
	if err := f.svc.Revoke(ctx, "acme", "abcdef", 0, "op"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
	if err := f.svc.Revoke(ctx, "acme", keep.Record.Serial, 7, "op"); err == nil {
		t.Fatal("reason 7 accepted")
	}
	// Another tenant cannot revoke this tenant's certificate.
	if err := f.svc.Revoke(ctx, "other", keep.Record.Serial, 0, "op"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cross-tenant revoke: %v", err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func evenHex(s string) string {
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return strings.ToUpper(s)
}

func TestRevokeDevicesDryRun(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, newMemStore())
	var all []Issued
	for _, d := range []string{"m-1", "m-2", "m-3"} {
		iss, err := f.svc.Issue(ctx, "acme", deviceID(d), deviceCSR(t, d), IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, iss)
	}
	sel := []event.DeviceID{"m-1", "m-2", "ghost"}
	st := f.st.(*memStore)
	n0, e0 := len(st.audit), len(f.pub.kinds())
	dry, err := f.svc.RevokeDevices(ctx, "acme", sel, ReasonPrivilegeWithdrawn, "op", true)
	if err != nil || len(dry) != 2 || len(st.audit) != n0 || len(f.pub.kinds()) != e0 {
		t.Fatalf("dry run: %d certs, %v, audit %d->%d", len(dry), err, n0, len(st.audit))
	}
	for _, c := range all {
		if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c.Cert}); err != nil {
			t.Fatalf("dry run revoked %s: %v", c.Record.Device, err)
		}
	}
	done, err := f.svc.RevokeDevices(ctx, "acme", sel, ReasonPrivilegeWithdrawn, "op", false)
	if err != nil || len(done) != 2 || len(st.audit) != n0+2 {
		t.Fatalf("revoke: %d, %v", len(done), err)
	}
	for i, c := range all {
		_, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{c.Cert})
		if revoked := errors.Is(err, ErrRevoked); revoked != (i < 2) {
			t.Fatalf("%s: %v", c.Record.Device, err)
		}
	}
}
