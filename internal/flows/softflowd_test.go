package flows

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

type fakePub struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (p *fakePub) Publish(_ context.Context, e *event.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.evs = append(p.evs, e)
	p.mu.Unlock()
	return nil
}

func (p *fakePub) events() []*event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*event.Event(nil), p.evs...)
}

type fakeDevices map[netip.Addr]event.DeviceID

func (f fakeDevices) DeviceByIP(_ context.Context, tenant event.TenantID, ip netip.Addr) (event.DeviceID, bool) {
	if tenant != "acme" {
		return "", false
	}
	d, ok := f[ip]
	return d, ok
}

// pcapWriter writes the classic libpcap format (Ethernet link type).
type pcapWriter struct{ b []byte }

func newPcap() *pcapWriter {
	w := &pcapWriter{}
	w.b = binary.LittleEndian.AppendUint32(w.b, 0xa1b2c3d4)
	w.b = binary.LittleEndian.AppendUint16(w.b, 2)
	w.b = binary.LittleEndian.AppendUint16(w.b, 4)
	w.b = binary.LittleEndian.AppendUint32(w.b, 0)
	w.b = binary.LittleEndian.AppendUint32(w.b, 0)
	w.b = binary.LittleEndian.AppendUint32(w.b, 65535)
	w.b = binary.LittleEndian.AppendUint32(w.b, 1)
	return w
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// packet appends one frame at time ts. proto is 6 (TCP) or 17 (UDP).
func (w *pcapWriter) packet(ts time.Time, src, dst netip.Addr, sport, dport uint16, proto uint8, payload int) {
	var l4 []byte
	l4 = be16(l4, sport)
	l4 = be16(l4, dport)
	if proto == 6 {
		l4 = be32(l4, 1)
		l4 = be32(l4, 0)
		l4 = append(l4, 5<<4, 0x18) // data offset 5, PSH|ACK
		l4 = be16(l4, 65535)
		l4 = be16(l4, 0)
		l4 = be16(l4, 0)
	} else {
		l4 = be16(l4, uint16(8+payload))
		l4 = be16(l4, 0)
	}
	l4 = append(l4, make([]byte, payload)...)
	var ip []byte
	etherType := uint16(0x0800)
	if src.Is4() {
		ip = []byte{0x45, 0}
		ip = be16(ip, uint16(20+len(l4)))
		ip = append(ip, 0, 1, 0, 0, 64, proto, 0, 0)
		s, d := src.As4(), dst.As4()
		ip = append(append(ip, s[:]...), d[:]...)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	} else {
		etherType = 0x86dd
		ip = []byte{0x60, 0, 0, 0}
		ip = be16(ip, uint16(len(l4)))
		ip = append(ip, proto, 64)
		s, d := src.As16(), dst.As16()
		ip = append(append(ip, s[:]...), d[:]...)
	}
	frame := append([]byte{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 6}, byte(etherType>>8), byte(etherType))
	frame = append(append(frame, ip...), l4...)
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(ts.Unix()))
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(ts.Nanosecond()/1000))
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(frame)))
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(frame)))
	w.b = append(w.b, frame...)
}

