package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/store"
)

// Singletons of a deployment run on the one node that holds their lease in
// the shared store; the others stand by and take over within leaseTTL +
// leaseRenew when the holder stops (it releases the lease: within
// leaseRenew) or dies (the lease expires).
const (
	leaseTTL   = 15 * time.Second
	leaseRenew = 5 * time.Second
)

// Lease names.
const (
	leaseMass      = "mass-actions" // the mass-action runner (response.go)
	leaseCampaigns = "campaigns"    // the firmware campaign engine (ota.go)
)

// leaseSet is what this process holds, for HoldsLease.
type leaseSet struct {
	mu   sync.Mutex
	held map[string]*atomic.Bool
}

func (s *leaseSet) flag(name string) *atomic.Bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = map[string]*atomic.Bool{}
	}
	if s.held[name] == nil {
		s.held[name] = new(atomic.Bool)
	}
	return s.held[name]
}

// HoldsLease reports whether this process holds the lease name (and so
// runs its singleton): "mass-actions" for the mass-action runner,
// "campaigns" for the firmware campaign engine.
func (a *App) HoldsLease(name string) bool { return a.leases.flag(name).Load() }

// holderID names this process as a lease holder: the node name and a
// random suffix, so that a restarted process, or two on one host, are
// never taken for each other.
func holderID(node string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return node + "." + hex.EncodeToString(b[:])
}

// underLease runs run while this process holds the lease name, until
// Stop: it tries to take the lease now and every leaseRenew (renewing it
// while held), starts run when it gets it, and cancels run when it loses
// it, or when it could not renew it for long enough that another node may
// have taken it. Stop cancels run and releases the lease so that another
// node takes over at its next attempt. A takeover is logged and audited
// (lease.acquired, on the platform chain, in the acquiring transaction).
// An error from run is fatal, as for any component.
func (a *App) underLease(ctx context.Context, name string, run func(context.Context) error) {
	log := a.log.With("component", "lease", "lease", name, "holder", a.holder)
	held := a.leases.flag(name)
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("lease "+name, func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	a.goroutine("lease "+name, func() error {
		defer close(done)
		var (
			runCancel context.CancelFunc
			runDone   chan struct{}
			lastOK    time.Time
		)
		stand := func(why string) {
			if runCancel == nil {
				return
			}
			log.Info("standing down", "reason", why)
			runCancel()
			<-runDone
			runCancel = nil
			held.Store(false)
		}
		defer func() {
			stand("stopping")
			rctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			var released bool
			err := a.store.Update(rctx, func(tx store.Tx) (err error) {
				released, err = tx.Leases().Release(rctx, name, a.holder)
				return err
			})
			if err != nil {
				log.Warn("lease not released; it expires on its own", "err", err)
			} else if released {
				log.Info("lease released")
			}
		}()
		tick := time.NewTicker(leaseRenew)
		defer tick.Stop()
		for {
			now := a.clk.Now().UTC()
			// One attempt may not outlast a renewal period: a store that
			// hangs must not keep a holder running past its lease.
			actx, acancel := context.WithTimeout(lctx, leaseRenew)
			l, ok, prev, err := a.acquireLease(actx, name, now)
			acancel()
			switch {
			case err != nil && lctx.Err() != nil:
				return nil
			case err != nil:
				log.Warn("lease not renewed", "err", err)
				if runCancel != nil && !a.clk.Now().Before(lastOK.Add(leaseTTL-leaseRenew)) {
					stand("lease may have lapsed")
				}
			case ok:
				lastOK = now
				if runCancel == nil {
					log.Info("lease acquired: running", "previous_holder", prev.Holder, "previous_expires", prev.Expires, "expires", l.Expires)
					rctx, rc := context.WithCancel(lctx)
					runCancel = rc
					runDone = make(chan struct{})
					held.Store(true)
					rd := runDone
					a.goroutine(name, func() error {
						defer close(rd)
						return run(rctx)
					})
				}
			default:
				stand("held by " + l.Holder)
			}
			select {
			case <-lctx.Done():
				return nil
			case <-tick.C:
			}
		}
	})
}

// acquireLease takes or renews the lease and, when this takes it from
// nobody or from another holder, audits it in the same transaction. prev
// is the lease as it stood before.
func (a *App) acquireLease(ctx context.Context, name string, now time.Time) (l store.Lease, ok bool, prev store.Lease, err error) {
	err = a.store.Update(ctx, func(tx store.Tx) error {
		prev, err = tx.Leases().Get(ctx, name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if l, ok, err = tx.Leases().Acquire(ctx, name, a.holder, now, now.Add(leaseTTL)); err != nil || !ok || prev.Holder == a.holder {
			return err
		}
		return audit.Record(ctx, tx, api.PlatformChain, now, "node:"+a.holder, "lease.acquired", "lease/"+name,
			map[string]any{"previous_holder": prev.Holder, "previous_expires": prev.Expires, "ttl_s": int(leaseTTL / time.Second)})
	})
	return l, ok, prev, err
}
