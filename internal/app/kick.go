package app

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// clusterKicker closes a device's MQTT session on whichever node of the
// deployment holds it: this node's broker at once, or, when it holds no
// session of the device, every other node through a device.session_kick
// event that their revocation followers apply (followRevocations). The
// response engine's disconnects and mass kick jobs use it.
type clusterKicker struct{ a *App }

var _ kicker = clusterKicker{}

// Kick reports whether the session was on this node.
func (k clusterKicker) Kick(t event.TenantID, d event.DeviceID, reason string) bool {
	if k.a.broker.Kick(t, d, reason) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.a.bus.Publish(ctx, &event.Event{Tenant: t, Device: d, Kind: event.SessionKick, Time: k.a.clk.Now().UTC(),
		Source: "broker", Attrs: map[string]any{"reason": reason, "origin": k.a.node}}); err != nil {
		k.a.log.Warn("kick not passed to the other nodes", "tenant", t, "device", d, "err", err)
	}
	return false
}
