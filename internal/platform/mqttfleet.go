package platform

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/sim"
)

// MQTTFleetOptions configure [NewMQTTFleet].
type MQTTFleetOptions struct {
	// Addr is the broker's mutual-TLS listener (host:port).
	Addr string
	// TLS is the devices' client configuration without a certificate:
	// RootCAs trusting the broker's server certificate. Each device adds
	// its own certificate.
	TLS *tls.Config
	// Live reports whether the broker holds a session of the device
	// ([broker.Broker.Live]); a disconnect waits until it does not, so the
	// broker's mqtt.disconnect carries the simulated time of the
	// disconnect.
	Live   func(t event.TenantID, d event.DeviceID) bool
	Logger *slog.Logger
	// Window is how many publishes may await their PUBACK at once (default
	// 256); Settle how far the simulated clock may move past the oldest of
	// them before the fleet waits for every acknowledgement (default 1s).
	// The broker stamps a publish with its clock when it reads it, so a
	// publish is stamped at most Settle after its simulated time, never
	// before it.
	Window int
	Settle time.Duration
}

// MQTTFleetStats counts what the fleet's devices did over their sessions.
type MQTTFleetStats struct {
	Connects, ConnectFailures, Disconnects int64
	Publishes, Acknowledged                int64
	Offline                                int64 // reports of a device with no session (kicked, refused)
}

// MQTTFleet is the simulated fleet's device side when every device holds
// a real mutual-TLS MQTT session to the broker: each device connects with
// its own key and certificate from its own loopback address (127.0.0.2,
// 127.0.0.3 ...), and its connects, disconnects, telemetry and agent
// reports (positions, metrics, boot reports) travel over that session as
// QoS 1 publishes on devices/{id}/..., so that the broker's ACL,
// quarantine, limits, payload decoder and event publishing produce the
// platform's events. Give it to [ScenarioOptions.MQTT]; the broker must
// run on the scenario's clock ([ScenarioOptions.Clock]). Add devices with
// [MQTTFleet.Add] as they enrol. Methods other than Stats are called by
// one scenario run (not concurrently).
type MQTTFleet struct {
	o    MQTTFleetOptions
	log  *slog.Logger
	devs map[event.DeviceID]*mqttDevice
	n    int // devices added, for their source addresses

	out     atomic.Int64  // publishes awaiting PUBACK, fleet-wide
	acked   chan struct{} // signalled when out reaches 0
	oldest  time.Time     // simulated time of the oldest unacknowledged publish
	noBind  atomic.Bool   // binding 127.0.0.x failed once: dial from the default address
	payload []byte
	agent   agentPath
	// held is a telemetry publish waiting for the next event: a position
	// of the same device at the same time rides in the same message, as a
	// tracker sends its report.
	held *event.Event

	stats struct {
		connects, connectFailures, disconnects, publishes, acknowledged, offline atomic.Int64
	}
}

