package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func (t *tx) Commands() store.Commands { return commands{t} }

type commands struct{ *tx }

const commandCols = `tenant, id, device, name, args, status, output, error, created_by, created_at, expires, completed_at`

func scanCommand(r Row) (store.Command, error) {
	var c store.Command
	var tenant, device, status string
	var created, expires int64
	var completed *int64
	err := r.Scan(&tenant, &c.ID, &device, &c.Name, &c.Args, &status, &c.Output, &c.Error, &c.CreatedBy, &created, &expires, &completed)
	c.Tenant, c.Device, c.Status = event.TenantID(tenant), event.DeviceID(device), store.CommandStatus(status)
	c.CreatedAt, c.Expires = FromMicros(created), FromMicros(expires)
	if completed != nil {
		c.CompletedAt = FromMicros(*completed)
	}
	if len(c.Args) == 0 {
		c.Args = nil
	}
	return c, err
}

func (s commands) Create(ctx context.Context, c store.Command) error {
	if c.Tenant == "" || c.ID == "" || c.Device == "" || c.Name == "" || c.Status == "" {
		return fmt.Errorf("commands create: %w: tenant, id, device, name and status are required", store.ErrInvalid)
	}
	var completed *time.Time
	if !c.CompletedAt.IsZero() {
		completed = &c.CompletedAt
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO commands (`+commandCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, id) DO NOTHING`,
		string(c.Tenant), c.ID, string(c.Device), c.Name, nonNil(c.Args), string(c.Status), c.Output, c.Error, c.CreatedBy,
		Micros(c.CreatedAt), Micros(c.Expires), nullMicros(completed)))
	if err != nil {
		return fmt.Errorf("commands create %s/%s: %w", c.Tenant, c.ID, err)
	}
	return nil
}

func (s commands) Get(ctx context.Context, tenant event.TenantID, id string) (store.Command, error) {
	c, err := scanCommand(s.c.QueryRow(ctx, `SELECT `+commandCols+` FROM commands WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Command{}, fmt.Errorf("commands get %s/%s: %w", tenant, id, err)
	}
	return c, nil
}

func (s commands) SetStatus(ctx context.Context, tenant event.TenantID, id string, st store.CommandStatus) error {
	if st != store.CommandSent && st != store.CommandOffline {
		return fmt.Errorf("commands set status %s/%s: %w: %q is not an open status", tenant, id, store.ErrInvalid, st)
	}
	c, err := s.Get(ctx, tenant, id)
	if err != nil {
		return err
	}
	if c.Status != store.CommandSent && c.Status != store.CommandOffline {
		return nil
	}
	// The write checks again that the command is open: at READ COMMITTED
	// (PostgreSQL) a result may have completed it since the read above.
	if _, err := s.c.Exec(ctx, `UPDATE commands SET status = ? WHERE tenant = ? AND id = ? AND completed_at IS NULL AND status IN (?, ?)`,
		string(st), string(tenant), id, string(store.CommandSent), string(store.CommandOffline)); err != nil {
		return fmt.Errorf("commands set status %s/%s: %w", tenant, id, err)
	}
	return nil
}

func (s commands) Complete(ctx context.Context, tenant event.TenantID, device event.DeviceID, id string, ok bool, output, errText string, at time.Time) (store.Command, error) {
	st := store.CommandFailed
	if ok {
		st = store.CommandSucceeded
	}
	if _, err := s.c.Exec(ctx, `UPDATE commands SET status = ?, output = ?, error = ?, completed_at = ?
		WHERE tenant = ? AND id = ? AND device = ? AND completed_at IS NULL`,
		string(st), output, errText, Micros(at), string(tenant), id, string(device)); err != nil {
		return store.Command{}, fmt.Errorf("commands complete %s/%s: %w", tenant, id, err)
	}
	c, err := s.Get(ctx, tenant, id)
	if err != nil {
		return store.Command{}, err
	}
	if c.Device != device {
		return store.Command{}, fmt.Errorf("commands complete %s/%s: %w: not a command of device %s", tenant, id, store.ErrNotFound, device)
	}
	return c, nil
}

func (s commands) ListDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID, limit int) ([]store.Command, error) {
	q := `SELECT ` + commandCols + ` FROM commands WHERE tenant = ? AND device = ? ORDER BY created_at DESC, id DESC`
	args := []any{string(tenant), string(device)}
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	out, err := collect(ctx, s.c, scanCommand, q, args...)
	if err != nil {
		return nil, fmt.Errorf("commands list %s/%s: %w", tenant, device, err)
	}
	return out, nil
}
