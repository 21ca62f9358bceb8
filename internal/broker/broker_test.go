package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/store"
)

type fixture struct {
	b      *Broker
	pki    *testPKI
	ver    *poolVerifier
	states *memStates
	rec    *recorder
	port   string
}

// newFixture starts a broker on a free port; with each of opts applied to
// its options.
func newFixture(t *testing.T, opts ...func(*Options)) *fixture {
	t.Helper()
	p := newTestPKI(t, "test-ca")
	_, _, serverCert, _ := p.issue(t, "", "", time.Now().Add(time.Hour))
	f := &fixture{pki: p, ver: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		states: &memStates{m: map[event.DeviceID]store.DeviceState{}}, rec: &recorder{}}
	o := Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: f.ver, States: f.states, Publisher: f.rec}
	for _, fn := range opts {
		fn(&o)
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	f.b = b
	_, f.port, _ = net.SplitHostPort(b.Addr().String())
	return f
}

// device issues a certificate for an active device and returns the
// mosquitto client arguments for it.
func (f *fixture) device(t *testing.T, d event.DeviceID) (args []string, serial string) {
	t.Helper()
	cert, key, _, serial := f.pki.issue(t, "acme", d, time.Now().Add(time.Hour))
	f.states.set(d, store.StateActive)
	return []string{"-h", "127.0.0.1", "-p", f.port, "--cafile", f.pki.dir + "/ca.pem", "--cert", cert, "--key", key, "-i", string(d)}, serial
}

func needMosquitto(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		t.Skip("mosquitto_pub not installed (Debian package mosquitto-clients; .ci/run installs it)")
	}
}

func mosqPub(t *testing.T, args []string, topic string, extra ...string) error {
	t.Helper()
	a := append(append([]string{}, args...), "-t", topic, "-m", "hello", "-q", "1")
	a = append(a, extra...)
	out, err := exec.Command("mosquitto_pub", a...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func TestMosquittoOwnTopicAllowedOthersDenied(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "gw-0001")
	f.device(t, "gw-0002")

	for _, v := range []string{"mqttv311", "mqttv5"} {
		if err := mosqPub(t, args, "devices/gw-0001/telemetry", "-V", v); err != nil {
			t.Fatalf("%s: own topic refused: %v", v, err)
		}
	}
	waitFor(t, 2*time.Second, "two publish events", func() bool {
		return len(f.rec.find(event.MQTTPublish, "gw-0001", "topic_class", "telemetry")) == 2
	})
	if n := len(f.rec.find(event.MQTTConnect, "gw-0001", "client_id", "gw-0001")); n != 2 {
		t.Fatalf("connect events = %d, want 2", n)
	}

	_ = mosqPub(t, args, "devices/gw-0002/telemetry", "-V", "mqttv5")
	_ = mosqPub(t, args, "devices/gw-0001/commands", "-V", "mqttv5")
	waitFor(t, 2*time.Second, "denials", func() bool { return len(f.rec.find(event.MQTTDenied, "gw-0001", "action", "publish")) == 2 })
	if n := len(f.rec.find(event.MQTTPublish, "gw-0001", "", "")); n != 2 {
		t.Fatalf("publish events after denials = %d, want still 2", n)
	}

	// Subscribing to another device's commands, or a wildcard reaching it, is refused.
	for _, filter := range []string{"devices/gw-0002/commands", "devices/+/commands", "#", "devices/gw-0001/#"} {
		a := append(append([]string{}, args...), "-t", filter, "-C", "1", "-W", "1", "-V", "mqttv5")
		out, _ := exec.Command("mosquitto_sub", a...).CombinedOutput()
		_ = out
	}
	waitFor(t, 2*time.Second, "subscribe denials", func() bool {
		return len(f.rec.find(event.MQTTDenied, "gw-0001", "action", "subscribe")) >= 4
	})
}

func TestMosquittoClientIDMustMatchCertificate(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "gw-0001")
	f.device(t, "gw-0002")
	args[len(args)-1] = "gw-0002" // -i gw-0002 with gw-0001's certificate
	if err := mosqPub(t, args, "devices/gw-0002/telemetry"); err == nil {
		t.Fatal("a device took another device's client id")
	}
	waitFor(t, 2*time.Second, "refusal", func() bool {
		return len(f.rec.find(event.MQTTAuthFailed, "gw-0001", "reason", "client_id_mismatch")) == 1
	})
}