// NewMQTTFleet returns an empty fleet.
func NewMQTTFleet(o MQTTFleetOptions) (*MQTTFleet, error) {
	if o.Addr == "" || o.TLS == nil || o.Live == nil {
		return nil, errors.New("mqtt fleet: Addr, TLS and Live are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Window <= 0 {
		o.Window = 256
	}
	if o.Settle <= 0 {
		o.Settle = time.Second
	}
	return &MQTTFleet{o: o, log: o.Logger, devs: map[event.DeviceID]*mqttDevice{}, acked: make(chan struct{}, 1)}, nil
}

// Add gives device d of tenant t its certificate and private key.
func (f *MQTTFleet) Add(t event.TenantID, d event.DeviceID, cert tls.Certificate) {
	f.n++
	ip := netip.AddrFrom4([4]byte{127, byte((f.n + 1) >> 16), byte((f.n + 1) >> 8), byte(f.n + 1)})
	f.devs[d] = &mqttDevice{f: f, tenant: t, id: d, cert: cert, local: ip}
}

// Stats returns the fleet's counters.
func (f *MQTTFleet) Stats() MQTTFleetStats {
	return MQTTFleetStats{
		Connects: f.stats.connects.Load(), ConnectFailures: f.stats.connectFailures.Load(),
		Disconnects: f.stats.disconnects.Load(), Publishes: f.stats.publishes.Load(),
		Acknowledged: f.stats.acknowledged.Load(), Offline: f.stats.offline.Load(),
	}
}

// Close closes every session.
func (f *MQTTFleet) Close() {
	for _, d := range f.devs {
		d.close(false)
	}
}

// carries reports whether ev is the device's own MQTT traffic, which the
// fleet sends over the device's session instead of the simulator's event
// entering the platform: its connects and disconnects (not those of an
// attacker's session with its identity, [sim.AttackerSession]), its
// telemetry publishes and its agent's reports.
func (f *MQTTFleet) carries(ev *event.Event) bool {
	if f.devs[ev.Device] == nil {
		return false
	}
	switch ev.Kind {
	case event.MQTTConnect, event.MQTTDisconnect:
		return ev.Source == "broker" && !sim.AttackerSession(ev)
	case event.MQTTPublish:
		return ev.Source == "broker"
	}
	return f.agent.handles(ev)
}

// settle waits for every outstanding PUBACK when the clock is about to
// move to t more than Settle past the oldest outstanding publish.
func (f *MQTTFleet) settle(ctx context.Context, t time.Time) error {
	if f.out.Load() == 0 || t.Sub(f.oldest) <= f.o.Settle {
		return nil
	}
	return f.sync(ctx)
}

// sync waits until the broker has acknowledged every publish sent.
func (f *MQTTFleet) sync(ctx context.Context) error {
	if f.out.Load() == 0 {
		return nil
	}
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for f.out.Load() > 0 {
		select {
		case <-f.acked:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("mqtt fleet: %d publishes not acknowledged after 30s", f.out.Load())
		}
	}
	return nil
}

func (f *MQTTFleet) done(n int64) {
	f.stats.acknowledged.Add(n)
	if f.out.Add(-n) == 0 {
		select {
		case f.acked <- struct{}{}:
		default:
		}
	}
}

// release sends the held telemetry publish before next (nil: at a
// revocation or the drain) is handled, with next's position in it when
// next is the position of the same report; consumed says so.
func (f *MQTTFleet) release(ctx context.Context, next *event.Event) (consumed bool, err error) {
	h := f.held
	if h == nil {
		return false, nil
	}
	f.held = nil
	var pos *event.Event
	if next != nil && next.Kind == event.Location && next.Device == h.Device && next.Time.Equal(h.Time) && f.carries(next) {
		pos = next
	}
	return pos != nil, f.devs[h.Device].publish(ctx, h.Time, "telemetry", f.telemetry(h, pos))
}

// send carries one event of [MQTTFleet.carries] over the device's session
// (call release first).
func (f *MQTTFleet) send(ctx context.Context, ev *event.Event) error {
	d := f.devs[ev.Device]
	switch ev.Kind {
	case event.MQTTConnect:
		return d.connect(ctx)
	case event.MQTTDisconnect:
		return d.disconnect(ctx, ev.Str("reason"))
	case event.MQTTPublish:
		f.held = ev
		return nil
	}
	sub, payload, err := f.agent.payload(ev)
	if err != nil {
		return fmt.Errorf("agent %s %s of %s: %w", ev.Kind, ev.ID, ev.Device, err)
	}
	return d.publish(ctx, ev.Time, sub, payload)
}

// telemetry is the payload of a telemetry publish of the simulator's size:
// the agent's ts, the position pos if not nil, and the application's data,
// padded to ev's bytes.
func (f *MQTTFleet) telemetry(ev, pos *event.Event) []byte {
	b := append(f.payload[:0], `{"ts":"`...)
	b = ev.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if pos != nil {
		for _, k := range []string{"lat", "lon", "accuracy_m"} {
			if v, ok := pos.Float(k); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				b = append(b, `,"`...)
				b = append(b, k...)
				b = append(b, `":`...)
				b = strconv.AppendFloat(b, v, 'g', -1, 64)
			}
		}
	}
	b = append(b, `,"data":"`...)
	n, _ := ev.Float("bytes")
	for pad := int(math.Round(n)) - len(b) - 2; pad > 0; pad -= len(filler) {
		b = append(b, filler[:min(pad, len(filler))]...)
	}
	b = append(b, `"}`...)
	f.payload = b
	return b
}

