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

type incidents struct{ *tx }

const incidentCols = `tenant, id, title, state, severity, kind, device, opened_by, started_at, detected_at, opened_at,
	contained_at, eradicated_at, recovered_at, closed_at, updated_at`

func scanIncident(r Row) (store.Incident, error) {
	var i store.Incident
	var tenant, state, kind, device string
	var started, detected, opened, updated int64
	var contained, eradicated, recovered, closed *int64
	if err := r.Scan(&tenant, &i.ID, &i.Title, &state, &i.Severity, &kind, &device, &i.OpenedBy, &started, &detected, &opened,
		&contained, &eradicated, &recovered, &closed, &updated); err != nil {
		return i, err
	}
	i.Tenant, i.State, i.Kind, i.Device = event.TenantID(tenant), store.IncidentState(state), alert.Kind(kind), event.DeviceID(device)
	i.StartedAt, i.DetectedAt, i.OpenedAt, i.UpdatedAt = FromMicros(started), FromMicros(detected), FromMicros(opened), FromMicros(updated)
	i.ContainedAt, i.EradicatedAt = fromNullMicros(contained), fromNullMicros(eradicated)
	i.RecoveredAt, i.ClosedAt = fromNullMicros(recovered), fromNullMicros(closed)
	return i, nil
}

