package export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// Worker is the actor of automated delivery changes in the audit log.
const Worker = "export"

// WebhookOptions configure [Webhooks].
type WebhookOptions struct {
	Store  store.Store // required
	Clock  clock.Clock // required
	Logger *slog.Logger
	// Client sends the requests (a client with Timeout when nil). Tests
	// and operators with private CAs pass their own.
	Client *http.Client
	// MaxAttempts before a delivery is dead-lettered (default 8).
	MaxAttempts int
	// Backoff before the first retry (default 2s), doubled per attempt up
	// to MaxBackoff (default 1h).
	Backoff, MaxBackoff time.Duration
	// Timeout of one request (default 10s).
	Timeout time.Duration
	// Poll is how often Run looks for due deliveries (default 1s).
	Poll time.Duration
	// Source is the CloudEvents source attribute (default "garrison").
	Source string
	// Sealer opens the sealed webhook secrets to sign deliveries (see
	// SealSecret). Without it only secrets stored in clear (by an earlier
	// version) can sign; a sealed one fails its delivery.
	Sealer SecretSealer
}

// Webhooks is the webhook exporter: it enqueues deliveries (as the
// incident.Outbox and the respond.Notifier, and for bus events) and sends
// them ([Webhooks.Run]).
type Webhooks struct {
	o   WebhookOptions
	log *slog.Logger
}

var (
	_ incident.Outbox  = (*Webhooks)(nil)
	_ respond.Notifier = (*Webhooks)(nil)
)

