package app_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	lr "layeh.com/radius"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

const nasSecret = "lab-shared-secret-17"

// seen collects the events of some kinds from the bus.
type seen struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (s *seen) handle(_ context.Context, e *event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := *e
	s.evs = append(s.evs, &cp)
	return nil
}

func (s *seen) find(match func(*event.Event) bool) *event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.evs {
		if match(e) {
			return e
		}
	}
	return nil
}

func watch(t *testing.T, a *app.App, kinds ...event.Kind) *seen {
	t.Helper()
	s := &seen{}
	for _, k := range kinds {
		c, err := a.Bus().Consume(context.Background(), bus.ConsumerOptions{
			Name: "test-" + strings.ReplaceAll(string(k), ".", "_"), Stream: a.Bus().StreamFor(k),
			Filters: []string{bus.KindFilter(k)}, Deliver: bus.DeliverAll, Handler: s.handle,
		})
		require.NoError(t, err)
		t.Cleanup(c.Stop)
	}
	return s
}

func radclient(t *testing.T, addr net.Addr, command, attrs string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "radclient", "-x", "-r", "2", "-t", "3", addr.String(), command, nasSecret)
	cmd.Stdin = strings.NewReader(attrs)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "radclient %s:\n%s", command, out)
	return string(out)
}

// inTestNAS is the gateway's RFC 5176 port: it acknowledges every
// authentic Disconnect-Request and hands it to the test.
func inTestNAS(t *testing.T) (string, chan *lr.Packet) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	got := make(chan *lr.Packet, 4)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if !lr.IsAuthenticRequest(buf[:n], []byte(nasSecret)) {
				continue
			}
			p, err := lr.Parse(buf[:n], []byte(nasSecret))
			if err != nil || p.Code != lr.CodeDisconnectRequest {
				continue
			}
			got <- p
			b, _ := p.Response(lr.CodeDisconnectACK).Encode()
			pc.WriteTo(b, from)
		}
	}()
	return pc.LocalAddr().String(), got
}