// filler pads the application data of telemetry payloads.
var filler = []byte(strings.Repeat("x", 4096))

// mqttDevice is one device's session.
type mqttDevice struct {
	f      *MQTTFleet
	tenant event.TenantID
	id     event.DeviceID
	cert   tls.Certificate
	local  netip.Addr

	conn    net.Conn // nil when offline
	dead    chan struct{}
	pending atomic.Int64 // publishes of this session awaiting PUBACK
	nextID  uint16
	buf     bytes.Buffer
}

func (d *mqttDevice) dial(ctx context.Context) (net.Conn, error) {
	cfg := d.f.o.TLS.Clone()
	cfg.Certificates = []tls.Certificate{d.cert}
	nd := &net.Dialer{Timeout: 10 * time.Second}
	if !d.f.noBind.Load() {
		nd.LocalAddr = &net.TCPAddr{IP: d.local.AsSlice()}
	}
	c, err := (&tls.Dialer{NetDialer: nd, Config: cfg}).DialContext(ctx, "tcp", d.f.o.Addr)
	if err != nil && nd.LocalAddr != nil && !errors.Is(err, context.Canceled) {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			// No 127.0.0.0/8 beyond 127.0.0.1 here (not Linux): one address.
			d.f.noBind.Store(true)
			d.f.log.Warn("mqtt fleet: cannot bind loopback source addresses; every device dials from the default one", "err", err)
			nd.LocalAddr = nil
			c, err = (&tls.Dialer{NetDialer: nd, Config: cfg}).DialContext(ctx, "tcp", d.f.o.Addr)
		}
	}
	return c, err
}

// connect opens the session (TLS handshake, CONNECT, CONNACK); the broker
// publishes mqtt.connect before it answers.
func (d *mqttDevice) connect(ctx context.Context) error {
	if d.conn != nil {
		// A new session of the same device: the broker takes the old one
		// over; close it first as a rebooting device's would be gone.
		d.close(false)
	}
	c, err := d.dial(ctx)
	if err != nil {
		return d.refused(err)
	}
	d.buf.Reset()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		// The longest keepalive: a device is silent for as long as the
		// simulation says, and the fleet sends no pings.
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: math.MaxUint16, ClientIdentifier: string(d.id)}}
	if err := pk.ConnectEncode(&d.buf); err != nil {
		c.Close()
		return err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(d.buf.Bytes()); err != nil {
		c.Close()
		return d.refused(err)
	}
	r := bufio.NewReader(c)
	typ, body, err := readPacket(r)
	if err != nil {
		c.Close()
		return d.refused(err)
	}
	if typ != packets.Connack || len(body) < 2 || body[1] != 0 {
		c.Close()
		return d.refused(fmt.Errorf("connack type %d body %x", typ, body))
	}
	_ = c.SetDeadline(time.Time{})
	d.conn, d.dead = c, make(chan struct{})
	d.f.stats.connects.Add(1)
	go d.read(r, c, d.dead)
	return nil
}

// refused records a connect the broker (or the network) refused; the
// device stays offline until its next connect. Not an error of the run:
// a refusal is the broker's decision (and its own event).
func (d *mqttDevice) refused(err error) error {
	d.f.stats.connectFailures.Add(1)
	d.f.log.Debug("mqtt fleet: connect refused", "device", d.id, "err", err)
	return nil
}

