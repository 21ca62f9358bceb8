package bus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/garrisonhq/garrison/internal/event"
)

// Batch format (see docs/BUS.md). A JetStream message that carries several
// events has the header BatchHeader set to the decimal number of events N
// (2 or more when written by the bus) and a body of N entries, each the
// uvarint length of one event.Marshal encoding followed by that encoding
// (binary form only, no JSON). All entries are on the message's subject, in
// publish order. A message without the header is one event, exactly as
// before batching existed, so old messages and external tools keep working.
const BatchHeader = "Garrison-Batch"

// MaxBatchEvents bounds the events of one batch message, on both sides.
const MaxBatchEvents = 4096

// ErrBadBatch: a batch message's header or body does not follow the batch
// format (wrapped with what is wrong and where).
var ErrBadBatch = errors.New("bus: malformed batch")

// decodeBatch parses a batch body whose BatchHeader value is count. It
// returns every event or an error wrapping ErrBadBatch (and the event
// package's error for a bad entry); nothing partial.
func decodeBatch(count string, body []byte) ([]event.Event, error) {
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 || n > MaxBatchEvents || len(count) > 4 {
		return nil, fmt.Errorf("%w: header %s %q: want a count from 1 to %d", ErrBadBatch, BatchHeader, count, MaxBatchEvents)
	}
	// Each entry takes at least two bytes: bound the allocation by the input.
	if n > len(body)/2 {
		return nil, fmt.Errorf("%w: %d events cannot fit in %d bytes", ErrBadBatch, n, len(body))
	}
	evs := make([]event.Event, n)
	off := 0
	for i := range n {
		l, k := binary.Uvarint(body[off:])
		if k <= 0 {
			return nil, fmt.Errorf("%w: entry %d at byte %d: bad length prefix", ErrBadBatch, i, off)
		}
		off += k
		if l == 0 || l > event.MaxEncodedSize || l > uint64(len(body)-off) {
			return nil, fmt.Errorf("%w: entry %d at byte %d: length %d (remaining %d, limit %d)", ErrBadBatch, i, off, l, len(body)-off, event.MaxEncodedSize)
		}
		entry := body[off : off+int(l)]
		if entry[0] != event.BinaryVersion {
			return nil, fmt.Errorf("%w: entry %d at byte %d: not the binary event encoding (first byte %#x)", ErrBadBatch, i, off, entry[0])
		}
		if err := event.Unmarshal(entry, &evs[i]); err != nil {
			return nil, fmt.Errorf("%w: entry %d at byte %d: %w", ErrBadBatch, i, off, err)
		}
		off += int(l)
	}
	if off != len(body) {
		return nil, fmt.Errorf("%w: %d trailing bytes after %d events", ErrBadBatch, len(body)-off, n)
	}
	return evs, nil
}

// msgEvents is how many events a published message carries (for metrics).
func msgEvents(m *nats.Msg) int {
	if m == nil || m.Header == nil {
		return 1
	}
	if n, err := strconv.Atoi(m.Header.Get(BatchHeader)); err == nil && n > 0 {
		return n
	}
	return 1
}

// pendingBatch is the events gathered for one subject.
type pendingBatch struct {
	st    Stream // Events or Data (SECURITY is never batched)
	subj  string
	n     int
	buf   []byte // entries: uvarint length + encoding
	first int    // offset of the first entry's encoding (after its prefix)
	full  bool   // accepts no more events
}

// batcher gathers PublishBatched events per subject and sends them as
// batch messages from one goroutine, in the order the batches were opened.
// At most one batch is open per ordering key (the subject without its kind:
// tenant and partition), and an event of another kind closes it, so a
// consumer of a partition sees the events of all kinds in publish order,
// as with one message per event.
//
// Lock order: sendSem before mu. mu guards the gathering state only; no I/O
// happens under it.
type batcher struct {
	b        *Bus
	js       jetstream.JetStream // its own async window, counted in messages
	linger   time.Duration
	maxN     int
	maxBytes int
	maxQueue int // bytes gathered and not yet taken by a sender

	mu     sync.Mutex
	closed bool
	open   map[string]*pendingBatch // ordering key -> batch still accepting events
	queue  []*pendingBatch          // every gathered batch, oldest first
	queued int
	space  chan struct{} // closed (and replaced) whenever a sender takes the queue

	kick    chan struct{} // cap 1: the queue became non-empty
	full    chan struct{} // cap 1: a batch is full: send full batches now
	drain   chan struct{} // cap 1: the queue is at its bound: send everything now
	sendSem chan struct{} // cap 1: one sender at a time keeps batches in order
	quit    chan struct{}
	done    chan struct{}
}

