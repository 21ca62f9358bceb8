package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// Rule is an operator's detection rule (a CEL expression; see
// detect.CompileRule for what is valid). Version starts at 1 and grows by
// one on every update.
type Rule struct {
	Tenant      event.TenantID `json:"tenant"`
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	Description string         `json:"description,omitempty"`
	Expr        string         `json:"expr"`
	// Kind is the alert kind the rule raises ("" = rule.<id>).
	Kind alert.Kind `json:"alert_kind,omitempty"`
	// Severity is its name (info, low, medium, high, critical).
	Severity  string       `json:"severity"`
	Events    []event.Kind `json:"events,omitempty"`
	Enabled   bool         `json:"enabled"`
	Version   int          `json:"version"`
	Actor     string       `json:"actor"` // who wrote this version
	CreatedAt time.Time    `json:"created_at"`
	UpdatedAt time.Time    `json:"updated_at"`
}

// Rules stores the operators' detection rules, per tenant.
type Rules interface {
	// Create adds r, whose Version must be 1; ErrConflict if (tenant, id)
	// exists; ErrInvalid without tenant or id.
	Create(ctx context.Context, r Rule) error
	// Update replaces the rule (tenant, id) with r if the stored version is
	// r.Version-1 (compare-and-set); ErrNotFound if absent, ErrConflict if
	// the stored version is another. CreatedAt is kept.
	Update(ctx context.Context, r Rule) error
	// Get returns the rule or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Rule, error)
	// List returns the tenant's rules ordered by id (empty if none).
	List(ctx context.Context, tenant event.TenantID) ([]Rule, error)
	// Delete removes the rule; ErrNotFound if absent.
	Delete(ctx context.Context, tenant event.TenantID, id string) error
}
