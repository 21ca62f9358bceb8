package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type rules struct{ *tx }

// Rules implements [store.Tx].
func (t *tx) Rules() store.Rules { return rules{t} }

const ruleCols = `tenant, id, name, description, expr, kind, severity, events_json, enabled, version, actor, created_at, updated_at`

func scanRule(r Row) (store.Rule, error) {
	var x store.Rule
	var tenant, kind, events string
	var created, updated int64
	if err := r.Scan(&tenant, &x.ID, &x.Name, &x.Description, &x.Expr, &kind, &x.Severity, &events, &x.Enabled, &x.Version,
		&x.Actor, &created, &updated); err != nil {
		return store.Rule{}, err
	}
	x.Tenant, x.Kind, x.CreatedAt, x.UpdatedAt = event.TenantID(tenant), alert.Kind(kind), FromMicros(created), FromMicros(updated)
	if err := json.Unmarshal([]byte(events), &x.Events); err != nil {
		return store.Rule{}, fmt.Errorf("decode events: %w", err)
	}
	if len(x.Events) == 0 {
		x.Events = nil
	}
	return x, nil
}

func checkRule(r store.Rule) error {
	if r.Tenant == "" || r.ID == "" {
		return fmt.Errorf("%w: tenant and id are required", store.ErrInvalid)
	}
	return nil
}

func (s rules) Create(ctx context.Context, r store.Rule) error {
	if err := checkRule(r); err != nil {
		return fmt.Errorf("rules create: %w", err)
	}
	if r.Version != 1 {
		return fmt.Errorf("rules create %s/%s: %w: version must be 1, got %d", r.Tenant, r.ID, store.ErrInvalid, r.Version)
	}
	events, err := encodeJSON(r.Events, "[]")
	if err != nil {
		return fmt.Errorf("rules create %s/%s: %w", r.Tenant, r.ID, err)
	}
	err = conflict(s.c.Exec(ctx, `INSERT INTO rules (`+ruleCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(r.Tenant), r.ID, r.Name, r.Description, r.Expr, string(r.Kind), r.Severity, events, r.Enabled, r.Version, r.Actor,
		Micros(r.CreatedAt), Micros(r.UpdatedAt)))
	if err != nil {
		return fmt.Errorf("rules create %s/%s: %w", r.Tenant, r.ID, err)
	}
	return nil
}

func (s rules) Update(ctx context.Context, r store.Rule) error {
	if err := checkRule(r); err != nil {
		return fmt.Errorf("rules update: %w", err)
	}
	cur, err := s.Get(ctx, r.Tenant, r.ID)
	if err != nil {
		return fmt.Errorf("rules update: %w", err)
	}
	if cur.Version != r.Version-1 {
		return fmt.Errorf("rules update %s/%s: %w: version %d is stored, %d given", r.Tenant, r.ID, store.ErrConflict, cur.Version, r.Version)
	}
	events, err := encodeJSON(r.Events, "[]")
	if err != nil {
		return fmt.Errorf("rules update %s/%s: %w", r.Tenant, r.ID, err)
	}
	err = notFound(s.c.Exec(ctx, `UPDATE rules SET name = ?, description = ?, expr = ?, kind = ?, severity = ?, events_json = ?, enabled = ?,
		version = ?, actor = ?, updated_at = ? WHERE tenant = ? AND id = ? AND version = ?`,
		r.Name, r.Description, r.Expr, string(r.Kind), r.Severity, events, r.Enabled, r.Version, r.Actor, Micros(r.UpdatedAt),
		string(r.Tenant), r.ID, cur.Version))
	if err != nil {
		return fmt.Errorf("rules update %s/%s: %w", r.Tenant, r.ID, err)
	}
	return nil
}

func (s rules) Get(ctx context.Context, tenant event.TenantID, id string) (store.Rule, error) {
	r, err := scanRule(s.c.QueryRow(ctx, `SELECT `+ruleCols+` FROM rules WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Rule{}, fmt.Errorf("rules get %s/%s: %w", tenant, id, err)
	}
	return r, nil
}

func (s rules) List(ctx context.Context, tenant event.TenantID) ([]store.Rule, error) {
	out, err := collect(ctx, s.c, scanRule, `SELECT `+ruleCols+` FROM rules WHERE tenant = ? ORDER BY id`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("rules list %s: %w", tenant, err)
	}
	return out, nil
}

func (s rules) Delete(ctx context.Context, tenant event.TenantID, id string) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM rules WHERE tenant = ? AND id = ?`, string(tenant), id)); err != nil {
		return fmt.Errorf("rules delete %s/%s: %w", tenant, id, err)
	}
	return nil
}
