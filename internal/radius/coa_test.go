package radius

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	lr "layeh.com/radius"
)

// testNAS is an in-test APN gateway answering RFC 5176 requests. It ignores
// the first `drop` requests (to exercise retries) and answers NAK when nak
// is set.
type testNAS struct {
	addr     string
	requests atomic.Int32
	got      chan *lr.Packet
}

func startNAS(t *testing.T, drop int32, nak bool, forge bool) *testNAS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &testNAS{addr: pc.LocalAddr().String(), got: make(chan *lr.Packet, 16)}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n.requests.Add(1) <= drop {
				continue
			}
			if !lr.IsAuthenticRequest(buf[:k], testSecret) {
				continue
			}
			p, err := lr.Parse(buf[:k], testSecret)
			if err != nil {
				continue
			}
			n.got <- p
			code := lr.CodeDisconnectACK
			if p.Code == lr.CodeCoARequest {
				code = lr.CodeCoAACK
			}
			if nak {
				code = lr.CodeDisconnectNAK
			}
			r := p.Response(code)
			if nak {
				r.Add(attrErrorCause, u32a(503))
			}
			if forge {
				r.Secret = []byte("not-the-secret")
			}
			b, _ := r.Encode()
			pc.WriteTo(b, from)
		}
	}()
	return n
}

func TestDisconnect(t *testing.T) {
	ctx := context.Background()
	target := Target{SessionID: "s1", IMSI: imsiMeter, FramedIP: netip.MustParseAddr("10.1.2.3")}
	t.Run("ack after a lost request", func(t *testing.T) {
		nas := startNAS(t, 1, false, false)
		c := CoAClient{Timeout: 100 * time.Millisecond, Retries: 2}
		if err := c.Disconnect(ctx, NAS{Addr: nas.addr, Secret: testSecret}, target); err != nil {
			t.Fatal(err)
		}
		p := <-nas.got
		raw, _ := p.MarshalBinary()
		r, err := ParseRecord(raw[20:])
		if err != nil || r.SessionID != "s1" || r.IMSI != imsiMeter || r.FramedIP != target.FramedIP || p.Code != lr.CodeDisconnectRequest {
			t.Fatalf("request %+v %v", r, err)
		}
		if nas.requests.Load() != 2 {
			t.Fatalf("%d requests, want 2", nas.requests.Load())
		}
	})
	t.Run("coa ack", func(t *testing.T) {
		nas := startNAS(t, 0, false, false)
		c := CoAClient{Timeout: 100 * time.Millisecond}
		if err := c.CoA(ctx, NAS{Addr: nas.addr, Secret: testSecret}, target, lr.Attributes{{Type: 11, Attribute: lr.Attribute("quarantine")}}); err != nil {
			t.Fatal(err)
		}
		if p := <-nas.got; p.Code != lr.CodeCoARequest || string(p.Get(11)) != "quarantine" {
			t.Fatalf("request %+v", p)
		}
	})
	t.Run("nak", func(t *testing.T) {
		nas := startNAS(t, 0, true, false)
		err := CoAClient{Timeout: 100 * time.Millisecond}.Disconnect(ctx, NAS{Addr: nas.addr, Secret: testSecret}, target)
		var ne *NAKError
		if !errors.Is(err, ErrNAK) || !errors.As(err, &ne) || ne.Cause != 503 {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("forged answer ignored, no answer", func(t *testing.T) {
		nas := startNAS(t, 0, false, true)
		err := CoAClient{Timeout: 50 * time.Millisecond, Retries: 1}.Disconnect(ctx, NAS{Addr: nas.addr, Secret: testSecret}, target)
		if !errors.Is(err, ErrNoAnswer) || nas.requests.Load() != 2 {
			t.Fatalf("err %v after %d requests", err, nas.requests.Load())
		}
	})
	t.Run("context", func(t *testing.T) {
		nas := startNAS(t, 100, false, false)
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		err := CoAClient{Timeout: time.Second, Retries: 5}.Disconnect(cctx, NAS{Addr: nas.addr, Secret: testSecret}, target)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
	})
}
