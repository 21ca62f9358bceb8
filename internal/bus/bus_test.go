package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/garrisonhq/garrison/internal/event"
)

const natsURLEnv = "GARRISON_TEST_NATS_URL"

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// backend opens buses for one test: embedded in a temp dir, or on the
// external server with a random stream and subject prefix. The same
// backend's open returns buses over the same data (streams), so reopening
// tests durability.
type backend struct {
	name string
	open func(t *testing.T, mod func(*Options)) *Bus
}

func randomToken(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// eachBackend runs f against the embedded bus and, when
// GARRISON_TEST_NATS_URL is set, against that external server.
func eachBackend(t *testing.T, f func(t *testing.T, be backend)) {
	t.Helper()
	t.Run("embedded", func(t *testing.T) {
		dir := t.TempDir()
		f(t, backend{name: "embedded", open: func(t *testing.T, mod func(*Options)) *Bus {
			t.Helper()
			o := Options{DataDir: dir}
			if mod != nil {
				mod(&o)
			}
			return mustOpen(t, o)
		}})
	})
	t.Run("external", func(t *testing.T) {
		url := os.Getenv(natsURLEnv)
		if url == "" {
			t.Skipf("%s not set: external NATS JetStream tests skipped (set it to e.g. nats://127.0.0.1:4222)", natsURLEnv)
		}
		tok := randomToken(t)
		base := Options{URL: url, StreamPrefix: "T" + tok + "_", SubjectPrefix: "t" + tok}
		t.Cleanup(func() {
			b, err := Open(context.Background(), base)
			if err != nil {
				t.Errorf("cleanup open: %v", err)
				return
			}
			if err := b.DeleteStreams(context.Background()); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			_ = b.Close()
		})
		f(t, backend{name: "external", open: func(t *testing.T, mod func(*Options)) *Bus {
			t.Helper()
			o := base
			if mod != nil {
				mod(&o)
			}
			return mustOpen(t, o)
		}})
	})
}

func mustOpen(t *testing.T, o Options) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := Open(ctx, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func gathered(t *testing.T, g prometheus.Gatherer, name string) bool {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) > 0 {
			return true
		}
	}
	return false
}

func serverAtLeast(b *Bus, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(b.evNC.ConnectedServerVersion(), "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func ev(i int, dev string, k event.Kind) *event.Event {
	return &event.Event{
		ID: fmt.Sprintf("id-%06d", i), Tenant: "acme", Device: event.DeviceID(dev), Kind: k,
		Time: t0.Add(time.Duration(i) * time.Millisecond), Source: "test",
		Attrs: map[string]any{"i": float64(i), "s": "x"},
	}
}

// collector records what a handler saw.
type collector struct {
	mu   sync.Mutex
	seen []*event.Event
}

func (c *collector) handle(_ context.Context, e *event.Event) error {
	cp := *e
	c.mu.Lock()
	c.seen = append(c.seen, &cp)
	c.mu.Unlock()
	return nil
}

func (c *collector) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.seen))
	for i, e := range c.seen {
		out[i] = e.ID
	}
	return out
}

func (c *collector) waitN(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got := len(c.seen)
		c.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("handler saw %d events, want %d", len(c.ids()), n)
}

func TestPublishConsumeRoundTrip(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		reg := prometheus.NewRegistry()
		b := be.open(t, func(o *Options) { o.Registerer = reg })
		ctx := ctxT(t)
		want := ev(1, "meter-1", event.NetSession)
		if err := b.Publish(ctx, want); err != nil {
			t.Fatal(err)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "rt", Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 1)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		got := col.seen[0]
		if got.ID != want.ID || got.Tenant != want.Tenant || got.Device != want.Device || got.Kind != want.Kind ||
			!got.Time.Equal(want.Time) || got.Source != want.Source || got.Attrs["i"] != float64(1) || got.Attrs["s"] != "x" {
			t.Fatalf("consumed %+v, want %+v", got, want)
		}
		if n := count(b.m.acked.WithLabelValues("events")); n != 1 {
			t.Fatalf("acked counter = %v, want 1", n)
		}
		if n := count(b.m.handled.WithLabelValues(b.StreamName(Events) + "/rt")); n != 1 {
			t.Fatalf("handled counter = %v, want 1", n)
		}
		if !gathered(t, reg, "garrison_bus_published_total") {
			t.Fatal("garrison_bus_published_total not exported through the Registerer")
		}
		c.Stop()
	})
}

