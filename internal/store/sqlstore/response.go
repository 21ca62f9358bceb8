package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type playbooks struct{ *tx }

const pbVersionCols = `tenant, name, version, yaml, actor, created_at`

func scanPBVersion(r Row) (store.PlaybookVersion, error) {
	var v store.PlaybookVersion
	var tenant string
	var created int64
	err := r.Scan(&tenant, &v.Name, &v.Version, &v.YAML, &v.Actor, &created)
	v.Tenant, v.CreatedAt = event.TenantID(tenant), FromMicros(created)
	return v, err
}

func (s playbooks) PutVersion(ctx context.Context, v store.PlaybookVersion) error {
	if v.Tenant == "" || v.Name == "" || v.Version < 1 {
		return fmt.Errorf("playbooks put version: %w: tenant, name and a version >= 1 are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO playbook_versions (`+pbVersionCols+`) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(v.Tenant), v.Name, v.Version, v.YAML, v.Actor, Micros(v.CreatedAt)))
	if err != nil {
		return fmt.Errorf("playbooks put version %s/%s@%d: %w", v.Tenant, v.Name, v.Version, err)
	}
	return nil
}

func (s playbooks) Version(ctx context.Context, tenant event.TenantID, name string, version int) (store.PlaybookVersion, error) {
	v, err := scanPBVersion(s.c.QueryRow(ctx, `SELECT `+pbVersionCols+` FROM playbook_versions WHERE tenant = ? AND name = ? AND version = ?`,
		string(tenant), name, version))
	if err != nil {
		return store.PlaybookVersion{}, fmt.Errorf("playbooks version %s/%s@%d: %w", tenant, name, version, err)
	}
	return v, nil
}

func (s playbooks) Versions(ctx context.Context, tenant event.TenantID, name string) ([]store.PlaybookVersion, error) {
	out, err := collect(ctx, s.c, scanPBVersion, `SELECT `+pbVersionCols+` FROM playbook_versions WHERE tenant = ? AND name = ? ORDER BY version`,
		string(tenant), name)
	if err != nil {
		return nil, fmt.Errorf("playbooks versions %s/%s: %w", tenant, name, err)
	}
	return out, nil
}

const pbHeadCols = `tenant, name, version, enabled, updated_at`

func scanPBHead(r Row) (store.PlaybookHead, error) {
	var h store.PlaybookHead
	var tenant string
	var updated int64
	err := r.Scan(&tenant, &h.Name, &h.Version, &h.Enabled, &updated)
	h.Tenant, h.UpdatedAt = event.TenantID(tenant), FromMicros(updated)
	return h, err
}

func (s playbooks) PutHead(ctx context.Context, h store.PlaybookHead) error {
	if h.Tenant == "" || h.Name == "" || h.Version < 0 {
		return fmt.Errorf("playbooks put head: %w: tenant, name and a version >= 0 are required", store.ErrInvalid)
	}
	_, err := s.c.Exec(ctx, `INSERT INTO playbook_heads (`+pbHeadCols+`) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (tenant, name) DO UPDATE SET version = excluded.version, enabled = excluded.enabled, updated_at = excluded.updated_at`,
		string(h.Tenant), h.Name, h.Version, h.Enabled, Micros(h.UpdatedAt))
	if err != nil {
		return fmt.Errorf("playbooks put head %s/%s: %w", h.Tenant, h.Name, err)
	}
	return nil
}

func (s playbooks) Head(ctx context.Context, tenant event.TenantID, name string) (store.PlaybookHead, error) {
	h, err := scanPBHead(s.c.QueryRow(ctx, `SELECT `+pbHeadCols+` FROM playbook_heads WHERE tenant = ? AND name = ?`, string(tenant), name))
	if err != nil {
		return store.PlaybookHead{}, fmt.Errorf("playbooks head %s/%s: %w", tenant, name, err)
	}
	return h, nil
}

func (s playbooks) Heads(ctx context.Context, tenant event.TenantID) ([]store.PlaybookHead, error) {
	out, err := collect(ctx, s.c, scanPBHead, `SELECT `+pbHeadCols+` FROM playbook_heads WHERE tenant = ? ORDER BY name`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("playbooks heads %s: %w", tenant, err)
	}
	return out, nil
}

type mass struct{ *tx }

const massCols = `tenant, id, kind, selector, rate, state, total, cursor, processed, changed, unchanged, refused, actor, reason, error, created_at, updated_at`

func scanMassJob(r Row) (store.MassJob, error) {
	var j store.MassJob
	var tenant, cursor string
	var created, updated int64
	err := r.Scan(&tenant, &j.ID, &j.Kind, &j.Selector, &j.Rate, &j.State, &j.Total, &cursor, &j.Processed, &j.Changed,
		&j.Unchanged, &j.Refused, &j.Actor, &j.Reason, &j.Error, &created, &updated)
	j.Tenant, j.Cursor = event.TenantID(tenant), event.DeviceID(cursor)
	j.CreatedAt, j.UpdatedAt = FromMicros(created), FromMicros(updated)
	return j, err
}

func massArgs(j store.MassJob) []any {
	return []any{string(j.Tenant), j.ID, j.Kind, j.Selector, j.Rate, j.State, j.Total, string(j.Cursor), j.Processed, j.Changed,
		j.Unchanged, j.Refused, j.Actor, j.Reason, j.Error, Micros(j.CreatedAt), Micros(j.UpdatedAt)}
}

func (s mass) CreateJob(ctx context.Context, j store.MassJob) error {
	if j.Tenant == "" || j.ID == "" {
		return fmt.Errorf("mass create job: %w: tenant and id are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO mass_jobs (`+massCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		massArgs(j)...))
	if err != nil {
		return fmt.Errorf("mass create job %s/%s: %w", j.Tenant, j.ID, err)
	}
	return nil
}

func (s mass) UpdateJob(ctx context.Context, j store.MassJob) error {
	args := massArgs(j)
	args = append(args[2:], args[0], args[1])
	err := notFound(s.c.Exec(ctx, `UPDATE mass_jobs SET kind = ?, selector = ?, rate = ?, state = ?, total = ?, cursor = ?,
		processed = ?, changed = ?, unchanged = ?, refused = ?, actor = ?, reason = ?, error = ?, created_at = ?, updated_at = ?
		WHERE tenant = ? AND id = ?`, args...))
	if err != nil {
		return fmt.Errorf("mass update job %s/%s: %w", j.Tenant, j.ID, err)
	}
	return nil
}

func (s mass) Job(ctx context.Context, tenant event.TenantID, id string) (store.MassJob, error) {
	j, err := scanMassJob(s.c.QueryRow(ctx, `SELECT `+massCols+` FROM mass_jobs WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.MassJob{}, fmt.Errorf("mass job %s/%s: %w", tenant, id, err)
	}
	return j, nil
}

func (s mass) Jobs(ctx context.Context, tenant event.TenantID, state string, n int) ([]store.MassJob, error) {
	w := &where{}
	w.add(`tenant = ?`, string(tenant))
	if state != "" {
		w.add(`state = ?`, state)
	}
	out, err := collect(ctx, s.c, scanMassJob, limit(`SELECT `+massCols+` FROM mass_jobs WHERE `+w.String()+` ORDER BY created_at DESC, id DESC`, n), w.args...)
	if err != nil {
		return nil, fmt.Errorf("mass jobs %s: %w", tenant, err)
	}
	return out, nil
}

// selection builds the condition of a mass selection over devices d.
func (s mass) selection(ctx context.Context, tenant event.TenantID, sel store.MassSelection) (*where, error) {
	w, err := devices{s.tx}.filter(ctx, tenant, sel.Filter)
	if err != nil {
		return nil, err
	}
	if !sel.SeenBefore.IsZero() {
		w.add(`(d.last_seen IS NULL OR d.last_seen < ?)`, Micros(sel.SeenBefore))
	}
	if !sel.SeenSince.IsZero() {
		w.add(`d.last_seen >= ?`, Micros(sel.SeenSince))
	}
	if sel.OpenAlert != "" {
		w.add(`EXISTS (SELECT 1 FROM alerts a WHERE a.tenant = d.tenant AND a.kind = ? AND a.device = d.id AND a.state IN (?, ?))`,
			string(sel.OpenAlert), string(alert.Open), string(alert.Acknowledged))
	}
	return w, nil
}

func scanRef(r Row) (store.DeviceRef, error) {
	var id, st string
	err := r.Scan(&id, &st)
	return store.DeviceRef{ID: event.DeviceID(id), State: store.DeviceState(st)}, err
}

func (s mass) Select(ctx context.Context, tenant event.TenantID, sel store.MassSelection, after event.DeviceID, n int) ([]store.DeviceRef, error) {
	w, err := s.selection(ctx, tenant, sel)
	if err != nil {
		return nil, fmt.Errorf("mass select %s: %w", tenant, err)
	}
	if after != "" {
		w.add(`d.id > ?`, string(after))
	}
	out, err := collect(ctx, s.c, scanRef, limit(`SELECT d.id, d.state FROM devices d WHERE `+w.String()+` ORDER BY d.id`, n), w.args...)
	if err != nil {
		return nil, fmt.Errorf("mass select %s: %w", tenant, err)
	}
	return out, nil
}

func (s mass) Count(ctx context.Context, tenant event.TenantID, sel store.MassSelection) (int, error) {
	w, err := s.selection(ctx, tenant, sel)
	if err != nil {
		return 0, fmt.Errorf("mass count %s: %w", tenant, err)
	}
	var n int
	if err := s.c.QueryRow(ctx, `SELECT COUNT(*) FROM devices d WHERE `+w.String(), w.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("mass count %s: %w", tenant, err)
	}
	return n, nil
}

// maxInList bounds the ids bound in one statement (SQLite allows 32766
// parameters, PostgreSQL 65535).
const maxInList = 10000

func placeholders(n int) string {
	return "?" + strings.Repeat(", ?", n-1)
}

func (s mass) SetStates(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, from []store.DeviceState, to store.DeviceState, at time.Time) (int, error) {
	if len(from) == 0 {
		return 0, nil
	}
	total := 0
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxInList)]
		ids = ids[len(chunk):]
		args := make([]any, 0, 3+len(from)+len(chunk))
		args = append(args, string(to), Micros(at), string(tenant))
		for _, f := range from {
			args = append(args, string(f))
		}
		for _, id := range chunk {
			args = append(args, string(id))
		}
		n, err := s.c.Exec(ctx, `UPDATE devices SET state = ?, updated_at = ? WHERE tenant = ? AND state IN (`+placeholders(len(from))+
			`) AND id IN (`+placeholders(len(chunk))+`)`, args...)
		if err != nil {
			return total, fmt.Errorf("mass set states %s: %w", tenant, err)
		}
		total += int(n)
	}
	return total, nil
}

func (s mass) RevokeCertificates(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, at time.Time, reason int) ([]store.Certificate, error) {
	var out []store.Certificate
	scan := func(r Row) (store.Certificate, error) {
		c := store.Certificate{Tenant: tenant, RevokedAt: &at, RevocationReason: reason}
		var dev string
		err := r.Scan(&c.Serial, &dev, &c.Issuer)
		c.Device = event.DeviceID(dev)
		return c, err
	}
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxInList)]
		ids = ids[len(chunk):]
		args := make([]any, 0, 3+len(chunk))
		args = append(args, Micros(at), reason, string(tenant))
		for _, id := range chunk {
			args = append(args, string(id))
		}
		certs, err := collect(ctx, s.c, scan, `UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE tenant = ? AND revoked_at IS NULL
			AND device IN (`+placeholders(len(chunk))+`) RETURNING serial, device, issuer`, args...)
		if err != nil {
			return out, fmt.Errorf("mass revoke certificates %s: %w", tenant, err)
		}
		out = append(out, certs...)
	}
	return out, nil
}
