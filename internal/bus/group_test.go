package bus

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// TestPublishGroupSecurity: a group of SECURITY events is stored as one
// batch message per subject (split at BatchMaxEvents), a lone event in the
// single-event format; publishing the same group again stores nothing new
// (Nats-Msg-Id deduplication kept); a consumer sees every event once, in
// order per device.
func TestPublishGroupSecurity(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, func(o *Options) { o.BatchMaxEvents = 50 })
		devs := []string{"dev-a", "dev-b", "dev-c"}
		var evs []*event.Event
		for i := range 180 {
			evs = append(evs, ev(i, devs[i%3], event.DeviceState))
		}
		evs = append(evs, ev(1000, "dev-z", event.DeviceState))
		perSubj := map[string]int{}
		for _, e := range evs {
			perSubj[b.Subject(e)]++
		}
		want := 0
		for _, n := range perSubj {
			want += (n + 49) / 50
		}
		if err := b.PublishGroup(ctx, evs); err != nil {
			t.Fatal(err)
		}
		msgs := storedMsgs(t, b, Security)
		if len(msgs) != want {
			t.Fatalf("stored %d messages, want %d (one batch per subject and 50 events)", len(msgs), want)
		}
		total := 0
		for _, m := range msgs {
			n := m.Header.Get(BatchHeader)
			if n == "" {
				var e event.Event
				if err := event.Unmarshal(m.Data, &e); err != nil || e.ID != "id-001000" {
					t.Fatalf("lone message on %s: %v %q", m.Subject, err, e.ID)
				}
				total++
				continue
			}
			got, err := decodeBatch(n, m.Data)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range got {
				if b.Subject(&e) != m.Subject {
					t.Fatalf("event of %s in a batch on %s", b.Subject(&e), m.Subject)
				}
			}
			total += len(got)
		}
		if total != len(evs) {
			t.Fatalf("messages carry %d events, want %d", total, len(evs))
		}
		if err := b.PublishGroup(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if n := len(storedMsgs(t, b, Security)); n != want {
			t.Fatalf("the same group again: %d messages stored, want %d (deduplicated)", n, want)
		}

		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "group", Stream: Security, Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, len(evs))
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		col.mu.Lock()
		defer col.mu.Unlock()
		if len(col.seen) != len(evs) {
			t.Fatalf("handled %d events, want %d exactly once", len(col.seen), len(evs))
		}
		last := map[event.DeviceID]int{}
		for _, e := range col.seen {
			i, _ := strconv.Atoi(e.ID[3:])
			if p, ok := last[e.Device]; ok && i <= p {
				t.Fatalf("device %s: event %d after %d", e.Device, i, p)
			}
			last[e.Device] = i
		}
	})
}

func TestPublishGroupClosed(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		b := be.open(t, nil)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.PublishGroup(ctxT(t), []*event.Event{ev(1, "d", event.DeviceState)}); !errors.Is(err, ErrClosed) {
			t.Fatalf("PublishGroup after Close = %v, want ErrClosed", err)
		}
	})
}