func (s incidents) Create(ctx context.Context, i store.Incident) error {
	if i.Tenant == "" || i.ID == "" || strings.TrimSpace(i.Title) == "" {
		return fmt.Errorf("incidents create: %w: tenant, id and title are required", store.ErrInvalid)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO incidents (`+incidentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(i.Tenant), i.ID, i.Title, string(i.State), int(i.Severity), string(i.Kind), string(i.Device), i.OpenedBy,
		Micros(i.StartedAt), Micros(i.DetectedAt), Micros(i.OpenedAt), nullMicros(i.ContainedAt), nullMicros(i.EradicatedAt),
		nullMicros(i.RecoveredAt), nullMicros(i.ClosedAt), Micros(i.UpdatedAt)))
	if err != nil {
		return fmt.Errorf("incidents create %s/%s: %w", i.Tenant, i.ID, err)
	}
	return nil
}

func (s incidents) Get(ctx context.Context, tenant event.TenantID, id string) (store.Incident, error) {
	i, err := scanIncident(s.c.QueryRow(ctx, `SELECT `+incidentCols+` FROM incidents WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Incident{}, fmt.Errorf("incidents get %s/%s: %w", tenant, id, err)
	}
	return i, nil
}

func (s incidents) List(ctx context.Context, tenant event.TenantID, f store.IncidentFilter) ([]store.Incident, error) {
	w := &where{}
	w.add(`tenant = ?`, string(tenant))
	if f.State != "" {
		w.add(`state = ?`, string(f.State))
	}
	if f.Device != "" {
		w.add(`device = ?`, string(f.Device))
	}
	if f.Open {
		w.add(`state <> ?`, string(store.IncidentClosed))
	}
	q := limit(`SELECT `+incidentCols+` FROM incidents WHERE `+w.String()+` ORDER BY opened_at DESC, id DESC`, f.Limit)
	out, err := collect(ctx, s.c, scanIncident, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("incidents list %s: %w", tenant, err)
	}
	return out, nil
}

func (s incidents) Update(ctx context.Context, i store.Incident, expect store.IncidentState) error {
	n, err := s.c.Exec(ctx, `UPDATE incidents SET title = ?, state = ?, severity = ?, started_at = ?, detected_at = ?,
		contained_at = ?, eradicated_at = ?, recovered_at = ?, closed_at = ?, updated_at = ?
		WHERE tenant = ? AND id = ? AND state = ?`,
		i.Title, string(i.State), int(i.Severity), Micros(i.StartedAt), Micros(i.DetectedAt),
		nullMicros(i.ContainedAt), nullMicros(i.EradicatedAt), nullMicros(i.RecoveredAt), nullMicros(i.ClosedAt), Micros(i.UpdatedAt),
		string(i.Tenant), i.ID, string(expect))
	if err != nil {
		return fmt.Errorf("incidents update %s/%s: %w", i.Tenant, i.ID, err)
	}
	if n > 0 {
		return nil
	}
	cur, err := s.Get(ctx, i.Tenant, i.ID)
	if err != nil {
		return fmt.Errorf("incidents update: %w", err)
	}
	return fmt.Errorf("incidents update %s/%s: %w: state is %s, not %s", i.Tenant, i.ID, store.ErrConflict, cur.State, expect)
}

const entryCols = `tenant, incident, id, time, kind, actor, text, data`

func scanEntry(r Row) (store.IncidentEntry, error) {
	var e store.IncidentEntry
	var tenant string
	var at int64
	if err := r.Scan(&tenant, &e.Incident, &e.ID, &at, &e.Kind, &e.Actor, &e.Text, &e.Data); err != nil {
		return e, err
	}
	e.Tenant, e.Time, e.Data = event.TenantID(tenant), FromMicros(at), nilIfEmpty(e.Data)
	return e, nil
}

func (s incidents) AddEntry(ctx context.Context, e store.IncidentEntry) error {
	if e.ID == "" || e.Kind == "" {
		return fmt.Errorf("incidents add entry: %w: id and kind are required", store.ErrInvalid)
	}
	if len(e.Data) > 0 && !json.Valid(e.Data) {
		return fmt.Errorf("incidents add entry: %w: data is not JSON", store.ErrInvalid)
	}
	var one int
	if err := s.c.QueryRow(ctx, `SELECT 1 FROM incidents WHERE tenant = ? AND id = ?`, string(e.Tenant), e.Incident).Scan(&one); err != nil {
		return fmt.Errorf("incidents add entry %s/%s: %w", e.Tenant, e.Incident, err)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO incident_entries (`+entryCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(e.Tenant), e.Incident, e.ID, Micros(e.Time), e.Kind, e.Actor, e.Text, nilIfEmpty(e.Data)))
	if err != nil {
		return fmt.Errorf("incidents add entry %s/%s/%s: %w", e.Tenant, e.Incident, e.ID, err)
	}
	return nil
}

func (s incidents) Timeline(ctx context.Context, tenant event.TenantID, incident string) ([]store.IncidentEntry, error) {
	out, err := collect(ctx, s.c, scanEntry, `SELECT `+entryCols+` FROM incident_entries WHERE tenant = ? AND incident = ? ORDER BY time, id`,
		string(tenant), incident)
	if err != nil {
		return nil, fmt.Errorf("incidents timeline %s/%s: %w", tenant, incident, err)
	}
	return out, nil
}

func (s incidents) WithEntry(ctx context.Context, tenant event.TenantID, entryID string) ([]string, error) {
	out, err := collect(ctx, s.c, func(r Row) (string, error) {
		var id string
		err := r.Scan(&id)
		return id, err
	}, `SELECT e.incident FROM incident_entries e JOIN incidents i ON i.tenant = e.tenant AND i.id = e.incident
		WHERE e.tenant = ? AND e.id = ? ORDER BY i.opened_at, i.id`, string(tenant), entryID)
	if err != nil {
		return nil, fmt.Errorf("incidents with entry %s/%s: %w", tenant, entryID, err)
	}
	return out, nil
}

type webhooks struct{ *tx }

const webhookCols = `tenant, id, name, url, secret, events_json, channel, created_at`

func scanWebhook(r Row) (store.Webhook, error) {
	var w store.Webhook
	var tenant, events string
	var created int64
	if err := r.Scan(&tenant, &w.ID, &w.Name, &w.URL, &w.Secret, &events, &w.Channel, &created); err != nil {
		return w, err
	}
	w.Tenant, w.CreatedAt = event.TenantID(tenant), FromMicros(created)
	if err := json.Unmarshal([]byte(events), &w.Events); err != nil {
		return w, fmt.Errorf("webhook %s events: %w", w.ID, err)
	}
	return w, nil
}

func (s webhooks) Create(ctx context.Context, w store.Webhook) error {
	if w.Tenant == "" || w.ID == "" || w.Name == "" || w.URL == "" || len(w.Secret) == 0 {
		return fmt.Errorf("webhooks create: %w: tenant, id, name, url and secret are required", store.ErrInvalid)
	}
	events, err := encodeJSON(w.Events, "[]")
	if err != nil {
		return fmt.Errorf("webhooks create: %w: %v", store.ErrInvalid, err)
	}
	err = conflict(s.c.Exec(ctx, `INSERT INTO webhooks (`+webhookCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(w.Tenant), w.ID, w.Name, w.URL, w.Secret, events, w.Channel, Micros(w.CreatedAt)))
	if err != nil {
		return fmt.Errorf("webhooks create %s/%s: %w", w.Tenant, w.Name, err)
	}
	return nil
}

func (s webhooks) Get(ctx context.Context, tenant event.TenantID, id string) (store.Webhook, error) {
	w, err := scanWebhook(s.c.QueryRow(ctx, `SELECT `+webhookCols+` FROM webhooks WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Webhook{}, fmt.Errorf("webhooks get %s/%s: %w", tenant, id, err)
	}
	return w, nil
}

func (s webhooks) List(ctx context.Context, tenant event.TenantID) ([]store.Webhook, error) {
	out, err := collect(ctx, s.c, scanWebhook, `SELECT `+webhookCols+` FROM webhooks WHERE tenant = ? ORDER BY name`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("webhooks list %s: %w", tenant, err)
	}
	return out, nil
}

func (s webhooks) Delete(ctx context.Context, tenant event.TenantID, id string) error {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM webhooks WHERE tenant = ? AND id = ?`, string(tenant), id)); err != nil {
		return fmt.Errorf("webhooks delete %s/%s: %w", tenant, id, err)
	}
	if _, err := s.c.Exec(ctx, `DELETE FROM deliveries WHERE tenant = ? AND webhook = ?`, string(tenant), id); err != nil {
		return fmt.Errorf("webhooks delete %s/%s deliveries: %w", tenant, id, err)
	}
	return nil
}

func (s webhooks) SetSecret(ctx context.Context, tenant event.TenantID, id string, secret []byte) error {
	if len(secret) == 0 {
		return fmt.Errorf("webhooks set secret %s/%s: %w: empty secret", tenant, id, store.ErrInvalid)
	}
	if err := notFound(s.c.Exec(ctx, `UPDATE webhooks SET secret = ? WHERE tenant = ? AND id = ?`, secret, string(tenant), id)); err != nil {
		return fmt.Errorf("webhooks set secret %s/%s: %w", tenant, id, err)
	}
	return nil
}

type deliveries struct{ *tx }

const deliveryCols = `tenant, id, webhook, type, body, state, attempts, next_at, last_error, created_at, updated_at`

func scanDelivery(r Row) (store.Delivery, error) {
	var d store.Delivery
	var tenant, state string
	var next, created, updated int64
	if err := r.Scan(&tenant, &d.ID, &d.Webhook, &d.Type, &d.Body, &state, &d.Attempts, &next, &d.LastError, &created, &updated); err != nil {
		return d, err
	}
	d.Tenant, d.State = event.TenantID(tenant), store.DeliveryState(state)
	d.NextAt, d.CreatedAt, d.UpdatedAt = FromMicros(next), FromMicros(created), FromMicros(updated)
	return d, nil
}

func (s deliveries) Create(ctx context.Context, d store.Delivery) error {
	if d.Tenant == "" || d.ID == "" || d.Webhook == "" || d.Type == "" || len(d.Body) == 0 {
		return fmt.Errorf("deliveries create: %w: tenant, id, webhook, type and body are required", store.ErrInvalid)
	}
	var one int
	if err := s.c.QueryRow(ctx, `SELECT 1 FROM webhooks WHERE tenant = ? AND id = ?`, string(d.Tenant), d.Webhook).Scan(&one); err != nil {
		return fmt.Errorf("deliveries create %s/%s webhook %s: %w", d.Tenant, d.ID, d.Webhook, err)
	}
	err := conflict(s.c.Exec(ctx, `INSERT INTO deliveries (`+deliveryCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(d.Tenant), d.ID, d.Webhook, d.Type, d.Body, string(d.State), d.Attempts, Micros(d.NextAt), d.LastError,
		Micros(d.CreatedAt), Micros(d.UpdatedAt)))
	if err != nil {
		return fmt.Errorf("deliveries create %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

func (s deliveries) Get(ctx context.Context, tenant event.TenantID, id string) (store.Delivery, error) {
	d, err := scanDelivery(s.c.QueryRow(ctx, `SELECT `+deliveryCols+` FROM deliveries WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Delivery{}, fmt.Errorf("deliveries get %s/%s: %w", tenant, id, err)
	}
	return d, nil
}

func (s deliveries) Update(ctx context.Context, d store.Delivery) error {
	err := notFound(s.c.Exec(ctx, `UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated_at = ?
		WHERE tenant = ? AND id = ?`,
		string(d.State), d.Attempts, Micros(d.NextAt), d.LastError, Micros(d.UpdatedAt), string(d.Tenant), d.ID))
	if err != nil {
		return fmt.Errorf("deliveries update %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

func (s deliveries) List(ctx context.Context, tenant event.TenantID, state store.DeliveryState, n int) ([]store.Delivery, error) {
	w := &where{}
	w.add(`tenant = ?`, string(tenant))
	if state != "" {
		w.add(`state = ?`, string(state))
	}
	out, err := collect(ctx, s.c, scanDelivery, limit(`SELECT `+deliveryCols+` FROM deliveries WHERE `+w.String()+` ORDER BY created_at DESC, id DESC`, n), w.args...)
	if err != nil {
		return nil, fmt.Errorf("deliveries list %s: %w", tenant, err)
	}
	return out, nil
}

func (s deliveries) Due(ctx context.Context, now time.Time, n int) ([]store.Delivery, error) {
	out, err := collect(ctx, s.c, scanDelivery, limit(`SELECT `+deliveryCols+` FROM deliveries WHERE state = ? AND next_at <= ? ORDER BY next_at, tenant, id`, n),
		string(store.DeliveryPending), Micros(now))
	if err != nil {
		return nil, fmt.Errorf("deliveries due: %w", err)
	}
	return out, nil
}
