package platform

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/radius"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// gwRig is a platform on embedded defaults with the simulated APN gateway
// in front of it, and a consumer recording what reaches the bus.
type gwRig struct {
	p    *Platform
	gw   *apnGateway
	sink *simSink
	dev  sim.Device

	mu  sync.Mutex
	got []*event.Event
	cs  []*bus.Consumer
}

var gwStart = time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)

func newGWRig(t *testing.T) *gwRig {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "garrison.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b, err := bus.Open(ctx, bus.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	p, err := Build(ctx, st, b, gwStart, ScenarioOptions{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	r := &gwRig{p: p}
	r.gw, err = newAPNGateway(busAsync{b}, directorySIMs{p.Detection.Directory()}, p.Clock, p.Tenant, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.sink = &simSink{p: p, gw: r.gw, beforeFirst: func() error { return nil }}
	r.dev = sim.Device{
		ID: "meter-0017", Cohort: "meter", Model: "acme-meter-2", Firmware: "2.4.1",
		IMEI: "490154203237518", IMSI: "214010000000017", ICCID: "8934010000000000172",
		IP: netip.MustParseAddr("10.64.0.18"), Home: sim.Point{Lat: -34.6, Lon: -58.38}, APN: "meters.example.private",
	}
	setup := &simSetup{p: p, gw: r.gw}
	if err := setup.RegisterDevice(ctx, r.dev); err != nil {
		t.Fatal(err)
	}
	for _, s := range []bus.Stream{bus.Events, bus.Security} {
		c, err := b.Consume(ctx, bus.ConsumerOptions{Name: "gw-test-" + s.String(), Stream: s, Handler: func(_ context.Context, e *event.Event) error {
			switch e.Kind {
			case event.AlertRaised, event.ActionTaken, event.DeviceState:
			default:
				cp := *e
				r.mu.Lock()
				r.got = append(r.got, &cp)
				r.mu.Unlock()
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		r.cs = append(r.cs, c)
		t.Cleanup(c.Stop)
	}
	return r
}

// publish feeds events through the sink, as a scenario run does.
func (r *gwRig) publish(t *testing.T, evs ...*event.Event) {
	t.Helper()
	for _, ev := range evs {
		if err := r.sink.Publish(context.Background(), ev); err != nil {
			t.Fatalf("publish %s %s: %v", ev.Kind, ev.ID, err)
		}
	}
}

// settle sends what the gateway holds and waits for the bus and detection
// to have handled everything.
func (r *gwRig) settle(t *testing.T) []*event.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.gw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.p.Bus.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range r.cs {
		if err := c.WaitCaughtUp(ctx, 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.p.Detection.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*event.Event(nil), r.got...)
}

func (r *gwRig) ev(at time.Duration, kind event.Kind, attrs map[string]any) *event.Event {
	return &event.Event{
		ID: fmt.Sprintf("%s-%d", r.dev.ID, at), Tenant: r.p.Tenant, Device: r.dev.ID, Kind: kind,
		Time: gwStart.Add(at), Source: map[event.Kind]string{event.NetSession: "radius", event.NetFlow: "flows"}[kind], Attrs: attrs,
	}
}

// session is a net.session as internal/sim emits it (deltas of octets).
func (r *gwRig) session(at time.Duration, status, sid, imei, cell string, lat, lon, up, down float64) *event.Event {
	return r.ev(at, event.NetSession, map[string]any{
		"status": status, "session_id": sid, "imsi": r.dev.IMSI, "iccid": r.dev.ICCID, "imei": imei,
		"ip": r.dev.IP.String(), "apn": r.dev.APN, "cell": cell, "lat": lat, "lon": lon, "accuracy_m": float64(2000),
		"bytes_up": up, "bytes_down": down,
	})
}

func (r *gwRig) flowEv(at time.Duration, src, dst string, dport int, bytes float64) *event.Event {
	return r.ev(at, event.NetFlow, map[string]any{
		"src_ip": src, "src_port": float64(40001), "dst_ip": dst, "dst_port": float64(dport), "proto": float64(6),
		"bytes": bytes, "packets": float64(3), "direction": "out",
	})
}

func byKind(evs []*event.Event, k event.Kind) []*event.Event {
	var out []*event.Event
	for _, e := range evs {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// A simulated data session becomes, through the RADIUS accounting server,
// the net.session events (and network locations) the simulator describes:
// same device, status, identities, cell position and octet deltas, large
// counters included (gigawords); a session from a foreign handset raises
// the SIM-swap alert.
func TestGatewaySessionThroughAccounting(t *testing.T) {
	r := newGWRig(t)
	// Southern and western hemisphere: negative grid indexes.
	const cell = "214-01--1730--2919"
	lat, lon := -34.59, -58.37
	in := []*event.Event{
		r.session(0, "start", "0000001100001", r.dev.IMEI, cell, lat, lon, 0, 0),
		r.session(20*time.Minute, "interim", "0000001100001", r.dev.IMEI, cell, lat, lon, 5_000_000_000, 1200),
		r.session(40*time.Minute, "interim", "0000001100001", r.dev.IMEI, cell, lat, lon, 3100, 820),
		r.session(50*time.Minute, "stop", "0000001100001", r.dev.IMEI, cell, lat, lon, 10, 0),
	}
	r.publish(t, in...)
	got := r.settle(t)
	sess := byKind(got, event.NetSession)
	if len(sess) != len(in) {
		t.Fatalf("%d net.session events, want %d: %v", len(sess), len(in), sess)
	}
	for i, e := range sess {
		want := in[i]
		if e.Source != "radius" || e.Device != r.dev.ID || e.Tenant != r.p.Tenant || !e.Time.Equal(want.Time) {
			t.Errorf("event %d: source %s device %s tenant %s time %s; want radius %s %s %s", i, e.Source, e.Device, e.Tenant, e.Time, r.dev.ID, r.p.Tenant, want.Time)
		}
		for _, k := range []string{"status", "session_id", "imsi", "imei", "ip", "apn"} {
			if e.Str(k) != want.Str(k) {
				t.Errorf("event %d %s = %q, want %q", i, k, e.Str(k), want.Str(k))
			}
		}
		for _, k := range []string{"lat", "lon", "accuracy_m", "bytes_up", "bytes_down"} {
			g, _ := e.Float(k)
			w, _ := want.Float(k)
			if g != w {
				t.Errorf("event %d %s = %v, want %v", i, k, g, w)
			}
		}
		// The cell is named as the network names it: TAI+ECGI.
		if c := e.Str("cell"); len(c) != len("214-01-0x0000-0x00000000") || c[:7] != "214-01-" {
			t.Errorf("event %d cell %q not a TAI+ECGI", i, c)
		}
		if e.Str("imeisv") != r.dev.IMEI[:14]+"01" || e.Str("plmn") != "214-01" || e.Str("rat") != "eutran" {
			t.Errorf("event %d imeisv %q plmn %q rat %q", i, e.Str("imeisv"), e.Str("plmn"), e.Str("rat"))
		}
	}
	locs := byKind(got, event.Location)
	if len(locs) != len(in) {
		t.Fatalf("%d location events, want one per record", len(locs))
	}
	for _, l := range locs {
		if la, _ := l.Float("lat"); la != lat || l.Str("source") != "network" || l.Device != r.dev.ID {
			t.Errorf("location %v", l.Attrs)
		}
	}

	// The SIM moves to another handset nearby: sim.imei_mismatch.
	r.publish(t, r.session(3*time.Hour, "start", "00000011ff01", "356938035643809", "214-01--1731--2919", -34.61, -58.37, 0, 0))
	r.settle(t)
	var alerts []alert.Alert
	err := r.p.Store.View(context.Background(), func(tx store.Tx) error {
		var err error
		alerts, err = tx.Alerts().List(context.Background(), r.p.Tenant, store.AlertFilter{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].Kind != alert.SIMIMEIMismatch || alerts[0].Device != r.dev.ID {
		t.Fatalf("alerts %+v, want one sim.imei_mismatch on %s", alerts, r.dev.ID)
	}
}

// Simulated flows become, through IPFIX and the collector, the same net.flow
// events, several records per message; a flow of an address no session
// holds is not attributed to anyone.
func TestGatewayFlowsThroughCollector(t *testing.T) {
	r := newGWRig(t)
	cell := "214-01-2020--186"
	r.publish(t, r.session(0, "start", "0000001100001", r.dev.IMEI, cell, 40.41, -3.71, 0, 0))
	var in []*event.Event
	for i := range 2*gwFlowBatch + 5 {
		in = append(in, r.flowEv(time.Minute+time.Duration(i)*time.Second+123*time.Millisecond, r.dev.IP.String(), fmt.Sprintf("100.64.%d.%d", i/200, 1+i%200), 23, float64(60+i)))
	}
	r.publish(t, in...)
	r.publish(t, r.flowEv(3*time.Minute, "10.99.0.1", "198.51.100.7", 443, 999))
	got := byKind(r.settle(t), event.NetFlow)
	if len(got) != len(in) {
		t.Fatalf("%d net.flow events, want %d", len(got), len(in))
	}
	for i, e := range got {
		want := in[i]
		if e.Source != "flows" || e.Device != r.dev.ID || !e.Time.Equal(want.Time.Truncate(time.Millisecond)) {
			t.Errorf("flow %d: source %s device %s time %s, want flows %s %s", i, e.Source, e.Device, e.Time, r.dev.ID, want.Time)
		}
		for _, k := range []string{"src_ip", "dst_ip", "direction"} {
			if e.Str(k) != want.Str(k) {
				t.Errorf("flow %d %s = %q, want %q", i, k, e.Str(k), want.Str(k))
			}
		}
		for _, k := range []string{"src_port", "dst_port", "proto", "bytes", "packets"} {
			g, _ := e.Float(k)
			w, _ := want.Float(k)
			if g != w {
				t.Errorf("flow %d %s = %v, want %v", i, k, g, w)
			}
		}
	}
	st := r.gw.col.Stats()
	if st.Decoder.Messages != 3 || st.Decoder.Records != uint64(len(in)+1) || st.Unmapped != 1 || st.Decoder.NoTemplate != 0 {
		t.Errorf("collector stats %+v: want 3 messages, %d records, 1 unmapped", st, len(in)+1)
	}
}

// A pending flow is sent before any later event of its device, so the
// gateway never reorders a device's events.
func TestGatewayKeepsDeviceOrder(t *testing.T) {
	r := newGWRig(t)
	r.publish(t, r.session(0, "start", "0000001100001", r.dev.IMEI, "214-01-2020--186", 40.41, -3.71, 0, 0))
	r.publish(t, r.flowEv(time.Minute, r.dev.IP.String(), "198.51.100.7", 443, 999))
	other := r.ev(time.Minute+time.Second, event.MQTTPublish, map[string]any{"topic_class": "telemetry", "bytes": float64(10), "qos": float64(1)})
	other.Device = "meter-0018"
	r.publish(t, other)
	if r.gw.npending != 1 {
		t.Fatalf("another device's event flushed the flow (pending %d)", r.gw.npending)
	}
	r.publish(t, r.session(time.Minute+30*time.Second, "stop", "0000001100001", r.dev.IMEI, "214-01-2020--186", 40.41, -3.71, 999, 10))
	if r.gw.npending != 0 {
		t.Fatal("the device's session stop overtook its pending flow")
	}
	// The stop released the lease after the flow was mapped.
	if n := len(byKind(r.settle(t), event.NetFlow)); n != 1 {
		t.Fatalf("%d flows published, want 1", n)
	}
}

func TestGatewayCellIDs(t *testing.T) {
	g := &apnGateway{cells: radius.NewCells(), known: map[string]bool{}}
	at := map[string]any{"lat": 1.0, "lon": 2.0, "accuracy_m": 2000.0}
	seen := map[string]string{}
	for _, id := range []string{"214-01-2020--186", "214-01--2020-186", "214-01--1--1", "214-01-0-0", "214-01-4500-9000", "214-01--4500--9000", "310-260-1-1"} {
		uli, _, err := g.cell(&event.Event{Attrs: at}, id)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		u, err := radius.ParseULI(uli)
		if err != nil {
			t.Errorf("%s: ULI does not parse: %v", id, err)
			continue
		}
		if prev, dup := seen[u.String()]; dup {
			t.Errorf("%s and %s both map to %s", prev, id, u)
		}
		seen[u.String()] = id
		if _, ok := g.cells.LookupULI(u); !ok {
			t.Errorf("%s: not registered", id)
		}
	}
	for _, bad := range []string{"", "214-01", "214-01-3", "214-01-x-1", "214-01-1-x", "21-01-1-1", "214-01-4501-0", "214-01-0--9001", "214-1-1-1"} {
		if _, _, err := g.cell(&event.Event{Attrs: at}, bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