func TestAsyncPublishAndSecurityRouting(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		b := be.open(t, nil)
		ctx := ctxT(t)
		const n = 2000
		for i := range n {
			k := event.NetFlow
			if i%100 == 0 {
				k = event.CertRevoked
			}
			if err := b.PublishAsync(ctx, ev(i, fmt.Sprintf("d-%d", i%50), k)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			st   Stream
			want uint64
		}{{Events, n - n/100}, {Security, n / 100}} {
			info, err := b.StreamInfo(ctx, tc.st)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != tc.want {
				t.Errorf("stream %s holds %d events, want %d", tc.st, info.State.Msgs, tc.want)
			}
		}
		// A Security consumer sees the revocations, in order.
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "sec", Stream: Security, Filters: []string{KindFilter(event.CertRevoked)}, Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, n/100)
		c.Stop()
		for i, id := range col.ids() {
			if want := fmt.Sprintf("id-%06d", i*100); id != want {
				t.Fatalf("security event %d is %s, want %s", i, id, want)
			}
		}
	})
}

func TestFlushReportsFailures(t *testing.T) {
	// Publishing to a stream that no longer exists fails after sending.
	eachBackend(t, func(t *testing.T, be backend) {
		b := be.open(t, nil)
		ctx := ctxT(t)
		if err := b.js(Events).DeleteStream(ctx, b.StreamName(Events)); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := b.PublishAsync(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		err := b.Flush(ctx)
		if err == nil {
			t.Fatal("Flush after publishing to a missing stream returned nil")
		}
		if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("flush error (not a known sentinel, still an error): %v", err)
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatalf("second Flush reported old failures again: %v", err)
		}
		if err := b.Publish(ctx, ev(9, "d", event.NetFlow)); err == nil {
			t.Fatal("Publish to a missing stream returned nil")
		}
		if got := count(b.m.failed.WithLabelValues("events")); got != 6 {
			t.Fatalf("failed counter = %v, want 6", got)
		}
	})
}

func TestDurableAcrossReopen(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		for i := range 10 {
			if err := b.Publish(ctx, ev(i, "d", event.NetSession)); err != nil {
				t.Fatal(err)
			}
		}
		var first collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "dur", Handler: first.handle, Batch: 1})
		if err != nil {
			t.Fatal(err)
		}
		first.waitN(t, 10)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, ev(99, "d", event.NetSession)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Close = %v, want ErrClosed", err)
		}

		b2 := be.open(t, nil)
		for i := 10; i < 15; i++ {
			if err := b2.Publish(ctx, ev(i, "d", event.NetSession)); err != nil {
				t.Fatal(err)
			}
		}
		info, err := b2.StreamInfo(ctx, Events)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 15 {
			t.Fatalf("after reopen the stream holds %d events, want 15", info.State.Msgs)
		}
		var second collector
		c2, err := b2.Consume(ctx, ConsumerOptions{Name: "dur", Handler: second.handle})
		if err != nil {
			t.Fatal(err)
		}
		second.waitN(t, 5)
		if err := c2.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c2.Stop()
		got := second.ids()
		if len(got) != 5 || got[0] != "id-000010" || got[4] != "id-000014" {
			t.Fatalf("resumed consumer saw %v, want id-000010..id-000014", got)
		}
	})
}

func TestConsumerResumesAfterStop(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "res", Batch: 1, Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := b.Publish(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		col.waitN(t, 5)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		c.Stop() // idempotent
		for i := 5; i < 8; i++ {
			if err := b.Publish(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		// The server updates a consumer's pending count asynchronously to
		// the publish acknowledgement: wait for it to settle at 3.
		var lag uint64
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if lag, err = b.Lag(ctx, Events, "res"); err != nil {
				t.Fatal(err)
			}
			if lag == 3 {
				break
			}
		}
		if lag != 3 {
			t.Fatalf("Lag of the stopped consumer = %d, want 3", lag)
		}
		var col2 collector
		c2, err := b.Consume(ctx, ConsumerOptions{Name: "res", Handler: col2.handle})
		if err != nil {
			t.Fatal(err)
		}
		col2.waitN(t, 3)
		if err := c2.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c2.Stop()
		if got := col2.ids(); len(got) != 3 || got[0] != "id-000005" || got[2] != "id-000007" {
			t.Fatalf("resumed consumer saw %v, want id-000005..7", got)
		}
	})
}

