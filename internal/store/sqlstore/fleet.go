package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type devices struct{ *tx }

const deviceCols = `tenant, id, name, model, serial, imei, iccid, imsi, msisdn, tags_json, groups_json, state, firmware, first_seen, last_seen, created_at, updated_at`

func encodeJSON(v any, empty string) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if string(b) == "null" {
		return empty, nil
	}
	return string(b), nil
}

func deviceJSON(d store.Device) (tags, groups string, err error) {
	if tags, err = encodeJSON(d.Tags, "{}"); err != nil {
		return "", "", fmt.Errorf("%w: tags: %v", store.ErrInvalid, err)
	}
	if groups, err = encodeJSON(d.Groups, "[]"); err != nil {
		return "", "", fmt.Errorf("%w: groups: %v", store.ErrInvalid, err)
	}
	return tags, groups, nil
}

func scanDevice(r Row) (store.Device, error) {
	var d store.Device
	var tenant, id, state, tags, groups string
	var first, last *int64
	var created, updated int64
	if err := r.Scan(&tenant, &id, &d.Name, &d.Model, &d.Serial, &d.IMEI, &d.ICCID, &d.IMSI, &d.MSISDN,
		&tags, &groups, &state, &d.Firmware, &first, &last, &created, &updated); err != nil {
		return d, err
	}
	d.Tenant, d.ID, d.State = event.TenantID(tenant), event.DeviceID(id), store.DeviceState(state)
	d.FirstSeen, d.LastSeen = fromNullMicros(first), fromNullMicros(last)
	d.CreatedAt, d.UpdatedAt = FromMicros(created), FromMicros(updated)
	if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
		return d, fmt.Errorf("device %s tags: %w", id, err)
	}
	if err := json.Unmarshal([]byte(groups), &d.Groups); err != nil {
		return d, fmt.Errorf("device %s groups: %w", id, err)
	}
	if len(d.Tags) == 0 {
		d.Tags = nil
	}
	if len(d.Groups) == 0 {
		d.Groups = nil
	}
	return d, nil
}

