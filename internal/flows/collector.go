package flows

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

// Publisher takes the net.flow events (the bus).
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// Devices maps an address in a tenant's APN to the device holding it
// (radius.Leases implements it from the sessions' Framed-IP-Address).
type Devices interface {
	DeviceByIP(ctx context.Context, tenant event.TenantID, ip netip.Addr) (event.DeviceID, bool)
}

// Exporter is a flow exporter allowed to send records: datagrams from an
// address in Prefix belong to Tenant.
type Exporter struct {
	Name   string
	Tenant event.TenantID
	Prefix netip.Prefix
}

// Options configures a [Collector]. Publisher, Devices and at least one
// Exporter are required.
type Options struct {
	IPFIXAddr   string // default :4739
	NetFlowAddr string // default :2055
	Exporters   []Exporter
	Publisher   Publisher
	Devices     Devices
	Clock       clock.Clock
	Logger      *slog.Logger
	// MaxTemplates bounds the template cache (DefaultMaxTemplates if 0).
	MaxTemplates int
}

// CollectorStats are the collector's counters; decoding counters are in
// [Decoder.Stats].
type CollectorStats struct {
	Published       uint64
	Unmapped        uint64 // neither address is a known device's
	UnknownExporter uint64 // datagrams from an address no Exporter covers
	PublishErrors   uint64
	Decoder         Stats
}

// Collector receives IPFIX and NetFlow v9 datagrams, maps each flow to a
// device by its source address (else its destination) and publishes one
// net.flow event per mapped flow. Its methods are safe for concurrent use.
type Collector struct {
	o         Options
	dec       *Decoder
	clk       clock.Clock
	log       *slog.Logger
	published atomic.Uint64
	unmapped  atomic.Uint64
	unknown   atomic.Uint64
	pubErr    atomic.Uint64
}

// ErrConfig reports invalid options.
var ErrConfig = errors.New("flows: invalid options")

// New validates o and returns a collector. It does not listen.
func New(o Options) (*Collector, error) {
	var errs []error
	if o.Publisher == nil {
		errs = append(errs, errors.New("publisher missing"))
	}
	if o.Devices == nil {
		errs = append(errs, errors.New("devices missing"))
	}
	for i, e := range o.Exporters {
		if e.Tenant == "" || !e.Prefix.IsValid() {
			errs = append(errs, fmt.Errorf("exporter %d (%s): tenant and prefix required", i, e.Name))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	if o.IPFIXAddr == "" {
		o.IPFIXAddr = ":4739"
	}
	if o.NetFlowAddr == "" {
		o.NetFlowAddr = ":2055"
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{o: o, dec: &Decoder{MaxTemplates: o.MaxTemplates, Clock: o.Clock}, clk: o.Clock, log: o.Logger}, nil
}

// Stats returns a copy of the counters.
func (c *Collector) Stats() CollectorStats {
	return CollectorStats{
		Published: c.published.Load(), Unmapped: c.unmapped.Load(),
		UnknownExporter: c.unknown.Load(), PublishErrors: c.pubErr.Load(),
		Decoder: c.dec.Stats(),
	}
}

func (c *Collector) tenant(a netip.Addr) (event.TenantID, bool) {
	a = a.Unmap()
	for _, e := range c.o.Exporters {
		if e.Prefix.Contains(a) {
			return e.Tenant, true
		}
	}
	return "", false
}

// ListenAndServe listens on IPFIXAddr and NetFlowAddr and serves both until
// ctx is done.
func (c *Collector) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	a, err := lc.ListenPacket(ctx, "udp", c.o.IPFIXAddr)
	if err != nil {
		return fmt.Errorf("flows: listen ipfix: %w", err)
	}
	b, err := lc.ListenPacket(ctx, "udp", c.o.NetFlowAddr)
	if err != nil {
		a.Close()
		return fmt.Errorf("flows: listen netflow: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- c.Serve(ctx, a) }()
	go func() { errc <- c.Serve(ctx, b) }()
	return errors.Join(<-errc, <-errc)
}

// Serve reads datagrams (IPFIX or NetFlow v9, told apart by version) from
// conn until ctx is done, then closes conn and returns nil.
func (c *Collector) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	buf := make([]byte, 65535)
	for {
		n, a, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("flows: read: %w", err)
		}
		ua, ok := a.(*net.UDPAddr)
		if !ok {
			continue
		}
		_ = c.Handle(ctx, ua.AddrPort(), buf[:n])
	}
}

// Handle decodes one datagram from src and publishes its flows. It returns
// the decoding error, if any (already counted).
func (c *Collector) Handle(ctx context.Context, src netip.AddrPort, b []byte) error {
	tenant, ok := c.tenant(src.Addr())
	if !ok {
		c.unknown.Add(1)
		c.log.Debug("flows: unknown exporter", "remote", src.String())
		return nil
	}
	now := c.clk.Now()
	// Decode under the decoder's lock, publish outside it.
	recs := make([]Record, 0, 32)
	err := c.dec.Decode(src, b, func(r *Record) { recs = append(recs, *r) })
	if err != nil {
		c.log.Debug("flows: malformed message", "remote", src.String(), "err", err)
	}
	exporter := src.Addr().Unmap().String()
	for i := range recs {
		c.publish(ctx, tenant, exporter, now, &recs[i])
	}
	return err
}

func (c *Collector) publish(ctx context.Context, tenant event.TenantID, exporter string, now time.Time, r *Record) {
	dev, ok := c.o.Devices.DeviceByIP(ctx, tenant, r.SrcIP)
	src, dst, sport, dport, dir := r.SrcIP, r.DstIP, r.SrcPort, r.DstPort, "out"
	if !ok {
		// A flow towards the device: report it from the device's side.
		if dev, ok = c.o.Devices.DeviceByIP(ctx, tenant, r.DstIP); !ok {
			c.unmapped.Add(1)
			return
		}
		src, dst, sport, dport, dir = dst, src, dport, sport, "in"
	}
	// The flow's end is the event time unless the exporter's clock is
	// implausible (more than a day away from ours).
	t := r.End
	if t.IsZero() || t.Sub(now) > 24*time.Hour || now.Sub(t) > 24*time.Hour {
		t = now
	}
	e := &event.Event{
		ID: event.NewID(now), Tenant: tenant, Device: dev, Kind: event.NetFlow,
		Time: t, Source: "flows", Attrs: make(map[string]any, 12),
	}
	a := e.Attrs
	a["src_ip"], a["src_port"], a["dst_ip"], a["dst_port"] = src.String(), float64(sport), dst.String(), float64(dport)
	a["proto"], a["bytes"], a["packets"] = float64(r.Proto), float64(r.Octets), float64(r.Packets)
	a["exporter"], a["direction"] = exporter, dir
	if !r.Start.IsZero() {
		a["start_ms"] = float64(r.Start.UnixMilli())
	}
	if !r.End.IsZero() {
		a["end_ms"] = float64(r.End.UnixMilli())
	}
	if err := c.o.Publisher.Publish(ctx, e); err != nil {
		c.pubErr.Add(1)
		c.log.Warn("flows: publish", "tenant", string(tenant), "device", string(dev), "err", err)
		return
	}
	c.published.Add(1)
}
