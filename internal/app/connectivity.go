package app

import (
	"context"
	"fmt"
	"net"

	"github.com/garrisonhq/garrison/internal/connectivity"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/flows"
	"github.com/garrisonhq/garrison/internal/radius"
)

// connectivityPlane is what startConnectivity builds: the network-side
// listeners (when enabled) and what the API and response use of them.
type connectivityPlane struct {
	cells    *connectivity.CellTable
	leases   *radius.Leases
	ingester *connectivity.Ingester
	radius   *radius.Server   // nil when radius.enabled is false
	flows    *flows.Collector // nil when flows.enabled is false
	disc     *connectivity.Disconnector
	sims     *connectivity.SIMControl
	acct     net.Addr
	auth     net.Addr
	ipfix    net.Addr
	netflow  net.Addr
}

// startConnectivity builds the cell table (store-backed, cached), the
// Framed-IP lease map, the webhook ingester and the providers' SIM
// back-end, then, when enabled, binds and serves RADIUS accounting and
// authentication and the IPFIX and NetFlow v9 collector. Their events
// (net.session, location, net.flow) go to the bus for the device bound to
// the SIM in the registry; flows map to devices through the sessions'
// Framed-IP leases. Listening happens here, so a port in use fails Start.
func (a *App) startConnectivity(ctx context.Context) error {
	c := &a.conn
	log := a.log.With("component", "connectivity")
	sims := connectivity.StoreSIMs{Store: a.store}
	c.cells = connectivity.NewCellTable(a.store, a.clk, log, a.cfg.Cells.CacheTTL, 0)
	c.leases = radius.NewLeases()
	c.ingester = &connectivity.Ingester{SIMs: sims, Publisher: a.bus, Leases: c.leases, Cells: c.cells, Clock: a.clk}
	prov, err := connectivity.LoadPeers(a.cfg.Provider.File)
	if err != nil {
		return err
	}
	providers, err := prov.HTTPProviders()
	if err != nil {
		return err
	}
	c.sims = &connectivity.SIMControl{Store: a.store, Providers: providers}

	runCtx, cancel := context.WithCancel(context.Background())
	a.onStop("connectivity listeners", func(context.Context) error { cancel(); return nil })
	var lc net.ListenConfig
	listen := func(addr string) (net.PacketConn, error) {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, err
		}
		// Cancel first, so the readers take the closed socket as a stop.
		a.onStop("udp "+addr, func(context.Context) error { cancel(); pc.Close(); return nil })
		return pc, nil
	}

	if a.cfg.Radius.Enabled {
		peers, err := connectivity.LoadPeers(a.cfg.Radius.ClientsFile)
		if err != nil {
			return err
		}
		if len(peers.NASClients) == 0 {
			log.Warn("radius enabled without nas_clients: every request is dropped", "clients_file", a.cfg.Radius.ClientsFile)
		}
		srv, err := radius.New(radius.Options{
			Clients: peers.RADIUSClients(), Mode: radius.Mode(a.cfg.Radius.Mode),
			RequireMessageAuthenticator: a.cfg.Radius.RequireMessageAuthenticator,
			// Answers wait for the bus's acknowledgement: many readers keep
			// many publishes in flight.
			Workers:   32,
			Publisher: a.bus, SIMs: sims, Cells: c.cells, Leases: c.leases, Clock: a.clk,
			Logger: a.log.With("component", "radius"),
		})
		if err != nil {
			return err
		}
		acct, err := listen(a.cfg.Radius.AcctAddr)
		if err != nil {
			return fmt.Errorf("radius accounting: %w", err)
		}
		auth, err := listen(a.cfg.Radius.AuthAddr)
		if err != nil {
			return fmt.Errorf("radius authentication: %w", err)
		}
		c.radius, c.acct, c.auth = srv, acct.LocalAddr(), auth.LocalAddr()
		c.disc = &connectivity.Disconnector{Sessions: srv, Gateways: peers, Logger: log}
		a.goroutine("radius accounting", func() error { return srv.ServeAccounting(runCtx, acct) })
		a.goroutine("radius authentication", func() error { return srv.ServeAuth(runCtx, auth) })
		log.Info("radius listening", "acct", c.acct.String(), "auth", c.auth.String(), "mode", a.cfg.Radius.Mode, "clients", len(peers.NASClients))
	}

	if a.cfg.Flows.Enabled {
		peers, err := connectivity.LoadPeers(a.cfg.Flows.ExportersFile)
		if err != nil {
			return err
		}
		if len(peers.Exporters) == 0 {
			log.Warn("flows enabled without exporters: every datagram is dropped", "exporters_file", a.cfg.Flows.ExportersFile)
		}
		col, err := flows.New(flows.Options{
			Exporters: peers.FlowExporters(), Publisher: asyncPublisher{a.bus}, Devices: c.leases,
			Clock: a.clk, Logger: a.log.With("component", "flows"),
		})
		if err != nil {
			return err
		}
		ipfix, err := listen(a.cfg.Flows.IPFIXAddr)
		if err != nil {
			return fmt.Errorf("ipfix: %w", err)
		}
		nf, err := listen(a.cfg.Flows.NetFlowAddr)
		if err != nil {
			return fmt.Errorf("netflow: %w", err)
		}
		c.flows, c.ipfix, c.netflow = col, ipfix.LocalAddr(), nf.LocalAddr()
		a.goroutine("ipfix collector", func() error { return col.Serve(runCtx, ipfix) })
		a.goroutine("netflow collector", func() error { return col.Serve(runCtx, nf) })
		log.Info("flow collector listening", "ipfix", c.ipfix.String(), "netflow", c.netflow.String(), "exporters", len(peers.Exporters))
	}
	return nil
}

// asyncPublisher publishes flows without waiting for each acknowledgement:
// flow records are not retransmitted by exporters, so waiting would only
// slow the collector; failures are counted by the bus. Flows of one
// subject are batched (a few per JetStream message, up to 2 ms later).
type asyncPublisher struct {
	b interface {
		PublishBatched(ctx context.Context, e *event.Event) error
	}
}

func (p asyncPublisher) Publish(ctx context.Context, e *event.Event) error {
	return p.b.PublishBatched(ctx, e)
}

// RADIUSAddrs are the accounting and authentication listening addresses
// (nil when RADIUS is disabled).
func (a *App) RADIUSAddrs() (acct, auth net.Addr) { return a.conn.acct, a.conn.auth }

// FlowAddrs are the IPFIX and NetFlow v9 listening addresses (nil when the
// collector is disabled).
func (a *App) FlowAddrs() (ipfix, netflow net.Addr) { return a.conn.ipfix, a.conn.netflow }

// Disconnector is the RADIUS Disconnect back-end (nil when RADIUS is
// disabled), for the response engine.
func (a *App) Disconnector() *connectivity.Disconnector { return a.conn.disc }

// SIMControl is the connectivity-platform SIM back-end, for the response
// engine.
func (a *App) SIMControl() *connectivity.SIMControl { return a.conn.sims }
