package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
)

// TestEnrolConcurrentSharedToken: 64 devices enrol at once with a batch
// token good for 40, and 8 devices of another model try it too; the
// group commit puts many in one transaction, yet exactly 40 succeed, each
// with its certificate and audit records, and every refusal changes
// nothing.
func TestEnrolConcurrentSharedToken(t *testing.T) {
	for name, open := range map[string]func(testing.TB) store.Store{
		"sqlite":   func(t testing.TB) store.Store { return openSQLite(t) },
		"postgres": func(t testing.TB) store.Store { return pgtest.Open(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := open(t)
			f := newFixture(t, st)
			if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			const n, uses, foreign = 64, 40, 8
			for i := range n + foreign {
				model := "m100"
				if i >= n {
					model = "other"
				}
				register(t, st, "acme", deviceID(fmt.Sprintf("d-%d", i)), model)
			}
			secret, _, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Count: uses, Models: []string{"m100"}}, "op-1")
			if err != nil {
				t.Fatal(err)
			}
			csrs := make([][]byte, n+foreign)
			for i := range csrs {
				csrs[i] = makeCSR(t, newKey(t), nil)
			}
			auditBefore := auditCount(t, st, "acme")
			var wg sync.WaitGroup
			errs := make([]error, n+foreign)
			for i := range n + foreign {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = f.svc.Enrol(ctx, "acme", deviceID(fmt.Sprintf("d-%d", i)), secret, csrs[i])
				}()
			}
			wg.Wait()
			ok := 0
			for i, err := range errs {
				switch {
				case err == nil && i < n:
					ok++
				case err == nil:
					t.Fatalf("device %d of another model enrolled", i)
				case errors.Is(err, ErrTokenUsed):
				case errors.Is(err, ErrTokenScope) && i >= n:
				default:
					t.Fatalf("device %d: %v", i, err)
				}
			}
			if ok != uses {
				t.Fatalf("%d enrolled, want exactly %d", ok, uses)
			}
			certs := 0
			err = st.View(ctx, func(tx store.Tx) error {
				for i := range n + foreign {
					cs, err := tx.Certificates().ByDevice(ctx, "acme", deviceID(fmt.Sprintf("d-%d", i)))
					if err != nil {
						return err
					}
					certs += len(cs)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if certs != uses {
				t.Fatalf("%d certificates stored, want %d", certs, uses)
			}
			// Per enrolment: cert.issue, enrol.token_use and device.state
			// (registered -> active).
			if got := auditCount(t, st, "acme") - auditBefore; got != 3*uses {
				t.Fatalf("%d audit records, want %d", got, 3*uses)
			}
			if rep, err := audit.Verify(ctx, st, "acme"); err != nil || !rep.OK {
				t.Fatalf("audit verify after the burst: %v %v", rep, err)
			}
		})
	}
}

