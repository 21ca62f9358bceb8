package broker

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func TestRateTableBurstRefillAndReports(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tb := newRateTable[string](0.01, 3, 10) // a token per 100 s, burst 3
	for i := range 3 {
		if ok, _ := tb.take("a", t0); !ok {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	ok, report := tb.take("a", t0)
	if ok || report != 1 {
		t.Fatalf("over the burst: ok %v report %d, want refused and reported once", ok, report)
	}
	for range 5 { // refused, not reported again within reportEvery
		if ok, report := tb.take("a", at(10)); ok || report != 0 {
			t.Fatalf("ok %v report %d, want refused unreported", ok, report)
		}
	}
	if ok, _ := tb.take("b", t0); !ok {
		t.Fatal("another key refused")
	}
	// The next report, a minute later, counts every refusal since the last.
	if ok, report := tb.take("a", at(61)); ok || report != 6 {
		t.Fatalf("ok %v report %d, want refused with the 6 refusals since the last report", ok, report)
	}
	if ok, _ := tb.take("a", at(101)); !ok {
		t.Fatal("a token refilled after 100 s was refused")
	}
	if ok, _ := tb.take("a", at(102)); ok {
		t.Fatal("a second token after 101 s was allowed")
	}
	var nilTable *rateTable[string]
	if ok, _ := nilTable.take("a", t0); !ok {
		t.Fatal("a nil table (limit off) refused")
	}
	if newRateTable[string](-1, 5, 10) != nil {
		t.Fatal("a negative rate should turn the limit off")
	}
}

func TestRateTableBounded(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tb := newRateTable[int](1, 2, 100) // refills in 2 s
	for i := range 1000 {              // a flood of distinct sources
		tb.take(i, t0)
	}
	if n := tb.len(); n != 100 {
		t.Fatalf("%d keys tracked, want the bound 100", n)
	}
	// Untracked keys are let through (fail open), the tracked ones still limited.
	if ok, _ := tb.take(5000, t0); !ok {
		t.Fatal("a new key past the bound was refused")
	}
	tb.take(0, t0)
	if ok, _ := tb.take(0, t0); ok {
		t.Fatal("a tracked key was not limited")
	}
	// Once buckets refill, idle keys are forgotten and new ones tracked.
	t1 := t0.Add(3 * time.Second)
	for i := 2000; i < 2003; i++ {
		tb.take(i, t1)
		tb.take(i, t1)
		if ok, _ := tb.take(i, t1); ok {
			t.Fatalf("key %d tracked after the sweep was not limited", i)
		}
	}
	// Every minute the table shrinks to the keys in use.
	tb.take(9999, t0.Add(2*time.Minute))
	if n := tb.len(); n > 5 {
		t.Fatalf("%d keys kept after a minute idle, want only the recent ones", n)
	}
}

func TestSourceKey(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"192.0.2.7:1234", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:1234", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:1234", "2001:db8:1:2::"},
		{"[2001:db8:1:2:ffff::1]:99", "2001:db8:1:2::"}, // same /64, same key
		{"[fe80::1%eth0]:1", "fe80::"},
	} {
		ap := netip.MustParseAddrPort(c.addr)
		k, ok := sourceKey(net.TCPAddrFromAddrPort(ap))
		if !ok || k.String() != c.want {
			t.Errorf("sourceKey(%s) = %s, %v; want %s", c.addr, k, ok, c.want)
		}
	}
	if _, ok := sourceKey(&net.UDPAddr{IP: net.IPv4(1, 2, 3, 4)}); ok {
		t.Error("a non-TCP address has a key")
	}
}

// mqttConnect dials the broker from 127.0.0.source, completes mutual TLS
// and an MQTT 3.1.1 CONNECT as id, and returns the CONNACK return code.
// The connection is closed before it returns.
func mqttConnect(f *fixture, source byte, tc tls.Certificate, id event.DeviceID) (byte, error) {
	dialer := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, source)}}
	c, err := tls.DialWithDialer(dialer, "tcp", f.b.Addr().String(), &tls.Config{RootCAs: f.pki.pool, ServerName: "localhost",
		Certificates: []tls.Certificate{tc}})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, byte(len(id) >> 8), byte(len(id))}, id...)
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		return 0, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, fmt.Errorf("connack: %w", err)
	}
	if ack[0] != 0x20 {
		return 0, fmt.Errorf("connack % x", ack)
	}
	_, _ = c.Write([]byte{0xe0, 0})
	return ack[3], nil
}

