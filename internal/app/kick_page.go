package app

import (
	"context"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
)

var _ respond.PageDisconnecter = brokerKick{}

// DisconnectPage kicks a mass job's page of devices: with the cluster
// kicker, sessions on this node at once and the rest passed to the other
// nodes as one group of device.session_kick events (a handful of bus
// messages instead of one synchronous publish per device without a
// session here).
func (k brokerKick) DisconnectPage(ctx context.Context, ts []respond.Target) error {
	ck, ok := k.b.(clusterKicker)
	if !ok {
		for _, t := range ts {
			k.b.Kick(t.Tenant, t.Device, t.Reason)
		}
		return nil
	}
	return ck.kickPage(ctx, ts)
}

func (k clusterKicker) kickPage(ctx context.Context, ts []respond.Target) error {
	now := k.a.clk.Now().UTC()
	var evs []*event.Event
	for _, t := range ts {
		if k.a.broker.Kick(t.Tenant, t.Device, t.Reason) {
			continue
		}
		evs = append(evs, &event.Event{Tenant: t.Tenant, Device: t.Device, Kind: event.SessionKick, Time: now,
			Source: "broker", Attrs: map[string]any{"reason": t.Reason, "origin": k.a.node}})
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := k.a.bus.PublishGroup(ctx, evs); err != nil {
		return fmt.Errorf("%d kicks not passed to the other nodes: %w", len(evs), err)
	}
	return nil
}
