package mqttconn_test

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/packets"

	"github.com/garrisonhq/garrison/internal/mqttconn"
)

// chunked is a connection whose Write is one call per buffer, as a TLS
// connection's is (net.Pipe would do too, but it blocks on every Write).
type chunked struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *chunked) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(b)
}

// TestPacketsStayWhole writes SUBSCRIBE and PINGREQ packets from many
// goroutines and reads the stream back: every packet must decode, in one
// piece. Without the lock the packets interleave (the test fails on the
// raw connection, checked below).
func TestPacketsStayWhole(t *testing.T) {
	if interleaves(t, func(c net.Conn) net.Conn { return c }) == 0 {
		t.Log("the raw connection did not interleave this time (scheduling); the locked run still must not")
	}
	if n := interleaves(t, mqttconn.Locked); n != 0 {
		t.Fatalf("%d packets broken through the locked connection", n)
	}
}

// interleaves returns how many packets in the written stream do not decode
// as the SUBSCRIBE or PINGREQ that was sent.
func interleaves(t *testing.T, wrap func(net.Conn) net.Conn) int {
	t.Helper()
	raw := &chunked{}
	c := wrap(raw)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var p *packets.ControlPacket
				if (w+i)%2 == 0 {
					p = packets.NewControlPacket(packets.PINGREQ)
				} else {
					p = packets.NewControlPacket(packets.SUBSCRIBE)
					s := p.Content.(*packets.Subscribe)
					s.PacketID = uint16(i + 1)
					s.Subscriptions = []packets.SubOptions{{Topic: "devices/meter-0001/ota/job", QoS: 1}}
				}
				if _, err := p.WriteTo(c); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	bad := 0
	r := bytes.NewReader(raw.out.Bytes())
	for n := 0; n < writers*each; n++ {
		p, err := packets.ReadPacket(r)
		if err != nil {
			if err == io.EOF {
				return bad + writers*each - n
			}
			bad++
			continue
		}
		switch x := p.Content.(type) {
		case *packets.Pingreq:
		case *packets.Subscribe:
			if len(x.Subscriptions) != 1 || x.Subscriptions[0].Topic != "devices/meter-0001/ota/job" {
				bad++
			}
		default:
			bad++
		}
	}
	return bad
}
