package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// IncidentState is where an incident is in its life. Allowed transitions
// are enforced by package incident; the store only compares and sets.
type IncidentState string

// Incident states, in their usual order.
const (
	IncidentOpen       IncidentState = "open"
	IncidentContained  IncidentState = "contained"
	IncidentEradicated IncidentState = "eradicated"
	IncidentRecovered  IncidentState = "recovered"
	IncidentClosed     IncidentState = "closed"
)

// Incident gathers alerts, actions and notes about one security problem.
//
// StartedAt is the first sign of the problem (the earliest evidence event
// of its alerts), DetectedAt the first alert's FirstSeen (both the opening
// time for an incident opened by hand without alerts). The state times are
// set when the incident first reaches that state.
type Incident struct {
	Tenant       event.TenantID `json:"tenant"`
	ID           string         `json:"id"`
	Title        string         `json:"title"`
	State        IncidentState  `json:"state"`
	Severity     alert.Severity `json:"severity"`
	Kind         alert.Kind     `json:"kind,omitempty"`   // the alert kind that opened it (its runbook)
	Device       event.DeviceID `json:"device,omitempty"` // the first device involved
	OpenedBy     string         `json:"opened_by"`        // "automation" or an operator id
	StartedAt    time.Time      `json:"started_at"`
	DetectedAt   time.Time      `json:"detected_at"`
	OpenedAt     time.Time      `json:"opened_at"`
	ContainedAt  *time.Time     `json:"contained_at,omitempty"`
	EradicatedAt *time.Time     `json:"eradicated_at,omitempty"`
	RecoveredAt  *time.Time     `json:"recovered_at,omitempty"`
	ClosedAt     *time.Time     `json:"closed_at,omitempty"`
	UpdatedAt    time.Time      `json:"updated_at"`
}

// Timeline entry kinds.
const (
	EntryOpened = "opened" // the incident was opened
	EntryAlert  = "alert"  // an alert was attached (Ref alert:ID)
	EntryAction = "action" // a response action was taken (Ref action:ID)
	EntryNote   = "note"   // an operator wrote a note
	EntryState  = "state"  // the state changed
)

// IncidentEntry is one line of an incident's timeline. ID is unique within
// the incident; entries about a record use the record's reference as their
// ID (alert:ID, action:ID), so the same record is never on a timeline twice.
type IncidentEntry struct {
	Tenant   event.TenantID `json:"tenant"`
	Incident string         `json:"incident"`
	ID       string         `json:"id"`
	Time     time.Time      `json:"time"`
	Kind     string         `json:"kind"`
	Actor    string         `json:"actor"`
	Text     string         `json:"text"`
	Data     []byte         `json:"data,omitempty"` // JSON object
}

// IncidentFilter selects incidents; zero fields match everything.
type IncidentFilter struct {
	State  IncidentState
	Device event.DeviceID
	Open   bool // only incidents not closed
	Limit  int
}

// Incidents stores incidents and their timelines.
type Incidents interface {
	// Create adds inc; ErrConflict if (tenant, id) exists; ErrInvalid
	// without tenant, id or title.
	Create(ctx context.Context, inc Incident) error
	// Get returns the incident or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Incident, error)
	// List returns matching incidents, newest OpenedAt first.
	List(ctx context.Context, tenant event.TenantID, f IncidentFilter) ([]Incident, error)
	// Update replaces every mutable field of inc (title, state, severity,
	// started, detected and state times, updated) only if the stored state
	// is still expect, in one statement (two concurrent transitions cannot
	// both win); ErrConflict if the state differs, ErrNotFound if absent.
	Update(ctx context.Context, inc Incident, expect IncidentState) error
	// AddEntry appends e to its incident's timeline; ErrConflict if the
	// incident already has an entry with e.ID, ErrNotFound if the incident
	// is absent.
	AddEntry(ctx context.Context, e IncidentEntry) error
	// Timeline returns the incident's entries ordered by time, then id.
	Timeline(ctx context.Context, tenant event.TenantID, incident string) ([]IncidentEntry, error)
	// WithEntry returns the ids of the tenant's incidents holding an entry
	// with that id (for example alert:ID), oldest first.
	WithEntry(ctx context.Context, tenant event.TenantID, entryID string) ([]string, error)
}

// Webhook is a tenant's export endpoint. Secret keys the HMAC-SHA256
// signature of every delivery; it is never returned by the API. The store
// keeps whatever bytes it is given: package export seals the secret under
// the key passphrase before it is stored.
type Webhook struct {
	Tenant    event.TenantID `json:"tenant"`
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	URL       string         `json:"url"`
	Secret    []byte         `json:"-"`
	Events    []string       `json:"events"`  // event types it receives; empty: all
	Channel   string         `json:"channel"` // the notify channel it serves
	CreatedAt time.Time      `json:"created_at"`
}

// Webhooks stores webhook endpoints.
type Webhooks interface {
	// Create adds w; ErrConflict if (tenant, id) or (tenant, name) exists.
	Create(ctx context.Context, w Webhook) error
	// Get returns the webhook or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Webhook, error)
	// List returns the tenant's webhooks ordered by name.
	List(ctx context.Context, tenant event.TenantID) ([]Webhook, error)
	// Delete removes the webhook and its deliveries; ErrNotFound if absent.
	Delete(ctx context.Context, tenant event.TenantID, id string) error
	// SetSecret replaces the webhook's stored secret (a re-sealed form);
	// ErrNotFound if absent, ErrInvalid if secret is empty.
	SetSecret(ctx context.Context, tenant event.TenantID, id string, secret []byte) error
}

// DeliveryState is where a webhook delivery is in its life.
type DeliveryState string

// Delivery states.
const (
	DeliveryPending   DeliveryState = "pending"   // will be (re)tried at NextAt
	DeliveryDelivered DeliveryState = "delivered" // the endpoint answered 2xx
	DeliveryDead      DeliveryState = "dead"      // gave up: on the dead-letter list
)

// Delivery is one event owed to one webhook. Body is the exact bytes sent
// (a CloudEvent in structured JSON mode).
type Delivery struct {
	Tenant    event.TenantID `json:"tenant"`
	ID        string         `json:"id"`
	Webhook   string         `json:"webhook"`
	Type      string         `json:"type"`
	Body      []byte         `json:"-"`
	State     DeliveryState  `json:"state"`
	Attempts  int            `json:"attempts"`
	NextAt    time.Time      `json:"next_at"`
	LastError string         `json:"last_error,omitempty"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// Deliveries is the durable outbox of webhook deliveries.
type Deliveries interface {
	// Create adds d; ErrConflict if (tenant, id) exists (enqueueing the
	// same event twice is a no-op for callers that ignore it); ErrNotFound
	// if its webhook is absent.
	Create(ctx context.Context, d Delivery) error
	// Get returns the delivery or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Delivery, error)
	// Update replaces state, attempts, next_at, last_error and updated_at;
	// ErrNotFound if absent.
	Update(ctx context.Context, d Delivery) error
	// List returns the tenant's deliveries in state (all when empty),
	// newest CreatedAt first.
	List(ctx context.Context, tenant event.TenantID, state DeliveryState, limit int) ([]Delivery, error)
	// Due returns pending deliveries of every tenant whose NextAt is at or
	// before now, earliest NextAt first (the export worker's queue; the one
	// method that spans tenants).
	Due(ctx context.Context, now time.Time, limit int) ([]Delivery, error)
}
