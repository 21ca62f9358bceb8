package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
)

type alertSink struct {
	mu sync.Mutex
	as []alert.Alert
}

func (s *alertSink) Raise(_ context.Context, a alert.Alert) error {
	s.mu.Lock()
	s.as = append(s.as, a)
	s.mu.Unlock()
	return nil
}

func (s *alertSink) kinds() map[alert.Kind]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[alert.Kind]int{}
	for _, a := range s.as {
		out[a.Kind]++
	}
	return out
}

// TestDecodedPayloadsDriveDetection feeds what devices send, decoded by
// DecodeDevicePayload, to the real detection engine: a new listening port
// after warm-up, a firmware digest no signed release has, and two device
// positions no vehicle could link each raise their alert, while a
// day of ordinary reports raises nothing. It proves the decoded kinds and
// attribute names are the ones the detectors read.
func TestDecodedPayloadsDriveDetection(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	const good = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	dir, cat := detect.NewMemDirectory(), detect.NewMemCatalog()
	cat.Put("acme", "edge-gw-1", "3.0.2", good)
	for i := range 5 {
		dir.Put(detect.Profile{Tenant: "acme", ID: event.DeviceID(fmt.Sprintf("gw-%d", i)), Model: "edge-gw-1", Cohort: "gateways", State: "active"})
	}
	sink := &alertSink{}
	eng := detect.New(detect.Options{Directory: dir, Catalog: cat, Clock: clock.NewManual(t0), Sink: sink})
	feed := func(dev event.DeviceID, sub, payload string, at time.Time) {
		t.Helper()
		evs, err := DecodeDevicePayload(Identity{Tenant: "acme", Device: dev}, sub, []byte(payload), at)
		if err != nil {
			t.Fatalf("%s %s: %v", dev, sub, err)
		}
		for _, ev := range evs {
			if err := eng.Process(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	metrics := func(ports string, digest string) string {
		return fmt.Sprintf(`{"fw_version":"3.0.2","fw_digest":%q,"listening_ports":%s,"connections":2,"processes":40}`, digest, ports)
	}
	// A quiet day and a half: hourly metrics, a boot, a fixed position.
	for h := range 36 {
		at := t0.Add(time.Duration(h) * time.Hour)
		for i := range 5 {
			dev := event.DeviceID(fmt.Sprintf("gw-%d", i))
			if h == 0 {
				feed(dev, "events", `{"type":"boot","fw_version":"3.0.2","fw_digest":"`+good+`","slot":"a"}`, at)
			}
			feed(dev, "metrics", metrics("[22]", good), at.Add(time.Duration(i)*time.Second))
			feed(dev, "telemetry", `{"temp":20,"lat":50.11,"lon":8.68,"accuracy_m":10}`, at.Add(time.Duration(i)*time.Second+time.Minute))
		}
	}
	if k := sink.kinds(); len(k) != 0 {
		t.Fatalf("alerts on a quiet day and a half: %v", k)
	}
	at := t0.Add(36 * time.Hour)
	feed("gw-1", "metrics", metrics("[22,2323]", good), at)
	feed("gw-2", "events", `{"type":"boot","fw_version":"3.0.2","fw_digest":"`+fmt.Sprintf("%064x", 1)+`"}`, at)
	feed("gw-3", "telemetry", `{"lat":40.71,"lon":-74.0,"accuracy_m":10}`, at.Add(2*time.Minute)) // Frankfurt to New York in an hour
	k := sink.kinds()
	for _, want := range []alert.Kind{alert.UnexpectedListener, alert.FirmwareUnapproved, alert.ImpossibleTravel} {
		if k[want] != 1 {
			t.Errorf("%s raised %d times, want 1 (all: %v)", want, k[want], k)
		}
	}
}
