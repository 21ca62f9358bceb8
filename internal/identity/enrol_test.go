package identity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func register(t testing.TB, st store.Store, tenant event.TenantID, id event.DeviceID, model string) {
	t.Helper()
	err := st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Devices().Create(context.Background(), store.Device{Tenant: tenant, ID: id, Model: model, State: store.StateRegistered})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestEnrolTokens(t *testing.T) {
	ctx := context.Background()
	for name, open := range map[string]func(testing.TB) store.Store{
		"mem":    func(testing.TB) store.Store { return newMemStore() },
		"sqlite": func(t testing.TB) store.Store { return openSQLite(t) },
	} {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			f := newFixture(t, st)
			if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			register(t, st, "acme", "meter-1", "m100")
			register(t, st, "acme", "meter-2", "m100")
			register(t, st, "acme", "cam-1", "c200")
			register(t, st, "other", "meter-9", "m100")
			one, tok, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Device: "meter-1"}, "op-1")
			if err != nil || tok.Remaining != 1 {
				t.Fatal(err)
			}
			batch, _, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Count: 1, Models: []string{"m100"}, TTL: time.Hour}, "op-1")
			if err != nil {
				t.Fatal(err)
			}
			short, _, _ := f.svc.CreateToken(ctx, "acme", TokenSpec{Count: 5, TTL: time.Minute}, "op-1")
			foreign, _, _ := f.svc.CreateToken(ctx, "other", TokenSpec{Count: 5}, "op-9")
			countCerts := func() int {
				n := 0
				_ = st.View(ctx, func(tx store.Tx) error {
					for _, d := range []event.DeviceID{"meter-1", "meter-2", "cam-1", "ghost"} {
						c, _ := tx.Certificates().ByDevice(ctx, "acme", d)
						n += len(c)
					}
					return nil
				})
				return n
			}
			refusals := []struct {
				name   string
				device event.DeviceID
				token  string
				csr    []byte
				want   error
			}{
				{"per-device token for another device", "meter-2", one, nil, ErrTokenScope},
				{"model not allowed", "cam-1", batch, nil, ErrTokenScope},
				{"unregistered device", "ghost", short, nil, ErrUnknownDevice},
				{"foreign-tenant token", "meter-1", foreign, nil, ErrTokenInvalid},
				{"wrong secret", "meter-1", one[:len(one)-2] + "xx", nil, ErrTokenInvalid},
				{"garbage token", "meter-1", "hunter2", nil, ErrTokenInvalid},
				{"bad CSR", "meter-1", one, []byte("junk"), ErrBadCSR},
			}
			for _, r := range refusals {
				before := auditCount(t, st, "acme")
				csr := r.csr
				if csr == nil {
					csr = deviceCSR(t, string(r.device))
				}
				if _, err := f.svc.Enrol(ctx, "acme", r.device, r.token, csr); !errors.Is(err, r.want) {
					t.Fatalf("%s: %v, want %v", r.name, err, r.want)
				}
				if countCerts() != 0 || auditCount(t, st, "acme") != before {
					t.Fatalf("%s changed state", r.name)
				}
			}
			state := func(id event.DeviceID) (s store.DeviceState) {
				t.Helper()
				if err := st.View(ctx, func(tx store.Tx) error {
					d, err := tx.Devices().Get(ctx, "acme", id)
					s = d.State
					return err
				}); err != nil {
					t.Fatal(err)
				}
				return s
			}
			if s := state("meter-1"); s != store.StateRegistered {
				t.Fatalf("refusals changed meter-1's state to %s", s)
			}
			iss, err := f.svc.Enrol(ctx, "acme", "meter-1", one, deviceCSR(t, "meter-1"))
			if s := state("meter-1"); s != store.StateActive {
				t.Fatalf("an enrolled device is %s, want active (the broker refuses registered devices)", s)
			}
			if err != nil || iss.Record.Device != "meter-1" {
				t.Fatalf("enrol: %v", err)
			}
			// Replay is refused and changes nothing.
			n := countCerts()
			if _, err := f.svc.Enrol(ctx, "acme", "meter-1", one, deviceCSR(t, "meter-1")); !errors.Is(err, ErrTokenUsed) || countCerts() != n {
				t.Fatalf("replay: %v", err)
			}
			if _, err := f.svc.Enrol(ctx, "acme", "meter-2", batch, deviceCSR(t, "meter-2")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.svc.Enrol(ctx, "acme", "meter-2", batch, deviceCSR(t, "meter-2")); !errors.Is(err, ErrTokenUsed) {
				t.Fatalf("batch of 1 used twice: %v", err)
			}
			f.clk.Advance(2 * time.Minute)
			if _, err := f.svc.Enrol(ctx, "acme", "cam-1", short, deviceCSR(t, "cam-1")); !errors.Is(err, ErrTokenExpired) {
				t.Fatalf("expired: %v", err)
			}
			// The secret is stored only as a hash, and never logged.
			_ = st.View(ctx, func(tx store.Tx) error {
				b, err := tx.Settings().Get(ctx, "acme", tokenKey(tok.ID))
				if err != nil || containsAny(b, one) || containsAny(f.logs.Bytes(), one) {
					t.Fatalf("token secret stored or logged (%v)", err)
				}
				return nil
			})
		})
	}
}

// containsAny reports whether b holds the secret part of token
// get_<id>_<secret> (the base64url secret may itself hold '_').
func containsAny(b []byte, token string) bool {
	rest, _ := strings.CutPrefix(token, tokenPrefix)
	_, sec, _ := strings.Cut(rest, "_")
	return len(sec) > 0 && bytesContains(b, sec)
}