func newBatcher(b *Bus, js jetstream.JetStream) *batcher {
	q := &batcher{
		b: b, js: js, linger: b.opts.BatchLinger, maxN: b.opts.BatchMaxEvents, maxBytes: b.opts.BatchMaxBytes,
		maxQueue: max(4*b.opts.BatchMaxBytes, 1<<20),
		open:     map[string]*pendingBatch{}, space: make(chan struct{}),
		kick: make(chan struct{}, 1), full: make(chan struct{}, 1), drain: make(chan struct{}, 1), sendSem: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	go q.run()
	return q
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// add appends one encoded event to the open batch of subj. It blocks (until
// ctx ends) while maxQueue bytes are gathered and not yet taken by a sender.
func (q *batcher) add(ctx context.Context, st Stream, subj string, data []byte) error {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return ErrClosed
		}
		if q.queued > 0 && q.queued+len(data) > q.maxQueue {
			sp := q.space
			q.mu.Unlock()
			signal(q.drain)
			select {
			case <-sp:
				continue
			case <-ctx.Done():
				return fmt.Errorf("bus: publish %s: batch queue full: %w", subj, ctx.Err())
			}
		}
		key := orderKey(subj)
		bt := q.open[key]
		if bt != nil && bt.subj != subj {
			delete(q.open, key) // another kind in this partition: keep the order
			bt.full = true
			bt = nil
		}
		if bt != nil && len(bt.buf)+binary.MaxVarintLen32+len(data) > q.maxBytes {
			delete(q.open, key)
			bt.full = true
			signal(q.full)
			bt = nil
		}
		if bt == nil {
			bt = &pendingBatch{st: st, subj: subj, buf: make([]byte, 0, min(q.maxBytes, max(4096, 2*len(data))))}
			q.open[key] = bt
			q.queue = append(q.queue, bt)
			if len(q.queue) == 1 {
				signal(q.kick)
			}
		}
		bt.buf = binary.AppendUvarint(bt.buf, uint64(len(data)))
		if bt.n == 0 {
			bt.first = len(bt.buf)
		}
		bt.buf = append(bt.buf, data...)
		bt.n++
		q.queued += len(data)
		if bt.n >= q.maxN {
			delete(q.open, key)
			bt.full = true
			signal(q.full)
		}
		q.mu.Unlock()
		return nil
	}
}

// orderKey is subj (PREFIX.TENANT.KIND.PARTITION) without its kind token.
func orderKey(subj string) string {
	i := strings.IndexByte(subj, '.')
	if i < 0 {
		return subj
	}
	j := strings.IndexByte(subj[i+1:], '.')
	if j < 0 {
		return subj
	}
	k := strings.IndexByte(subj[i+1+j+1:], '.')
	if k < 0 {
		return subj
	}
	return subj[:i+1+j] + subj[i+1+j+1+k:]
}

// run sends gathered batches: full batches at once, and everything
// gathered once the linger has passed since the first event of a round
// (real time on purpose: this is I/O batching, not event time). While it
// sends, new events gather for the next round, so batches grow with load.
func (q *batcher) run() {
	defer close(q.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// On close, a round stuck on a full window gets closeWait to finish.
		select {
		case <-q.quit:
			t := time.NewTimer(closeWait)
			defer t.Stop()
			select {
			case <-t.C:
				cancel()
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-q.kick:
		case <-q.full:
		case <-q.drain:
		case <-q.quit:
			return
		}
		t := time.NewTimer(q.linger)
	round:
		for {
			select {
			case <-t.C:
				break round
			case <-q.drain:
				t.Stop()
				break round
			case <-q.full:
				_ = q.send(ctx, true)
			case <-q.quit:
				t.Stop()
				return
			}
		}
		_ = q.send(ctx, false)
	}
}

// send takes everything gathered (only the full batches if fullOnly) and
// hands it to JetStream in order. Failures go to the bus's async-failure
// path (reported by Flush).
func (q *batcher) send(ctx context.Context, fullOnly bool) error {
	select {
	case q.sendSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("bus: flush batches: %w", ctx.Err())
	}
	defer func() { <-q.sendSem }()
	q.mu.Lock()
	batches := q.queue
	q.queue, q.queued = nil, 0
	if fullOnly {
		var keep []*pendingBatch
		for _, bt := range batches {
			if !bt.full {
				keep = append(keep, bt)
				q.queued += len(bt.buf)
			}
		}
		q.queue = keep
		batches = slices.DeleteFunc(batches, func(bt *pendingBatch) bool { return !bt.full })
	} else {
		clear(q.open)
	}
	close(q.space)
	q.space = make(chan struct{})
	q.mu.Unlock()
	for _, bt := range batches {
		q.sendOne(ctx, bt)
	}
	return nil
}

func (q *batcher) sendOne(ctx context.Context, bt *pendingBatch) {
	msg := &nats.Msg{Subject: bt.subj}
	if bt.n == 1 {
		msg.Data = bt.buf[bt.first:] // a lone event keeps the single-event format
	} else {
		msg.Header = nats.Header{BatchHeader: []string{strconv.Itoa(bt.n)}}
		msg.Data = bt.buf
	}
	c := q.b.m.stream[bt.st]
	for {
		_, err := q.js.PublishMsgAsync(msg)
		if err == nil {
			c.published.Add(float64(bt.n))
			return
		}
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() == nil {
			continue // window full: nats.go waited for acknowledgements already
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("window full: %w", ctx.Err())
		}
		q.b.asyncFailed(bt.st, bt.subj, bt.n, err)
		return
	}
}

// closeWait bounds how long Close lets a sending round wait for room in the
// publish window.
const closeWait = 10 * time.Second

// close refuses further events, stops the sending goroutine and sends what
// is gathered (bounded by ctx).
func (q *batcher) close(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	close(q.quit)
	<-q.done
	return q.send(ctx, false)
}
