package bus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/event"
)

// gatherAll makes PublishBatched hold everything until Flush, so tests know
// exactly which events share a message.
func gatherAll(o *Options) { o.BatchLinger = time.Hour }

// encodeBatch writes evs in the batch format (body and header value).
func encodeBatch(t testing.TB, evs ...*event.Event) (string, []byte) {
	t.Helper()
	var body []byte
	for _, e := range evs {
		data, err := event.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		body = binary.AppendUvarint(body, uint64(len(data)))
		body = append(body, data...)
	}
	return strconv.Itoa(len(evs)), body
}

// storedMsgs returns every message of stream st, oldest first.
func storedMsgs(t *testing.T, b *Bus, st Stream) []*nats.Msg {
	t.Helper()
	ctx := ctxT(t)
	s, err := b.js(st).Stream(ctx, b.StreamName(st))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
	}
	return out
}

func TestBatchedRoundTrip(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		reg := prometheus.NewRegistry()
		b := be.open(t, func(o *Options) { gatherAll(o); o.Registerer = reg; o.BatchMaxEvents = 50 })
		// 3 devices (3 subjects), 120 events each, interleaved: 3 full
		// batches of 50, 50 and 20 per subject.
		devs := []string{"dev-a", "dev-b", "dev-c"}
		for i := range 360 {
			if err := b.PublishBatched(ctx, ev(i, devs[i%3], event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := storedMsgs(t, b, Events)
		if len(msgs) != 9 {
			t.Fatalf("stored %d messages, want 9 batches", len(msgs))
		}
		for _, m := range msgs {
			n := m.Header.Get(BatchHeader)
			evs, err := decodeBatch(n, m.Data)
			if err != nil {
				t.Fatalf("stored batch on %s: %v", m.Subject, err)
			}
			if n != "50" && n != "20" {
				t.Fatalf("batch of %s events, want 50 or 20", n)
			}
			for _, e := range evs {
				if b.Subject(&e) != m.Subject {
					t.Fatalf("event on %s in a batch of %s", b.Subject(&e), m.Subject)
				}
			}
		}
		// A lone event keeps the single-event format: no header, plain
		// event.Marshal bytes that any tool can decode.
		if err := b.PublishBatched(ctx, ev(1000, "dev-z", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		msgs = storedMsgs(t, b, Events)
		last := msgs[len(msgs)-1]
		var single event.Event
		if last.Header.Get(BatchHeader) != "" || event.Unmarshal(last.Data, &single) != nil || single.ID != "id-001000" {
			t.Fatalf("lone event stored as header %v, %d bytes", last.Header, len(last.Data))
		}

		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "batched", Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 361)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		perDev := map[event.DeviceID][]int{}
		col.mu.Lock()
		for _, e := range col.seen {
			i, _ := strconv.Atoi(e.ID[3:])
			perDev[e.Device] = append(perDev[e.Device], i)
		}
		got := len(col.seen)
		col.mu.Unlock()
		if got != 361 {
			t.Fatalf("handled %d events, want 361 exactly once", got)
		}
		for d, is := range perDev {
			for k := 1; k < len(is); k++ {
				if is[k] <= is[k-1] {
					t.Fatalf("device %s out of order: %v", d, is)
				}
			}
		}
		label := b.StreamName(Events) + "/batched"
		if p, a, h := count(b.m.published.WithLabelValues("events")), count(b.m.acked.WithLabelValues("events")), count(b.m.handled.WithLabelValues(label)); p != 361 || a != 361 || h != 361 {
			t.Fatalf("published %v acked %v handled %v, want 361 each (counted in events)", p, a, h)
		}
	})
}

func TestBatchedSecurityKindsKeepDedup(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, gatherAll)
		e := ev(1, "d", event.DeviceState)
		for range 2 {
			cp := *e
			if err := b.PublishBatched(ctx, &cp); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := storedMsgs(t, b, Security)
		if len(msgs) != 1 || msgs[0].Header.Get(BatchHeader) != "" {
			t.Fatalf("security stream holds %d messages (want 1: same id deduplicated, not batched)", len(msgs))
		}
	})
}

func TestBatchedCloseSendsGathered(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, gatherAll)
		for i := range 10 {
			if err := b.PublishBatched(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.PublishBatched(ctx, ev(11, "d", event.NetFlow)); !errors.Is(err, ErrClosed) {
			t.Fatalf("PublishBatched after Close = %v, want ErrClosed", err)
		}
		b2 := be.open(t, nil)
		msgs := storedMsgs(t, b2, Events)
		if len(msgs) != 1 || msgs[0].Header.Get(BatchHeader) != "10" {
			t.Fatalf("after Close: %d messages, want one batch of 10", len(msgs))
		}
	})
}

func TestBatchedFlushReportsFailures(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, gatherAll)
		if err := b.js(Events).DeleteStream(ctx, b.StreamName(Events)); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := b.PublishBatched(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		err := b.Flush(ctx)
		if err == nil {
			t.Fatal("Flush of a batch to a missing stream returned nil")
		}
		if want := "5 async publishes failed"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("Flush = %v, want it to count %q", err, want)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("second Flush reported old failures again: %v", err)
		}
		if got := count(b.m.failed.WithLabelValues("events")); got != 5 {
			t.Fatalf("failed counter = %v, want 5 (events, not messages)", got)
		}
	})
}

