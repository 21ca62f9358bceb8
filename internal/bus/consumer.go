package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/garrisonhq/garrison/internal/event"
)

// Handler processes one event. Returning nil acknowledges it; returning an
// error retries the same event after a backoff. It must not keep or modify e.
type Handler func(ctx context.Context, e *event.Event) error

// DeliverPolicy says where a new durable consumer starts. An existing
// durable always resumes after its last acknowledged event.
type DeliverPolicy int

const (
	// DeliverAll starts at the first event still in the stream.
	DeliverAll DeliverPolicy = iota
	// DeliverNew starts with events published after the consumer is created.
	DeliverNew
)

// ConsumerOptions configure [Bus.Consume]. Acknowledgements are batched:
// an event is acknowledged (with every earlier one) at most Batch/2 events
// or 20 ms after its handler returned nil, so after a crash up to that many
// handled events are delivered again. Handlers must be idempotent.
type ConsumerOptions struct {
	// Name of the durable consumer (letters, digits, '-', '_'). Required.
	Name string
	// Stream to read (default Events).
	Stream Stream
	// Filters restrict the subjects, written in the default subject space
	// (gev.TENANT.KIND.PARTITION, see PartitionFilter, KindFilter,
	// TenantFilter); the bus maps them onto the stream's prefix. Empty: all.
	Filters []string
	Deliver DeliverPolicy
	Handler Handler
	// Batch is how many events are pulled ahead (default 256).
	Batch int
	// AckWait is how long the server waits for an acknowledgement before it
	// redelivers (default 30s); a retrying consumer keeps extending it.
	AckWait time.Duration
	// MaxAttempts per event before the consumer gives up on it, logs it at
	// error level and terminates it (default 10; negative: never give up).
	MaxAttempts int
	// Backoff before the first retry (default 100ms); it doubles up to
	// MaxBackoff (default 5s).
	Backoff, MaxBackoff time.Duration
}

// Consumer is a running durable consumer. Stop it with [Consumer.Stop].
type Consumer struct {
	b     *Bus
	opts  ConsumerOptions
	cons  jetstream.Consumer
	it    jetstream.MessagesContext
	log   *slog.Logger
	ctx   context.Context
	stop  context.CancelFunc
	done  chan struct{}
	once  sync.Once
	label string
	m     consumerCounters
}