func TestRedeliveryOnHandlerError(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		var mu sync.Mutex
		var order []string
		fails := map[string]int{"id-000001": 3}
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
		for i := range 3 {
			if err := b.Publish(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		c, err := b.Consume(ctx, ConsumerOptions{Name: "retry", Handler: h, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		mu.Lock()
		defer mu.Unlock()
		want := []string{"id-000000", "id-000001", "id-000001", "id-000001", "id-000001", "id-000002"}
		if fmt.Sprint(order) != fmt.Sprint(want) {
			t.Fatalf("handler calls %v, want %v (retries in place, later events wait)", order, want)
		}
		if got := count(b.m.handlerErrs.WithLabelValues(b.StreamName(Events) + "/retry")); got != 3 {
			t.Fatalf("handler error counter = %v, want 3", got)
		}
	})
}

func TestGiveUpAfterMaxAttempts(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		var calls atomic.Int32
		h := func(_ context.Context, e *event.Event) error {
			calls.Add(1)
			if e.ID == "id-000000" {
				return errors.New("poison")
			}
			return nil
		}
		for i := range 2 {
			if err := b.Publish(ctx, ev(i, "d", event.NetFlow)); err != nil {
				t.Fatal(err)
			}
		}
		c, err := b.Consume(ctx, ConsumerOptions{Name: "poison", Handler: h, MaxAttempts: 3, Backoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := calls.Load(); got != 4 {
			t.Fatalf("handler called %d times, want 3 attempts + 1", got)
		}
		if got := count(b.m.dropped.WithLabelValues(b.StreamName(Events) + "/poison")); got != 1 {
			t.Fatalf("dropped counter = %v, want 1", got)
		}
	})
}

func TestPartitionAndKindFiltering(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		// Devices spread over partitions; remember which belong to p.
		const p = 17
		wantPart := map[string]bool{}
		wantKind := 0
		for i := range 300 {
			dev := fmt.Sprintf("dev-%d", i)
			k := event.NetFlow
			if i%3 == 0 {
				k = event.Location
				wantKind++
			}
			e := ev(i, dev, k)
			if event.Partition(e.Device) == p {
				wantPart[e.ID] = true
			}
			if err := b.PublishAsync(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if len(wantPart) == 0 {
			t.Fatal("test data has no device in partition 17")
		}
		var part, kind collector
		cp, err := b.Consume(ctx, ConsumerOptions{Name: "p17", Filters: []string{PartitionFilter(p)}, Handler: part.handle})
		if err != nil {
			t.Fatal(err)
		}
		kindFilters := []string{KindFilter(event.Location)}
		if serverAtLeast(b, 2, 10) {
			kindFilters = append(kindFilters, TenantFilter("nobody")) // several filters need 2.10
		} else {
			t.Logf("server %s predates multiple filter subjects; using one", b.evNC.ConnectedServerVersion())
		}
		ck, err := b.Consume(ctx, ConsumerOptions{Name: "loc", Filters: kindFilters, Handler: kind.handle})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []*Consumer{cp, ck} {
			if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			c.Stop()
		}
		got := part.ids()
		if len(got) != len(wantPart) {
			t.Fatalf("partition consumer saw %d events, want %d", len(got), len(wantPart))
		}
		for _, id := range got {
			if !wantPart[id] {
				t.Fatalf("partition consumer saw %s from another partition", id)
			}
		}
		for _, e := range kind.seen {
			if e.Kind != event.Location {
				t.Fatalf("kind consumer saw %s", e.Kind)
			}
		}
		if len(kind.seen) != wantKind {
			t.Fatalf("kind consumer saw %d events, want %d", len(kind.seen), wantKind)
		}
	})
}

func TestDeliverNew(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		if err := b.Publish(ctx, ev(0, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "new", Deliver: DeliverNew, Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, ev(1, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 1)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := col.ids(); len(got) != 1 || got[0] != "id-000001" {
			t.Fatalf("DeliverNew consumer saw %v, want only id-000001", got)
		}
	})
}

func TestStreamsUpgradeOnOpen(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, func(o *Options) { o.EventsMaxAge = time.Hour })
		if err := b.Publish(ctx, ev(0, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		info, err := b.StreamInfo(ctx, Events)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxAge != time.Hour {
			t.Fatalf("MaxAge = %v, want 1h", info.Config.MaxAge)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b2 := be.open(t, func(o *Options) { o.EventsMaxAge = 2 * time.Hour; o.EventsMaxBytes = 1 << 30 })
		info, err = b2.StreamInfo(ctx, Events)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.MaxAge != 2*time.Hour || info.Config.MaxBytes != 1<<30 {
			t.Fatalf("after upgrade MaxAge=%v MaxBytes=%d, want 2h and 1GiB", info.Config.MaxAge, info.Config.MaxBytes)
		}
		if info.State.Msgs != 1 {
			t.Fatalf("upgrade lost events: %d left, want 1", info.State.Msgs)
		}
	})
}

func TestBadInputRejected(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		ctx := ctxT(t)
		b := be.open(t, nil)
		bad := []*event.Event{
			nil,
			{Tenant: "acme", Kind: event.NetFlow}, // no time
			{Tenant: "ac.me", Kind: event.NetFlow, Time: t0}, // dot would add a subject token
			{Tenant: "*", Kind: event.NetFlow, Time: t0},     // wildcard
			{Tenant: "acme", Kind: "net.>", Time: t0},        // wildcard kind
			{Tenant: "acme", Kind: event.NetFlow, Time: t0, Attrs: map[string]any{"c": make(chan int)}},
		}
		for i, e := range bad {
			if err := b.Publish(ctx, e); err == nil {
				t.Errorf("Publish(bad %d) = nil", i)
			}
			if err := b.PublishAsync(ctx, e); err == nil {
				t.Errorf("PublishAsync(bad %d) = nil", i)
			}
		}
		if err := b.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		info, err := b.StreamInfo(ctx, Events)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 0 {
			t.Fatalf("bad events reached the stream: %d", info.State.Msgs)
		}
		// Garbage put on the subject directly is dropped by the consumer, the
		// next good event still arrives.
		if _, err := b.js(Events).Publish(ctx, b.opts.SubjectPrefix+".acme.net_flow.1", []byte("\x00garbage")); err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, ev(1, "d", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "bad", Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 1)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := count(b.m.dropped.WithLabelValues(b.StreamName(Events) + "/bad")); got != 1 {
			t.Fatalf("dropped counter = %v, want 1", got)
		}
		for _, co := range []ConsumerOptions{
			{Name: "", Handler: col.handle},
			{Name: "a.b", Handler: col.handle},
			{Name: "nohandler"},
			{Name: "f", Handler: col.handle, Filters: []string{"other.>"}},
		} {
			if _, err := b.Consume(ctx, co); !errors.Is(err, ErrConfig) {
				t.Errorf("Consume(%+v) = %v, want ErrConfig", co.Name, err)
			}
		}
	})
}

