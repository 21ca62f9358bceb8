package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// PlaybookVersion is one uploaded version of a tenant's named playbook.
// Versions of a name start at 1 and have no gaps.
type PlaybookVersion struct {
	Tenant    event.TenantID `json:"tenant"`
	Name      string         `json:"name"`
	Version   int            `json:"version"`
	YAML      string         `json:"yaml"`
	Actor     string         `json:"actor"`
	CreatedAt time.Time      `json:"created_at"`
}

// PlaybookHead is the current state of a tenant's named playbook: the
// version that runs (0 for a built-in default the tenant has not replaced)
// and whether it runs at all.
type PlaybookHead struct {
	Tenant    event.TenantID `json:"tenant"`
	Name      string         `json:"name"`
	Version   int            `json:"version"`
	Enabled   bool           `json:"enabled"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// Playbooks stores the response engine's per-tenant playbooks.
type Playbooks interface {
	// PutVersion adds v; ErrConflict if (tenant, name, version) exists.
	PutVersion(ctx context.Context, v PlaybookVersion) error
	// Version returns one version or ErrNotFound.
	Version(ctx context.Context, tenant event.TenantID, name string, version int) (PlaybookVersion, error)
	// Versions returns every version of name, oldest first (empty if none).
	Versions(ctx context.Context, tenant event.TenantID, name string) ([]PlaybookVersion, error)
	// PutHead creates or replaces the head of (tenant, name).
	PutHead(ctx context.Context, h PlaybookHead) error
	// Head returns the head of (tenant, name) or ErrNotFound.
	Head(ctx context.Context, tenant event.TenantID, name string) (PlaybookHead, error)
	// Heads returns every head of the tenant ordered by name.
	Heads(ctx context.Context, tenant event.TenantID) ([]PlaybookHead, error)
}

// MassJob is a mass action over the devices a selector picks, run in
// pages in device-id order. Cursor is the last device id handled: a job is
// resumed after it, so a page is never handled twice.
type MassJob struct {
	Tenant    event.TenantID `json:"tenant"`
	ID        string         `json:"id"`
	Kind      string         `json:"kind"`     // quarantine, revoke, kick
	Selector  string         `json:"selector"` // canonical text form
	Rate      int            `json:"rate"`     // devices per second; 0 = as fast as possible
	State     string         `json:"state"`    // running, done, failed, canceled
	Total     int            `json:"total"`    // devices selected when the job was created
	Cursor    event.DeviceID `json:"cursor,omitempty"`
	Processed int            `json:"processed"` // devices handled so far
	Changed   int            `json:"changed"`   // devices acted on
	Unchanged int            `json:"unchanged"` // already in the target state
	Refused   int            `json:"refused"`   // transition not allowed from their state
	Actor     string         `json:"actor"`
	Reason    string         `json:"reason,omitempty"`
	Error     string         `json:"error,omitempty"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// MassSelection is the stored form of a mass-action selector: a
// DeviceFilter (After and Limit ignored) plus the terms only mass actions
// have. Zero fields match everything.
type MassSelection struct {
	Filter DeviceFilter
	// SeenBefore: devices last seen before this time, or never seen.
	SeenBefore time.Time
	// SeenSince: devices last seen at or after this time.
	SeenSince time.Time
	// OpenAlert: devices with an open or acknowledged alert of this kind.
	OpenAlert alert.Kind
}

// DeviceRef is a device's id and state.
type DeviceRef struct {
	ID    event.DeviceID
	State DeviceState
}

// Mass stores mass-action jobs and applies their changes set-wise.
type Mass interface {
	// CreateJob adds j; ErrConflict if (tenant, id) exists.
	CreateJob(ctx context.Context, j MassJob) error
	// UpdateJob replaces j (matched by tenant and id); ErrNotFound if absent.
	UpdateJob(ctx context.Context, j MassJob) error
	// Job returns the job or ErrNotFound.
	Job(ctx context.Context, tenant event.TenantID, id string) (MassJob, error)
	// Jobs returns the tenant's jobs, newest first; state "" means any.
	Jobs(ctx context.Context, tenant event.TenantID, state string, limit int) ([]MassJob, error)
	// Select returns up to limit selected devices with id > after, in id
	// order.
	Select(ctx context.Context, tenant event.TenantID, s MassSelection, after event.DeviceID, limit int) ([]DeviceRef, error)
	// Count returns the number of selected devices.
	Count(ctx context.Context, tenant event.TenantID, s MassSelection) (int, error)
	// SetStates moves the listed devices of the tenant that are in one of
	// from to state to (updated_at = at) in one statement and returns how
	// many moved. Devices in another state, absent, or of another tenant
	// are left alone.
	SetStates(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, from []DeviceState, to DeviceState, at time.Time) (int, error)
	// RevokeCertificates marks every unrevoked certificate of the listed
	// devices of the tenant revoked at at with the RFC 5280 reason, and
	// returns those it marked (tenant, serial, device and issuer set; in
	// no particular order).
	RevokeCertificates(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, at time.Time, reason int) ([]Certificate, error)
}