func TestSourceConnectRateRefusesBeforeHandshake(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.SourceConnectRate, o.SourceConnectBurst = 0.001, 4 // no refill within the test
		o.DeviceConnectRate = -1
	})
	_, _, tc, _ := f.pki.issue(t, "acme", "src-0001", time.Now().Add(time.Hour))
	f.states.set("src-0001", store.StateActive)
	for i := range 4 {
		if code, err := mqttConnect(f, 1, tc, "src-0001"); err != nil || code != 0 {
			t.Fatalf("connect %d within the burst: code %d, %v", i, code, err)
		}
	}
	handshakes := f.b.Stats().Handshakes
	for i := range 10 { // hammering from the same source
		if code, err := mqttConnect(f, 1, tc, "src-0001"); err == nil {
			t.Fatalf("connect %d past the burst accepted (code %d)", i, code)
		}
	}
	st := f.b.Stats()
	if st.SourceConnectsRefused != 10 {
		t.Fatalf("%d refused by source, want 10", st.SourceConnectsRefused)
	}
	if st.Handshakes != handshakes || st.HandshakeFailures != 0 {
		t.Fatalf("refused connections reached the TLS handshake: %d handshakes (was %d), %d failures",
			st.Handshakes, handshakes, st.HandshakeFailures)
	}
	// Another source is not affected.
	if code, err := mqttConnect(f, 2, tc, "src-0001"); err != nil || code != 0 {
		t.Fatalf("connect from another source: code %d, %v", code, err)
	}
	// One event for the run of refusals, with reason, source and count.
	evs := f.rec.find(event.MQTTAuthFailed, "", "reason", "connect_rate")
	if len(evs) != 1 {
		t.Fatalf("%d connect_rate events, want 1 (later refusals are counted into the next report)", len(evs))
	}
	e := evs[0]
	if e.Str("limit") != "source" || e.Str("source") != "127.0.0.1" || !strings.HasPrefix(e.Str("remote"), "127.0.0.1:") ||
		e.Attrs["refused"] != float64(1) || e.Str("listener") != "mtls" {
		t.Fatalf("event attrs %v", e.Attrs)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.b.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "garrison_broker_source_connects_refused_total" {
			found = true
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != 10 {
				t.Fatalf("garrison_broker_source_connects_refused_total %v, want 10", v)
			}
		}
	}
	if !found {
		t.Fatal("garrison_broker_source_connects_refused_total not exported")
	}
}

func TestDeviceConnectRateRefusesReconnectLoop(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.DeviceConnectRate, o.DeviceConnectBurst = 0.001, 3
	})
	_, _, tc, _ := f.pki.issue(t, "acme", "loop-0001", time.Now().Add(time.Hour))
	f.states.set("loop-0001", store.StateActive)
	_, _, tc2, _ := f.pki.issue(t, "acme", "calm-0001", time.Now().Add(time.Hour))
	f.states.set("calm-0001", store.StateActive)
	for i := range 3 {
		if code, err := mqttConnect(f, 1, tc, "loop-0001"); err != nil || code != 0 {
			t.Fatalf("connect %d within the burst: code %d, %v", i, code, err)
		}
	}
	for i := range 5 {
		code, err := mqttConnect(f, byte(1+i%3), tc, "loop-0001") // whatever the source
		if err != nil || code != 5 {                              // 3.1.1: not authorised
			t.Fatalf("reconnect %d past the burst: code %d, %v; want refused with code 5", i, code, err)
		}
	}
	if code, err := mqttConnect(f, 1, tc2, "calm-0001"); err != nil || code != 0 {
		t.Fatalf("another device: code %d, %v", code, err)
	}
	st := f.b.Stats()
	if st.DeviceConnectsRefused != 5 || st.Refused != 5 {
		t.Fatalf("device refusals %d, refused %d; want 5 and 5", st.DeviceConnectsRefused, st.Refused)
	}
	evs := f.rec.find(event.MQTTAuthFailed, "loop-0001", "reason", "connect_rate")
	if len(evs) != 1 || evs[0].Str("limit") != "device" || evs[0].Tenant != "acme" || evs[0].Str("remote") == "" {
		t.Fatalf("connect_rate events %+v, want one for the device", evs)
	}
	if n := len(f.rec.find(event.MQTTConnect, "loop-0001", "", "")); n != 3 {
		t.Fatalf("%d connect events, want 3", n)
	}
}
