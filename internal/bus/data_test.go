package bus

import (
	"fmt"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// TestTelemetryDataStream: device telemetry goes to the DATA stream, where
// a tenant's application consumes its own tenant's telemetry with
// TelemetryFilter; it never reaches the EVENTS stream that detection reads.
func TestTelemetryDataStream(t *testing.T) {
	eachBackend(t, func(t *testing.T, be backend) {
		b := be.open(t, nil)
		ctx := ctxT(t)
		if b.StreamFor(event.DeviceTelemetry) != Data {
			t.Fatalf("telemetry routed to %s", b.StreamFor(event.DeviceTelemetry))
		}
		for i, tenant := range []event.TenantID{"acme", "globex", "acme"} {
			e := ev(i, fmt.Sprintf("meter-%d", i), event.DeviceTelemetry)
			e.Tenant = tenant
			e.Attrs = map[string]any{"payload": fmt.Sprintf(`{"temp":%d}`, 20+i), "bytes": 11.0}
			if err := b.Publish(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Publish(ctx, ev(9, "meter-9", event.NetFlow)); err != nil {
			t.Fatal(err)
		}
		var col collector
		c, err := b.Consume(ctx, ConsumerOptions{Name: "acme-app", Stream: Data, Filters: []string{TelemetryFilter("acme")}, Handler: col.handle})
		if err != nil {
			t.Fatal(err)
		}
		col.waitN(t, 2)
		if err := c.WaitCaughtUp(ctx, 5*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c.Stop()
		got := col.seen
		if len(got) != 2 || got[0].Str("payload") != `{"temp":20}` || got[1].Str("payload") != `{"temp":22}` || got[1].Tenant != "acme" {
			t.Fatalf("acme's application saw %+v", got)
		}
		for st, want := range map[Stream]uint64{Data: 3, Events: 1, Security: 0} {
			info, err := b.StreamInfo(ctx, st)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != want {
				t.Errorf("stream %s holds %d messages, want %d", st, info.State.Msgs, want)
			}
		}
	})
}
