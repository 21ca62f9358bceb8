package platform

import (
	"reflect"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// The agents' reports reach the bus as the broker's payload decoder makes
// them: same kind, device, time and attributes as the simulator meant,
// plus the device's own timestamp.
func TestAgentReportsThroughPayloadDecoder(t *testing.T) {
	r := newGWRig(t)
	mk := func(at time.Duration, kind event.Kind, attrs map[string]any) *event.Event {
		e := r.ev(at, kind, attrs)
		e.Source = "agent"
		return e
	}
	in := []*event.Event{
		mk(time.Second, event.FirmwareReport, map[string]any{"version": "2.4.1", "digest": "ab12"}),
		mk(2*time.Second, event.Location, map[string]any{"lat": -34.600123456, "lon": -58.38, "accuracy_m": float64(12), "source": "device"}),
		mk(3*time.Second, event.DeviceMetrics, map[string]any{"listening_ports": []any{float64(22), float64(23)}, "connections": float64(3),
			"processes": float64(88), "fw_version": "2.4.1", "fw_digest": "ab12"}),
	}
	r.publish(t, in...)
	got := r.settle(t)
	if len(got) != len(in) {
		t.Fatalf("%d events on the bus, want %d: %v", len(got), len(in), got)
	}
	for i, want := range in {
		e := got[i]
		if e.Kind != want.Kind || e.Device != want.Device || e.Tenant != want.Tenant || !e.Time.Equal(want.Time) || e.Source != "device" {
			t.Errorf("%d: %s %s %s %s %s", i, e.Kind, e.Device, e.Tenant, e.Time, e.Source)
		}
		attrs := map[string]any{}
		for k, v := range e.Attrs {
			if k != "reported_at" {
				attrs[k] = v
			}
		}
		if !reflect.DeepEqual(attrs, want.Attrs) {
			t.Errorf("%s attrs %v, want %v", want.Kind, attrs, want.Attrs)
		}
		if e.Str("reported_at") != want.Time.Format(time.RFC3339Nano) {
			t.Errorf("%s reported_at %q", want.Kind, e.Str("reported_at"))
		}
	}
	bad := mk(4*time.Second, event.Location, map[string]any{"lat": "north"})
	if _, err := r.sink.agent.decode(bad); err == nil {
		t.Error("a position without a number was encoded")
	}
}
