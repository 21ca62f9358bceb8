package platform

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/flows"
	"github.com/garrisonhq/garrison/internal/radius"
	lr "layeh.com/radius"
	"layeh.com/radius/rfc2865"
	"layeh.com/radius/rfc2866"
	"layeh.com/radius/rfc2869"
)

// apnGateway is the simulated fleet's side of the private APN: the packet
// gateway that reports data sessions by RADIUS accounting (RFC 2866 with
// the 3GPP attributes of TS 29.061) and the router that exports flow
// records by IPFIX (RFC 7011). It turns the simulator's net.session and
// net.flow events into the datagrams those boxes send and hands them to a
// RADIUS accounting server and a flow collector at their packet entry
// points ([radius.Server.HandleAccounting], [flows.Collector.Handle]): the
// same code that parses, maps and publishes real traffic, minus the UDP
// socket. What comes out on the bus is what those components make of the
// packets, not the simulator's events.
//
// Flow records are batched (up to [gwFlowBatch] per IPFIX message, as an
// exporter fills a datagram) without reordering a device's events: the
// pending message is sent before any other event of a device that has a
// record in it, when it is full, when it holds records older than
// [gwFlowHold] of simulated time, and before a revocation or the drain.
//
// The gateway is driven by one goroutine (the scenario run) and is not
// safe for concurrent use.
type apnGateway struct {
	acct   *radius.Server
	col    *flows.Collector
	cells  *radius.Cells
	secret []byte
	clk    clock.Clock
	log    *slog.Logger

	id       byte                   // RADIUS identifier of the next request
	known    map[string]bool        // cells registered in the table
	counters map[string]*gwCounters // cumulative octets per live session

	seq       uint32 // IPFIX sequence number: data records sent so far
	pending   []byte // data records of the message being filled
	npending  int
	oldest    time.Time
	devs      map[event.DeviceID]bool // devices with a record pending
	templated time.Time               // last template sent (zero: never)
	msg       []byte
}

type gwCounters struct{ in, out uint64 }

// Addresses of the simulated gateway and exporter: outside the fleet's
// 10.64.0.0/10 and the simulator's documentation ranges.
var (
	gwNAS      = netip.MustParseAddrPort("10.255.255.1:49152")
	gwExporter = netip.MustParseAddrPort("10.255.255.2:49153")
)

const (
	gwFlowBatch = 30 // IPv4 records of 45 bytes: a message under 1400 bytes
	gwFlowHold  = time.Minute
	// gwTemplateEvery is how often the templates are sent again (RFC 7011
	// 8.4: UDP exporters resend them periodically).
	gwTemplateEvery = 10 * time.Minute
	gwDomain        = 1
	gwTemplate4     = 256
)

// gwPublisher takes what the accounting server and the collector publish
// (radius.Publisher and flows.Publisher alike).
type gwPublisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// busAsync publishes without waiting for each acknowledgement, as the
// simulator always did; Drain flushes the bus before scoring.
type busAsync struct{ b *bus.Bus }

func (p busAsync) Publish(ctx context.Context, e *event.Event) error { return p.b.PublishAsync(ctx, e) }

// directorySIMs resolves SIMs through the detection directory: the
// registry's SIM bindings of the registered fleet, kept in memory (serve
// reads them from the store with connectivity.StoreSIMs; one store read per
// accounting record would cost a long scenario more than the rest of the
// accounting path together).
type directorySIMs struct{ dir Directory }

var _ radius.SIMs = directorySIMs{}

func (d directorySIMs) ByIMSI(_ context.Context, t event.TenantID, imsi string) (event.DeviceID, string, string, bool, error) {
	p, ok := d.dir.ByIMSI(t, imsi)
	return p.ID, p.IMEI, p.State, ok, nil
}