// publishBatch stores one batch message of evs directly.
func publishBatch(t *testing.T, b *Bus, evs ...*event.Event) {
	t.Helper()
	n, body := encodeBatch(t, evs...)
	m := &nats.Msg{Subject: b.Subject(evs[0]), Header: nats.Header{BatchHeader: []string{n}}, Data: body}
	if _, err := b.js(Events).PublishMsg(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
}

func TestBatchHandlerErrorRetriesInPlace(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		var mu sync.Mutex
		var order []string
		fails := map[string]int{"id-000002": 2}
		h := func(_ context.Context, e *event.Event) error {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, e.ID)
			if fails[e.ID] > 0 {
				fails[e.ID]--
				return errors.New("transient")
			}
			return nil
		}
		publishBatch(t, b, ev(0, "d", event.NetFlow), ev(1, "d", event.NetFlow), ev(2, "d", event.NetFlow), ev(3, "d", event.NetFlow))
		if err := b.Publish(ctx, ev(4, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		c, err := b.Consume(ctx, ConsumerOptions{Name: "bretry", Handler: h, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		mu.Lock()
		defer mu.Unlock()
		want := "[id-000000 id-000001 id-000002 id-000002 id-000002 id-000003 id-000004]"
		if fmt.Sprint(order) != want {
			t.Fatalf("handler calls %v, want %v", order, want)
		}
	})
}

func TestBatchGiveUpDropsOnlyThatEvent(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		var col collector
		h := func(ctx context.Context, e *event.Event) error {
			if e.ID == "id-000001" {
				return errors.New("poison")
			}
			return col.handle(ctx, e)
		}
		publishBatch(t, b, ev(0, "d", event.NetFlow), ev(1, "d", event.NetFlow), ev(2, "d", event.NetFlow))
		c, err := b.Consume(ctx, ConsumerOptions{Name: "bpoison", Handler: h, MaxAttempts: 2, Backoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := fmt.Sprint(col.ids()); got != "[id-000000 id-000002]" {
			t.Fatalf("handled %s, want the two good events once each", got)
		}
		label := b.StreamName(Events) + "/bpoison"
		if d, h := count(b.m.dropped.WithLabelValues(label)), count(b.m.handled.WithLabelValues(label)); d != 1 || h != 2 {
			t.Fatalf("dropped %v handled %v, want 1 and 2", d, h)
		}
	})
}

func TestBatchStopDuringRetryRedeliversWholeBatch(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		publishBatch(t, b, ev(0, "d", event.NetFlow), ev(1, "d", event.NetFlow), ev(2, "d", event.NetFlow))
		var tried atomic.Bool
		var first collector
		failing := func(ctx context.Context, e *event.Event) error {
			if e.ID == "id-000001" {
				tried.Store(true)
				return errors.New("down")
			}
			return first.handle(ctx, e)
		}
		c, err := b.Consume(ctx, ConsumerOptions{Name: "bstop", Handler: failing, MaxAttempts: -1, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		for !tried.Load() {
			time.Sleep(time.Millisecond)
		}
		c.Stop()
		// At least once: the whole batch comes back, including the event
		// that was handled before the failing one.
		var again collector
		c, err = b.Consume(ctx, ConsumerOptions{Name: "bstop", Handler: again.handle})
		if err != nil {
			t.Fatal(err)
		}
		again.waitN(t, 3)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := fmt.Sprint(first.ids()); got != "[id-000000]" {
			t.Fatalf("first consumer handled %s", got)
		}
		if got := fmt.Sprint(again.ids()); got != "[id-000000 id-000001 id-000002]" {
			t.Fatalf("after restart handled %s, want the whole batch again", got)
		}
	})
}

func TestMalformedBatchDropped(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		subj := b.opts.SubjectPrefix + ".acme.net_flow.1"
		n, good := encodeBatch(t, ev(0, "d", event.NetFlow), ev(1, "d", event.NetFlow))
		bad := []struct {
			count string
			body  []byte
		}{
			{"x", good},                        // count not a number
			{"3", good},                        // fewer entries than announced
			{"1", good},                        // trailing entry
			{n, good[:len(good)-1]},            // truncated
			{n, append([]byte{0xff}, good...)}, // bad length prefix
		}
		for _, m := range bad {
			msg := &nats.Msg{Subject: subj, Header: nats.Header{BatchHeader: []string{m.count}}, Data: m.body}
			if _, err := b.js(Events).PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Publish(ctx, ev(9, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "bbad", Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 1)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := fmt.Sprint(col.ids()); got != "[id-000009]" {
			t.Fatalf("handled %s, want only the good event", got)
		}
		label := b.StreamName(Events) + "/bbad"
		if got := count(b.m.malformed.WithLabelValues(label)); got != float64(len(bad)) {
			t.Fatalf("malformed counter = %v, want %d", got, len(bad))
		}
	})
}

func TestDecodeBatch(t *testing.T) {
	n, good := encodeBatch(t, ev(0, "d", event.NetFlow), ev(1, "e", event.NetFlow))
	evs, err := decodeBatch(n, good)
	if err != nil || len(evs) != 2 || evs[0].ID != "id-000000" || evs[1].Device != "e" {
		t.Fatalf("decodeBatch(good) = %v, %v", evs, err)
	}
	jsonEv, err := event.MarshalJSON(ev(0, "d", event.NetFlow))
	if err != nil {
		t.Fatal(err)
	}
	withJSON := append(binary.AppendUvarint(nil, uint64(len(jsonEv))), jsonEv...)
	for name, c := range map[string]struct {
		count string
		body  []byte
	}{
		"empty count":    {"", good},
		"zero":           {"0", nil},
		"negative":       {"-1", good},
		"too many":       {strconv.Itoa(MaxBatchEvents + 1), good},
		"padded count":   {"00002", good},
		"count > body":   {"1000", good},
		"short":          {"3", good},
		"trailing":       {"1", good},
		"zero length":    {"1", []byte{0, 0}},
		"huge length":    {"1", binary.AppendUvarint(nil, 1<<40)},
		"json entry":     {"1", withJSON},
		"invalid entry":  {"1", []byte{2, 1, 0}},
		"truncated last": {n, good[:len(good)-3]},
	} {
		if _, err := decodeBatch(c.count, c.body); !errors.Is(err, ErrBadBatch) {
			t.Errorf("%s: err = %v, want ErrBadBatch", name, err)
		}
	}
}

// FuzzDecodeBatch: the decoder never panics, and whatever it accepts is
// exactly the batch encoding of the events it returns.
func FuzzDecodeBatch(f *testing.F) {
	n, good := encodeBatch(f, ev(0, "d", event.NetFlow), ev(1, "e", event.CertIssued))
	f.Add(n, good)
	f.Add("1", good)
	f.Add("x", []byte{})
	f.Fuzz(func(t *testing.T, count string, body []byte) {
		evs, err := decodeBatch(count, body)
		if err != nil {
			if !errors.Is(err, ErrBadBatch) {
				t.Fatalf("error %v does not wrap ErrBadBatch", err)
			}
			return
		}
		ptrs := make([]*event.Event, len(evs))
		for i := range evs {
			ptrs[i] = &evs[i]
		}
		n, again := encodeBatch(t, ptrs...)
		c, _ := strconv.Atoi(count)
		if strconv.Itoa(c) != n || !bytes.Equal(again, body) {
			t.Fatalf("accepted batch (count %q, %d bytes) re-encodes to count %s, %d bytes", count, len(body), n, len(again))
		}
	})
}

func TestOrderKey(t *testing.T) {
	for in, want := range map[string]string{
		"gev.acme.net_flow.17":       "gev.acme.17",
		"gev.acme.net_session.17":    "gev.acme.17",
		"gevsec.acme.device_state.3": "gevsec.acme.3",
		"odd":                        "odd",
		"a.b":                        "a.b",
		"a.b.c":                      "a.b.c",
	} {
		if got := orderKey(in); got != want {
			t.Errorf("orderKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBatchedKeepsPartitionOrderAcrossKinds: a consumer of a partition sees
// the events of all kinds in publish order, as without batching.
func TestBatchedKeepsPartitionOrderAcrossKinds(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, gatherAll)
		kinds := []event.Kind{event.NetFlow, event.NetFlow, event.NetSession, event.NetFlow}
		var want []string
		for i := range 40 {
			e := ev(i, "dev-a", kinds[i%len(kinds)])
			want = append(want, e.ID)
			if err := b.PublishBatched(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if n := len(storedMsgs(t, b, Events)); n != 21 {
			t.Fatalf("stored %d messages, want 21: 10 sessions, 11 runs of flows (a kind change closes the batch)", n)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "korder", Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 40)
		c.Stop()
		if got := fmt.Sprint(col.ids()); got != fmt.Sprint(want) {
			t.Fatalf("handled %s\nwant    %s", got, want)
		}
	})
}

// TestBatchedDataStream: DATA kinds are batched on their own stream and
// counted there.
func TestBatchedDataStream(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, gatherAll)
		for i := range 3 {
			if err := b.PublishBatched(ctx, ev(i, "meter-1", event.DeviceTelemetry)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		msgs := storedMsgs(t, b, Data)
		if len(msgs) != 1 || msgs[0].Header.Get(BatchHeader) != "3" {
			t.Fatalf("DATA holds %d messages, want one batch of 3", len(msgs))
		}
		if p, a, e := count(b.m.published.WithLabelValues("data")), count(b.m.acked.WithLabelValues("data")), count(b.m.acked.WithLabelValues("events")); p != 3 || a != 3 || e != 0 {
			t.Fatalf("data published %v acked %v, events acked %v; want 3, 3, 0", p, a, e)
		}
	})
}
