package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/store"
)

// memPasswords holds device password hashes as the store would; a device
// must be known to memStates to have one.
type memPasswords struct {
	states *memStates
	mu     sync.Mutex
	m      map[event.DeviceID]string // hash
}

func (p *memPasswords) set(t *testing.T, d event.DeviceID) string {
	t.Helper()
	pw, err := creds.NewPassword()
	if err != nil {
		t.Fatal(err)
	}
	h, err := creds.HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.m[d] = h
	p.mu.Unlock()
	return pw
}

func (p *memPasswords) clear(d event.DeviceID) {
	p.mu.Lock()
	delete(p.m, d)
	p.mu.Unlock()
}

func (p *memPasswords) PasswordHash(ctx context.Context, t event.TenantID, d event.DeviceID) (string, error) {
	if _, err := p.states.DeviceState(ctx, t, d); err != nil || t != "acme" {
		return "", ErrUnknownDevice
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	h, ok := p.m[d]
	if !ok {
		return "", ErrNoPassword
	}
	return h, nil
}

type pwFixture struct {
	*fixture
	pws    *memPasswords
	pwPort string
}

func newPasswordFixture(t *testing.T, o PasswordOptions) *pwFixture {
	t.Helper()
	p := newTestPKI(t, "test-ca")
	_, _, serverCert, _ := p.issue(t, "", "", time.Now().Add(time.Hour))
	f := &fixture{pki: p, ver: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		states: &memStates{m: map[event.DeviceID]store.DeviceState{}}, rec: &recorder{}}
	b, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: f.ver, States: f.states, Publisher: f.rec})
	if err != nil {
		t.Fatal(err)
	}
	pf := &pwFixture{fixture: f, pws: &memPasswords{states: f.states, m: map[event.DeviceID]string{}}}
	o.Addr, o.Passwords = "127.0.0.1:0", pf.pws
	if err := b.EnablePasswords(o); err != nil {
		t.Fatal(err)
	}
	if err := b.EnablePasswords(o); err == nil {
		t.Fatal("a second password listener was added")
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	f.b = b
	_, f.port, _ = net.SplitHostPort(b.Addr().String())
	_, pf.pwPort, _ = net.SplitHostPort(b.PasswordAddr().String())
	return pf
}

// pwArgs are mosquitto client arguments for a password login to the
// password listener over server-only TLS.
func (f *pwFixture) pwArgs(user, pass, clientID string) []string {
	return []string{"-h", "127.0.0.1", "-p", f.pwPort, "--cafile", f.pki.dir + "/ca.pem", "-u", user, "-P", pass, "-i", clientID}
}

func TestEnablePasswordsNeedsAddressAndStore(t *testing.T) {
	f := newFixture(t)
	if err := f.b.EnablePasswords(PasswordOptions{Passwords: &memPasswords{}}); err == nil {
		t.Error("no address accepted")
	}
	if err := f.b.EnablePasswords(PasswordOptions{Addr: ":0"}); err == nil {
		t.Error("no password store accepted")
	}
	if f.b.PasswordAddr() != nil {
		t.Error("password listener address without a listener")
	}
}

