package flows

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

type recPub struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (p *recPub) Publish(_ context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, e)
	return nil
}

// TestUnknownExporterDropped: flow records are taken only from exporters
// the peers file lists, each for its own tenant; a datagram from any other
// address is dropped and counted before it is decoded, so a spoofed or
// stray exporter publishes nothing and teaches the decoder no template.
func TestUnknownExporterDropped(t *testing.T) {
	devs := fakeDevices{}
	for i := 0; i < 30; i++ {
		devs[netip.AddrFrom4([4]byte{10, 1, 2, byte(i)})] = "meter"
	}
	pub := &recPub{}
	c, err := New(Options{
		Exporters: []Exporter{{Tenant: "acme", Prefix: netip.MustParsePrefix("192.0.2.0/24")}},
		Publisher: pub, Devices: devs, Clock: clock.NewManual(time.Unix(1_790_000_000, 0)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tm, dm := benchMessage()
	ctx := context.Background()
	stray := netip.MustParseAddrPort("198.51.100.9:2055")
	for _, b := range [][]byte{tm, dm} {
		if err := c.Handle(ctx, stray, b); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if st.UnknownExporter != 2 || st.Published != 0 || len(pub.evs) != 0 || st.Decoder.Messages != 0 {
		t.Fatalf("stray exporter: %+v, %d events", st, len(pub.evs))
	}
	// The listed exporter's records are published under its tenant.
	for _, b := range [][]byte{tm, dm} {
		if err := c.Handle(ctx, exp, b); err != nil {
			t.Fatal(err)
		}
	}
	if len(pub.evs) != 30 || pub.evs[0].Tenant != "acme" || pub.evs[0].Kind != event.NetFlow {
		t.Fatalf("listed exporter: %d events, first %+v", len(pub.evs), pub.evs[0])
	}
}
