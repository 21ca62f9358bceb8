package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// validTenantID reports whether id is 1-63 chars of [a-z0-9-].
func validTenantID(id event.TenantID) bool {
	if len(id) == 0 || len(id) > 63 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

type tenants struct{ *tx }

func (s tenants) Create(ctx context.Context, t store.Tenant) error {
	if !validTenantID(t.ID) {
		return fmt.Errorf("tenants create %q: %w: id must be 1-63 chars of [a-z0-9-]", t.ID, store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
		string(t.ID), t.Name, Micros(t.CreatedAt)))
	if err != nil {
		return fmt.Errorf("tenants create %q: %w", t.ID, err)
	}
	return nil
}

func scanTenant(r Row) (store.Tenant, error) {
	var t store.Tenant
	var id string
	var created int64
	err := r.Scan(&id, &t.Name, &created)
	t.ID, t.CreatedAt = event.TenantID(id), FromMicros(created)
	return t, err
}

func (s tenants) Get(ctx context.Context, id event.TenantID) (store.Tenant, error) {
	t, err := scanTenant(s.c.QueryRow(ctx, `SELECT id, name, created_at FROM tenants WHERE id = ?`, string(id)))
	if err != nil {
		return store.Tenant{}, fmt.Errorf("tenants get %q: %w", id, err)
	}
	return t, nil
}

func (s tenants) List(ctx context.Context) ([]store.Tenant, error) {
	out, err := collect(ctx, s.c, scanTenant, `SELECT id, name, created_at FROM tenants ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("tenants list: %w", err)
	}
	return out, nil
}

func (s tenants) Delete(ctx context.Context, id event.TenantID) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM tenants WHERE id = ?`, string(id))); err != nil {
		return fmt.Errorf("tenants delete %q: %w", id, err)
	}
	return nil
}

type operators struct{ *tx }