func TestMosquittoRefusals(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)

	// A certificate from another CA.
	other := newTestPKI(t, "rogue-ca")
	cert, key, _, _ := other.issue(t, "acme", "gw-0009", time.Now().Add(time.Hour))
	f.states.set("gw-0009", store.StateActive)
	rogue := []string{"-h", "127.0.0.1", "-p", f.port, "--cafile", f.pki.dir + "/ca.pem", "--cert", cert, "--key", key, "-i", "gw-0009"}
	if err := mosqPub(t, rogue, "devices/gw-0009/telemetry"); err == nil {
		t.Fatal("certificate of a foreign CA accepted")
	}
	waitFor(t, 2*time.Second, "unknown_cert", func() bool { return len(f.rec.find(event.MQTTAuthFailed, "", "reason", "unknown_cert")) >= 1 })

	// A revoked certificate.
	args, serial := f.device(t, "gw-0003")
	f.ver.revoke(serial)
	if err := mosqPub(t, args, "devices/gw-0003/telemetry"); err == nil {
		t.Fatal("revoked certificate accepted")
	}
	waitFor(t, 2*time.Second, "revoked_cert", func() bool {
		ev := f.rec.find(event.MQTTAuthFailed, "gw-0003", "reason", "revoked_cert")
		return len(ev) == 1 && ev[0].Str("remote") != "" && ev[0].Str("cert_serial") == serial
	})

	// A suspended device.
	args, _ = f.device(t, "gw-0004")
	f.states.set("gw-0004", store.StateSuspended)
	if err := mosqPub(t, args, "devices/gw-0004/telemetry"); err == nil {
		t.Fatal("suspended device accepted")
	}
	waitFor(t, 2*time.Second, "state refusal", func() bool { return len(f.rec.find(event.MQTTAuthFailed, "gw-0004", "reason", "state_suspended")) == 1 })

	// Factory credentials in CONNECT, and a password login attempt.
	args, _ = f.device(t, "gw-0005")
	if err := mosqPub(t, args, "devices/gw-0005/telemetry", "-u", "root", "-P", "xc3511"); err == nil {
		t.Fatal("factory credentials accepted")
	}
	if err := mosqPub(t, args, "devices/gw-0005/telemetry", "-u", "gw-0005", "-P", "s3cret-but-not-allowed"); err == nil {
		t.Fatal("password login accepted although it is off")
	}
	waitFor(t, 2*time.Second, "credential refusals", func() bool {
		return len(f.rec.find(event.MQTTAuthFailed, "gw-0005", "reason", "default_credentials")) == 1 &&
			len(f.rec.find(event.MQTTAuthFailed, "gw-0005", "reason", "bad_password")) == 1
	})
	if st := f.b.Stats(); st.Sessions != 0 || st.Refused < 5 {
		t.Fatalf("stats after refusals: %+v", st)
	}
}

func TestLiveSessionKickedOnRevokeWithinOneSecond(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "gw-0001")
	sub := exec.Command("mosquitto_sub", append(args, "-t", "devices/gw-0001/commands", "-q", "1", "-V", "mqttv311")...)
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	waitFor(t, 5*time.Second, "session", func() bool { return f.b.Stats().Sessions == 1 })

	// A command reaches the live session's subscription.
	if live, err := f.b.Command("acme", "gw-0001", []byte(`{"op":"reboot"}`)); err != nil || !live {
		t.Fatalf("command: live=%v err=%v", live, err)
	}

	f.states.set("gw-0001", store.StateRevoked)
	start := time.Now()
	if !f.b.SetState("acme", "gw-0001", store.StateRevoked) {
		t.Fatal("SetState found no session to close")
	}
	waitFor(t, time.Second, "session closed", func() bool {
		return f.b.Stats().Sessions == 0 && len(f.rec.find(event.MQTTDisconnect, "gw-0001", "reason", "kicked")) == 1
	})
	t.Logf("session closed %v after revoke", time.Since(start))
	// A new connection with the same certificate is refused now.
	if err := mosqPub(t, args, "devices/gw-0001/telemetry"); err == nil {
		t.Fatal("revoked device reconnected")
	}
	waitFor(t, 2*time.Second, "reconnect refused", func() bool {
		return len(f.rec.find(event.MQTTAuthFailed, "gw-0001", "reason", "state_revoked")) >= 1
	})
}

func TestQuarantineDropsTelemetryKeepsMetrics(t *testing.T) {
	needMosquitto(t)
	f := newFixture(t)
	args, _ := f.device(t, "cam-0042")
	f.states.set("cam-0042", store.StateQuarantined)
	for _, topic := range []string{"devices/cam-0042/telemetry", "devices/cam-0042/metrics", "devices/cam-0042/ota/status"} {
		if err := mosqPub(t, args, topic, "-V", "mqttv311"); err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
	}
	waitFor(t, 2*time.Second, "metrics and ota", func() bool {
		return len(f.rec.find(event.MQTTPublish, "cam-0042", "topic_class", "metrics")) == 1 &&
			len(f.rec.find(event.MQTTPublish, "cam-0042", "topic_class", "ota")) == 1
	})
	if n := len(f.rec.find(event.MQTTPublish, "cam-0042", "topic_class", "telemetry")); n != 0 {
		t.Fatalf("quarantined telemetry published %d times", n)
	}
	if d := f.b.Stats().Dropped; d != 1 {
		t.Fatalf("dropped = %d, want 1", d)
	}
}