// newAPNGateway builds the accounting server and the flow collector of
// tenant on the platform's publisher, SIM bindings and clock, sharing one
// Framed-IP lease map as serve does, and the gateway that feeds them.
func newAPNGateway(pub gwPublisher, sims radius.SIMs, clk clock.Clock, tenant event.TenantID, log *slog.Logger) (*apnGateway, error) {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("gateway: secret: %w", err)
	}
	g := &apnGateway{
		cells: radius.NewCells(), secret: secret, clk: clk, log: log,
		known: map[string]bool{}, counters: map[string]*gwCounters{}, devs: map[event.DeviceID]bool{},
	}
	leases := radius.NewLeases()
	var err error
	g.acct, err = radius.New(radius.Options{
		Clients:   []radius.Client{{Name: "sim-pgw", Tenant: tenant, Prefix: netip.PrefixFrom(gwNAS.Addr(), 32), Secret: secret}},
		Publisher: pub, SIMs: sims, Cells: g.cells, Leases: leases,
		// The gateway never retransmits and every request differs (an
		// Event-Timestamp, a new identifier), so the window only sets how
		// often the server sweeps its tables: on simulated time, 30 s would
		// sweep several times per simulated minute.
		DuplicateWindow: 10 * time.Minute,
		Clock:           clk, Logger: log.With("component", "radius"),
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.col, err = flows.New(flows.Options{
		Exporters: []flows.Exporter{{Name: "sim-router", Tenant: tenant, Prefix: netip.PrefixFrom(gwExporter.Addr(), 32)}},
		Publisher: pub, Devices: leases, Clock: clk, Logger: log.With("component", "flows"),
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return g, nil
}

// handles reports whether ev enters through the gateway.
func (g *apnGateway) handles(k event.Kind) bool { return k == event.NetSession || k == event.NetFlow }

// Publish sends a net.session through RADIUS accounting or a net.flow
// through the collector.
func (g *apnGateway) Publish(ctx context.Context, ev *event.Event) error {
	switch ev.Kind {
	case event.NetFlow:
		return g.flow(ctx, ev)
	case event.NetSession:
		if err := g.Before(ctx, ev); err != nil {
			return err
		}
		return g.session(ctx, ev)
	}
	return fmt.Errorf("gateway: %s events do not travel through the APN", ev.Kind)
}

// Before sends the pending flow records if ev must not overtake them (same
// device) or they have waited long enough. Call it before publishing any
// event that does not go through the gateway.
func (g *apnGateway) Before(ctx context.Context, ev *event.Event) error {
	if g.npending == 0 {
		return nil
	}
	if g.devs[ev.Device] || ev.Time.Sub(g.oldest) >= gwFlowHold {
		return g.Flush(ctx)
	}
	return nil
}

// ---- sessions: RADIUS accounting ----

func (g *apnGateway) session(ctx context.Context, ev *event.Event) error {
	p, err := g.accountingRequest(ev)
	if err != nil {
		return fmt.Errorf("gateway: session %s of %s: %w", ev.Str("session_id"), ev.Device, err)
	}
	if resp := g.acct.HandleAccounting(ctx, gwNAS, p); resp == nil {
		return fmt.Errorf("gateway: session %s of %s: accounting server did not answer (dropped: %v)", ev.Str("session_id"), ev.Device, g.acct.Stats().Dropped)
	}
	return nil
}

// accountingRequest encodes ev as an Accounting-Request: Start, Interim-
// Update or Stop with the session's cumulative octet counters (the
// simulator's bytes_up/bytes_down are deltas), the SIM's IMSI, the
// terminal's IMEISV and the serving cell as User-Location-Info (TAI+ECGI),
// registering the cell in the server's cell table on first use.
func (g *apnGateway) accountingRequest(ev *event.Event) ([]byte, error) {
	var status rfc2866.AcctStatusType
	switch ev.Str("status") {
	case "start":
		status = rfc2866.AcctStatusType_Value_Start
	case "interim":
		status = rfc2866.AcctStatusType_Value_InterimUpdate
	case "stop":
		status = rfc2866.AcctStatusType_Value_Stop
	default:
		return nil, fmt.Errorf("status %q not start, interim or stop", ev.Str("status"))
	}
	sid := ev.Str("session_id")
	if sid == "" {
		return nil, errors.New("session_id missing")
	}
	imsi := ev.Str("imsi")
	if len(imsi) < 6 || len(imsi) > 15 {
		return nil, fmt.Errorf("imsi %q not 6 to 15 digits", imsi)
	}
	c := g.counters[sid]
	if c == nil || status == rfc2866.AcctStatusType_Value_Start {
		c = &gwCounters{}
		g.counters[sid] = c
	}
	up, _ := ev.Float("bytes_up")
	down, _ := ev.Float("bytes_down")
	c.in += uint64(math.Max(0, up))
	c.out += uint64(math.Max(0, down))
	if status == rfc2866.AcctStatusType_Value_Stop {
		delete(g.counters, sid)
	}

	p := lr.New(lr.CodeAccountingRequest, g.secret)
	p.Identifier = g.id
	g.id++
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	add(rfc2866.AcctStatusType_Set(p, status))
	add(rfc2866.AcctSessionID_SetString(p, sid))
	add(rfc2865.UserName_SetString(p, imsi))
	add(rfc2865.NASIPAddress_Set(p, net.IP(gwNAS.Addr().AsSlice())))
	add(rfc2865.NASIdentifier_SetString(p, "sim-pgw"))
	if apn := ev.Str("apn"); apn != "" {
		add(rfc2865.CalledStationID_SetString(p, apn))
	}
	if s := ev.Str("ip"); s != "" {
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("ip %q not an IPv4 address", s)
		}
		add(rfc2865.FramedIPAddress_Set(p, net.IP(ip.AsSlice())))
	}
	add(rfc2866.AcctInputOctets_Set(p, rfc2866.AcctInputOctets(uint32(c.in))))
	add(rfc2866.AcctOutputOctets_Set(p, rfc2866.AcctOutputOctets(uint32(c.out))))
	add(rfc2869.AcctInputGigawords_Set(p, rfc2869.AcctInputGigawords(uint32(c.in>>32))))
	add(rfc2869.AcctOutputGigawords_Set(p, rfc2869.AcctOutputGigawords(uint32(c.out>>32))))
	add(rfc2869.EventTimestamp_Set(p, ev.Time))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	vsa := func(typ byte, v []byte) error {
		a, err := lr.NewVendorSpecific(radius.Vendor3GPP, append([]byte{typ, byte(2 + len(v))}, v...))
		if err == nil {
			p.Add(rfc2865.VendorSpecific_Type, a)
		}
		return err
	}
	add(vsa(radius.Attr3GPPIMSI, []byte(imsi)))
	add(vsa(radius.Attr3GPPIMSIMCCMNC, []byte(imsi[:5])))
	if imei := ev.Str("imei"); imei != "" {
		if len(imei) < 14 || !allDigits(imei) {
			return nil, fmt.Errorf("imei %q not 14 or 15 digits", imei)
		}
		// IMEISV: the 14 digits of the IMEI and a software version number.
		add(vsa(radius.Attr3GPPIMEISV, []byte(imei[:14]+"01")))
	}
	add(vsa(radius.Attr3GPPRATType, []byte{6})) // EUTRAN
	if cell := ev.Str("cell"); cell != "" {
		uli, plmn, err := g.cell(ev, cell)
		if err != nil {
			return nil, err
		}
		add(vsa(radius.Attr3GPPSGSNMCCMNC, []byte(plmn)))
		add(vsa(radius.Attr3GPPUserLocationInfo, uli))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p.Encode()
}

func allDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// cell maps a simulator cell id, MCC-MNC-LAT-LON with LAT and LON the
// (possibly negative) indexes of a 0.02-degree grid, to a TAI+ECGI User-
// Location-Info: the ECI numbers the grid square (28 bits hold the whole
// globe), the TAC the 1-degree square around it. The cell is registered in
// the server's table at the position the event gives on first use. It
// returns the ULI and the serving PLMN as MCCMNC.
func (g *apnGateway) cell(ev *event.Event, id string) (uli []byte, plmn string, err error) {
	mcc, rest, ok1 := strings.Cut(id, "-")
	mnc, grid, ok2 := strings.Cut(rest, "-")
	sep := -1
	if len(grid) > 1 {
		sep = strings.IndexByte(grid[1:], '-') + 1 // the latitude index may be negative
	}
	if !ok1 || !ok2 || sep <= 0 || len(mcc) != 3 || (len(mnc) != 2 && len(mnc) != 3) || !allDigits(mcc) || !allDigits(mnc) {
		return nil, "", fmt.Errorf("cell %q not MCC-MNC-LAT-LON", id)
	}
	la, err1 := strconv.Atoi(grid[:sep])
	lo, err2 := strconv.Atoi(grid[sep+1:])
	if err1 != nil || err2 != nil || la < -4500 || la > 4500 || lo < -9000 || lo > 9000 {
		return nil, "", fmt.Errorf("cell %q: grid index out of range", id)
	}
	y, x := uint32(la+4500), uint32(lo+9000) // 0..9000, 0..18000
	eci := y*18001 + x                       // < 9001*18001 < 2^28
	tac := uint16(y/50*361 + x/50)           // < 181*361 < 2^16
	if !g.known[id] {
		lat, ok1 := ev.Float("lat")
		lon, ok2 := ev.Float("lon")
		acc, _ := ev.Float("accuracy_m")
		if !ok1 || !ok2 {
			return nil, "", fmt.Errorf("cell %q: first seen without lat and lon", id)
		}
		m, _ := strconv.ParseUint(mcc, 10, 16)
		n, _ := strconv.ParseUint(mnc, 10, 16)
		g.cells.Put("LTE", uint16(m), uint16(n), uint32(tac), uint64(eci), radius.Cell{Lat: lat, Lon: lon, RangeM: acc})
		g.known[id] = true
	}
	pl := encodePLMN(mcc, mnc)
	uli = make([]byte, 0, 13)
	uli = append(uli, radius.LocTAIECGI)
	uli = append(uli, pl[:]...)
	uli = binary.BigEndian.AppendUint16(uli, tac)
	uli = append(uli, pl[:]...)
	uli = binary.BigEndian.AppendUint32(uli, eci)
	return uli, mcc + mnc, nil
}

// encodePLMN encodes MCC and MNC (digits checked) in the 3 octets of TS
// 24.008 figure 10.5.13.
func encodePLMN(mcc, mnc string) [3]byte {
	d := func(s string, i int) byte { return s[i] - '0' }
	mnc3 := byte(0x0f)
	if len(mnc) == 3 {
		mnc3 = d(mnc, 2)
	}
	return [3]byte{d(mcc, 1)<<4 | d(mcc, 0), mnc3<<4 | d(mcc, 2), d(mnc, 1)<<4 | d(mnc, 0)}
}

// ---- flows: IPFIX ----

// ipfixFields4 is the IPv4 template: sourceIPv4Address, destinationIPv4Address,
// sourceTransportPort, destinationTransportPort, protocolIdentifier,
// octetDeltaCount, packetDeltaCount, flowStartMilliseconds,
// flowEndMilliseconds.
var ipfixFields4 = [...][2]uint16{{8, 4}, {12, 4}, {7, 2}, {11, 2}, {4, 1}, {1, 8}, {2, 8}, {152, 8}, {153, 8}}

func (g *apnGateway) flow(ctx context.Context, ev *event.Event) error {
	if g.npending > 0 && ev.Time.Sub(g.oldest) >= gwFlowHold {
		if err := g.Flush(ctx); err != nil {
			return err
		}
	}
	rec, err := appendFlowRecord(g.pending, ev)
	if err != nil {
		return fmt.Errorf("gateway: flow %s of %s: %w", ev.ID, ev.Device, err)
	}
	if g.npending == 0 {
		g.oldest = ev.Time
	}
	g.pending = rec
	g.npending++
	g.devs[ev.Device] = true
	if g.npending >= gwFlowBatch {
		return g.Flush(ctx)
	}
	return nil
}

// appendFlowRecord appends ev as a record of the IPv4 template; the flow
// ends (and, for the simulator, starts) at the event time.
func appendFlowRecord(b []byte, ev *event.Event) ([]byte, error) {
	src, err1 := netip.ParseAddr(ev.Str("src_ip"))
	dst, err2 := netip.ParseAddr(ev.Str("dst_ip"))
	if err1 != nil || err2 != nil || !src.Is4() || !dst.Is4() {
		return nil, fmt.Errorf("src_ip %q or dst_ip %q not an IPv4 address", ev.Str("src_ip"), ev.Str("dst_ip"))
	}
	num := func(k string, max float64) (float64, error) {
		v, ok := ev.Float(k)
		if !ok || v < 0 || v > max || math.IsNaN(v) {
			return 0, fmt.Errorf("%s %v not a number in [0, %g]", k, ev.Attrs[k], max)
		}
		return v, nil
	}
	sport, err1 := num("src_port", 65535)
	dport, err2 := num("dst_port", 65535)
	proto, err3 := num("proto", 255)
	octets, err4 := num("bytes", 1<<53)
	packets, err5 := num("packets", 1<<53)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, err
	}
	ms := uint64(ev.Time.UnixMilli())
	s4, d4 := src.As4(), dst.As4()
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(sport))
	b = binary.BigEndian.AppendUint16(b, uint16(dport))
	b = append(b, byte(proto))
	b = binary.BigEndian.AppendUint64(b, uint64(octets))
	b = binary.BigEndian.AppendUint64(b, uint64(packets))
	b = binary.BigEndian.AppendUint64(b, ms)
	b = binary.BigEndian.AppendUint64(b, ms)
	return b, nil
}

// Flush sends the pending flow records as one IPFIX message (with the
// template when it is due) to the collector.
func (g *apnGateway) Flush(ctx context.Context) error {
	if g.npending == 0 {
		return nil
	}
	now := g.clk.Now()
	m := g.msg[:0]
	m = binary.BigEndian.AppendUint16(m, 10)
	m = binary.BigEndian.AppendUint16(m, 0) // length, below
	m = binary.BigEndian.AppendUint32(m, uint32(now.Unix()))
	m = binary.BigEndian.AppendUint32(m, g.seq)
	m = binary.BigEndian.AppendUint32(m, gwDomain)
	if g.templated.IsZero() || now.Sub(g.templated) >= gwTemplateEvery {
		m = binary.BigEndian.AppendUint16(m, 2) // template set
		m = binary.BigEndian.AppendUint16(m, uint16(4+4+4*len(ipfixFields4)))
		m = binary.BigEndian.AppendUint16(m, gwTemplate4)
		m = binary.BigEndian.AppendUint16(m, uint16(len(ipfixFields4)))
		for _, f := range ipfixFields4 {
			m = binary.BigEndian.AppendUint16(m, f[0])
			m = binary.BigEndian.AppendUint16(m, f[1])
		}
		g.templated = now
	}
	m = binary.BigEndian.AppendUint16(m, gwTemplate4)
	m = binary.BigEndian.AppendUint16(m, uint16(4+len(g.pending)))
	m = append(m, g.pending...)
	binary.BigEndian.PutUint16(m[2:], uint16(len(m)))
	g.msg = m
	g.seq += uint32(g.npending)
	n := g.npending
	g.pending, g.npending = g.pending[:0], 0
	clear(g.devs)
	if err := g.col.Handle(ctx, gwExporter, m); err != nil {
		return fmt.Errorf("gateway: ipfix message of %d records: %w", n, err)
	}
	return nil
}

// logStats logs what the gateway's RADIUS server and collector did.
func (g *apnGateway) logStats() {
	r, f := g.acct.Stats(), g.col.Stats()
	g.log.Info("simulated APN", "accounting", r.Accounting, "radius_dropped", r.Dropped,
		"flows_published", f.Published, "flows_unmapped", f.Unmapped, "ipfix_messages", f.Decoder.Messages,
		"flow_records", f.Decoder.Records, "cells", g.cells.Len())
}