func TestSoftflowd(t *testing.T) {
	if _, err := exec.LookPath("softflowd"); err != nil {
		t.Skip("softflowd not installed (apt-get install softflowd): real-exporter flow test not run")
	}
	meter := netip.MustParseAddr("10.1.2.3")
	cam := netip.MustParseAddr("2001:db8::17")
	w := newPcap()
	t0 := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for i := range 3 { // meter -> CoAP server: 3 x (20+8+100) bytes
		w.packet(t0.Add(time.Duration(i)*time.Second), meter, netip.MustParseAddr("192.0.2.7"), 40000, 5683, 17, 100)
	}
	for i := range 2 { // someone -> meter over TCP: 2 x (20+20+50)
		w.packet(t0.Add(time.Duration(i)*time.Second), netip.MustParseAddr("203.0.113.5"), meter, 443, 51000, 6, 50)
	}
	w.packet(t0, cam, netip.MustParseAddr("2001:db8:1::1"), 5353, 53, 17, 40) // 40+8+40
	w.packet(t0, netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"), 1, 2, 17, 10)
	pcap := filepath.Join(t.TempDir(), "capture.pcap")
	if err := os.WriteFile(pcap, w.b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, version := range []string{"10", "9"} {
		t.Run("v"+version, func(t *testing.T) {
			pub := &fakePub{}
			c, err := New(Options{
				Exporters: []Exporter{{Name: "lab", Tenant: "acme", Prefix: netip.MustParsePrefix("127.0.0.1/32")}},
				Publisher: pub, Devices: fakeDevices{meter: "meter-0017", cam: "cam-0001"},
				Clock: clock.NewManual(t0),
			})
			if err != nil {
				t.Fatal(err)
			}
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Serve(ctx, pc) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			cmdCtx, cmdCancel := context.WithTimeout(ctx, 10*time.Second)
			defer cmdCancel()
			out, err := exec.CommandContext(cmdCtx, "softflowd", "-d", "-r", pcap, "-n", pc.LocalAddr().String(), "-v", version).CombinedOutput()
			if err != nil {
				t.Fatalf("softflowd: %v\n%s", err, out)
			}
			deadline := time.Now().Add(3 * time.Second)
			for len(pub.events()) < 3 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // let any extra record arrive
			byDev := map[string]*event.Event{}
			for _, e := range pub.events() {
				byDev[string(e.Device)+" "+e.Str("dst_ip")] = e
			}
			want := []struct {
				key                 string
				src                 string
				sport, dport, proto float64
				bytes, packets      float64
				direction           string
			}{
				{"meter-0017 192.0.2.7", "10.1.2.3", 40000, 5683, 17, 384, 3, "out"},
				{"meter-0017 203.0.113.5", "10.1.2.3", 51000, 443, 6, 180, 2, "in"},
				{"cam-0001 2001:db8:1::1", "2001:db8::17", 5353, 53, 17, 88, 1, "out"},
			}
			for _, w := range want {
				e := byDev[w.key]
				if e == nil {
					t.Fatalf("no flow %q in %v", w.key, byDev)
				}
				got := func(k string) float64 { v, _ := e.Float(k); return v }
				if e.Kind != event.NetFlow || e.Tenant != "acme" || e.Str("src_ip") != w.src || got("src_port") != w.sport || got("dst_port") != w.dport ||
					got("proto") != w.proto || got("bytes") != w.bytes || got("packets") != w.packets || e.Str("direction") != w.direction || e.Str("exporter") != "127.0.0.1" {
					t.Errorf("flow %q: %+v", w.key, e.Attrs)
				}
				if s, _ := e.Float("start_ms"); s == 0 || e.Int("end_ms") < e.Int("start_ms") {
					t.Errorf("flow %q: times %v..%v", w.key, e.Attrs["start_ms"], e.Attrs["end_ms"])
				}
			}
			// The meter's flow lasted 2 s (first to last packet) and started
			// when the capture did. softflowd's offline (-r) IPFIX uptimes
			// wrap below zero; the decoder resolves the wrap towards the
			// export time.
			m := byDev[want[0].key]
			start, end := time.UnixMilli(m.Int("start_ms")), time.UnixMilli(m.Int("end_ms"))
			if end.Sub(start) != 2*time.Second {
				t.Errorf("meter flow %v..%v: want 2s", start, end)
			}
			// Absolute times come from the header's export time, which has
			// second resolution, plus the uptimes in ms: up to 1 s off, and
			// a millisecond of rounding on top (seen: 1.001 s).
			if start.Sub(t0) > 1100*time.Millisecond || t0.Sub(start) > 1100*time.Millisecond {
				t.Errorf("start %v, capture started %v", start.UTC(), t0)
			}
			st := c.Stats()
			if st.Published != 3 || st.Unmapped != 1 || st.Decoder.Malformed != 0 {
				t.Errorf("stats %+v", st)
			}
			t.Logf("softflowd v%s: %d events, stats %+v, meter flow %v..%v", version, len(pub.events()), st, start.UTC(), end.UTC())
		})
	}
}