// TestMosquittoPasswordListener drives the password listener with Debian's
// mosquitto clients: the right password publishes on the device's own
// topic and receives its commands; a wrong password, another device's
// topic, a factory credential, another device's client id and a cleared
// password are each refused and reported.
func TestMosquittoPasswordListener(t *testing.T) {
	needMosquitto(t)
	f := newPasswordFixture(t, PasswordOptions{MaxFailures: 100})
	f.states.set("gw-0001", store.StateActive)
	f.states.set("gw-0002", store.StateActive)
	pw := f.pws.set(t, "gw-0001")
	f.pws.set(t, "gw-0002")
	good := f.pwArgs("acme/gw-0001", pw, "gw-0001")

	delivered := make(chan string, 4)
	stop, err := f.b.Observe("devices/gw-0001/telemetry", func(_ string, p []byte) { delivered <- string(p) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, v := range []string{"mqttv311", "mqttv5"} {
		if err := mosqPub(t, good, "devices/gw-0001/telemetry", "-V", v); err != nil {
			t.Fatalf("%s: right password refused: %v", v, err)
		}
		select {
		case p := <-delivered:
			if p != "hello" {
				t.Fatalf("delivered %q", p)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: publish not delivered", v)
		}
	}
	waitFor(t, 30*time.Second, "connect and publish events", func() bool {
		return len(f.rec.find(event.MQTTConnect, "gw-0001", "listener", "password")) == 2 &&
			len(f.rec.find(event.MQTTPublish, "gw-0001", "topic_class", "telemetry")) == 2
	})

	// A password session receives its own commands.
	sub := exec.Command("mosquitto_sub", append(append([]string{}, good...), "-t", "devices/gw-0001/commands", "-q", "1", "-C", "1", "-W", "60")...)
	var out bytes.Buffer
	sub.Stdout = &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	waitFor(t, 30*time.Second, "subscribed session", func() bool { return f.b.Stats().Sessions == 1 })
	var subErr error
	waitFor(t, 60*time.Second, "command delivered", func() bool {
		if _, err := f.b.Command("acme", "gw-0001", []byte("reboot")); err != nil {
			t.Fatal(err)
		}
		select {
		case subErr = <-done:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
	if subErr != nil || !bytes.Contains(out.Bytes(), []byte("reboot")) {
		t.Fatalf("mosquitto_sub: %v, output %q", subErr, out.String())
	}

	// Another device's topic is denied to a password session.
	_ = mosqPub(t, good, "devices/gw-0002/telemetry", "-V", "mqttv5")
	waitFor(t, 30*time.Second, "publish denial", func() bool {
		return len(f.rec.find(event.MQTTDenied, "gw-0001", "topic", "devices/gw-0002/telemetry")) == 1
	})

	refused := func(args []string, device event.DeviceID, reason string) {
		t.Helper()
		if err := mosqPub(t, args, "devices/gw-0001/telemetry"); err == nil {
			t.Fatalf("%s: login accepted", reason)
		}
		waitFor(t, 30*time.Second, reason, func() bool {
			for _, e := range f.rec.find(event.MQTTAuthFailed, device, "reason", reason) {
				if e.Str("listener") == "password" && e.Str("remote") != "" {
					return true
				}
			}
			return false
		})
	}
	refused(f.pwArgs("acme/gw-0001", pw+"x", "gw-0001"), "gw-0001", "bad_password")
	refused(f.pwArgs("acme/gw-0001", "", "gw-0001"), "gw-0001", "bad_password")
	refused(f.pwArgs("root", "xc3511", "gw-0001"), "", "default_credentials")
	refused(f.pwArgs("admin", "admin", "gw-0001"), "", "default_credentials")
	refused(f.pwArgs("acme/gw-0002", pw, "gw-0002"), "gw-0002", "bad_password") // one device's password for another
	refused(f.pwArgs("acme/gw-0001", pw, "gw-0002"), "gw-0001", "client_id_mismatch")
	refused(f.pwArgs("acme/gw-0404", pw, "gw-0404"), "", "unknown_device")
	refused(f.pwArgs("beta/gw-0001", pw, "gw-0001"), "", "unknown_device")
	refused(f.pwArgs("gw-0001", pw, "gw-0001"), "", "unknown_device")
	if e := f.rec.find(event.MQTTAuthFailed, "", "reason", "default_credentials"); e[0].Str("username") != "root" {
		t.Errorf("default_credentials event without the username: %v", e[0].Attrs)
	}
	for _, e := range f.rec.find(event.MQTTAuthFailed, "", "", "") {
		for k, v := range e.Attrs {
			if s, ok := v.(string); ok && s == pw {
				t.Fatalf("event %s carries the password in %s", e.Kind, k)
			}
		}
	}

	// The state gate of the mTLS path applies.
	f.states.set("gw-0001", store.StateSuspended)
	refused(good, "gw-0001", "state_suspended")
	f.states.set("gw-0001", store.StateActive)

	// A cleared password no longer logs in.
	f.pws.clear("gw-0001")
	refused(good, "gw-0001", "no_password")

	// The mTLS listener still refuses password logins.
	cert, key, _, _ := f.pki.issue(t, "acme", "gw-0002", time.Now().Add(time.Hour))
	mtls := []string{"-h", "127.0.0.1", "-p", f.port, "--cafile", f.pki.dir + "/ca.pem", "--cert", cert, "--key", key, "-i", "gw-0002", "-u", "acme/gw-0002", "-P", "x"}
	if err := mosqPub(t, mtls, "devices/gw-0002/telemetry"); err == nil {
		t.Fatal("mTLS listener accepted a password")
	}
}

// pahoPassword connects a v5 client to the password listener; it returns
// the CONNACK reason code (0 is success).
func (f *pwFixture) pahoPassword(t *testing.T, user, pass, clientID string, onPub func(string)) (*paho.Client, byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.pwPort), &tls.Config{RootCAs: f.pki.pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{Conn: mqttconn.Locked(nc)}
	if onPub != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) { onPub(string(pr.Packet.Payload)); return true, nil },
		}
	}
	c := paho.NewClient(cfg)
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		UsernameFlag: true, Username: user, PasswordFlag: true, Password: []byte(pass)})
	if ca == nil {
		nc.Close()
		if err == nil {
			t.Fatal("no CONNACK")
		}
		return nil, 0xff
	}
	if ca.ReasonCode != 0 {
		nc.Close()
		return nil, ca.ReasonCode
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}); nc.Close() })
	return c, 0
}

