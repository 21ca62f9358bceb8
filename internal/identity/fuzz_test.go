package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/crypto/ocsp"
)

// FuzzParseCSR feeds arbitrary bytes to the CSR validator. It must never
// panic, and anything it accepts must satisfy the contract.
func FuzzParseCSR(f *testing.F) {
	for _, s := range csrSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data, "acme", "meter-1")
		if err != nil {
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("error not wrapping ErrBadCSR: %v", err)
			}
			return
		}
		if cn := csr.Subject.CommonName; cn != "" && cn != "meter-1" {
			t.Fatalf("accepted CN %q", cn)
		}
		if err := checkKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted key: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted bad signature: %v", err)
		}
		for _, u := range csr.URIs {
			if u.String() != "garrison://acme/devices/meter-1" {
				t.Fatalf("accepted URI %s", u)
			}
		}
		if len(csr.EmailAddresses)+len(csr.IPAddresses) > 0 {
			t.Fatal("accepted e-mail or IP SAN")
		}
	})
}

// FuzzOCSP feeds arbitrary requests to the OCSP responder: it must always
// answer with a parseable OCSP response and never panic.
func FuzzOCSP(f *testing.F) {
	fx := newFixture(f, newMemStore())
	ctx := context.Background()
	iss, err := fx.svc.Issue(ctx, "acme", "meter-1", deviceCSR(f, "meter-1"), IssueOptions{})
	if err != nil {
		f.Fatal(err)
	}
	req, _ := ocsp.CreateRequest(iss.Cert, iss.Chain[0], nil)
	f.Add(req)
	f.Add([]byte{0x30, 0x03, 0x30, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, _ := fx.svc.OCSP(ctx, "acme", data)
		if _, err := ocsp.ParseResponse(resp, nil); err != nil {
			var re ocsp.ResponseError
			if !errors.As(err, &re) {
				// A good response may name a serial for another issuer;
				// ParseResponse without issuer skips the signature check,
				// so any other error means we produced garbage.
				t.Fatalf("unparseable response: %v", err)
			}
		}
	})
}

// csrSeeds returns good and bad CSRs for the corpus.
func csrSeeds(tb testing.TB) [][]byte {
	p256 := newKey(tb)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := makeCSR(tb, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "meter-1"},
		URIs: []*url.URL{mustURL("garrison://acme/devices/meter-1")}})
	return [][]byte{
		good,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}),
		makeCSR(tb, p256, nil),
		makeCSR(tb, p224, nil),
		makeCSR(tb, rsa1024, nil),
		makeCSR(tb, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "meter-2"}}),
		makeCSR(tb, p256, &x509.CertificateRequest{URIs: []*url.URL{mustURL("garrison://evil/devices/meter-1")}}),
		good[:len(good)/2],
		{},
		[]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzParseCSR when
// GARRISON_WRITE_CORPUS=1; otherwise it checks the corpus is there.
func TestWriteFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseCSR")
	if os.Getenv("GARRISON_WRITE_CORPUS") != "1" {
		ents, err := os.ReadDir(dir)
		if err != nil || len(ents) < 5 {
			t.Fatalf("seed corpus %s missing (%v); run with GARRISON_WRITE_CORPUS=1", dir, err)
		}
		return
	}
	write := func(dir string, seeds [][]byte) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(dir, csrSeeds(t))
	fx := newFixture(t, newMemStore())
	iss, err := fx.svc.Issue(context.Background(), "acme", "meter-1", deviceCSR(t, "meter-1"), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := ocsp.CreateRequest(iss.Cert, iss.Chain[0], nil)
	req256, _ := ocsp.CreateRequest(iss.Cert, iss.Chain[0], &ocsp.RequestOptions{Hash: crypto.SHA256})
	write(filepath.Join("testdata", "fuzz", "FuzzOCSP"), [][]byte{req, req256, req[:len(req)-3], {0x30, 0x00}, nil})
	csrDER := deviceCSR(t, "meter-1")
	write(filepath.Join("testdata", "fuzz", "FuzzESTBody"), [][]byte{
		[]byte(base64.StdEncoding.EncodeToString(csrDER)), base64Lines(csrDER), csrDER, []byte("MIIB"), []byte("%%%"), nil})
}