func (s devices) Create(ctx context.Context, d store.Device) error {
	if d.Tenant == "" || d.ID == "" {
		return fmt.Errorf("devices create: %w: tenant and id are required", store.ErrInvalid)
	}
	tags, groups, err := deviceJSON(d)
	if err != nil {
		return fmt.Errorf("devices create %s/%s: %w", d.Tenant, d.ID, err)
	}
	err = conflict(s.c.Exec(ctx, `INSERT INTO devices (`+deviceCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(d.Tenant), string(d.ID), d.Name, d.Model, d.Serial, d.IMEI, d.ICCID, d.IMSI, d.MSISDN, tags, groups,
		string(d.State), d.Firmware, nullMicros(d.FirstSeen), nullMicros(d.LastSeen), Micros(d.CreatedAt), Micros(d.UpdatedAt)))
	if err != nil {
		return fmt.Errorf("devices create %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

func (s devices) Get(ctx context.Context, tenant event.TenantID, id event.DeviceID) (store.Device, error) {
	d, err := scanDevice(s.c.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant = ? AND id = ?`, string(tenant), string(id)))
	if err != nil {
		return store.Device{}, fmt.Errorf("devices get %s/%s: %w", tenant, id, err)
	}
	return d, nil
}

func (s devices) ByIMSI(ctx context.Context, tenant event.TenantID, imsi string) (store.Device, error) {
	if imsi == "" {
		return store.Device{}, fmt.Errorf("devices by imsi %s: %w", tenant, store.ErrNotFound)
	}
	d, err := scanDevice(s.c.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant = ? AND imsi = ?`, string(tenant), imsi))
	if err != nil {
		return store.Device{}, fmt.Errorf("devices by imsi %s: %w", tenant, err)
	}
	return d, nil
}

func (s devices) Update(ctx context.Context, d store.Device) error {
	tags, groups, err := deviceJSON(d)
	if err != nil {
		return fmt.Errorf("devices update %s/%s: %w", d.Tenant, d.ID, err)
	}
	// Check the SIM bindings first: on PostgreSQL a unique violation would
	// abort the caller's transaction.
	var other string
	err = s.c.QueryRow(ctx, `SELECT id FROM devices WHERE tenant = ? AND id <> ? AND ((imsi = ? AND imsi <> '') OR (iccid = ? AND iccid <> '')) LIMIT 1`,
		string(d.Tenant), string(d.ID), d.IMSI, d.ICCID).Scan(&other)
	switch {
	case err == nil:
		return fmt.Errorf("devices update %s/%s: %w: imsi or iccid bound to %s", d.Tenant, d.ID, store.ErrConflict, other)
	case !isNotFound(err):
		return fmt.Errorf("devices update %s/%s: %w", d.Tenant, d.ID, err)
	}
	err = notFound(s.c.Exec(ctx, `UPDATE devices SET name = ?, model = ?, serial = ?, imei = ?, iccid = ?, imsi = ?, msisdn = ?,
		tags_json = ?, groups_json = ?, state = ?, firmware = ?, first_seen = ?, last_seen = ?, updated_at = ?
		WHERE tenant = ? AND id = ?`,
		d.Name, d.Model, d.Serial, d.IMEI, d.ICCID, d.IMSI, d.MSISDN, tags, groups, string(d.State), d.Firmware,
		nullMicros(d.FirstSeen), nullMicros(d.LastSeen), Micros(d.UpdatedAt), string(d.Tenant), string(d.ID)))
	if err != nil {
		return fmt.Errorf("devices update %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

// filter builds the condition of f over devices d of the tenant (After and
// Limit are the caller's). A group term reads the tenant's groups (see
// [store.Groups] for its meaning).
func (s devices) filter(ctx context.Context, tenant event.TenantID, f store.DeviceFilter) (*where, error) {
	w, err := s.deviceConds(ctx, tenant, f, nil)
	if err != nil {
		return nil, err
	}
	w.conds = append([]string{`d.tenant = ?`}, w.conds...)
	w.args = append([]any{string(tenant)}, w.args...)
	return w, nil
}

// deviceConds returns the conditions of f's terms, without the tenant's;
// seen holds the dynamic groups being resolved (see groupCond).
func (t *tx) deviceConds(ctx context.Context, tenant event.TenantID, f store.DeviceFilter, seen []string) (*where, error) {
	w := &where{}
	if f.Model != "" {
		w.add(`d.model = ?`, f.Model)
	}
	if f.State != "" {
		w.add(`d.state = ?`, string(f.State))
	}
	if f.Firmware != "" {
		w.add(`d.firmware = ?`, f.Firmware)
	}
	if f.Tag != "" {
		if k, v, ok := strings.Cut(f.Tag, "="); ok {
			w.add(t.d.TagValue, k, v)
		} else {
			w.add(t.d.TagKey, k)
		}
	}
	if f.Group != "" {
		cond, args, err := t.groupCond(ctx, tenant, f.Group, seen)
		if err != nil {
			return nil, fmt.Errorf("group %s: %w", f.Group, err)
		}
		w.add(cond, args...)
	}
	if f.IMSIPrefix != "" {
		w.add(`substr(d.imsi, 1, ?) = ?`, len([]rune(f.IMSIPrefix)), f.IMSIPrefix)
	}
	return w, nil
}

func (s devices) List(ctx context.Context, tenant event.TenantID, f store.DeviceFilter) ([]store.Device, error) {
	w, err := s.filter(ctx, tenant, f)
	if err != nil {
		return nil, fmt.Errorf("devices list %s: %w", tenant, err)
	}
	if f.After != "" {
		w.add(`d.id > ?`, string(f.After))
	}
	q := limit(`SELECT `+prefixCols("d.", deviceCols)+` FROM devices d WHERE `+w.String()+` ORDER BY d.id`, f.Limit)
	out, err := collect(ctx, s.c, scanDevice, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("devices list %s: %w", tenant, err)
	}
	return out, nil
}

func (s devices) Count(ctx context.Context, tenant event.TenantID, f store.DeviceFilter) (int, error) {
	w, err := s.filter(ctx, tenant, f)
	if err != nil {
		return 0, fmt.Errorf("devices count %s: %w", tenant, err)
	}
	var n int
	if err := s.c.QueryRow(ctx, `SELECT COUNT(*) FROM devices d WHERE `+w.String(), w.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("devices count %s: %w", tenant, err)
	}
	return n, nil
}

func prefixCols(p, cols string) string {
	parts := strings.Split(cols, ", ")
	for i := range parts {
		parts[i] = p + parts[i]
	}
	return strings.Join(parts, ", ")
}

type alerts struct{ *tx }

const alertCols = `tenant, id, device, kind, severity, detector, first_seen, last_seen, count, state, evidence_json`

func scanAlert(r Row) (alert.Alert, error) {
	var a alert.Alert
	var tenant, device, kind, state, evidence string
	var first, last int64
	if err := r.Scan(&tenant, &a.ID, &device, &kind, &a.Severity, &a.Detector, &first, &last, &a.Count, &state, &evidence); err != nil {
		return a, err
	}
	a.Tenant, a.Device, a.Kind, a.State = event.TenantID(tenant), event.DeviceID(device), alert.Kind(kind), alert.State(state)
	a.FirstSeen, a.LastSeen = FromMicros(first), FromMicros(last)
	if err := json.Unmarshal([]byte(evidence), &a.Evidence); err != nil {
		return a, fmt.Errorf("alert %s evidence: %w", a.ID, err)
	}
	return a, nil
}

func (s alerts) Put(ctx context.Context, a alert.Alert) error {
	if a.Tenant == "" || a.ID == "" {
		return fmt.Errorf("alerts put: %w: tenant and id are required", store.ErrInvalid)
	}
	ev, err := json.Marshal(a.Evidence)
	if err != nil {
		return fmt.Errorf("alerts put %s/%s: %w: evidence: %v", a.Tenant, a.ID, store.ErrInvalid, err)
	}
	_, err = s.c.Exec(ctx, `INSERT INTO alerts (`+alertCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, id) DO UPDATE SET device = excluded.device, kind = excluded.kind, severity = excluded.severity,
		detector = excluded.detector, first_seen = excluded.first_seen, last_seen = excluded.last_seen, count = excluded.count,
		state = excluded.state, evidence_json = excluded.evidence_json`,
		string(a.Tenant), a.ID, string(a.Device), string(a.Kind), int(a.Severity), a.Detector,
		Micros(a.FirstSeen), Micros(a.LastSeen), a.Count, string(a.State), string(ev))
	if err != nil {
		return fmt.Errorf("alerts put %s/%s: %w", a.Tenant, a.ID, err)
	}
	return nil
}

func (s alerts) Get(ctx context.Context, tenant event.TenantID, id string) (alert.Alert, error) {
	a, err := scanAlert(s.c.QueryRow(ctx, `SELECT `+alertCols+` FROM alerts WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return alert.Alert{}, fmt.Errorf("alerts get %s/%s: %w", tenant, id, err)
	}
	return a, nil
}

func (s alerts) List(ctx context.Context, tenant event.TenantID, f store.AlertFilter) ([]alert.Alert, error) {
	w := &where{}
	w.add(`tenant = ?`, string(tenant))
	if f.Device != "" {
		w.add(`device = ?`, string(f.Device))
	}
	if f.Kind != "" {
		w.add(`kind = ?`, string(f.Kind))
	}
	if f.State != "" {
		w.add(`state = ?`, string(f.State))
	}
	if !f.Since.IsZero() {
		w.add(`last_seen >= ?`, Micros(f.Since))
	}
	if f.Before != "" {
		w.add(`(first_seen, id) < (SELECT first_seen, id FROM alerts WHERE tenant = ? AND id = ?)`, string(tenant), f.Before)
	}
	q := limit(`SELECT `+alertCols+` FROM alerts WHERE `+w.String()+` ORDER BY first_seen DESC, id DESC`, f.Limit)
	out, err := collect(ctx, s.c, scanAlert, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("alerts list %s: %w", tenant, err)
	}
	return out, nil
}

func (s alerts) SetState(ctx context.Context, tenant event.TenantID, id string, st alert.State) error {
	if err := notFound(s.c.Exec(ctx, `UPDATE alerts SET state = ? WHERE tenant = ? AND id = ?`, string(st), string(tenant), id)); err != nil {
		return fmt.Errorf("alerts set state %s/%s: %w", tenant, id, err)
	}
	return nil
}

// CompareAndSetState sets the alert's state to to only if it is one of
// from, in one statement, so two transactions cannot both move it (at READ
// COMMITTED the loser re-reads the row and matches nothing). It reports
// whether the row changed; an absent alert is false, nil.
func (s alerts) CompareAndSetState(ctx context.Context, tenant event.TenantID, id string, from []alert.State, to alert.State) (bool, error) {
	if len(from) == 0 {
		return false, nil
	}
	q := `UPDATE alerts SET state = ? WHERE tenant = ? AND id = ? AND state IN (?` + strings.Repeat(`, ?`, len(from)-1) + `)`
	args := []any{string(to), string(tenant), id}
	for _, f := range from {
		args = append(args, string(f))
	}
	n, err := s.c.Exec(ctx, q, args...)
	if err != nil {
		return false, fmt.Errorf("alerts compare and set state %s/%s: %w", tenant, id, err)
	}
	return n > 0, nil
}

type actions struct{ *tx }

const actionCols = `tenant, id, device, kind, alert_id, playbook, actor, state, reason, undo, attempts, created_at, updated_at`

func scanAction(r Row) (store.Action, error) {
	var a store.Action
	var tenant, device, state string
	var created, updated int64
	err := r.Scan(&tenant, &a.ID, &device, &a.Kind, &a.AlertID, &a.Playbook, &a.Actor, &state, &a.Reason, &a.Undo, &a.Attempts, &created, &updated)
	a.Tenant, a.Device, a.State, a.Undo = event.TenantID(tenant), event.DeviceID(device), store.ActionState(state), nilIfEmpty(a.Undo)
	a.CreatedAt, a.UpdatedAt = FromMicros(created), FromMicros(updated)
	return a, err
}

func (s actions) Put(ctx context.Context, a store.Action) error {
	if a.Tenant == "" || a.ID == "" {
		return fmt.Errorf("actions put: %w: tenant and id are required", store.ErrInvalid)
	}
	_, err := s.c.Exec(ctx, `INSERT INTO actions (`+actionCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, id) DO UPDATE SET device = excluded.device, kind = excluded.kind, alert_id = excluded.alert_id,
		playbook = excluded.playbook, actor = excluded.actor, state = excluded.state, reason = excluded.reason,
		undo = excluded.undo, attempts = excluded.attempts, created_at = excluded.created_at, updated_at = excluded.updated_at`,
		string(a.Tenant), a.ID, string(a.Device), a.Kind, a.AlertID, a.Playbook, a.Actor, string(a.State), a.Reason,
		nilIfEmpty(a.Undo), a.Attempts, Micros(a.CreatedAt), Micros(a.UpdatedAt))
	if err != nil {
		return fmt.Errorf("actions put %s/%s: %w", a.Tenant, a.ID, err)
	}
	return nil
}

func (s actions) Get(ctx context.Context, tenant event.TenantID, id string) (store.Action, error) {
	a, err := scanAction(s.c.QueryRow(ctx, `SELECT `+actionCols+` FROM actions WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Action{}, fmt.Errorf("actions get %s/%s: %w", tenant, id, err)
	}
	return a, nil
}

func (s actions) List(ctx context.Context, tenant event.TenantID, f store.ActionFilter) ([]store.Action, error) {
	w := &where{}
	w.add(`tenant = ?`, string(tenant))
	if f.Device != "" {
		w.add(`device = ?`, string(f.Device))
	}
	if f.Kind != "" {
		w.add(`kind = ?`, f.Kind)
	}
	if f.State != "" {
		w.add(`state = ?`, string(f.State))
	}
	if !f.Since.IsZero() {
		w.add(`created_at >= ?`, Micros(f.Since))
	}
	if f.After != "" {
		w.add(`(created_at, id) > (SELECT created_at, id FROM actions WHERE tenant = ? AND id = ?)`, string(tenant), f.After)
	}
	q := limit(`SELECT `+actionCols+` FROM actions WHERE `+w.String()+` ORDER BY created_at, id`, f.Limit)
	out, err := collect(ctx, s.c, scanAction, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("actions list %s: %w", tenant, err)
	}
	return out, nil
}

func (s actions) CountDevices(ctx context.Context, tenant event.TenantID, kinds []string, since time.Time) (int, error) {
	if len(kinds) == 0 {
		return 0, nil
	}
	args := []any{string(tenant), string(store.ActionDone), string(store.ActionPending), Micros(since)}
	for _, k := range kinds {
		args = append(args, k)
	}
	q := `SELECT COUNT(DISTINCT device) FROM actions WHERE tenant = ? AND state IN (?, ?) AND created_at >= ? AND kind IN (?` +
		strings.Repeat(", ?", len(kinds)-1) + `)`
	var n int
	if err := s.c.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("actions count devices %s: %w", tenant, err)
	}
	return n, nil
}

type cas struct{ *tx }

const caCols = `tenant, id, role, cert_der, key_enc, active, trusted, not_after, created_at, revoked_at`

func scanCA(r Row) (store.CA, error) {
	var c store.CA
	var tenant string
	var notAfter, created int64
	var revoked *int64
	err := r.Scan(&tenant, &c.ID, &c.Role, &c.CertDER, &c.KeyEnc, &c.Active, &c.Trusted, &notAfter, &created, &revoked)
	c.Tenant, c.CertDER, c.KeyEnc = event.TenantID(tenant), nilIfEmpty(c.CertDER), nilIfEmpty(c.KeyEnc)
	c.NotAfter, c.CreatedAt, c.RevokedAt = FromMicros(notAfter), FromMicros(created), fromNullMicros(revoked)
	return c, err
}

func (s cas) Put(ctx context.Context, c store.CA) error {
	if c.ID == "" {
		return fmt.Errorf("cas put: %w: id is required", store.ErrInvalid)
	}
	_, err := s.c.Exec(ctx, `INSERT INTO cas (`+caCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, id) DO UPDATE SET role = excluded.role, cert_der = excluded.cert_der, key_enc = excluded.key_enc,
		active = excluded.active, trusted = excluded.trusted, not_after = excluded.not_after, created_at = excluded.created_at,
		revoked_at = excluded.revoked_at`,
		string(c.Tenant), c.ID, c.Role, nilIfEmpty(c.CertDER), nilIfEmpty(c.KeyEnc), c.Active, c.Trusted,
		Micros(c.NotAfter), Micros(c.CreatedAt), nullMicros(c.RevokedAt))
	if err != nil {
		return fmt.Errorf("cas put %q/%s: %w", c.Tenant, c.ID, err)
	}
	return nil
}

func (s cas) Get(ctx context.Context, tenant event.TenantID, id string) (store.CA, error) {
	c, err := scanCA(s.c.QueryRow(ctx, `SELECT `+caCols+` FROM cas WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.CA{}, fmt.Errorf("cas get %q/%s: %w", tenant, id, err)
	}
	return c, nil
}

func (s cas) List(ctx context.Context, tenant event.TenantID) ([]store.CA, error) {
	out, err := collect(ctx, s.c, scanCA, `SELECT `+caCols+` FROM cas WHERE tenant = ? ORDER BY created_at, id`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("cas list %q: %w", tenant, err)
	}
	return out, nil
}

type certificates struct{ *tx }

const certCols = `tenant, serial, device, issuer, der, not_before, not_after, revoked_at, revocation_reason`

func scanCert(r Row) (store.Certificate, error) {
	var c store.Certificate
	var tenant, device string
	var nb, na int64
	var revoked *int64
	err := r.Scan(&tenant, &c.Serial, &device, &c.Issuer, &c.DER, &nb, &na, &revoked, &c.RevocationReason)
	c.Tenant, c.Device, c.DER = event.TenantID(tenant), event.DeviceID(device), nilIfEmpty(c.DER)
	c.NotBefore, c.NotAfter, c.RevokedAt = FromMicros(nb), FromMicros(na), fromNullMicros(revoked)
	return c, err
}

func (s certificates) Create(ctx context.Context, c store.Certificate) error {
	if c.Tenant == "" || c.Serial == "" {
		return fmt.Errorf("certificates create: %w: tenant and serial are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO certificates (`+certCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(c.Tenant), c.Serial, string(c.Device), c.Issuer, nilIfEmpty(c.DER), Micros(c.NotBefore), Micros(c.NotAfter),
		nullMicros(c.RevokedAt), c.RevocationReason))
	if err != nil {
		return fmt.Errorf("certificates create %s/%s: %w", c.Tenant, c.Serial, err)
	}
	return nil
}

func (s certificates) Get(ctx context.Context, tenant event.TenantID, serial string) (store.Certificate, error) {
	c, err := scanCert(s.c.QueryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE tenant = ? AND serial = ?`, string(tenant), serial))
	if err != nil {
		return store.Certificate{}, fmt.Errorf("certificates get %s/%s: %w", tenant, serial, err)
	}
	return c, nil
}

func (s certificates) ByDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID) ([]store.Certificate, error) {
	out, err := collect(ctx, s.c, scanCert, `SELECT `+certCols+` FROM certificates WHERE tenant = ? AND device = ? ORDER BY not_before DESC, serial DESC`,
		string(tenant), string(device))
	if err != nil {
		return nil, fmt.Errorf("certificates by device %s/%s: %w", tenant, device, err)
	}
	return out, nil
}

func (s certificates) Revoke(ctx context.Context, tenant event.TenantID, serial string, at time.Time, reason int) error {
	err := notFound(s.c.Exec(ctx, `UPDATE certificates SET
		revocation_reason = CASE WHEN revoked_at IS NULL THEN ? ELSE revocation_reason END,
		revoked_at = COALESCE(revoked_at, ?) WHERE tenant = ? AND serial = ?`,
		reason, Micros(at), string(tenant), serial))
	if err != nil {
		return fmt.Errorf("certificates revoke %s/%s: %w", tenant, serial, err)
	}
	return nil
}

func (s certificates) Revoked(ctx context.Context, tenant event.TenantID, issuer string, now time.Time) ([]store.Certificate, error) {
	out, err := collect(ctx, s.c, scanCert, `SELECT `+certCols+` FROM certificates
		WHERE tenant = ? AND issuer = ? AND revoked_at IS NOT NULL AND not_after >= ? ORDER BY serial`,
		string(tenant), issuer, Micros(now))
	if err != nil {
		return nil, fmt.Errorf("certificates revoked %s/%s: %w", tenant, issuer, err)
	}
	return out, nil
}