// read consumes what the broker sends: PUBACKs, and a DISCONNECT or EOF
// when the broker closes the session (a kick).
func (d *mqttDevice) read(r *bufio.Reader, c net.Conn, dead chan struct{}) {
	defer func() {
		c.Close()
		if n := d.pending.Swap(0); n > 0 {
			d.f.done(n)
		}
		close(dead)
	}()
	for {
		typ, _, err := readPacket(r)
		if err != nil {
			return
		}
		switch typ {
		case packets.Puback:
			if d.pending.Add(-1) >= 0 {
				d.f.done(1)
			} else {
				d.pending.Add(1)
			}
		case packets.Disconnect:
			return
		}
	}
}

// publish sends one QoS 1 publish on devices/{id}/sub.
func (d *mqttDevice) publish(ctx context.Context, at time.Time, sub string, payload []byte) error {
	if d.conn != nil {
		select {
		case <-d.dead: // kicked by the broker
			d.conn = nil
		default:
		}
	}
	if d.conn == nil {
		d.f.stats.offline.Add(1)
		return nil
	}
	f := d.f
	if f.out.Load() >= int64(f.o.Window) {
		if err := f.sync(ctx); err != nil {
			return err
		}
	}
	d.nextID++
	if d.nextID == 0 {
		d.nextID = 1
	}
	d.buf.Reset()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
		TopicName: "devices/" + string(d.id) + "/" + sub, Payload: payload, PacketID: d.nextID}
	if err := pk.PublishEncode(&d.buf); err != nil {
		return err
	}
	if f.out.Load() == 0 {
		f.oldest = at
	}
	d.pending.Add(1)
	f.out.Add(1)
	f.stats.publishes.Add(1)
	if _, err := d.conn.Write(d.buf.Bytes()); err != nil {
		// The reader sees the broken connection too and releases pending.
		d.f.log.Debug("mqtt fleet: publish", "device", d.id, "err", err)
		d.conn.Close()
		<-d.dead
		d.conn = nil
	}
	return nil
}

// disconnect ends the session as the simulator says it ended: a reboot
// sends DISCONNECT, an outage just loses the connection, and a revoked
// device's session is the broker's to close (the platform kicks it when
// the registry says revoked). It returns once the broker has dropped the
// session (and so published its mqtt.disconnect at the current simulated
// time).
func (d *mqttDevice) disconnect(ctx context.Context, reason string) error {
	if d.conn == nil {
		return nil
	}
	// The device's publishes reach the broker before its disconnect.
	if d.pending.Load() > 0 {
		if err := d.f.sync(ctx); err != nil {
			return err
		}
	}
	if reason != "revoked" {
		d.close(reason != "keepalive_timeout")
	}
	d.f.stats.disconnects.Add(1)
	deadline := time.Now().Add(10 * time.Second)
	for d.f.o.Live(d.tenant, d.id) {
		if time.Now().After(deadline) {
			return fmt.Errorf("mqtt fleet: broker still holds %s's session 10s after its %s disconnect", d.id, reason)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(100 * time.Microsecond)
	}
	d.close(false) // kicked: the broker closed it
	// The broker drops the session, then publishes: leave it that moment.
	time.Sleep(200 * time.Microsecond)
	return nil
}

// close closes the session, with a DISCONNECT packet if polite.
func (d *mqttDevice) close(polite bool) {
	if d.conn == nil {
		return
	}
	if polite {
		d.buf.Reset()
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5}
		if pk.DisconnectEncode(&d.buf) == nil {
			_ = d.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = d.conn.Write(d.buf.Bytes())
		}
	}
	d.conn.Close()
	<-d.dead
	d.conn = nil
}

// readPacket reads one MQTT control packet: its type and body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	hb, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, nil, err
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("mqtt packet of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hb >> 4, body, nil
}
