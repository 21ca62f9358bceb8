package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// testPKI is a throwaway CA for broker tests.
type testPKI struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &testPKI{dir: t.TempDir(), cert: cert, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(cert)
	writePEM(t, filepath.Join(p.dir, "ca.pem"), "CERTIFICATE", der)
	return p
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue makes a certificate; device "" makes the server certificate.
func (p *testPKI) issue(t testing.TB, tenant event.TenantID, device event.DeviceID, notAfter time.Time) (certFile, keyFile string, tc tls.Certificate, serial string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: sn, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature}
	name := "server"
	if device == "" {
		tmpl.Subject.CommonName = "garrison"
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		name = string(device)
		tmpl.Subject.CommonName = string(device)
		tmpl.URIs = []*url.URL{{Scheme: "garrison", Host: string(tenant), Path: "/devices/" + string(device)}}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	tc, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, tc, fmt.Sprintf("%x", sn)
}

// poolVerifier checks chains against one CA and a revocation set: the
// behaviour the identity service provides in production.
type poolVerifier struct {
	pool    *x509.CertPool
	mu      sync.Mutex
	revoked map[string]bool
}

func (v *poolVerifier) revoke(serial string) { v.mu.Lock(); v.revoked[serial] = true; v.mu.Unlock() }

func (v *poolVerifier) VerifyClient(_ context.Context, chain []*x509.Certificate) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, ErrUnknown
	}
	leaf := chain[0]
	var id Identity
	id.Serial = fmt.Sprintf("%x", leaf.SerialNumber)
	if len(leaf.URIs) == 1 && leaf.URIs[0].Scheme == "garrison" {
		id.Tenant = event.TenantID(leaf.URIs[0].Host)
		id.Device = event.DeviceID(strings.TrimPrefix(leaf.URIs[0].Path, "/devices/"))
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: v.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return id, fmt.Errorf("%w: %v", ErrExpired, err)
		}
		return id, fmt.Errorf("%w: %v", ErrUnknown, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.revoked[id.Serial] {
		return id, ErrRevoked
	}
	if id.Device == "" {
		return id, ErrUnknown
	}
	return id, nil
}

type memStates struct {
	mu sync.Mutex
	m  map[event.DeviceID]store.DeviceState
}

func (s *memStates) set(d event.DeviceID, st store.DeviceState) {
	s.mu.Lock()
	s.m[d] = st
	s.mu.Unlock()
}

func (s *memStates) DeviceState(_ context.Context, _ event.TenantID, d event.DeviceID) (store.DeviceState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[d]
	if !ok {
		return "", store.ErrNotFound
	}
	return st, nil
}

// recorder collects the broker's events.
type recorder struct {
	mu  sync.Mutex
	evs []event.Event
}

func (r *recorder) Publish(_ context.Context, ev *event.Event) error {
	e := *ev
	e.Attrs = maps.Clone(ev.Attrs) // the broker reuses envelopes (Publisher)
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	return nil
}

// find returns the events of kind for device whose attribute k equals v
// (k "" matches all).
func (r *recorder) find(kind event.Kind, device event.DeviceID, k, v string) []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event.Event
	for _, e := range r.evs {
		if e.Kind == kind && (device == "" || e.Device == device) && (k == "" || e.Str(k) == v) {
			out = append(out, e)
		}
	}
	return out
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
