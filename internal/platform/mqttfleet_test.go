package platform

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/event"
)

// A telemetry publish is as large as the simulator says, and the position
// of the same report rides in it: the broker's decoder makes one telemetry
// and one location of it, at the position the simulator meant.
func TestMQTTFleetTelemetryCarriesPosition(t *testing.T) {
	f, err := NewMQTTFleet(MQTTFleetOptions{Addr: "127.0.0.1:1", TLS: &tls.Config{}, Live: func(event.TenantID, event.DeviceID) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	f.Add("t", "van-0001", tls.Certificate{})
	at := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	pub := &event.Event{Tenant: "t", Device: "van-0001", Kind: event.MQTTPublish, Source: "broker", Time: at,
		Attrs: map[string]any{"topic_class": "telemetry", "bytes": float64(731), "qos": float64(1)}}
	pos := &event.Event{Tenant: "t", Device: "van-0001", Kind: event.Location, Source: "agent", Time: at,
		Attrs: map[string]any{"lat": 40.41, "lon": -3.7, "accuracy_m": float64(9), "source": "device"}}
	if !f.carries(pub) || !f.carries(pos) {
		t.Fatal("the device's own publish and report are not carried")
	}
	clone := &event.Event{Tenant: "t", Device: "van-0001", Kind: event.MQTTConnect, Source: "broker", Time: at,
		Attrs: map[string]any{"session_id": "van-0001/clone"}}
	if f.carries(clone) {
		t.Error("an attacker's session is carried over the device's own")
	}
	if other := (&event.Event{Device: "van-0002", Kind: event.MQTTPublish, Source: "broker"}); f.carries(other) {
		t.Error("a device with no certificate is carried")
	}

	b := f.telemetry(pub, pos)
	if len(b) != 731 {
		t.Errorf("payload of %d bytes, want the simulated 731", len(b))
	}
	evs, err := broker.DecodeDevicePayload(broker.Identity{Tenant: "t", Device: "van-0001"}, "telemetry", b, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != event.DeviceTelemetry || evs[1].Kind != event.Location {
		t.Fatalf("decoded %v", evs)
	}
	if lat, _ := evs[1].Float("lat"); lat != 40.41 {
		t.Errorf("lat %v", evs[1].Attrs)
	}
	if acc, _ := evs[1].Float("accuracy_m"); acc != 9 {
		t.Errorf("accuracy %v", evs[1].Attrs)
	}
	if n := len(f.telemetry(pub, nil)); n != 731 {
		t.Errorf("payload without a position of %d bytes", n)
	}

	// The publish waits for the next event: a position of the same report
	// is consumed into it; anything else is not.
	ctx := context.Background()
	if err := f.send(ctx, pub); err != nil || f.held != pub {
		t.Fatalf("publish not held: %v", err)
	}
	if consumed, err := f.release(ctx, pos); err != nil || !consumed || f.held != nil {
		t.Errorf("position not merged: consumed %v err %v", consumed, err)
	}
	_ = f.send(ctx, pub)
	later := *pos
	later.Time = at.Add(time.Second)
	if consumed, _ := f.release(ctx, &later); consumed {
		t.Error("a position of a later report was merged")
	}
	if st := f.Stats(); st.Offline != 2 {
		t.Errorf("stats %+v: the two publishes of a device with no session are not counted offline", st)
	}
}
