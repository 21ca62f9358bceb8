package bus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/garrisonhq/garrison/internal/event"
)

// groupMsg is the events of one subject gathered by PublishGroup.
type groupMsg struct {
	st            Stream
	subj          string
	n             int
	buf           []byte
	first         int // offset of the first entry's encoding
	firstID, last string
}

// PublishGroup stores evs, events known together (a page of a mass action),
// in as few messages as it can and returns once the streams have
// acknowledged every one of them (the SECURITY store fsyncs before it
// acknowledges). Events of one subject travel together as batch messages
// (format at [BatchHeader]; at most Options.BatchMaxEvents events and
// Options.BatchMaxBytes each; a lone event keeps the single-event format),
// so a group costs one store write and one acknowledgement per subject
// rather than per event. Unlike [Bus.PublishBatched] this covers SECURITY
// kinds: each SECURITY message carries a Nats-Msg-Id (the event's id for a
// lone event; the first and last ids and the count for a batch), so a
// retried group is stored once within the duplicate window. Order is kept
// per subject. Empty ids are filled in. The error is the first failure;
// events of other messages may have been stored.
func (b *Bus) PublishGroup(ctx context.Context, evs []*event.Event) error {
	if b.isClosed() {
		return ErrClosed
	}
	open := map[string]*groupMsg{}
	var msgs []*groupMsg
	for _, e := range evs {
		subj, st, data, err := b.encode(e)
		if err != nil {
			b.m.stream[Events].failed.Inc()
			return err
		}
		g := open[subj]
		if g != nil && (g.n >= b.opts.BatchMaxEvents || len(g.buf)+len(data)+binary.MaxVarintLen64 > b.opts.BatchMaxBytes) {
			g = nil
		}
		if g == nil {
			g = &groupMsg{st: st, subj: subj, firstID: e.ID}
			open[subj] = g
			msgs = append(msgs, g)
		}
		g.buf = binary.AppendUvarint(g.buf, uint64(len(data)))
		if g.n == 0 {
			g.first = len(g.buf)
		}
		g.buf = append(g.buf, data...)
		g.n++
		g.last = e.ID
	}
	acks := make([]jetstream.PubAckFuture, len(msgs))
	for i, g := range msgs {
		msg := &nats.Msg{Subject: g.subj}
		var opts []jetstream.PublishOpt
		if g.n == 1 {
			msg.Data = g.buf[g.first:]
			if g.st == Security {
				opts = append(opts, jetstream.WithMsgID(g.firstID))
			}
		} else {
			msg.Header = nats.Header{BatchHeader: []string{strconv.Itoa(g.n)}}
			msg.Data = g.buf
			if g.st == Security {
				opts = append(opts, jetstream.WithMsgID("batch:"+g.firstID+":"+g.last+":"+strconv.Itoa(g.n)))
			}
		}
		for {
			f, err := b.js(g.st).PublishMsgAsync(msg, opts...)
			if err == nil {
				b.m.stream[g.st].published.Add(float64(g.n))
				acks[i] = f
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || ctx.Err() != nil {
				if ctx.Err() != nil {
					err = fmt.Errorf("window full: %w", ctx.Err())
				}
				for _, g := range msgs[i:] {
					b.m.stream[g.st].failed.Add(float64(g.n))
				}
				return fmt.Errorf("bus: publish group %s: %w", g.subj, errors.Join(err, b.waitGroup(ctx, msgs[:i], acks[:i])))
			}
		}
	}
	return b.waitGroup(ctx, msgs, acks)
}

// waitGroup waits for the acknowledgements of a group's messages and
// returns the first failure (the publish window's handlers count them).
func (b *Bus) waitGroup(ctx context.Context, msgs []*groupMsg, acks []jetstream.PubAckFuture) error {
	var first error
	for i, f := range acks {
		g := msgs[i]
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if first == nil {
				first = fmt.Errorf("bus: publish group %s: %w", g.subj, err)
			}
		case <-ctx.Done():
			return fmt.Errorf("bus: publish group: %d messages unacknowledged: %w", len(acks)-i, ctx.Err())
		}
	}
	return first
}
