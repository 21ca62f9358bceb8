package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// CampaignState is where a firmware campaign is in its life.
type CampaignState string

// Campaign states. Running and paused campaigns are "open"; the others are
// final.
const (
	CampaignRunning   CampaignState = "running"
	CampaignPaused    CampaignState = "paused"    // by an operator or a failed gate; Reason says which
	CampaignCompleted CampaignState = "completed" // every wave passed its gate
	CampaignCancelled CampaignState = "cancelled" // by an operator
	CampaignAborted   CampaignState = "aborted"   // by a failed gate whose policy is abort
)

// Campaign is a staged firmware roll-out. Spec is the campaign's JSON
// definition (selector, waves, gates, windows...), owned by package ota and
// opaque to the store.
type Campaign struct {
	Tenant    event.TenantID `json:"tenant"`
	ID        string         `json:"id"`
	Release   string         `json:"release"` // artifact SHA-256, hex
	Spec      []byte         `json:"spec"`
	State     CampaignState  `json:"state"`
	Wave      int            `json:"wave"`   // index of the current wave, from 0
	Reason    string         `json:"reason"` // why it is paused, aborted or cancelled
	CreatedBy string         `json:"created_by"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	WaveAt    time.Time      `json:"wave_at"` // when the current wave started
	// Rev counts the updates of the record: Update is a compare-and-set
	// on it. Internal to the writers; not part of the API's view.
	Rev int64 `json:"-"`
}

// CampaignTarget is one device of a campaign.
type CampaignTarget struct {
	Tenant    event.TenantID `json:"tenant"`
	Campaign  string         `json:"campaign"`
	Device    event.DeviceID `json:"device"`
	Wave      int            `json:"wave"`
	State     string         `json:"state"` // pending, sent, then the device's ota/status states
	Reason    string         `json:"reason,omitempty"`
	Version   string         `json:"version,omitempty"` // reported after the update
	Digest    string         `json:"digest,omitempty"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// TargetCount is the number of a campaign's targets in one wave and state.
type TargetCount struct {
	Wave  int    `json:"wave"`
	State string `json:"state"`
	N     int    `json:"n"`
}

// Campaigns stores firmware campaigns and their targets.
type Campaigns interface {
	// Create adds c; ErrConflict if (tenant, id) exists; ErrInvalid
	// without tenant, id or release.
	Create(ctx context.Context, c Campaign) error
	// Get returns the campaign or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Campaign, error)
	// Update replaces Spec, State, Wave, Reason, UpdatedAt and WaveAt of
	// the campaign matched by tenant and id, if its stored Rev still
	// equals c.Rev, and stores Rev c.Rev+1: a compare-and-set, so a writer
	// working from a stale read gets ErrConflict (read again, merge, retry)
	// instead of overwriting another writer's change. ErrNotFound if
	// absent.
	Update(ctx context.Context, c Campaign) error
	// List returns the tenant's campaigns ordered by creation, then id.
	List(ctx context.Context, tenant event.TenantID) ([]Campaign, error)
	// Open returns the running and paused campaigns of every tenant,
	// ordered by tenant, then creation (what a restarted node resumes).
	Open(ctx context.Context) ([]Campaign, error)
	// PutTargets creates or replaces targets (matched by tenant, campaign
	// and device); ErrInvalid if one lacks tenant, campaign or device.
	PutTargets(ctx context.Context, ts []CampaignTarget) error
	// Targets returns up to limit (0: all) targets of the campaign with a
	// device id greater than after, ordered by device id.
	Targets(ctx context.Context, tenant event.TenantID, campaign string, after event.DeviceID, limit int) ([]CampaignTarget, error)
	// Target returns the device's target in the campaign, or ErrNotFound
	// when the campaign does not target it.
	Target(ctx context.Context, tenant event.TenantID, campaign string, device event.DeviceID) (CampaignTarget, error)
	// CountTargets returns the number of targets per wave and state,
	// ordered by wave, then state.
	CountTargets(ctx context.Context, tenant event.TenantID, campaign string) ([]TargetCount, error)
}
