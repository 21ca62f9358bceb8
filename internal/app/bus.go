package app

import (
	"context"
	"errors"

	"github.com/garrisonhq/garrison/internal/bus"
)

// startBus opens NATS JetStream embedded in DataDir (no TCP listener) or on
// the external server of bus.url.
func (a *App) startBus(ctx context.Context) error {
	o := bus.Options{
		URL:        a.cfg.Bus.URL,
		DataDir:    a.data,
		Logger:     a.log.With("component", "bus"),
		Clock:      a.clk,
		Registerer: a.metrics,
	}
	if a.busNS != "" {
		o.StreamPrefix, o.SubjectPrefix = a.busNS+"_", a.busNS
	}
	b, err := bus.Open(ctx, o)
	if err != nil {
		return err
	}
	a.bus = b
	a.onStop("bus", func(context.Context) error { return a.bus.Close() })
	return nil
}

// busReady reports whether both JetStream streams answer.
func (a *App) busReady(ctx context.Context) error {
	if a.bus == nil {
		return errors.New("not started")
	}
	for _, st := range []bus.Stream{bus.Events, bus.Security} {
		if _, err := a.bus.StreamInfo(ctx, st); err != nil {
			return err
		}
	}
	return nil
}