// TestMQTT5SessionWithPaho drives a v5 session with a client library:
// subscribe to own commands, receive a platform command, publish.
func TestMQTT5SessionWithPaho(t *testing.T) {
	f := newFixture(t)
	_, _, tc, _ := f.pki.issue(t, "acme", "trk-0001", time.Now().Add(time.Hour))
	f.states.set("trk-0001", store.StateActive)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc), OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { got <- string(pr.Packet.Payload); return true, nil },
	}})
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "trk-0001", KeepAlive: 30, CleanStart: true})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0001/commands", QoS: 1}}})
	if err != nil || sa == nil || len(sa.Reasons) != 1 || sa.Reasons[0] > 2 {
		t.Fatalf("own commands subscription: %v %+v", err, sa)
	}
	// paho reports a refused subscription as an error and still returns the SUBACK.
	sa, _ = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0002/commands", QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 || sa.Reasons[0] < 0x80 {
		t.Fatalf("foreign subscription: want refusal, got %+v", sa)
	}
	if _, err := f.b.Command("acme", "trk-0001", []byte("locate")); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "locate" {
			t.Fatalf("command payload %q", p)
		}
	case <-ctx.Done():
		t.Fatal("command not delivered")
	}
	pr, err := c.Publish(ctx, &paho.Publish{Topic: "devices/trk-0001/telemetry", QoS: 1, Payload: []byte(`{"lat":1}`)})
	if err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish: %v %+v", err, pr)
	}
	pr, _ = c.Publish(ctx, &paho.Publish{Topic: "devices/trk-0002/telemetry", QoS: 1, Payload: []byte(`x`)})
	if pr == nil || pr.ReasonCode != 0x87 { // not authorized
		t.Fatalf("foreign publish: want PUBACK 0x87, got %+v", pr)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	waitFor(t, 2*time.Second, "disconnect event", func() bool {
		return len(f.rec.find(event.MQTTDisconnect, "trk-0001", "", "")) == 1
	})
}

func TestTLS12RefusedByDefault(t *testing.T) {
	f := newFixture(t)
	_, _, tc, _ := f.pki.issue(t, "acme", "gw-0001", time.Now().Add(time.Hour))
	_, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost", MaxVersion: tls.VersionTLS12})
	if err == nil {
		t.Fatal("TLS 1.2 handshake accepted while TLS 1.3 only is configured")
	}
}

func TestNoClientCertificateRefused(t *testing.T) {
	f := newFixture(t)
	c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, ServerName: "localhost"})
	if err == nil {
		// TLS 1.3 reports the missing certificate on first read.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("connection without a client certificate was served")
	}
	waitFor(t, 2*time.Second, "refusal event", func() bool { return f.b.Stats().HandshakeFailures >= 1 })
}

// TestSendAndObserve: the platform sends a firmware job to a device's own
// subscription and reads the device's report back through an observer;
// a refused publish (another device's topic) never reaches the observer.
func TestSendAndObserve(t *testing.T) {
	f := newFixture(t)
	_, _, tc, _ := f.pki.issue(t, "acme", "trk-0003", time.Now().Add(time.Hour))
	f.states.set("trk-0003", store.StateActive)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := make(chan string, 4)
	stop, err := f.b.Observe("devices/+/ota/status", func(topic string, payload []byte) { seen <- topic + " " + string(payload) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc), OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet.Topic + " " + string(pr.Packet.Payload)
			return true, nil
		},
	}})
	if ca, err := c.Connect(ctx, &paho.Connect{ClientID: "trk-0003", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/trk-0003/ota/job", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	live, err := f.b.PublishDevice("acme", "trk-0003", "ota/job", []byte(`{"job":"j1"}`))
	if err != nil || !live {
		t.Fatalf("send: live=%v err=%v", live, err)
	}
	select {
	case p := <-got:
		if p != `devices/trk-0003/ota/job {"job":"j1"}` {
			t.Fatalf("job delivered as %q", p)
		}
	case <-ctx.Done():
		t.Fatal("job not delivered")
	}
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "devices/trk-0009/ota/status", QoS: 1, Payload: []byte(`{"x":1}`)}); err == nil {
		t.Log("paho reported no error for a refused publish")
	}
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "devices/trk-0003/ota/status", QoS: 1, Payload: []byte(`{"job":"j1"}`)}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-seen:
		if p != `devices/trk-0003/ota/status {"job":"j1"}` {
			t.Fatalf("observed %q (a refused publish must not be observed)", p)
		}
	case <-ctx.Done():
		t.Fatal("report not observed")
	}
}
