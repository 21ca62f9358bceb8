package identity

import (
	"context"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Group commit. Concurrent Issue calls sign in parallel, then queue their
// records; the first caller to find no commit running becomes the leader
// and commits everything queued in one store.Update, again and again until
// the queue is empty, while the others wait for their result. One fsync
// then carries many certificates, each with its own audit record. If a
// batch fails as a whole, its entries are retried one per transaction, so
// one bad entry never fails another caller's issuance.

type pendingIssue struct {
	iss Issued
	opt IssueOptions
	// pre, if set, runs in the entry's transaction before the certificate
	// is stored (enrolment checks and spends its token there). A *refusal
	// it returns refuses this entry alone; pre must return it before
	// writing anything.
	pre     func(ctx context.Context, tx store.Tx) error
	refused error
	done    chan error
}

// refusal is an error of a pendingIssue's pre that refuses its entry
// without failing the others of the batch.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

type groupCommit struct {
	queue   []*pendingIssue
	running bool
}

// maxBatch bounds one transaction.
const maxBatch = 512

func (s *Service) commit(ctx context.Context, iss Issued, opt IssueOptions) error {
	return s.commitWith(ctx, iss, opt, nil)
}

// commitWith queues iss for the group commit, with pre run in the same
// transaction just before it is stored; it returns pre's refusal, if any,
// or the commit's error.
func (s *Service) commitWith(ctx context.Context, iss Issued, opt IssueOptions, pre func(context.Context, store.Tx) error) error {
	p := &pendingIssue{iss: iss, opt: opt, pre: pre, done: make(chan error, 1)}
	s.gcMu.Lock()
	s.gc.queue = append(s.gc.queue, p)
	if s.gc.running {
		s.gcMu.Unlock()
		return <-p.done
	}
	s.gc.running = true
	for {
		batch := s.gc.queue
		if len(batch) > maxBatch {
			batch = batch[:maxBatch]
		}
		s.gc.queue = s.gc.queue[len(batch):]
		if len(batch) == 0 {
			s.gc.running = false
			s.gcMu.Unlock()
			break
		}
		s.gcMu.Unlock()
		s.commitBatch(context.WithoutCancel(ctx), batch)
		s.gcMu.Lock()
	}
	return <-p.done
}

func (s *Service) commitBatch(ctx context.Context, batch []*pendingIssue) {
	run := func(tx store.Tx, ps []*pendingIssue) error {
		for _, p := range ps {
			p.refused = nil // Update may run fn again
			if p.pre != nil {
				if err := p.pre(ctx, tx); err != nil {
					var r *refusal
					if errors.As(err, &r) {
						p.refused = r.err
						continue
					}
					return err
				}
			}
			if err := s.persist(ctx, tx, p.iss, p.opt); err != nil {
				return err
			}
		}
		return nil
	}
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error { return run(tx, batch) })
	if err == nil || len(batch) == 1 {
		for _, p := range batch {
			if err == nil {
				p.done <- p.refused
			} else {
				p.done <- err
			}
		}
		return
	}
	for _, p := range batch {
		err := s.opt.Store.Update(ctx, func(tx store.Tx) error { return run(tx, []*pendingIssue{p}) })
		if err == nil {
			err = p.refused
		}
		p.done <- err
	}
}

// BatchRequest is one CSR of an [Service.IssueBatch].
type BatchRequest struct {
	Device event.DeviceID
	CSR    []byte
}

// BatchResult is the outcome of one BatchRequest: Err is set (wrapping
// [ErrBadCSR] or [ErrBadID] for bad input) or Issued is.
type BatchResult struct {
	Issued Issued
	Err    error
}

// IssueBatch issues many certificates of one tenant and stores all the good
// ones, each with its audit record, in one transaction. Bad requests get
// their own error and do not stop the others. The returned error is set
// only when nothing could be stored (then every result carries it too).
func (s *Service) IssueBatch(ctx context.Context, tenant event.TenantID, reqs []BatchRequest, opt IssueOptions) ([]BatchResult, error) {
	out := make([]BatchResult, len(reqs))
	var good []int
	for i, r := range reqs {
		o := opt
		csr, err := ParseCSR(r.CSR, tenant, r.Device)
		if err == nil {
			out[i].Issued, err = s.sign(ctx, tenant, r.Device, csr.PublicKey, &o)
		}
		if err != nil {
			out[i].Err = fmt.Errorf("identity: issue %s/%s: %w", tenant, r.Device, err)
			continue
		}
		good = append(good, i)
	}
	if len(good) == 0 {
		return out, nil
	}
	if opt.Actor == "" {
		opt.Actor = "system"
	}
	if opt.Reason == "" {
		opt.Reason = "issue"
	}
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		for _, i := range good {
			if err := s.persist(ctx, tx, out[i].Issued, opt); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("identity: issue batch %s: %w", tenant, err)
		for _, i := range good {
			out[i] = BatchResult{Err: err}
		}
		return out, err
	}
	for _, i := range good {
		s.published(ctx, out[i].Issued, opt)
	}
	return out, nil
}
