package connectivity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/radius"
	"github.com/garrisonhq/garrison/internal/store"
)

// Errors of the response back-ends.
var (
	// ErrNoSession: the device has no live data session to disconnect.
	ErrNoSession = errors.New("connectivity: no live data session")
	// ErrNoGateway: the session's gateway is not among the tenant's NAS
	// clients (so no Disconnect port and secret are known).
	ErrNoGateway = errors.New("connectivity: no nas client for the session's gateway")
	// ErrNoProvider: the tenant has no connectivity platform configured.
	ErrNoProvider = errors.New("connectivity: tenant has no provider")
)

// SessionFinder lists a device's live data sessions (radius.Server).
type SessionFinder interface {
	Sessions(tenant event.TenantID, dev event.DeviceID) []radius.Session
}

// GatewayDirectory says where a gateway takes Disconnect-Requests (Peers).
type GatewayDirectory interface {
	DynamicAuth(tenant event.TenantID, client string, nas netip.Addr) (radius.NAS, bool)
}

// DisconnectSender sends one Disconnect-Request (radius.CoAClient).
type DisconnectSender interface {
	Disconnect(ctx context.Context, nas radius.NAS, t radius.Target) error
}

// Disconnector is the network-side disconnect back-end: it ends every live
// data session of a device with a RADIUS Disconnect-Request (RFC 5176) to
// the gateway that carries it, naming the session by Acct-Session-Id,
// 3GPP-IMSI and Framed-IP-Address. A gateway that answers NAK with
// Error-Cause 503 (session context not found) counts as done.
type Disconnector struct {
	Sessions SessionFinder
	Gateways GatewayDirectory
	Sender   DisconnectSender // radius.CoAClient{} when nil
	Logger   *slog.Logger
}

// causeNoSession is RFC 5176's Error-Cause "Session Context Not Found".
const causeNoSession = 503

// Disconnect ends the device's data sessions. It returns [ErrNoSession]
// when there is none, and the errors of the gateways that did not
// acknowledge, joined.
func (d *Disconnector) Disconnect(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error {
	ss := d.Sessions.Sessions(tenant, dev)
	if len(ss) == 0 {
		return fmt.Errorf("disconnect %s/%s: %w", tenant, dev, ErrNoSession)
	}
	var sender DisconnectSender = radius.CoAClient{}
	if d.Sender != nil {
		sender = d.Sender
	}
	var errs []error
	for _, s := range ss {
		nas, ok := d.Gateways.DynamicAuth(tenant, s.Client, s.NAS)
		if !ok {
			errs = append(errs, fmt.Errorf("disconnect %s/%s via %s: %w", tenant, dev, s.NAS, ErrNoGateway))
			continue
		}
		err := sender.Disconnect(ctx, nas, radius.Target{SessionID: s.SessionID, IMSI: s.IMSI, FramedIP: s.FramedIP})
		var nak *radius.NAKError
		if errors.As(err, &nak) && nak.Cause == causeNoSession {
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("disconnect %s/%s: %w", tenant, dev, err))
			continue
		}
		if d.Logger != nil {
			d.Logger.InfoContext(ctx, "data session disconnected", "tenant", string(tenant), "device", string(dev), "nas", nas.Addr, "session", s.SessionID)
		}
	}
	return errors.Join(errs...)
}

// SIMControl is the SIM back-end: it suspends and reactivates a device's
// SIM at its tenant's connectivity platform, naming the SIM by the ICCID
// and IMSI the registry binds to the device. The registry's own SIM state
// (and with it the RADIUS authentication server's block) is the registry
// back-end's business, not this one's.
type SIMControl struct {
	Store     store.Store
	Providers map[event.TenantID]Provider
}

func (c *SIMControl) sim(ctx context.Context, tenant event.TenantID, dev event.DeviceID) (Provider, SIM, error) {
	p, ok := c.Providers[tenant]
	if !ok {
		return nil, SIM{}, fmt.Errorf("sim %s/%s: %w", tenant, dev, ErrNoProvider)
	}
	var d store.Device
	err := c.Store.View(ctx, func(tx store.Tx) error {
		var err error
		d, err = tx.Devices().Get(ctx, tenant, dev)
		return err
	})
	if err != nil {
		return nil, SIM{}, fmt.Errorf("sim %s/%s: %w", tenant, dev, err)
	}
	if d.ICCID == "" && d.IMSI == "" {
		return nil, SIM{}, fmt.Errorf("sim %s/%s: %w: no SIM bound", tenant, dev, store.ErrNotFound)
	}
	return p, SIM{ICCID: d.ICCID, IMSI: d.IMSI}, nil
}

// SuspendSIM suspends the device's SIM at the platform.
func (c *SIMControl) SuspendSIM(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error {
	p, s, err := c.sim(ctx, tenant, dev)
	if err != nil {
		return err
	}
	return p.SuspendSIM(ctx, s)
}

// ReactivateSIM reactivates the device's SIM at the platform.
func (c *SIMControl) ReactivateSIM(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error {
	p, s, err := c.sim(ctx, tenant, dev)
	if err != nil {
		return err
	}
	return p.ReactivateSIM(ctx, s)
}

// IMEI returns the IMEI the platform last saw the device's SIM in.
func (c *SIMControl) IMEI(ctx context.Context, tenant event.TenantID, dev event.DeviceID) (string, error) {
	p, s, err := c.sim(ctx, tenant, dev)
	if err != nil {
		return "", err
	}
	return p.IMEI(ctx, s)
}

// Usage returns the device's SIM usage at the platform.
func (c *SIMControl) Usage(ctx context.Context, tenant event.TenantID, dev event.DeviceID) (Usage, error) {
	p, s, err := c.sim(ctx, tenant, dev)
	if err != nil {
		return Usage{}, err
	}
	return p.Usage(ctx, s)
}

// HTTPProviders builds the HTTP providers of the peers file, by tenant.
func (p Peers) HTTPProviders() (map[event.TenantID]Provider, error) {
	out := make(map[event.TenantID]Provider, len(p.Providers))
	for _, pc := range p.Providers {
		hp, err := NewHTTPProvider(pc, nil)
		if err != nil {
			return nil, fmt.Errorf("provider of %s: %w", pc.Tenant, err)
		}
		out[event.TenantID(pc.Tenant)] = hp
	}
	return out, nil
}