// Consume creates or updates the durable consumer opts.Name on opts.Stream
// and starts handling events in a goroutine of its own.
func (b *Bus) Consume(ctx context.Context, opts ConsumerOptions) (*Consumer, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       opts.Name,
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       opts.AckWait,
		MaxAckPending: max(opts.Batch*4, 1024),
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if opts.Deliver == DeliverNew {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	for _, f := range opts.Filters {
		m, err := b.mapFilter(opts.Stream, f)
		if err != nil {
			return nil, err
		}
		cfg.FilterSubjects = append(cfg.FilterSubjects, m)
	}
	if len(cfg.FilterSubjects) == 1 {
		cfg.FilterSubject, cfg.FilterSubjects = cfg.FilterSubjects[0], nil
	}
	stream := b.StreamName(opts.Stream)
	cons, err := b.js(opts.Stream).CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s on %s: %w", opts.Name, stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(opts.Batch))
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s on %s: %w", opts.Name, stream, err)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Consumer{
		b: b, opts: opts, cons: cons, it: it, ctx: cctx, stop: cancel, done: make(chan struct{}),
		log: b.log.With("consumer", opts.Name, "stream", stream), label: stream + "/" + opts.Name,
		m: b.m.consumer(stream + "/" + opts.Name),
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		it.Stop()
		cancel()
		return nil, ErrClosed
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	go c.run()
	return c, nil
}

func (o *ConsumerOptions) defaults() error {
	var errs []error
	if !plainToken(o.Name) {
		errs = append(errs, fmt.Errorf("consumer name %q must be letters, digits, '-' or '_'", o.Name))
	}
	if o.Handler == nil {
		errs = append(errs, errors.New("consumer handler required"))
	}
	if o.Stream != Events && o.Stream != Security && o.Stream != Data {
		errs = append(errs, fmt.Errorf("unknown stream %d", o.Stream))
	}
	if o.Batch < 0 || o.AckWait < 0 || o.Backoff < 0 || o.MaxBackoff < 0 {
		errs = append(errs, errors.New("consumer limits must not be negative"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	if o.Batch == 0 {
		o.Batch = 256
	}
	if o.AckWait == 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 10
	}
	if o.Backoff == 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Second
	}
	return nil
}

// Name returns the durable name.
func (c *Consumer) Name() string { return c.opts.Name }

// ackDelay is how long a handled event may wait for its acknowledgement
// while the consumer waits for more: acknowledgements are batched (AckAll
// policy: acknowledging an event acknowledges every earlier one).
const ackDelay = 20 * time.Millisecond

// idlePoll is how long one wait for an event lasts when nothing awaits an
// acknowledgement.
const idlePoll = 250 * time.Millisecond

func (c *Consumer) run() {
	defer close(c.done)
	var pending jetstream.Msg // last handled, not yet acknowledged
	unacked := 0
	ackEvery := max(c.opts.Batch/2, 1)
	flush := func(sync bool) {
		if pending == nil {
			return
		}
		var err error
		if sync {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = pending.DoubleAck(ctx)
			cancel()
		} else {
			err = pending.Ack()
		}
		if err != nil {
			c.log.Warn("bus: ack", "err", err)
		}
		c.b.lastAck.Store(time.Now().UnixNano())
		pending, unacked = nil, 0
	}
	defer flush(true)
	naking := false // after a stop interrupted a retry, hand nothing more out
	for {
		var msg jetstream.Msg
		var err error
		// Next never blocks for long: each call re-checks whether a new pull
		// request is due, which recovers from a pull that nats.go skipped
		// while another was in flight (seen with small batches).
		wait := idlePoll
		if pending != nil {
			wait = ackDelay
		}
		msg, err = c.it.Next(jetstream.NextMaxWait(wait))
		if err != nil {
			switch {
			case errors.Is(err, nats.ErrTimeout):
				flush(true)
			case errors.Is(err, jetstream.ErrMsgIteratorClosed):
				return
			default:
				c.log.Warn("bus: consumer fetch", "err", err)
			}
			continue
		}
		if naking {
			_ = msg.Nak()
			continue
		}
		switch c.handle(msg, func() { flush(false) }) {
		case handled:
			pending = msg
			if unacked++; unacked >= ackEvery {
				flush(false)
			}
		case handedBack:
			naking = true
		}
	}
}

type outcome int

const (
	handled    outcome = iota // handler returned nil; to be acknowledged
	dropped                   // terminated (undecodable or out of attempts)
	handedBack                // a stop interrupted the retries; Nak'd
)

// handle runs the handler on msg's event, or on each event of a batch
// message in order, until it succeeds or gives up. Before it terminates or
// hands back msg it calls flush, so that the batched acknowledgement of
// earlier messages cannot cover msg.
//
// A batch message is acknowledged (later, batched) once every event in it
// was handled or given up on. A handler error retries that event in place,
// like a single event; giving up on it drops that event only (logged,
// counted) and goes on with the next. A stop during a retry hands the whole
// message back, so the events of the batch before the failing one are
// delivered again: handlers must be idempotent.
func (c *Consumer) handle(msg jetstream.Msg, flush func()) outcome {
	if n := msg.Headers().Get(BatchHeader); n != "" {
		evs, err := decodeBatch(n, msg.Data())
		if err != nil {
			return c.undecodable(msg, flush, err)
		}
		progress := time.Now()
		for i := range evs {
			if time.Since(progress) > c.opts.AckWait/3 {
				// A long batch must not outlive its AckWait on the server.
				_ = msg.InProgress()
				progress = time.Now()
			}
			if c.handleOne(msg, &evs[i], flush, false) == handedBack {
				return handedBack
			}
		}
		return handled
	}
	var e event.Event
	if err := event.Unmarshal(msg.Data(), &e); err != nil {
		return c.undecodable(msg, flush, err)
	}
	return c.handleOne(msg, &e, flush, true)
}

// undecodable terminates a message that is not an event or a valid batch.
func (c *Consumer) undecodable(msg jetstream.Msg, flush func(), err error) outcome {
	c.log.Error("bus: dropping undecodable message", "subject", msg.Subject(), "err", err)
	c.m.dropped.Inc()
	c.m.malformed.Inc()
	flush()
	_ = msg.Term()
	c.b.lastAck.Store(time.Now().UnixNano())
	return dropped
}

// handleOne runs the handler on e (carried by msg) with retries. Giving up
// terminates msg when it carries e alone (single); in a batch only e is
// dropped and the outcome is handled, so the rest of the batch goes on.
func (c *Consumer) handleOne(msg jetstream.Msg, e *event.Event, flush func(), single bool) outcome {
	wait := c.opts.Backoff
	for attempt := 1; ; attempt++ {
		err := c.opts.Handler(c.ctx, e)
		if err == nil {
			c.m.handled.Inc()
			return handled
		}
		c.m.handlerErrs.Inc()
		if attempt == 1 {
			flush()
		}
		if c.opts.MaxAttempts > 0 && attempt >= c.opts.MaxAttempts {
			c.log.Error("bus: giving up on event", "event", e.ID, "tenant", e.Tenant, "device", e.Device, "kind", e.Kind, "attempts", attempt, "err", err)
			c.m.dropped.Inc()
			if !single {
				return handled
			}
			_ = msg.Term()
			c.b.lastAck.Store(time.Now().UnixNano())
			return dropped
		}
		c.log.Warn("bus: handler failed, retrying", "event", e.ID, "tenant", e.Tenant, "device", e.Device, "attempt", attempt, "backoff", wait, "err", err)
		_ = msg.InProgress()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			_ = msg.Nak()
			return handedBack
		}
		wait = min(wait*2, c.opts.MaxBackoff)
	}
}

// Lag returns how many events of the consumer's filter are not yet
// acknowledged: not yet delivered plus delivered and awaiting their ack.
// The server updates the count asynchronously to publish acknowledgements,
// so for a few milliseconds after a publish it can be lower than the truth;
// [Consumer.WaitCaughtUp] accounts for that.
func (c *Consumer) Lag(ctx context.Context) (uint64, error) {
	return lag(ctx, c.cons)
}

// Lag returns the lag of the durable consumer name on stream st, running in
// this process or not.
func (b *Bus) Lag(ctx context.Context, st Stream, name string) (uint64, error) {
	cons, err := b.js(st).Consumer(ctx, b.StreamName(st), name)
	if err != nil {
		return 0, fmt.Errorf("bus: consumer %s: %w", name, err)
	}
	return lag(ctx, cons)
}

func lag(ctx context.Context, cons jetstream.Consumer) (uint64, error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("bus: consumer info: %w", err)
	}
	return info.NumPending + uint64(max(info.NumAckPending, 0)), nil
}

// WaitCaughtUp polls Lag every interval until it has read zero twice in a
// row (see Lag on why once is not enough) or ctx ends. Events published
// before the call are then handled and acknowledged.
func (c *Consumer) WaitCaughtUp(ctx context.Context, interval time.Duration) error {
	zeros := 0
	for {
		n, err := c.Lag(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			if zeros++; zeros == 2 {
				return nil
			}
		} else {
			zeros = 0
		}
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("bus: consumer %s still %d behind: %w", c.opts.Name, n, ctx.Err())
		}
	}
}

// Stop stops pulling, lets the handler finish the events already pulled
// (an event being retried is handed back to the server instead) and returns
// when the consumer's goroutine has ended. The durable consumer stays on the
// server, so a later Consume with the same name resumes after the last
// acknowledged event. Stop is idempotent.
func (c *Consumer) Stop() {
	c.once.Do(func() {
		c.it.Drain()
		// Stop retries of a failing event; events that succeed still drain.
		c.stop()
		<-c.done
		c.b.mu.Lock()
		delete(c.b.consumers, c)
		c.b.mu.Unlock()
	})
}
