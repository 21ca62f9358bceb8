package app

import (
	"context"
	"errors"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/event"
)

// startCommands builds the command service before the API that serves it;
// commands go out through the broker once it runs.
func (a *App) startCommands(context.Context) error {
	svc, err := command.New(command.Options{Store: a.store, Sender: brokerCommands{a}, Clock: a.clk,
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
	return a.redeliverCommands(ctx)
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