// TestPasswordSessionsClosedOnStateAndRotation: a password session is a
// session like any other for SetState (quarantine narrows, revocation
// closes); KickPasswordSession closes it but leaves an mTLS session alone.
func TestPasswordSessionsClosedOnStateAndRotation(t *testing.T) {
	f := newPasswordFixture(t, PasswordOptions{})
	f.states.set("trk-0001", store.StateActive)
	pw := f.pws.set(t, "trk-0001")
	c, code := f.pahoPassword(t, "acme/trk-0001", pw, "trk-0001", nil)
	if code != 0 {
		t.Fatalf("connect refused: %#x", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Quarantine narrows the live password session: telemetry dropped, metrics kept.
	f.b.SetState("acme", "trk-0001", store.StateQuarantined)
	for _, topic := range []string{"devices/trk-0001/telemetry", "devices/trk-0001/metrics"} {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"connections":1}`)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "metrics publish", func() bool {
		return len(f.rec.find(event.MQTTPublish, "trk-0001", "topic_class", "metrics")) == 1
	})
	if n := len(f.rec.find(event.MQTTPublish, "trk-0001", "topic_class", "telemetry")); n != 0 {
		t.Fatalf("quarantined password session published telemetry %d times", n)
	}

	// A rotation (or clear) closes the password session.
	if !f.b.KickPasswordSession("acme", "trk-0001", "password rotated") {
		t.Fatal("no password session to close")
	}
	waitFor(t, 30*time.Second, "kicked", func() bool {
		return f.b.Stats().Sessions == 0 && len(f.rec.find(event.MQTTDisconnect, "trk-0001", "reason", "kicked")) == 1
	})

	// Revocation closes a password session like an mTLS one.
	if _, code := f.pahoPassword(t, "acme/trk-0001", pw, "trk-0001", nil); code != 0 {
		t.Fatalf("reconnect refused: %#x", code)
	}
	waitFor(t, 30*time.Second, "session", func() bool { return f.b.Stats().Sessions == 1 })
	f.states.set("trk-0001", store.StateRevoked)
	if !f.b.SetState("acme", "trk-0001", store.StateRevoked) {
		t.Fatal("SetState found no password session")
	}
	waitFor(t, 30*time.Second, "revoked session closed", func() bool { return f.b.Stats().Sessions == 0 })

	// KickPasswordSession leaves an mTLS session of the device alone.
	_, _, tc, _ := f.pki.issue(t, "acme", "trk-0002", time.Now().Add(time.Hour))
	f.states.set("trk-0002", store.StateActive)
	nc, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.port), &tls.Config{RootCAs: f.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	mc := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc)})
	if ca, err := mc.Connect(ctx, &paho.Connect{ClientID: "trk-0002", KeepAlive: 30, CleanStart: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("mTLS connect: %v", err)
	}
	defer func() { _ = mc.Disconnect(&paho.Disconnect{}) }()
	if f.b.KickPasswordSession("acme", "trk-0002", "password cleared") {
		t.Fatal("an mTLS session was closed for a password change")
	}
}

// TestPasswordGuessingRaisesBruteforce: failed password logins are the
// mqtt.auth_failed events auth.bruteforce counts. Thirty guesses from one
// host, run through the real detection engine, raise the alert on the
// targeted device; past MaxFailures the listener refuses the host without
// verifying (rate_limited), and those refusals still count.
func TestPasswordGuessingRaisesBruteforce(t *testing.T) {
	f := newPasswordFixture(t, PasswordOptions{MaxFailures: 5, FailureWindow: time.Hour})
	f.states.set("gw-0007", store.StateActive)
	pw := f.pws.set(t, "gw-0007")
	for i := range 30 {
		if _, code := f.pahoPassword(t, "acme/gw-0007", fmt.Sprintf("guess-%d", i), "gw-0007", nil); code == 0 {
			t.Fatal("a guess logged in")
		}
	}
	waitFor(t, 30*time.Second, "30 refusals", func() bool {
		return len(f.rec.find(event.MQTTAuthFailed, "gw-0007", "", "")) == 30
	})
	if n := len(f.rec.find(event.MQTTAuthFailed, "gw-0007", "reason", "bad_password")); n != 5 {
		t.Fatalf("bad_password refusals = %d, want 5 (then rate limited)", n)
	}
	// The right password is refused too while the source is limited.
	if _, code := f.pahoPassword(t, "acme/gw-0007", pw, "gw-0007", nil); code == 0 {
		t.Fatal("a rate-limited source logged in")
	}

	sink := &alertSink{}
	eng := detect.New(detect.Options{Clock: clock.NewManual(time.Now()), Sink: sink})
	for _, e := range f.rec.find(event.MQTTAuthFailed, "gw-0007", "", "") {
		if err := eng.Process(context.Background(), &e); err != nil {
			t.Fatal(err)
		}
	}
	if n := sink.kinds()[alert.Bruteforce]; n == 0 {
		t.Fatalf("no auth.bruteforce alert after 30 failed logins (alerts: %v)", sink.kinds())
	}

	// A factory credential on the password listener raises auth.default_credentials.
	g := newPasswordFixture(t, PasswordOptions{})
	if _, code := g.pahoPassword(t, "root", "xc3511", "gw-0007", nil); code == 0 {
		t.Fatal("factory credential logged in")
	}
	waitFor(t, 30*time.Second, "refusal", func() bool { return len(g.rec.find(event.MQTTAuthFailed, "", "reason", "default_credentials")) == 1 })
	e := g.rec.find(event.MQTTAuthFailed, "", "reason", "default_credentials")[0]
	e.Tenant = "acme"
	e.Device = "gw-0007"
	sink = &alertSink{}
	eng = detect.New(detect.Options{Clock: clock.NewManual(time.Now()), Sink: sink})
	if err := eng.Process(context.Background(), &e); err != nil {
		t.Fatal(err)
	}
	if sink.kinds()[alert.DefaultCredentials] != 1 {
		t.Fatalf("no auth.default_credentials alert (alerts: %v)", sink.kinds())
	}
}

func TestPasswordListenerTLS(t *testing.T) {
	f := newPasswordFixture(t, PasswordOptions{})
	if _, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", f.pwPort), &tls.Config{RootCAs: f.pki.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("TLS 1.2 accepted on the password listener by default")
	}
	// Plain MQTT on a TLS listener never reaches the broker.
	nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", f.pwPort))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = nc.Write([]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 0})
	_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 4)
	if n, _ := nc.Read(b); n > 0 && b[0] == 0x20 {
		t.Fatal("plaintext CONNECT answered with a CONNACK")
	}
	nc.Close()
	waitFor(t, 30*time.Second, "handshake refusal", func() bool {
		return len(f.rec.find(event.MQTTAuthFailed, "", "reason", "tls_handshake")) >= 1
	})

	g := newPasswordFixture(t, PasswordOptions{AllowTLS12: true})
	c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", g.pwPort), &tls.Config{RootCAs: g.pki.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS 1.2 refused with AllowTLS12: %v", err)
	}
	defer c.Close()
	// A CONNECT without credentials (MQTT 3.1.1, client id "x") is refused
	// with a CONNACK and reported.
	if _, err := c.Write([]byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'x'}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.ReadAtLeast(c, b, 4); n < 4 || b[0] != 0x20 || b[3] == 0 {
		t.Fatalf("want a refusing CONNACK, got % x (%v)", b[:n], err)
	}
	waitFor(t, 30*time.Second, "missing credentials", func() bool {
		return len(g.rec.find(event.MQTTAuthFailed, "", "reason", "missing_credentials")) == 1
	})
}

// TestPasswordListenerPlaintext: only when asked for explicitly.
func TestPasswordListenerPlaintext(t *testing.T) {
	f := newPasswordFixture(t, PasswordOptions{Plaintext: true})
	f.states.set("gw-0001", store.StateActive)
	pw := f.pws.set(t, "gw-0001")
	nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", f.pwPort))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "gw-0001", KeepAlive: 30, CleanStart: true,
		UsernameFlag: true, Username: "acme/gw-0001", PasswordFlag: true, Password: []byte(pw)})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("plaintext login: %v", err)
	}
	_ = c.Disconnect(&paho.Disconnect{})
}
