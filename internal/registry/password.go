package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Device passwords for the broker's legacy password listener (off by
// default; see docs/BROKER.md). The platform generates each password
// (160 random bits), returns it once, and stores only its argon2id hash.
// Setting, rotating and clearing are audited (never with the secret) and
// published as event.DevicePassword after the commit, on which the broker
// closes the device's password sessions.

// PasswordGrant is a freshly generated device password. Password is shown
// here once and stored nowhere.
type PasswordGrant struct {
	Device event.DeviceID `json:"device"`
	// Username is what the device sends in its MQTT CONNECT:
	// TENANT/DEVICE.
	Username  string    `json:"username"`
	Password  string    `json:"password"`
	Rotated   bool      `json:"rotated"` // it replaced an earlier password
	CreatedAt time.Time `json:"created_at"`
}

// PasswordStatus tells whether a device has a broker password.
type PasswordStatus struct {
	Device    event.DeviceID `json:"device"`
	Set       bool           `json:"set"`
	CreatedAt *time.Time     `json:"created_at,omitempty"`
}

// SetPassword generates a new password for the device, replacing any
// earlier one (a rotation: the old password stops working at once and its
// live sessions are closed). A revoked or decommissioned device gets none:
// an error matching store.ErrConflict. An unknown device is
// store.ErrNotFound.
func (r *Registry) SetPassword(ctx context.Context, tenant event.TenantID, id event.DeviceID, actor string) (PasswordGrant, error) {
	pw, err := creds.NewPassword()
	if err != nil {
		return PasswordGrant{}, err
	}
	// Hashing is slow on purpose: outside the transaction.
	hash, err := creds.HashPassword(pw)
	if err != nil {
		return PasswordGrant{}, err
	}
	now := r.clk.Now().UTC()
	g := PasswordGrant{Device: id, Username: string(tenant) + "/" + string(id), Password: pw, CreatedAt: now}
	err = r.st.Update(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		if d.State == store.StateRevoked || d.State == store.StateDecommissioned {
			return fmt.Errorf("%w: a %s device gets no password", store.ErrConflict, d.State)
		}
		_, err = tx.Passwords().Get(ctx, tenant, id)
		switch {
		case err == nil:
			g.Rotated = true
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := tx.Passwords().Set(ctx, store.DevicePassword{Tenant: tenant, Device: id, Hash: hash, CreatedAt: now}); err != nil {
			return err
		}
		action := "set"
		if g.Rotated {
			action = "rotated"
		}
		return audit.Record(ctx, tx, tenant, now, actor, "device.password", string(id), map[string]any{"action": action})
	})
	if err != nil {
		return PasswordGrant{}, fmt.Errorf("registry set password %s/%s: %w", tenant, id, err)
	}
	r.publishPassword(ctx, tenant, id, "set", now)
	return g, nil
}

// ClearPassword removes the device's password: the password listener
// refuses it from then on and its live password sessions are closed. An
// unknown device, or one without a password, is store.ErrNotFound.
func (r *Registry) ClearPassword(ctx context.Context, tenant event.TenantID, id event.DeviceID, actor string) error {
	now := r.clk.Now().UTC()
	err := r.st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Devices().Get(ctx, tenant, id); err != nil {
			return err
		}
		if err := tx.Passwords().Delete(ctx, tenant, id); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "device.password", string(id), map[string]any{"action": "cleared"})
	})
	if err != nil {
		return fmt.Errorf("registry clear password %s/%s: %w", tenant, id, err)
	}
	r.publishPassword(ctx, tenant, id, "cleared", now)
	return nil
}

// Password tells whether the device has a password and since when. An
// unknown device is store.ErrNotFound.
func (r *Registry) Password(ctx context.Context, tenant event.TenantID, id event.DeviceID) (PasswordStatus, error) {
	st := PasswordStatus{Device: id}
	err := r.st.View(ctx, func(tx store.Tx) error {
		if _, err := tx.Devices().Get(ctx, tenant, id); err != nil {
			return err
		}
		p, err := tx.Passwords().Get(ctx, tenant, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil
		case err != nil:
			return err
		}
		st.Set, st.CreatedAt = true, &p.CreatedAt
		return nil
	})
	if err != nil {
		return PasswordStatus{}, fmt.Errorf("registry password %s/%s: %w", tenant, id, err)
	}
	return st, nil
}

func (r *Registry) publishPassword(ctx context.Context, tenant event.TenantID, id event.DeviceID, action string, at time.Time) {
	if r.pub == nil {
		return
	}
	ev := &event.Event{ID: event.NewID(at), Tenant: tenant, Device: id, Kind: event.DevicePassword, Time: at, Source: "registry",
		Attrs: map[string]any{"action": action}}
	if err := r.pub.Publish(ctx, ev); err != nil {
		r.log.WarnContext(ctx, "device password event not published", "tenant", tenant, "device", id, "err", err)
	}
}
