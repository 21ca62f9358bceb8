package identity

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// errInjected is the store failure failStore injects.
var errInjected = errors.New("injected certificate insert failure")

// failStore fails any transaction that stores a certificate of device bad,
// whether one by one or in bulk; everything else goes to the real store.
type failStore struct {
	store.Store
	bad event.DeviceID
}

func (s failStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error { return fn(failTx{tx, s.bad}) })
}

type failTx struct {
	store.Tx
	bad event.DeviceID
}

func (t failTx) Certificates() store.Certificates { return failCerts{t.Tx.Certificates(), t.bad} }

type failCerts struct {
	store.Certificates
	bad event.DeviceID
}

func (c failCerts) Create(ctx context.Context, x store.Certificate) error {
	if x.Device == c.bad {
		return errInjected
	}
	return c.Certificates.Create(ctx, x)
}

// CreateMany fails like a multi-row INSERT does: after the rows before the
// bad one were written, so only the transaction's rollback undoes them.
func (c failCerts) CreateMany(ctx context.Context, xs []store.Certificate) error {
	for _, x := range xs {
		if err := c.Create(ctx, x); err != nil {
			return err
		}
	}
	return nil
}

// TestEnrolBatchOneFails commits one batch of eight token enrolments (the
// group commit's unit) in which the store fails one entry's certificate,
// and another entry is refused (its device is unknown). The other six are
// enrolled, each with its certificate, token use and activation; the
// failing one and the refused one change nothing (the token keeps their
// uses, the failing device stays registered); the audit chain verifies.
func TestEnrolBatchOneFails(t *testing.T) {
	for name, open := range map[string]func(testing.TB) store.Store{
		"mem":      func(testing.TB) store.Store { return newMemStore() },
		"sqlite":   func(t testing.TB) store.Store { return openSQLite(t) },
		"postgres": func(t testing.TB) store.Store { return pgtest.Open(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			real := open(t)
			st := failStore{real, "d-3"}
			f := newFixture(t, st)
			if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			const n = 8
			for i := range n {
				if i != 5 { // d-5 is not registered
					register(t, real, "acme", deviceID(fmt.Sprintf("d-%d", i)), "m100")
				}
			}
			secret, tok, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Count: 10, Models: []string{"m100"}}, "op-1")
			if err != nil {
				t.Fatal(err)
			}
			auditBefore := auditCount(t, real, "acme")
			batch := make([]*pendingIssue, n)
			for i := range batch {
				dev := deviceID(fmt.Sprintf("d-%d", i))
				opt := IssueOptions{Actor: "enrol_token/" + tok.ID, Reason: "enrol"}
				csr, err := ParseCSR(makeCSR(t, newKey(t), nil), "acme", dev)
				if err != nil {
					t.Fatal(err)
				}
				iss, err := f.svc.sign(ctx, "acme", dev, csr.PublicKey, &opt)
				if err != nil {
					t.Fatal(err)
				}
				batch[i] = &pendingIssue{iss: iss, opt: opt, activate: true, done: make(chan error, 1),
					token: &tokenUse{id: tok.ID, hash: sha256.Sum256([]byte(secret))}}
			}
			f.svc.commitBatch(ctx, batch)
			for i, p := range batch {
				err := <-p.done
				switch i {
				case 3:
					if !errors.Is(err, errInjected) {
						t.Fatalf("d-3: %v, want the injected failure", err)
					}
				case 5:
					if !errors.Is(err, ErrUnknownDevice) {
						t.Fatalf("d-5: %v, want %v", err, ErrUnknownDevice)
					}
				default:
					if err != nil || !p.activated {
						t.Fatalf("d-%d: %v (activated %v)", i, err, p.activated)
					}
				}
			}
			err = real.View(ctx, func(tx store.Tx) error {
				for i := range n {
					dev := deviceID(fmt.Sprintf("d-%d", i))
					cs, err := tx.Certificates().ByDevice(ctx, "acme", dev)
					if err != nil {
						return err
					}
					want := 1
					if i == 3 || i == 5 {
						want = 0
					}
					if len(cs) != want {
						return fmt.Errorf("%s: %d certificates, want %d", dev, len(cs), want)
					}
					if i == 5 {
						continue
					}
					d, err := tx.Devices().Get(ctx, "acme", dev)
					if err != nil {
						return err
					}
					if wantState := map[bool]store.DeviceState{true: store.StateRegistered, false: store.StateActive}[i == 3]; d.State != wantState {
						return fmt.Errorf("%s: state %s, want %s", dev, d.State, wantState)
					}
				}
				b, err := tx.Settings().Get(ctx, "acme", tokenKey(tok.ID))
				if err != nil {
					return err
				}
				var got EnrolToken
				if err := json.Unmarshal(b, &got); err != nil {
					return err
				}
				if got.Remaining != 10-(n-2) {
					return fmt.Errorf("token has %d uses left, want %d", got.Remaining, 10-(n-2))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Per enrolment: enrol.token_use, device.state, cert.issue.
			if got := auditCount(t, real, "acme") - auditBefore; got != 3*(n-2) {
				t.Fatalf("%d audit records, want %d", got, 3*(n-2))
			}
			rep, err := audit.Verify(ctx, real, "acme")
			if err != nil || !rep.OK {
				t.Fatalf("audit verify: %v %v", rep, err)
			}
		})
	}
}
