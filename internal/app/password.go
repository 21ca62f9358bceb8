package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// enablePasswordListener adds the broker's legacy password listener when
// the configuration asks for it (broker.password_enabled; off by default).
func (a *App) enablePasswordListener(b *broker.Broker) error {
	c := a.cfg.Broker
	if !c.PasswordEnabled {
		return nil
	}
	if c.PasswordInsecurePlaintext {
		a.log.Warn("INSECURE: broker.password_insecure_plaintext is set: the MQTT password listener has no TLS and device passwords cross the network in clear",
			"addr", c.PasswordAddr)
	}
	return b.EnablePasswords(broker.PasswordOptions{
		Addr:        c.PasswordAddr,
		Passwords:   storePasswords{a.store},
		AllowTLS12:  c.PasswordAllowTLS12,
		Plaintext:   c.PasswordInsecurePlaintext,
		MaxFailures: c.PasswordMaxFailures,
	})
}

// storePasswords reads device password hashes from the store, telling an
// unknown device from one without a password.
type storePasswords struct{ st store.Store }

var _ broker.Passwords = storePasswords{}

func (s storePasswords) PasswordHash(ctx context.Context, t event.TenantID, d event.DeviceID) (string, error) {
	var hash string
	err := s.st.View(ctx, func(tx store.Tx) error {
		if _, err := tx.Devices().Get(ctx, t, d); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: %w", broker.ErrUnknownDevice, err)
			}
			return err
		}
		p, err := tx.Passwords().Get(ctx, t, d)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: %w", broker.ErrNoPassword, err)
		}
		hash = p.Hash
		return err
	})
	return hash, err
}
