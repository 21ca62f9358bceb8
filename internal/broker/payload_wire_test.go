package broker

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestMosquittoMetricsBecomeEvents: a real device client publishing its
// metrics and boot report over mutual TLS produces the events detection
// consumes; a malformed payload is acknowledged, counted and reported,
// and the session stays usable.
func TestMosquittoMetricsBecomeEvents(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "gw-0101")
	pub := func(topic, payload string) {
		t.Helper()
		a := append(append([]string{}, args...), "-t", topic, "-m", payload, "-q", "1", "-V", "mqttv311")
		if out, err := exec.Command("mosquitto_pub", a...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub %s: %v: %s", topic, err, out)
		}
	}
	pub("devices/gw-0101/metrics", `{"fw_version":"1.2.0","fw_digest":"ab12","listening_ports":[22,2323],"connections":2,"processes":40}`)
	pub("devices/gw-0101/events", `{"type":"boot","fw_version":"1.2.0","fw_digest":"ab12","slot":"a"}`)
	pub("devices/gw-0101/metrics", `{"listening_ports":"all of them"}`)

	waitFor(t, 3*time.Second, "metrics, firmware report and rejection", func() bool {
		return len(f.rec.find(event.DeviceMetrics, "gw-0101", "fw_digest", "ab12")) == 1 &&
			len(f.rec.find(event.FirmwareReport, "gw-0101", "digest", "ab12")) == 1 &&
			len(f.rec.find(event.PayloadRejected, "gw-0101", "topic_class", "metrics")) == 1
	})
	m := f.rec.find(event.DeviceMetrics, "gw-0101", "", "")[0]
	if got := m.Strings("listening_ports"); len(got) != 2 || got[0] != "22" || got[1] != "2323" {
		t.Fatalf("listening ports %v", got)
	}
	if m.Tenant != "acme" || m.Int("processes") != 40 || m.Int("connections") != 2 {
		t.Fatalf("metrics event %+v", m)
	}
	rej := f.rec.find(event.PayloadRejected, "gw-0101", "", "")[0]
	if rej.Str("reason") == "" || rej.Str("subtopic") != "metrics" {
		t.Fatalf("rejection %+v", rej)
	}
	if n := f.b.Stats().Rejected; n != 1 {
		t.Fatalf("rejected = %d, want 1", n)
	}
	// Every publish was still accepted and recorded as metadata.
	if n := len(f.rec.find(event.MQTTPublish, "gw-0101", "", "")); n != 3 {
		t.Fatalf("publish events = %d, want 3", n)
	}
}

// TestPahoTelemetryAndCommandResult: an MQTT 5 client's telemetry with a
// position becomes a telemetry event (payload kept) and a location event;
// its command.result becomes a command outcome event.
func TestPahoTelemetryAndCommandResult(t *testing.T) {
	f := newFixture(t)
	_, _, tc, _ := f.pki.issue(t, "acme", "trk-0101", time.Now().Add(time.Hour))
	f.states.set("trk-0101", store.StateActive)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc)})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "trk-0101", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer c.Disconnect(&paho.Disconnect{})
	for _, p := range []struct{ topic, payload string }{
		{"devices/trk-0101/telemetry", `{"speed":12,"lat":51.5,"lon":-0.12,"accuracy_m":9}`},
		{"devices/trk-0101/events", `{"type":"command.result","id":"cmd-7","ok":true,"output":"pong"}`},
	} {
		if pr, err := c.Publish(ctx, &paho.Publish{Topic: p.topic, QoS: 1, Payload: []byte(p.payload)}); err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish %s: %v %+v", p.topic, err, pr)
		}
	}
	waitFor(t, 3*time.Second, "telemetry, location and command result", func() bool {
		return len(f.rec.find(event.DeviceTelemetry, "trk-0101", "", "")) == 1 &&
			len(f.rec.find(event.Location, "trk-0101", "source", "device")) == 1 &&
			len(f.rec.find(event.CommandResult, "trk-0101", "command_id", "cmd-7")) == 1
	})
	tel := f.rec.find(event.DeviceTelemetry, "trk-0101", "", "")[0]
	if tel.Str("payload") != `{"speed":12,"lat":51.5,"lon":-0.12,"accuracy_m":9}` {
		t.Fatalf("telemetry payload %q", tel.Str("payload"))
	}
	loc := f.rec.find(event.Location, "trk-0101", "", "")[0]
	if lat, _ := loc.Float("lat"); lat != 51.5 {
		t.Fatalf("location %+v", loc)
	}
	if r := f.rec.find(event.CommandResult, "trk-0101", "", "")[0]; r.Attrs["ok"] != true || r.Str("output") != "pong" {
		t.Fatalf("command result %+v", r)
	}
}

