package broker

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// subscribedDevice connects id over mutual TLS with a 4 KiB receive
// buffer, subscribes to its commands at qos and returns the connection
// once the SUBACK is read.
func subscribedDevice(t *testing.T, f *fixture, tc tls.Certificate, id event.DeviceID, qos byte) net.Conn {
	t.Helper()
	dialer := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := tls.DialWithDialer(dialer, "tcp", f.b.Addr().String(), &tls.Config{RootCAs: f.pki.pool, ServerName: "localhost",
		Certificates: []tls.Certificate{tc}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, byte(len(id) >> 8), byte(len(id))}, id...)
	filter := "devices/" + string(id) + "/commands"
	sub := append([]byte{0, 1, byte(len(filter) >> 8), byte(len(filter))}, filter...)
	sub = append(sub, qos)
	pkts := append(append([]byte{0x10, byte(len(body))}, body...), append([]byte{0x82, byte(len(sub))}, sub...)...)
	if _, err := c.Write(pkts); err != nil {
		t.Fatal(err)
	}
	acks := make([]byte, 4+5)
	if _, err := io.ReadFull(c, acks); err != nil {
		t.Fatalf("connack, suback: %v", err)
	}
	if acks[0] != 0x20 || acks[3] != 0 || acks[4] != 0x90 || acks[8] != qos {
		t.Fatalf("connack, suback % x", acks)
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// A device that stops reading fills its session's outbound queue (at QoS 0
// a publish to it does not wait for the stuck write); the delivery that
// does not fit is reported undelivered (so the command stays offline),
// the session is closed, and the device's next subscription is signalled
// so that the platform sends it again.
func TestFullOutboundQueueClosesSessionAndReportsUndelivered(t *testing.T) {
	f := newFixture(t)
	var subscribed atomic.Int64
	f.b.OnCommandsSubscribed(func(Identity) { subscribed.Add(1) })
	_, _, tc, _ := f.pki.issue(t, "acme", "stuck-0001", time.Now().Add(time.Hour))
	f.states.set("stuck-0001", store.StateActive)
	_ = subscribedDevice(t, f, tc, "stuck-0001", 0) // never read again
	smallSendBuffer(t, f, "acme", "stuck-0001")
	waitFor(t, 5*time.Second, "the subscription", func() bool { return subscribed.Load() == 1 })

	pad := make([]byte, 1024)
	sent := 0
	for ; sent < 4000; sent++ {
		live, err := f.b.Command("acme", "stuck-0001", fmt.Appendf(nil, `{"id":"c%d","pad":"%x"}`, sent, pad))
		if err != nil {
			t.Fatal(err)
		}
		if !live {
			break
		}
	}
	if sent == 4000 {
		t.Fatal("4000 commands to a device that does not read were all reported delivered")
	}
	t.Logf("command %d reported undelivered", sent)
	waitFor(t, 5*time.Second, "the stuck session closed", func() bool { return !f.b.Live("acme", "stuck-0001") })
	if n := f.b.Stats().DeliveriesDropped; n < 1 {
		t.Fatalf("%d deliveries dropped counted", n)
	}
	waitFor(t, 5*time.Second, "the disconnect event", func() bool {
		return len(f.rec.find(event.MQTTDisconnect, "stuck-0001", "reason", "queue_full")) == 1
	})
	// The device reconnects and subscribes: the platform is told, and
	// sends what is still offline.
	c := subscribedDevice(t, f, tc, "stuck-0001", 0)
	waitFor(t, 5*time.Second, "the second subscription", func() bool { return subscribed.Load() == 2 })
	if live, err := f.b.Command("acme", "stuck-0001", []byte(`{"id":"again"}`)); err != nil || !live {
		t.Fatalf("command after the reconnect: live %v, %v", live, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0]&0xf0 != 0x30 {
		t.Fatalf("command not received after the reconnect: % x, %v", hdr, err)
	}
}

// A kick closes the session of a device that stopped reading even while
// a delivery to it is stuck in a TCP write (the DISCONNECT packet cannot
// be written then).
func TestKickClosesSessionStuckInWrite(t *testing.T) {
	f := newFixture(t)
	_, _, tc, _ := f.pki.issue(t, "acme", "stuck-0002", time.Now().Add(time.Hour))
	f.states.set("stuck-0002", store.StateActive)
	_ = subscribedDevice(t, f, tc, "stuck-0002", 1) // never read again
	smallSendBuffer(t, f, "acme", "stuck-0002")
	big := fmt.Appendf(nil, `{"id":"big","pad":"%x"}`, make([]byte, 30<<10)) // 60 KiB, past the socket buffers
	// The write loop blocks in this one (a further QoS 1 publish would wait
	// for it, see TestStuckDeviceDoesNotHoldCommands).
	if live, err := f.b.Command("acme", "stuck-0002", big); err != nil || !live {
		t.Fatalf("command: live %v, %v", live, err)
	}
	time.Sleep(100 * time.Millisecond) // let the write loop block
	start := time.Now()
	done := make(chan bool, 1)
	go func() { done <- f.b.Kick("acme", "stuck-0002", "revoked") }()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("no session to kick")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Kick blocked behind the stuck write")
	}
	waitFor(t, 2*time.Second, "the kicked session closed", func() bool {
		return len(f.rec.find(event.MQTTDisconnect, "stuck-0002", "reason", "kicked")) == 1
	})
	t.Logf("closed %v after the kick", time.Since(start))
}

// At QoS 1 a publish to a device takes the client's lock that mochi's
// stuck write holds: the write timeout ends the session, so commands to a
// device that stopped reading return (undelivered) instead of hanging.
func TestStuckDeviceDoesNotHoldCommands(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.WriteTimeout = 300 * time.Millisecond })
	_, _, tc, _ := f.pki.issue(t, "acme", "stuck-0003", time.Now().Add(time.Hour))
	f.states.set("stuck-0003", store.StateActive)
	_ = subscribedDevice(t, f, tc, "stuck-0003", 1) // never read again
	smallSendBuffer(t, f, "acme", "stuck-0003")
	big := fmt.Appendf(nil, `{"id":"big","pad":"%x"}`, make([]byte, 30<<10)) // 60 KiB, past the socket buffers
	if live, err := f.b.Command("acme", "stuck-0003", big); err != nil || !live {
		t.Fatalf("command: live %v, %v", live, err)
	}
	time.Sleep(100 * time.Millisecond) // let the write loop block in it
	type result struct {
		live bool
		err  error
	}
	next := make(chan result, 1)
	go func() {
		live, err := f.b.Command("acme", "stuck-0003", []byte(`{"id":"next"}`))
		next <- result{live, err}
	}()
	select {
	case r := <-next:
		if r.err != nil || r.live {
			t.Fatalf("command behind the stuck write: live %v, %v; want reported undelivered", r.live, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a command to a device that stopped reading hangs")
	}
	waitFor(t, 5*time.Second, "the stuck session closed", func() bool { return !f.b.Live("acme", "stuck-0003") })
}

// smallSendBuffer shrinks the broker's socket send buffer of the device's
// session, so that a device that does not read blocks the writes after a
// few KiB instead of the megabytes loopback would buffer.
func smallSendBuffer(t *testing.T, f *fixture, tenant event.TenantID, d event.DeviceID) {
	t.Helper()
	f.b.mu.Lock()
	s := f.b.sessions[key(tenant, d)]
	f.b.mu.Unlock()
	if s == nil {
		t.Fatal("no session")
	}
	if err := s.cl.Net.Conn.(*conn).NetConn().(*net.TCPConn).SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
}