func (s operators) Create(ctx context.Context, o store.Operator) error {
	if o.ID == "" || o.Name == "" {
		return fmt.Errorf("operators create: %w: id and name are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO operators (tenant, id, name, role, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(o.Tenant), o.ID, o.Name, string(o.Role), Micros(o.CreatedAt)))
	if err != nil {
		return fmt.Errorf("operators create %q/%q: %w", o.Tenant, o.ID, err)
	}
	return nil
}

const operatorCols = `tenant, id, name, role, created_at`

func scanOperator(r Row) (store.Operator, error) {
	var o store.Operator
	var tenant, role string
	var created int64
	err := r.Scan(&tenant, &o.ID, &o.Name, &role, &created)
	o.Tenant, o.Role, o.CreatedAt = event.TenantID(tenant), store.Role(role), FromMicros(created)
	return o, err
}

func (s operators) Get(ctx context.Context, tenant event.TenantID, id string) (store.Operator, error) {
	o, err := scanOperator(s.c.QueryRow(ctx, `SELECT `+operatorCols+` FROM operators WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Operator{}, fmt.Errorf("operators get %q/%q: %w", tenant, id, err)
	}
	return o, nil
}

func (s operators) List(ctx context.Context, tenant event.TenantID) ([]store.Operator, error) {
	out, err := collect(ctx, s.c, scanOperator, `SELECT `+operatorCols+` FROM operators WHERE tenant = ? ORDER BY name, id`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("operators list %q: %w", tenant, err)
	}
	return out, nil
}

func (s operators) Delete(ctx context.Context, tenant event.TenantID, id string) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM operators WHERE tenant = ? AND id = ?`, string(tenant), id)); err != nil {
		return fmt.Errorf("operators delete %q/%q: %w", tenant, id, err)
	}
	return nil
}

type tokens struct{ *tx }

func (s tokens) Create(ctx context.Context, t store.Token) error {
	if t.ID == "" || len(t.Hash) == 0 {
		return fmt.Errorf("tokens create: %w: id and hash are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO tokens (id, tenant, operator, role, name, hash, created_at, expires_at, revoked_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		t.ID, string(t.Tenant), t.Operator, string(t.Role), t.Name, t.Hash,
		Micros(t.CreatedAt), Micros(t.ExpiresAt), nullMicros(t.RevokedAt)))
	if err != nil {
		return fmt.Errorf("tokens create %q: %w", t.ID, err)
	}
	return nil
}

const tokenCols = `id, tenant, operator, role, name, hash, created_at, expires_at, revoked_at`

func scanToken(r Row) (store.Token, error) {
	var t store.Token
	var tenant, role string
	var created, expires int64
	var revoked *int64
	err := r.Scan(&t.ID, &tenant, &t.Operator, &role, &t.Name, &t.Hash, &created, &expires, &revoked)
	t.Tenant, t.Role = event.TenantID(tenant), store.Role(role)
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = FromMicros(created), FromMicros(expires), fromNullMicros(revoked)
	return t, err
}

func (s tokens) Lookup(ctx context.Context, id string) (store.Token, error) {
	t, err := scanToken(s.c.QueryRow(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
	if err != nil {
		return store.Token{}, fmt.Errorf("tokens lookup: %w", err)
	}
	return t, nil
}

func (s tokens) List(ctx context.Context, tenant event.TenantID) ([]store.Token, error) {
	out, err := collect(ctx, s.c, scanToken, `SELECT `+tokenCols+` FROM tokens WHERE tenant = ? ORDER BY created_at, id`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("tokens list %q: %w", tenant, err)
	}
	return out, nil
}

func (s tokens) Revoke(ctx context.Context, tenant event.TenantID, id string, at time.Time) error {
	err := notFound(s.c.Exec(ctx, `UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE tenant = ? AND id = ?`,
		Micros(at), string(tenant), id))
	if err != nil {
		return fmt.Errorf("tokens revoke %q/%q: %w", tenant, id, err)
	}
	return nil
}

type settings struct{ *tx }

func (s settings) Get(ctx context.Context, tenant event.TenantID, key string) ([]byte, error) {
	var v []byte
	if err := s.c.QueryRow(ctx, `SELECT value FROM settings WHERE tenant = ? AND name = ?`, string(tenant), key).Scan(&v); err != nil {
		return nil, fmt.Errorf("settings get %q/%q: %w", tenant, key, err)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func (s settings) Put(ctx context.Context, tenant event.TenantID, key string, value []byte) error {
	if key == "" {
		return fmt.Errorf("settings put: %w: empty key", store.ErrInvalid)
	}
	if value == nil {
		value = []byte{}
	}
	_, err := s.c.Exec(ctx, `INSERT INTO settings (tenant, name, value) VALUES (?, ?, ?)
		ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value`, string(tenant), key, value)
	if err != nil {
		return fmt.Errorf("settings put %q/%q: %w", tenant, key, err)
	}
	return nil
}

func (s settings) Delete(ctx context.Context, tenant event.TenantID, key string) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM settings WHERE tenant = ? AND name = ?`, string(tenant), key)); err != nil {
		return fmt.Errorf("settings delete %q/%q: %w", tenant, key, err)
	}
	return nil
}

type auditLog struct{ *tx }

const auditCols = `tenant, seq, time, actor, action, target, details, prev_hash, hash`

func scanAudit(r Row) (store.AuditRecord, error) {
	var a store.AuditRecord
	var tenant string
	var at int64
	err := r.Scan(&tenant, &a.Seq, &at, &a.Actor, &a.Action, &a.Target, &a.Details, &a.PrevHash, &a.Hash)
	a.Tenant, a.Time, a.Details = event.TenantID(tenant), FromMicros(at), nilIfEmpty(a.Details)
	return a, err
}

func (s auditLog) Head(ctx context.Context, tenant event.TenantID) (store.AuditRecord, error) {
	if s.writable && s.d.LockAuditHead != nil {
		if err := s.d.LockAuditHead(ctx, s.c, tenant); err != nil {
			return store.AuditRecord{}, fmt.Errorf("audit head %q: lock: %w", tenant, err)
		}
	}
	a, err := scanAudit(s.c.QueryRow(ctx, `SELECT `+auditCols+` FROM audit WHERE tenant = ? ORDER BY seq DESC LIMIT 1`, string(tenant)))
	if err != nil {
		return store.AuditRecord{}, fmt.Errorf("audit head %q: %w", tenant, err)
	}
	return a, nil
}

func (s auditLog) Append(ctx context.Context, a store.AuditRecord) error {
	if a.Tenant == "" || a.Seq < 1 {
		return fmt.Errorf("audit append: %w: tenant and seq >= 1 are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO audit (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(a.Tenant), a.Seq, Micros(a.Time), a.Actor, a.Action, a.Target, nilIfEmpty(a.Details), a.PrevHash, a.Hash))
	if err != nil {
		return fmt.Errorf("audit append %q seq %d: %w", a.Tenant, a.Seq, err)
	}
	return nil
}

func (s auditLog) Range(ctx context.Context, tenant event.TenantID, after int64, n int) ([]store.AuditRecord, error) {
	out, err := collect(ctx, s.c, scanAudit, limit(`SELECT `+auditCols+` FROM audit WHERE tenant = ? AND seq > ? ORDER BY seq`, n), string(tenant), after)
	if err != nil {
		return nil, fmt.Errorf("audit range %q after %d: %w", tenant, after, err)
	}
	return out, nil
}