// TestCollectorExportsStats: the Prometheus collector reports the broker's
// counters, the rejected payloads included.
func TestCollectorExportsStats(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "gw-0102")
	a := append(append([]string{}, args...), "-t", "devices/gw-0102/metrics", "-m", "not json", "-q", "1")
	if out, err := exec.Command("mosquitto_pub", a...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitFor(t, 3*time.Second, "rejection", func() bool { return f.b.Stats().Rejected == 1 })
	reg := prometheus.NewRegistry()
	if err := reg.Register(f.b.Collector()); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			got[mf.GetName()] = c.GetValue()
		} else {
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	if got["garrison_broker_payloads_rejected_total"] != 1 || got["garrison_broker_published_total"] != 1 || got["garrison_broker_handshakes_total"] < 1 {
		t.Fatalf("exported %v", got)
	}
	if len(got) != len(brokerMetrics) {
		t.Fatalf("%d series exported, want %d", len(got), len(brokerMetrics))
	}
}

// TestOnCommandsSubscribed: the callback fires when a device's subscription
// to its own commands is granted, never for a refused one.
func TestOnCommandsSubscribed(t *testing.T) {
	f := newFixture(t)
	got := make(chan Identity, 4)
	f.b.OnCommandsSubscribed(func(id Identity) { got <- id })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := f.connectActive(t, ctx, "trk-0201")
	_, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0202/commands", QoS: 1}}})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0201/ota/job", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		t.Fatalf("callback for a refused or unrelated subscription: %+v", id)
	default:
	}
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0201/commands", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id.Tenant != "acme" || id.Device != "trk-0201" {
			t.Fatalf("callback identity %+v", id)
		}
	case <-ctx.Done():
		t.Fatal("no callback for the commands subscription")
	}
}

// TestOnJobsSubscribed: the jobs callback fires for a granted subscription
// covering the device's own ota/job (the topic, ota/+ or ota/#), not for a
// refused one (another device's) nor for its commands.
func TestOnJobsSubscribed(t *testing.T) {
	f := newFixture(t)
	got := make(chan Identity, 8)
	f.b.OnJobsSubscribed(func(id Identity) { got <- id })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := f.connectActive(t, ctx, "trk-0301")
	sub := func(topic string) {
		t.Helper()
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0302/ota/job", QoS: 1}}}) // refused: another device's
	sub("devices/trk-0301/commands")
	select {
	case id := <-got:
		t.Fatalf("jobs callback for a refused or unrelated subscription: %+v", id)
	default:
	}
	for _, topic := range []string{"devices/trk-0301/ota/job", "devices/trk-0301/ota/+", "devices/trk-0301/ota/#"} {
		sub(topic)
		select {
		case id := <-got:
			if id.Tenant != "acme" || id.Device != "trk-0301" {
				t.Fatalf("callback identity %+v", id)
			}
		case <-ctx.Done():
			t.Fatalf("no callback for %s", topic)
		}
	}
}

// connectActive issues a certificate for an active device of tenant acme
// and opens its MQTT v5 session (closed at the end of the test).
func (f *fixture) connectActive(t *testing.T, ctx context.Context, device event.DeviceID) *paho.Client {
	t.Helper()
	_, _, tc, _ := f.pki.issue(t, "acme", device, time.Now().Add(time.Hour))
	f.states.set(device, store.StateActive)
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc)})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: string(device), KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c
}
