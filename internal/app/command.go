package app

import (
	"context"
	"errors"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// startCommands builds the command service before the API that serves it;
// commands go out through the broker once it runs.
func (a *App) startCommands(context.Context) error {
	svc, err := command.New(command.Options{Store: a.store, Sender: brokerCommands{a}, Relay: busRelay{a}, Clock: a.clk,
		Logger: a.log.With("component", "commands")})
	if err != nil {
		return err
	}
	a.commands = svc
	return nil
}

// followCommandResults completes stored commands from the devices'
// command.result events (decoded by the broker into
// device.command_result). One durable consumer for the whole platform:
// completing is idempotent, so a redelivery after a crash is harmless.
func (a *App) followCommandResults(ctx context.Context) error {
	c, err := a.bus.Consume(ctx, bus.ConsumerOptions{
		Name:    "garrison-command-results",
		Stream:  a.bus.StreamFor(event.CommandResult),
		Filters: []string{bus.KindFilter(event.CommandResult)},
		Handler: a.commands.Result,
	})
	if err != nil {
		return err
	}
	a.onStop("command results", func(context.Context) error { c.Stop(); return nil })
	if err := a.followCommandRelays(ctx); err != nil {
		return err
	}
	return a.redeliverCommands(ctx)
}

// followCommandRelays delivers the commands other nodes stored for a
// device whose session this node holds (see followRelays).
func (a *App) followCommandRelays(ctx context.Context) error {
	log := a.log.With("component", "commands")
	return a.followRelays(ctx, "commands-"+a.node+"-relay", event.CommandRelay, "command relays", func(ctx context.Context, e *event.Event) error {
		ok, err := a.commands.Deliver(ctx, e.Tenant, e.Device, e.Str("command_id"), liveCommands{a})
		if err != nil {
			log.Warn("relayed command", "tenant", e.Tenant, "device", e.Device, "command", e.Str("command_id"), "err", err)
			return err
		}
		log.Debug("relayed command", "tenant", e.Tenant, "device", e.Device, "command", e.Str("command_id"), "delivered", ok)
		return nil
	})
}

// followRelays delivers work another node relayed (kind) to the device
// sessions this node holds. Each node has its own durable consumer of new
// relays (name carries the node), as for session kicks; a node ignores its
// own relays (its broker had no session when it relayed) and relays for
// devices it holds no live session of, so the work goes out once, through
// the node holding the session.
func (a *App) followRelays(ctx context.Context, name string, kind event.Kind, what string, deliver func(context.Context, *event.Event) error) error {
	c, err := a.bus.Consume(ctx, bus.ConsumerOptions{
		Name:    name,
		Stream:  a.bus.StreamFor(kind),
		Filters: []string{bus.KindFilter(kind)},
		Deliver: bus.DeliverNew,
		Handler: func(ctx context.Context, e *event.Event) error {
			if e.Str("origin") == a.node || !a.broker.Live(e.Tenant, e.Device) {
				return nil
			}
			return deliver(ctx, e)
		},
	})
	if err != nil {
		return err
	}
	a.onStop(what, func(context.Context) error { c.Stop(); return nil })
	return nil
}

// busRelay passes a command with no live session on this node to the
// other nodes, as a device.command_relay event (partitioned by tenant and
// device like the device's own events).
type busRelay struct{ a *App }

var _ command.Relay = busRelay{}

func (r busRelay) Relay(ctx context.Context, c store.Command) error {
	if r.a.bus == nil {
		return errors.New("commands: bus not running")
	}
	return r.a.bus.Publish(ctx, &event.Event{Tenant: c.Tenant, Device: c.Device, Kind: event.CommandRelay,
		Time: r.a.clk.Now().UTC(), Source: "commands",
		Attrs: map[string]any{"command_id": c.ID, "origin": r.a.node}})
}

// liveCommands publishes a relayed command only to a live session of
// this node (never queued for a persisted offline session).
type liveCommands struct{ a *App }

func (l liveCommands) Command(t event.TenantID, d event.DeviceID, payload []byte) (bool, error) {
	return l.a.broker.CommandIfLive(t, d, payload)
}

// redeliverCommands sends a device its commands that went out while it
// was offline, each time its subscription to them is granted on this
// node. The broker's callback only queues the device (it runs on the
// device's read loop); one worker does the store reads and publishes.
func (a *App) redeliverCommands(ctx context.Context) error {
	queue := make(chan broker.Identity, 1024)
	log := a.log.With("component", "commands")
	a.broker.OnCommandsSubscribed(func(id broker.Identity) {
		select {
		case queue <- id:
		default:
			log.Debug("command redelivery queue full; the device's next subscription retries", "tenant", id.Tenant, "device", id.Device)
		}
	})
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("command redelivery", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	a.goroutine("command redelivery", func() error {
		defer close(done)
		for {
			select {
			case <-rctx.Done():
				return nil
			case id := <-queue:
				if _, err := a.commands.Redeliver(rctx, id.Tenant, id.Device); err != nil && rctx.Err() == nil {
					log.Warn("command redelivery", "tenant", id.Tenant, "device", id.Device, "err", err)
				}
			}
		}
	})
	return nil
}

// brokerCommands publishes commands on devices/{id}/commands.
type brokerCommands struct{ a *App }

var _ command.Sender = brokerCommands{}

func (b brokerCommands) Command(t event.TenantID, d event.DeviceID, payload []byte) (bool, error) {
	if b.a.broker == nil {
		return false, errors.New("commands: broker not running")
	}
	return b.a.broker.Command(t, d, payload)
}
