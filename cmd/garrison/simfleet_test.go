package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/sim"
)

// mqttScenario has a tracker fleet (positions ride in telemetry), an
// outage now and then (disconnects, reconnects), a clone injected at the
// broker's event path while the real session is up, a rogue firmware
// report sent over the device's session after a reboot, a flood of
// publishes through the broker's rate limit, and a revocation that
// closes a live session.
const mqttScenario = `
name: mqtt-transport
seed: 77
start: 2026-05-04T00:00:00Z
duration: 10h
fleet:
  - name: trk
    count: 10
    model: trackr-lte
    firmware: 1.9.0
    home: {lat: 47.3769, lon: 8.5417, radius_km: 30}
    mobility: vehicle
    report_every: 1m
    uplink_bytes: 300
    pattern: flat
    destinations: 2
    apn: fleet.example.private
    outages: 0.3
  - name: cam
    count: 6
    model: vista-cam-3
    firmware: 5.1.0
    home: {lat: 47.3769, lon: 8.5417, radius_km: 10}
    mobility: static
    report_every: 5m
    uplink_bytes: 4000
    pattern: flat
    destinations: 1
    apn: cams.example.private
attacks:
  - kind: clone
    device: trk-0003
    at: 7h
    params: {for: 10m}
  - kind: rogue_firmware
    device: cam-0002
    at: 7h30m
  - kind: revoked_cert_use
    device: trk-0007
    at: 8h
    params: {for: 1h}
expect:
  - device: trk-0003
    alert: identity.clone_suspected
    within: 5m
    response: quarantine
  - device: cam-0002
    alert: firmware.unapproved
    within: 10m
    response: quarantine
  - device: trk-0007
    alert: identity.revoked_cert_use
    within: 5m
max_false_alerts: 0
`

// TestSimulateMQTTTransport replays a scenario with every device holding a
// real mutual-TLS session to the app's broker: the broker's socket must
// have seen every session and every publish the generator made (its
// counters), and the detectors must still raise what the attacks cause
// and nothing else. The rogue firmware's alert is timed by the broker's
// firmware.report, so its detection within 10 minutes of the onset also
// shows the broker stamping on simulated time.
func TestSimulateMQTTTransport(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a platform")
	}
	sc, err := sim.Parse([]byte(mqttScenario))
	if err != nil {
		t.Fatal(err)
	}
	// What the generator makes for the devices' own sessions.
	var telemetry, connects int
	g := sim.NewGenerator(sc, "sim")
	for {
		ev, _, ok := g.Next()
		if !ok {
			break
		}
		if ev == nil || ev.Source != "broker" || sim.AttackerSession(ev) {
			continue
		}
		switch ev.Kind {
		case event.MQTTPublish:
			telemetry++
		case event.MQTTConnect:
			connects++
		}
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, st, err := runScenarioMQTT(ctx, sc, t.TempDir(), log, nil)
	if err != nil {
		t.Fatalf("run: %v\nlogs:\n%s", err, logs.String())
	}
	devices := 16
	if st.Fleet.Connects != int64(connects) || st.Fleet.ConnectFailures != 0 {
		t.Errorf("fleet connects = %d (%d refused), want the generator's %d", st.Fleet.Connects, st.Fleet.ConnectFailures, connects)
	}
	if st.Broker.Handshakes < int64(connects) || connects < devices {
		t.Errorf("broker handshakes = %d, want >= %d connects of %d devices", st.Broker.Handshakes, connects, devices)
	}
	// Every telemetry publish went out (positions ride in them), plus the
	// agents' own reports; every one reached the broker's hook.
	if st.Fleet.Publishes <= int64(telemetry) {
		t.Errorf("fleet publishes = %d, want more than the %d telemetry reports", st.Fleet.Publishes, telemetry)
	}
	if seen := st.Broker.Published + st.Broker.Dropped + st.Broker.Violations; seen != st.Fleet.Publishes-st.Fleet.Offline {
		t.Errorf("broker saw %d publishes (accepted %d, dropped %d, over limits %d), fleet sent %d with %d offline",
			seen, st.Broker.Published, st.Broker.Dropped, st.Broker.Violations, st.Fleet.Publishes, st.Fleet.Offline)
	}
	if st.Fleet.Acknowledged != st.Fleet.Publishes-st.Fleet.Offline {
		t.Errorf("acknowledged %d of %d publishes", st.Fleet.Acknowledged, st.Fleet.Publishes-st.Fleet.Offline)
	}
	if st.Broker.Kicks == 0 {
		t.Error("the revocation did not kick the device's live session")
	}
	if st.Broker.Dropped == 0 {
		t.Error("no publish of a quarantined device was dropped: quarantine did not narrow a real session")
	}
	if !rep.Passed {
		t.Errorf("scenario failed: %+v\nlogs:\n%s", rep, logs.String())
	}
	for _, x := range rep.Expectations {
		if !x.Detected {
			t.Errorf("%s %s missed", x.Device, x.Alert)
		}
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
	t.Logf("events %d, wall %.1fs; fleet %+v; broker %+v", rep.Events, rep.WallSeconds, st.Fleet, st.Broker)
}