// NewWebhooks returns the exporter; it starts nothing.
func NewWebhooks(o WebhookOptions) (*Webhooks, error) {
	if o.Store == nil || o.Clock == nil {
		return nil, errors.New("export: store and clock are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 8
	}
	if o.Backoff <= 0 {
		o.Backoff = 2 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Hour
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Source == "" {
		o.Source = "garrison"
	}
	if o.Client == nil {
		o.Client = NewClient(o.Timeout, false)
	}
	// Never follow redirects: a signed body must go where it was addressed.
	c := *o.Client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.Client = &c
	return &Webhooks{o: o, log: o.Logger}, nil
}

// ValidateURL checks a webhook endpoint: an absolute http or https URL with
// a host, no credentials and no fragment.
func ValidateURL(raw string) error {
	if len(raw) > 2048 {
		return errors.New("url longer than 2048 bytes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("url: %v", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return errors.New("url must be http or https")
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("url needs a host")
	}
	if u.User != nil {
		return errors.New("url must not carry credentials (the secret signs each delivery)")
	}
	if u.Fragment != "" {
		return errors.New("url must not have a fragment")
	}
	return nil
}

// ValidateEvents checks a webhook's event filter.
func ValidateEvents(events []string) error {
	for _, e := range events {
		if !slices.Contains(Types(), e) {
			return fmt.Errorf("unknown event type %q (want any of %v)", e, Types())
		}
	}
	return nil
}

func wants(w store.Webhook, typ, channel string) bool {
	if typ == TypeNotification {
		ch := w.Channel
		if ch == "" {
			ch = "default"
		}
		if channel == "" {
			channel = "default"
		}
		if ch != channel {
			return false
		}
	}
	return len(w.Events) == 0 || slices.Contains(w.Events, typ)
}

func deliveryID(webhook, eventID string) string {
	h := sha256.Sum256([]byte(webhook + "\x00" + eventID))
	return "dl-" + hex.EncodeToString(h[:12])
}

// enqueue writes, in tx, one delivery of the event to every webhook of
// tenant that wants typ (and serves channel, for notifications). An event
// enqueued again (same id) is not duplicated.
func (w *Webhooks) enqueue(ctx context.Context, tx store.Tx, tenant event.TenantID, typ, channel, id, subject string, at time.Time, data any) (int, error) {
	hooks, err := tx.Webhooks().List(ctx, tenant)
	if err != nil {
		return 0, err
	}
	var body []byte
	n := 0
	now := w.o.Clock.Now().UTC()
	for _, h := range hooks {
		if !wants(h, typ, channel) {
			continue
		}
		if body == nil {
			raw, err := json.Marshal(data)
			if err != nil {
				return 0, fmt.Errorf("export: event data: %w", err)
			}
			body, err = json.Marshal(CloudEvent{SpecVersion: "1.0", ID: id, Source: w.o.Source + "/tenants/" + string(tenant),
				Type: TypePrefix + typ, Subject: subject, Time: at.UTC(), DataContentType: "application/json", Tenant: string(tenant), Data: raw})
			if err != nil {
				return 0, fmt.Errorf("export: cloudevent: %w", err)
			}
		}
		d := store.Delivery{Tenant: tenant, ID: deliveryID(h.ID, id), Webhook: h.ID, Type: typ, Body: body,
			State: store.DeliveryPending, NextAt: now, CreatedAt: now, UpdatedAt: now}
		switch err := tx.Deliveries().Create(ctx, d); {
		case err == nil:
			n++
		case errors.Is(err, store.ErrConflict):
		default:
			return n, err
		}
	}
	return n, nil
}

// Enqueue writes deliveries of one event in its own transaction (see
// enqueue).
func (w *Webhooks) Enqueue(ctx context.Context, tenant event.TenantID, typ, id, subject string, at time.Time, data any) (int, error) {
	var n int
	err := w.o.Store.Update(ctx, func(tx store.Tx) (err error) {
		n, err = w.enqueue(ctx, tx, tenant, typ, "", id, subject, at, data)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("export: enqueue %s %s: %w", typ, id, err)
	}
	return n, nil
}

// Emit implements incident.Outbox: the change is enqueued in the change's
// own transaction.
func (w *Webhooks) Emit(ctx context.Context, tx store.Tx, c incident.Change) error {
	id := c.Incident.ID + "/" + c.Type
	if c.Entry != nil {
		id += "/" + c.Entry.ID
	}
	_, err := w.enqueue(ctx, tx, c.Incident.Tenant, c.Type, "", id, "incident/"+c.Incident.ID, c.Time, c)
	return err
}

// NotificationData is the data of a notification CloudEvent.
type NotificationData struct {
	Channel  string      `json:"channel"`
	Playbook string      `json:"playbook"`
	Action   string      `json:"action_id"`
	Alert    alert.Alert `json:"alert"`
}

// Notify implements respond.Notifier: the playbook's notify step becomes a
// notification event for every webhook serving the step's channel
// ("default" when empty). A webhook's channel is "default" unless set.
func (w *Webhooks) Notify(ctx context.Context, n respond.Notification) error {
	at := n.Alert.LastSeen
	if at.IsZero() {
		at = w.o.Clock.Now()
	}
	return w.o.Store.Update(ctx, func(tx store.Tx) error {
		_, err := w.enqueue(ctx, tx, n.Tenant, TypeNotification, n.Channel, "notify/"+n.ActionID, "device/"+string(n.Device), at,
			NotificationData{Channel: n.Channel, Playbook: n.Playbook, Action: n.ActionID, Alert: n.Alert})
		return err
	})
}

// Run sends due deliveries every Poll until ctx ends.
func (w *Webhooks) Run(ctx context.Context) error {
	t := time.NewTicker(w.o.Poll)
	defer t.Stop()
	for {
		if _, err := w.DeliverDue(ctx); err != nil && ctx.Err() == nil {
			w.log.WarnContext(ctx, "webhook deliveries", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// batch is how many due deliveries one pass claims; parallel how many are
// in flight at once.
const (
	batch    = 64
	parallel = 4
)

// DeliverDue sends every delivery due now (one pass) and returns how many
// it tried. Claimed deliveries are leased (NextAt moved past the request
// timeout) first, so a crash mid-send retries them later rather than never.
func (w *Webhooks) DeliverDue(ctx context.Context) (int, error) {
	now := w.o.Clock.Now().UTC()
	var due []store.Delivery
	err := w.o.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		if due, err = tx.Deliveries().Due(ctx, now, batch); err != nil {
			return err
		}
		for i := range due {
			d := due[i]
			d.NextAt = now.Add(2 * w.o.Timeout)
			if err := tx.Deliveries().Update(ctx, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || len(due) == 0 {
		return 0, err
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, d := range due {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := w.deliver(ctx, d); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return len(due), errors.Join(errs...)
}

// deliver sends one delivery and records its outcome.
func (w *Webhooks) deliver(ctx context.Context, d store.Delivery) error {
	var hook store.Webhook
	err := w.o.Store.View(ctx, func(tx store.Tx) (err error) {
		hook, err = tx.Webhooks().Get(ctx, d.Tenant, d.Webhook)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // deleted with its deliveries meanwhile
	}
	if err != nil {
		return err
	}
	sendErr := w.send(ctx, hook, d.Body)
	if ctx.Err() != nil {
		return nil // stopping: the lease expires and the delivery is tried again
	}
	now := w.o.Clock.Now().UTC()
	d.Attempts++
	d.UpdatedAt = now
	dead := false
	if sendErr == nil {
		d.State, d.LastError = store.DeliveryDelivered, ""
	} else {
		d.LastError = sendErr.Error()
		if len(d.LastError) > 500 {
			d.LastError = d.LastError[:500]
		}
		if d.Attempts >= w.o.MaxAttempts {
			d.State, dead = store.DeliveryDead, true
		} else {
			d.NextAt = now.Add(w.backoff(d.Attempts))
		}
	}
	rctx := context.WithoutCancel(ctx)
	err = w.o.Store.Update(rctx, func(tx store.Tx) error {
		if err := tx.Deliveries().Update(rctx, d); err != nil {
			return err
		}
		if dead {
			return audit.Record(rctx, tx, d.Tenant, now, Worker, "delivery.dead", "delivery:"+d.ID,
				map[string]any{"webhook": d.Webhook, "type": d.Type, "attempts": d.Attempts, "error": d.LastError})
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("export: record delivery %s: %w", d.ID, err)
	}
	switch {
	case dead:
		w.log.WarnContext(ctx, "webhook delivery dead-lettered", "tenant", d.Tenant, "webhook", d.Webhook, "delivery", d.ID, "attempts", d.Attempts, "err", sendErr)
	case sendErr != nil:
		w.log.InfoContext(ctx, "webhook delivery failed; will retry", "tenant", d.Tenant, "webhook", d.Webhook, "delivery", d.ID, "attempts", d.Attempts, "next", d.NextAt, "err", sendErr)
	}
	return nil
}

// backoff is the wait after the n-th failed attempt.
func (w *Webhooks) backoff(n int) time.Duration {
	b := w.o.Backoff
	for i := 1; i < n && b < w.o.MaxBackoff; i++ {
		b *= 2
	}
	return min(b, w.o.MaxBackoff)
}

func (w *Webhooks) send(ctx context.Context, hook store.Webhook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("User-Agent", "garrison-webhook/1")
	secret, err := w.openSecret(hook)
	if err != nil {
		return err
	}
	sig := Sign(secret, body, w.o.Clock.Now())
	clear(secret)
	req.Header.Set(SignatureHeader, sig)
	resp, err := w.o.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// Redrive puts a dead-lettered delivery back in the queue, due now, with
// its attempts reset, on behalf of actor (audited); ErrConflict unless it
// is dead.
func (w *Webhooks) Redrive(ctx context.Context, tenant event.TenantID, id, actor string) (store.Delivery, error) {
	now := w.o.Clock.Now().UTC()
	var d store.Delivery
	err := w.o.Store.Update(ctx, func(tx store.Tx) error {
		return Redrive(ctx, tx, tenant, id, actor, now, &d)
	})
	return d, err
}

// Redrive is [Webhooks.Redrive] inside the caller's transaction (the API's).
func Redrive(ctx context.Context, tx store.Tx, tenant event.TenantID, id, actor string, now time.Time, out *store.Delivery) error {
	d, err := tx.Deliveries().Get(ctx, tenant, id)
	if err != nil {
		return err
	}
	if d.State != store.DeliveryDead {
		return fmt.Errorf("delivery is %s, not dead: %w", d.State, store.ErrConflict)
	}
	prev := d.Attempts
	d.State, d.Attempts, d.NextAt, d.UpdatedAt = store.DeliveryPending, 0, now, now
	if err := tx.Deliveries().Update(ctx, d); err != nil {
		return err
	}
	*out = d
	return audit.Record(ctx, tx, tenant, now, actor, "delivery.redrive", "delivery:"+id,
		map[string]any{"webhook": d.Webhook, "type": d.Type, "previous_attempts": prev, "last_error": d.LastError})
}

// AlertData is the data of an alert.raised CloudEvent.
type AlertData struct {
	Alert alert.Alert `json:"alert"`
}

// ActionData is the data of an action.taken CloudEvent. IncidentID names
// the incident an open_incident step opened or joined (empty otherwise).
type ActionData struct {
	Action     store.Action `json:"action"`
	IncidentID string       `json:"incident_id,omitempty"`
}

// OnAlert enqueues alert.raised for every interested webhook; evID is the
// bus event's id (so a redelivered event is not sent twice).
func (w *Webhooks) OnAlert(ctx context.Context, a alert.Alert, evID string) error {
	_, err := w.Enqueue(ctx, a.Tenant, TypeAlertRaised, evID, "device/"+string(a.Device), a.LastSeen, AlertData{Alert: a})
	return err
}

// OnAction enqueues action.taken; incidentID is the event's incident_id
// (the incident an open_incident step opened or joined, or empty).
func (w *Webhooks) OnAction(ctx context.Context, act store.Action, incidentID, evID string) error {
	_, err := w.Enqueue(ctx, act.Tenant, TypeActionTaken, evID, "device/"+string(act.Device), act.UpdatedAt,
		ActionData{Action: act, IncidentID: incidentID})
	return err
}

// AlertStateData is the data of an alert.state_changed CloudEvent: the
// alert as it is after the move, who moved it from which state, and the
// operator's note.
type AlertStateData struct {
	Alert alert.Alert `json:"alert"`
	From  alert.State `json:"from"`
	To    alert.State `json:"to"`
	Actor string      `json:"actor"`
	Note  string      `json:"note,omitempty"`
}

// OnAlertState enqueues alert.state_changed; evID is the bus event's id.
func (w *Webhooks) OnAlertState(ctx context.Context, d AlertStateData, at time.Time, evID string) error {
	_, err := w.Enqueue(ctx, d.Alert.Tenant, TypeAlertState, evID, "device/"+string(d.Alert.Device), at, d)
	return err
}
