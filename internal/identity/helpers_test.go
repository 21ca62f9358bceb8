package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

const testPass = "correct horse battery staple"

type capPub struct {
	mu     sync.Mutex
	events []event.Event
}

func (p *capPub) Publish(ctx context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, *e)
	return nil
}

func (p *capPub) kinds() []event.Kind {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []event.Kind
	for _, e := range p.events {
		out = append(out, e.Kind)
	}
	return out
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

type fixture struct {
	svc   *Service
	st    store.Store
	clk   *clock.Manual
	pub   *capPub
	logs  *syncBuf
	sealr *Sealer
}

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func newFixture(t testing.TB, st store.Store, mod ...func(*Options)) *fixture {
	t.Helper()
	sl, err := NewSealer([]byte(testPass), WithScryptCost(10, 8, 1))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, clk: clock.NewManual(t0), pub: &capPub{}, logs: &syncBuf{}, sealr: sl}
	opt := Options{Store: st, Sealer: sl, Publisher: f.pub, Clock: f.clk,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, m := range mod {
		m(&opt)
	}
	f.svc, err = New(opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func deviceCSR(t testing.TB, device string) []byte {
	t.Helper()
	return makeCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: device}})
}

func deviceID(s string) event.DeviceID { return event.DeviceID(s) }

func bytesContains(b []byte, s string) bool { return bytes.Contains(b, []byte(s)) }