// TestServeConnectivity proves the network side of serve with real peers:
// FreeRADIUS's radclient sends accounting and access requests for a SIM
// bound in the registry, softflowd exports the device's traffic as IPFIX,
// and the events (net.session with the IMEI, cell and position; location
// from the network; net.flow mapped through the Framed-IP lease) reach the
// bus for the right device. The same SIM then shows up in a foreign IMEI
// and detection raises sim.imei_mismatch; the Disconnect back-end drops
// the session at an in-test gateway.
func TestServeConnectivity(t *testing.T) {
	for _, tool := range []string{"radclient", "softflowd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install freeradius-utils softflowd): real-peer connectivity test not run", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	coaAddr, disconnects := inTestNAS(t)
	peers := filepath.Join(t.TempDir(), "peers.yaml")
	require.NoError(t, os.WriteFile(peers, []byte(fmt.Sprintf(`
nas_clients:
  - {name: lab-pgw, tenant: acme, prefix: 127.0.0.1, secret: %q, coa_addr: %q}
exporters:
  - {name: lab-pgw, tenant: acme, prefix: 127.0.0.0/8}
`, nasSecret, coaAddr)), 0o600))
	cfg := testConfig(t)
	cfg.Radius.Enabled, cfg.Radius.AcctAddr, cfg.Radius.AuthAddr, cfg.Radius.ClientsFile = true, "127.0.0.1:0", "127.0.0.1:0", peers
	cfg.Flows.Enabled, cfg.Flows.IPFIXAddr, cfg.Flows.NetFlowAddr, cfg.Flows.ExportersFile = true, "127.0.0.1:0", "127.0.0.1:0", peers
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())
	acct, auth := a.RADIUSAddrs()
	ipfix, _ := a.FlowAddrs()

	const tenant, device = event.TenantID("acme"), event.DeviceID("meter-0017")
	const imsi, imeisv, imei = "214010000000017", "4901542032375101", "490154203237518"
	const foreignIMEISV = "3569380356438091"
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		if err := tx.Cells().Put(ctx, []store.Cell{{Radio: "LTE", MCC: 214, MNC: 1, Area: 0x1a2b, Cell: 0xabcdef,
			Lat: 40.41678, Lon: -3.70379, RangeM: 800, UpdatedAt: now}}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: device, Model: "acme-meter-2", State: store.StateActive,
			IMSI: imsi, IMEI: imei, CreatedAt: now, UpdatedAt: now})
	}))
	evs := watch(t, a, event.NetSession, event.Location, event.NetFlow)

	// The authentication server answers for the bound SIM.
	out := radclient(t, auth, "auth", `User-Name = "`+imsi+`"
User-Password = "x"
Message-Authenticator = 0x00
3GPP-IMSI = "`+imsi+`"
3GPP-IMEISV = "`+imeisv+`"
`)
	require.Contains(t, out, "Received Access-Accept")

	common := `Acct-Session-Id = "sess-0017"
Framed-IP-Address = 10.9.8.7
Calling-Station-Id = "34600000017"
3GPP-IMSI = "` + imsi + `"
3GPP-User-Location-Info = 0x8212f4101a2b12f41000abcdef
3GPP-RAT-Type = EUTRAN
`
	out = radclient(t, acct, "acct", common+"Acct-Status-Type = Start\n3GPP-IMEISV = \""+imeisv+"\"\n")
	require.Contains(t, out, "Accounting-Response")
	var start *event.Event
	require.Eventually(t, func() bool {
		start = evs.find(func(e *event.Event) bool { return e.Kind == event.NetSession && e.Str("status") == "start" })
		return start != nil
	}, 10*time.Second, 20*time.Millisecond, "no net.session start on the bus")
	require.Equal(t, device, start.Device)
	require.Equal(t, tenant, start.Tenant)
	require.Equal(t, imei, start.Str("imei"))
	require.Equal(t, "10.9.8.7", start.Str("ip"))
	require.Equal(t, "214-01-0x1a2b-0x00abcdef", start.Str("cell"))
	lat, _ := start.Float("lat")
	acc, _ := start.Float("accuracy_m")
	require.Equal(t, 40.41678, lat)
	require.Equal(t, 800.0, acc)
	var loc *event.Event
	require.Eventually(t, func() bool {
		loc = evs.find(func(e *event.Event) bool { return e.Kind == event.Location && e.Device == device })
		return loc != nil
	}, 10*time.Second, 20*time.Millisecond, "no location event from the network")
	require.Equal(t, "network", loc.Str("source"))
	acc, _ = loc.Float("accuracy_m")
	require.Equal(t, 800.0, acc)

	// softflowd exports the device's traffic; the flow maps to the device
	// through the session's Framed-IP-Address.
	capture := filepath.Join(t.TempDir(), "capture.pcap")
	writeCapture(t, capture, now.Add(-time.Minute), netip.MustParseAddr("10.9.8.7"), netip.MustParseAddr("192.0.2.77"))
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	fout, err := exec.CommandContext(fctx, "softflowd", "-d", "-r", capture, "-n", ipfix.String(), "-v", "10").CombinedOutput()
	require.NoError(t, err, "softflowd:\n%s", fout)
	var flow *event.Event
	require.Eventually(t, func() bool {
		flow = evs.find(func(e *event.Event) bool { return e.Kind == event.NetFlow && e.Str("dst_ip") == "192.0.2.77" })
		return flow != nil
	}, 10*time.Second, 20*time.Millisecond, "no net.flow on the bus")
	require.Equal(t, device, flow.Device)
	dport, _ := flow.Float("dst_port")
	pkts, _ := flow.Float("packets")
	require.Equal(t, 5683.0, dport)
	require.Equal(t, 3.0, pkts)

	// The Disconnect back-end drops the session at the gateway carrying it.
	require.NoError(t, a.Disconnector().Disconnect(ctx, tenant, device))
	select {
	case p := <-disconnects:
		sid, _ := p.Lookup(44) // Acct-Session-Id
		ip, _ := p.Lookup(8)   // Framed-IP-Address
		require.Equal(t, "sess-0017", string(sid))
		require.Equal(t, []byte{10, 9, 8, 7}, []byte(ip))
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway got no Disconnect-Request")
	}

	// The SIM shows up in a foreign device: detection (running in serve)
	// raises sim.imei_mismatch.
	out = radclient(t, acct, "acct", common+"Acct-Status-Type = Interim-Update\nAcct-Input-Octets = 5000\n3GPP-IMEISV = \""+foreignIMEISV+"\"\n")
	require.Contains(t, out, "Accounting-Response")
	require.Eventually(t, func() bool {
		var as []alert.Alert
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			var err error
			as, err = tx.Alerts().List(ctx, tenant, store.AlertFilter{Device: device, Kind: alert.SIMIMEIMismatch})
			return err
		}))
		return len(as) == 1
	}, 15*time.Second, 50*time.Millisecond, "no sim.imei_mismatch alert")
}

// writeCapture writes a libpcap file with three UDP packets from src to
// dst:5683, one second apart.
func writeCapture(t *testing.T, path string, t0 time.Time, src, dst netip.Addr) {
	t.Helper()
	le := binary.LittleEndian
	b := le.AppendUint32(nil, 0xa1b2c3d4)
	b = le.AppendUint16(b, 2)
	b = le.AppendUint16(b, 4)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 65535)
	b = le.AppendUint32(b, 1) // Ethernet
	for i := range 3 {
		payload := 100
		udp := binary.BigEndian.AppendUint16(nil, 40000)
		udp = binary.BigEndian.AppendUint16(udp, 5683)
		udp = binary.BigEndian.AppendUint16(udp, uint16(8+payload))
		udp = binary.BigEndian.AppendUint16(udp, 0)
		udp = append(udp, make([]byte, payload)...)
		ip := []byte{0x45, 0}
		ip = binary.BigEndian.AppendUint16(ip, uint16(20+len(udp)))
		ip = append(ip, 0, 1, 0, 0, 64, 17, 0, 0)
		s, d := src.As4(), dst.As4()
		ip = append(append(ip, s[:]...), d[:]...)
		var sum uint32
		for j := 0; j < 20; j += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[j:]))
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		frame := append([]byte{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 6, 0x08, 0x00}, ip...)
		frame = append(frame, udp...)
		ts := t0.Add(time.Duration(i) * time.Second)
		b = le.AppendUint32(b, uint32(ts.Unix()))
		b = le.AppendUint32(b, uint32(ts.Nanosecond()/1000))
		b = le.AppendUint32(b, uint32(len(frame)))
		b = le.AppendUint32(b, uint32(len(frame)))
		b = append(b, frame...)
	}
	require.NoError(t, os.WriteFile(path, b, 0o600))
}