// TestEnrolTokenTwoServices: two Services on one database (two Garrison
// processes) enrol 24 devices at once with a token good for 7. Each has
// its own group commit, so their transactions race; exactly 7 enrol, and
// the token ends with no use left (its uses are never lost or double
// spent).
func TestEnrolTokenTwoServices(t *testing.T) {
	for name, open := range map[string]func(testing.TB) store.Store{
		"sqlite":   func(t testing.TB) store.Store { return openSQLite(t) },
		"postgres": func(t testing.TB) store.Store { return pgtest.Open(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := open(t)
			f1 := newFixture(t, st)
			if _, err := f1.svc.EnsureCA(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			f2 := newFixture(t, st)
			const n, uses = 24, 7
			for i := range n {
				register(t, st, "acme", deviceID(fmt.Sprintf("d-%d", i)), "m100")
			}
			secret, tok, err := f1.svc.CreateToken(ctx, "acme", TokenSpec{Count: uses}, "op-1")
			if err != nil {
				t.Fatal(err)
			}
			csrs := make([][]byte, n)
			for i := range csrs {
				csrs[i] = makeCSR(t, newKey(t), nil)
			}
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i := range n {
				svc := f1.svc
				if i%2 == 1 {
					svc = f2.svc
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = svc.Enrol(ctx, "acme", deviceID(fmt.Sprintf("d-%d", i)), secret, csrs[i])
				}()
			}
			wg.Wait()
			ok := 0
			for i, err := range errs {
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, ErrTokenUsed):
					t.Fatalf("device %d: %v", i, err)
				}
			}
			if ok != uses {
				t.Fatalf("%d enrolled, want exactly %d", ok, uses)
			}
			err = st.View(ctx, func(tx store.Tx) error {
				b, err := tx.Settings().Get(ctx, "acme", tokenKey(tok.ID))
				if err != nil {
					return err
				}
				var got EnrolToken
				if err := json.Unmarshal(b, &got); err != nil {
					return err
				}
				if got.Remaining != 0 {
					return fmt.Errorf("token has %d uses left, want 0", got.Remaining)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if rep, err := audit.Verify(ctx, st, "acme"); err != nil || !rep.OK {
				t.Fatalf("audit verify: %v %v", rep, err)
			}
		})
	}
}

// TestGroupCommitLingers: while another issuance is being signed, the first
// to queue waits for it (and for any that queue meanwhile) and they share
// one commit; the wait ends when the last one being signed queues or fails;
// a lone issuance does not wait at all.
func TestGroupCommitLingers(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: openSQLite(t)}
	f := newFixture(t, st)
	f.svc.maxLinger = time.Hour // only a wake can end a wait in time
	if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	issue := func(device string, csr []byte) <-chan error {
		ch := make(chan error, 1)
		go func() {
			_, err := f.svc.Issue(ctx, "acme", deviceID(device), csr, IssueOptions{})
			ch <- err
		}()
		return ch
	}
	result := func(ch <-chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("issuance still waiting")
			return nil
		}
	}
	queued := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
			f.svc.gcMu.Lock()
			w, q := f.svc.gc.waiting, len(f.svc.gc.queue)
			f.svc.gcMu.Unlock()
			if w && q == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the leader is not lingering with %d queued (waiting %v, %d queued)", n, w, q)
			}
		}
	}

	// One issuance counts as being signed (held here): the first to queue
	// waits, the second queues behind it, and when the held one fails
	// both commit together.
	f.svc.beginSign()
	u0 := st.updates.Load()
	a := issue("d-1", deviceCSR(t, "d-1"))
	queued(1)
	b := issue("d-2", deviceCSR(t, "d-2"))
	queued(2)
	f.svc.abortSign()
	if err := result(a); err != nil {
		t.Fatal(err)
	}
	if err := result(b); err != nil {
		t.Fatal(err)
	}
	if n := st.updates.Load() - u0; n != 1 {
		t.Fatalf("two issuances took %d commits, want 1", n)
	}

	// Held again: the leader waits; an issuance with a bad CSR fails
	// without ending the wait (another is still being signed); the last
	// one being signed queueing ends it.
	f.svc.beginSign()
	c := issue("d-3", deviceCSR(t, "d-3"))
	queued(1)
	if err := result(issue("d-4", []byte("not a CSR"))); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("bad CSR: %v", err)
	}
	queued(1)
	f.svc.signing.Add(-1) // the held one is now issue e's
	e := issue("d-5", deviceCSR(t, "d-5"))
	for _, ch := range []<-chan error{c, e} {
		if err := result(ch); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.updates.Load() - u0; n != 2 {
		t.Fatalf("%d commits, want 2", n)
	}

	// Nobody else being signed: a lone issuance commits at once.
	if err := result(issue("d-6", deviceCSR(t, "d-6"))); err != nil {
		t.Fatal(err)
	}
	if err := f.st.View(ctx, func(tx store.Tx) error {
		for i := 1; i <= 6; i++ {
			certs, err := tx.Certificates().ByDevice(ctx, "acme", deviceID(fmt.Sprintf("d-%d", i)))
			want := 1
			if i == 4 { // the bad CSR
				want = 0
			}
			if err != nil || len(certs) != want {
				return fmt.Errorf("d-%d: %d certificates, want %d (%v)", i, len(certs), want, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
