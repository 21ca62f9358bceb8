package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
)

// startBroker runs the MQTT broker over mutual TLS with the API's server
// certificate; client chains are checked by identity, device states read
// from the store, events go to the bus.
//
// The broker's events are published batched (bus.PublishBatched): every
// accepted PUBLISH yields an mqtt.publish event and usually a decoded one,
// on the device's read loop, which would otherwise wait for a JetStream
// acknowledgement each. All of the broker's events take that one path, so
// a device's connect, publishes and disconnect keep their order (batching
// keeps order per tenant and partition across kinds, and a device always
// maps to one partition), which clone and usage detection rely on. None
// of them is a SECURITY kind. A failure after acceptance is counted by the
// bus and reported by its Flush, as for flows.
func (a *App) startBroker(ctx context.Context) error {
	bc := a.cfg.Broker
	b, err := broker.New(broker.Options{
		Addr:        bc.Addr,
		Certificate: a.tls.Cert,
		Verifier:    brokerVerifier{a.identity},
		States:      storeStates{a.store},
		Publisher:   asyncPublisher{a.bus},
		Clock:       a.bclk,
		Logger:      a.log.With("component", "broker"),
		// 0 in the configuration turns a limit off; negative does in Options.
		SourceConnectRate:  offIfZero(float64(bc.SourceConnectsPerSecond)),
		SourceConnectBurst: bc.SourceConnectBurst,
		DeviceConnectRate:  offIfZero(float64(bc.DeviceConnectsPerMinute) / 60),
		DeviceConnectBurst: bc.DeviceConnectBurst,
	})
	if err != nil {
		return err
	}
	if err := a.enablePasswordListener(b); err != nil {
		return err
	}
	if err := a.metrics.Register(b.Collector()); err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	a.broker = b
	a.onStop("broker", func(context.Context) error {
		err := b.Close()
		os.Remove(filepath.Join(a.data, "run", "mqtt.addr"))
		os.Remove(filepath.Join(a.data, "run", "mqtt-password.addr"))
		return err
	})
	addr := b.Addr()
	if addr == nil {
		return errors.New("broker: no listening address after start")
	}
	if pa := b.PasswordAddr(); pa != nil {
		if err := writeFileAtomic(filepath.Join(a.data, "run", "mqtt-password.addr"), []byte(pa.String()+"\n")); err != nil {
			return err
		}
	}
	return writeFileAtomic(filepath.Join(a.data, "run", "mqtt.addr"), []byte(addr.String()+"\n"))
}

// offIfZero maps a configured rate of 0 (off) to the broker's -1 (off).
func offIfZero(rate float64) float64 {
	if rate == 0 {
		return -1
	}
	return rate
}

// clientVerifier is what the broker adapter needs of identity.
type clientVerifier interface {
	VerifyClient(ctx context.Context, chain []*x509.Certificate) (identity.DeviceIdentity, error)
}

// brokerVerifier adapts identity's verification to the broker, mapping
// identity's errors onto the broker's refusal reasons.
type brokerVerifier struct{ id clientVerifier }

var _ broker.Verifier = brokerVerifier{}

func (v brokerVerifier) VerifyClient(ctx context.Context, chain []*x509.Certificate) (broker.Identity, error) {
	d, err := v.id.VerifyClient(ctx, chain)
	bid := broker.Identity{Tenant: d.Tenant, Device: d.Device, Serial: d.Serial}
	if err == nil {
		return bid, nil
	}
	return bid, mapVerifyErr(err)
}

// mapVerifyErr wraps err with the broker sentinel for its cause. Expired
// is checked before untrusted because identity's ErrExpired also wraps
// ErrUntrusted. Errors of neither kind (a store outage) pass unchanged.
func mapVerifyErr(err error) error {
	switch {
	case errors.Is(err, identity.ErrRevoked):
		return fmt.Errorf("%w: %w", broker.ErrRevoked, err)
	case errors.Is(err, identity.ErrExpired):
		return fmt.Errorf("%w: %w", broker.ErrExpired, err)
	case errors.Is(err, identity.ErrUnknownCert), errors.Is(err, identity.ErrUntrusted), errors.Is(err, identity.ErrBadID):
		return fmt.Errorf("%w: %w", broker.ErrUnknown, err)
	}
	return err
}

// storeStates reads a device's lifecycle state from the registry store.
type storeStates struct{ st store.Store }

var _ broker.States = storeStates{}

func (s storeStates) DeviceState(ctx context.Context, t event.TenantID, d event.DeviceID) (store.DeviceState, error) {
	var st store.DeviceState
	err := s.st.View(ctx, func(tx store.Tx) error {
		dev, err := tx.Devices().Get(ctx, t, d)
		st = dev.State
		return err
	})
	return st, err
}

// sessionKicker is what the revocation follower needs of the broker.
type sessionKicker interface {
	Kick(t event.TenantID, d event.DeviceID, reason string) bool
	SetState(t event.TenantID, d event.DeviceID, s store.DeviceState) bool
	KickPasswordSession(t event.TenantID, d event.DeviceID, reason string) bool
}

// followRevocations closes live MQTT sessions when identity revokes a
// certificate (the device may reconnect only with a certificate that still
// verifies), re-authorises them on registry state changes, and closes
// password sessions when the device's password is rotated or cleared, and
// closes sessions another node was asked to kick (clusterKicker). Each node has
// its own durable consumer, so every node closes its own sessions.
func (a *App) followRevocations(ctx context.Context) error {
	node := a.node
	for _, k := range []event.Kind{event.CertRevoked, event.DeviceState, event.DevicePassword, event.SessionKick} {
		c, err := a.bus.Consume(ctx, bus.ConsumerOptions{
			Name:    "broker-" + node + "-" + strings.ReplaceAll(string(k), ".", "_"),
			Stream:  a.bus.StreamFor(k),
			Filters: []string{bus.KindFilter(k)},
			Deliver: bus.DeliverNew,
			Handler: func(_ context.Context, e *event.Event) error {
				if e.Kind != event.SessionKick || e.Str("origin") != node { // the asking node kicked its own
					applyToSessions(a.broker, e)
				}
				return nil
			},
		})
		if err != nil {
			return err
		}
		a.onStop("broker follower "+string(k), func(context.Context) error { c.Stop(); return nil })
	}
	return nil
}

// applyToSessions acts on one identity or registry event.
func applyToSessions(b sessionKicker, e *event.Event) {
	switch e.Kind {
	case event.CertRevoked:
		if e.Device != "" {
			b.Kick(e.Tenant, e.Device, "certificate_revoked")
		}
	case event.DeviceState:
		if to, ok := e.Attrs["to"].(string); ok && e.Device != "" {
			b.SetState(e.Tenant, e.Device, store.DeviceState(to))
		}
	case event.SessionKick:
		if e.Device != "" {
			b.Kick(e.Tenant, e.Device, e.Str("reason"))
		}
	case event.DevicePassword:
		if e.Device != "" {
			b.KickPasswordSession(e.Tenant, e.Device, "password_"+e.Str("action"))
		}
	}
}

// nodeName names this process's durable consumers: the host name, reduced
// to the characters a consumer name may hold.
func nodeName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "node"
	}
	return consumerToken(h)
}

// consumerToken maps s to the characters a consumer name may hold.
func consumerToken(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
