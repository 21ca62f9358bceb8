package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/connectivity"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
)

// dataDisconnector ends a device's data sessions at the APN gateway
// (*connectivity.Disconnector).
type dataDisconnector interface {
	Disconnect(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error
}

// simSuspender suspends and reactivates a SIM at the tenant's
// connectivity platform (*connectivity.SIMControl).
type simSuspender interface {
	SuspendSIM(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error
	ReactivateSIM(ctx context.Context, tenant event.TenantID, dev event.DeviceID) error
}

// serveBackend is the response engine's back-end in serve. The registry
// does quarantine, suspension and revocation (the broker and the RADIUS
// authentication server follow its state); a disconnect closes the MQTT
// session and sends a RADIUS Disconnect-Request to the gateway carrying
// the device's data session; blocking the SIM also suspends it at the
// tenant's connectivity platform when one is configured. Each part is
// optional: serve without RADIUS or a platform still answers.
type serveBackend struct {
	respond.RegistryBackend
	broker kicker           // nil: no broker
	radius dataDisconnector // nil: RADIUS not running
	sims   simSuspender     // nil: no connectivity platform
}

// responseBackend assembles the back-end from what this serve runs.
func (a *App) responseBackend(reg *registry.Registry) serveBackend {
	b := serveBackend{RegistryBackend: respond.RegistryBackend{Registry: reg}}
	if a.broker != nil {
		b.broker = clusterKicker{a}
	}
	if a.conn.disc != nil {
		b.radius = a.conn.disc
	}
	if a.conn.sims != nil {
		b.sims = a.conn.sims
	}
	return b
}

var (
	_ respond.Disconnecter = serveBackend{}
	_ respond.SIMBlocker   = serveBackend{}
)

// Disconnect kicks the MQTT session and drops the data session. A device
// with neither a live MQTT session nor a data session is done (nothing to
// cut); gateway failures are returned so the engine retries.
func (b serveBackend) Disconnect(ctx context.Context, t respond.Target) error {
	if b.broker != nil {
		b.broker.Kick(t.Tenant, t.Device, "response: "+t.Reason)
	}
	if b.radius == nil {
		return nil
	}
	if err := b.radius.Disconnect(ctx, t.Tenant, t.Device); err != nil && !errors.Is(err, connectivity.ErrNoSession) {
		return fmt.Errorf("radius disconnect: %w", err)
	}
	return nil
}

// SuspendSIM blocks the SIM in the registry (RADIUS rejects it) and, where
// the tenant has a connectivity platform, suspends it there too. The
// platform's refusal fails the step after the registry change, which the
// engine's retry then finds already made.
func (b serveBackend) SuspendSIM(ctx context.Context, t respond.Target) (respond.Undo, error) {
	u, err := b.RegistryBackend.SuspendSIM(ctx, t)
	if err != nil {
		return u, err
	}
	if b.sims != nil {
		if err := b.sims.SuspendSIM(ctx, t.Tenant, t.Device); err != nil && !errors.Is(err, connectivity.ErrNoProvider) {
			return u, fmt.Errorf("connectivity platform: %w", err)
		}
	}
	return u, nil
}

// ResumeSIM reverses SuspendSIM: the platform first, then the registry.
func (b serveBackend) ResumeSIM(ctx context.Context, t respond.Target, u respond.Undo) error {
	if b.sims != nil {
		if err := b.sims.ReactivateSIM(ctx, t.Tenant, t.Device); err != nil && !errors.Is(err, connectivity.ErrNoProvider) {
			return fmt.Errorf("connectivity platform: %w", err)
		}
	}
	return b.RegistryBackend.ResumeSIM(ctx, t, u)
}