func TestOpenRejectsBadOptions(t *testing.T) {
	ctx := ctxT(t)
	for _, o := range []Options{
		{}, // embedded without a data dir
		{DataDir: t.TempDir(), SubjectPrefix: "a.b"},
		{DataDir: t.TempDir(), SubjectPrefix: "x", SecuritySubjectPrefix: "x"},
		{DataDir: t.TempDir(), StreamPrefix: "bad name"},
		{DataDir: t.TempDir(), EventsMaxAge: -1},
		{DataDir: t.TempDir(), SubjectPrefix: "x", DataSubjectPrefix: "x"},
		{DataDir: t.TempDir(), DataKinds: []event.Kind{event.CertRevoked}},
	} {
		if b, err := Open(ctx, o); !errors.Is(err, ErrConfig) {
			if b != nil {
				_ = b.Close()
			}
			t.Errorf("Open(%+v) = %v, want ErrConfig", o, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	b := &Bus{opts: Options{SubjectPrefix: "gev", SecuritySubjectPrefix: "gevsec"}, secKind: map[event.Kind]bool{event.CertRevoked: true}}
	e := &event.Event{Tenant: "acme", Device: "meter-1", Kind: event.NetSession, Time: t0}
	if got, want := b.Subject(e), event.Subject(e); got != want {
		t.Errorf("default subject %q, want event.Subject %q", got, want)
	}
	e.Kind = event.CertRevoked
	if got, want := b.Subject(e), fmt.Sprintf("gevsec.acme.identity_cert_revoked.%d", event.Partition("meter-1")); got != want {
		t.Errorf("security subject %q, want %q", got, want)
	}
	tests := []struct{ in, want string }{
		{PartitionFilter(3), "gev.*.*.3"},
		{KindFilter(event.NetFlow), "gev.*.net_flow.*"},
		{TenantFilter("acme"), "gev.acme.>"},
		{TelemetryFilter("acme"), "gev.acme.device_telemetry.*"},
	}
	for _, tc := range tests {
		if tc.in != tc.want {
			t.Errorf("filter %q, want %q", tc.in, tc.want)
		}
	}
	b.opts.SubjectPrefix = "tx"
	if got, err := b.mapFilter(Events, "gev.*.*.3"); err != nil || got != "tx.*.*.3" {
		t.Errorf("mapFilter = %q, %v", got, err)
	}
}
