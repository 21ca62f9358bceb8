package sqlstore

import (
	"context"
	"fmt"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func (t *tx) Passwords() store.DevicePasswords { return passwords{t} }

type passwords struct{ *tx }

func scanPassword(r Row) (store.DevicePassword, error) {
	var p store.DevicePassword
	var tenant, device string
	var created int64
	err := r.Scan(&tenant, &device, &p.Hash, &created)
	p.Tenant, p.Device, p.CreatedAt = event.TenantID(tenant), event.DeviceID(device), FromMicros(created)
	return p, err
}

func (s passwords) Set(ctx context.Context, p store.DevicePassword) error {
	if p.Tenant == "" || p.Device == "" || p.Hash == "" {
		return fmt.Errorf("passwords set: %w: tenant, device and hash are required", store.ErrInvalid)
	}
	_, err := s.c.Exec(ctx, `INSERT INTO device_passwords (tenant, device, hash, created_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant, device) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at`,
		string(p.Tenant), string(p.Device), p.Hash, Micros(p.CreatedAt))
	if err != nil {
		return fmt.Errorf("passwords set %s/%s: %w", p.Tenant, p.Device, err)
	}
	return nil
}

func (s passwords) Get(ctx context.Context, tenant event.TenantID, device event.DeviceID) (store.DevicePassword, error) {
	p, err := scanPassword(s.c.QueryRow(ctx, `SELECT tenant, device, hash, created_at FROM device_passwords WHERE tenant = ? AND device = ?`,
		string(tenant), string(device)))
	if err != nil {
		return store.DevicePassword{}, fmt.Errorf("passwords get %s/%s: %w", tenant, device, err)
	}
	return p, nil
}

func (s passwords) Delete(ctx context.Context, tenant event.TenantID, device event.DeviceID) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM device_passwords WHERE tenant = ? AND device = ?`, string(tenant), string(device))); err != nil {
		return fmt.Errorf("passwords delete %s/%s: %w", tenant, device, err)
	}
	return nil
}
