package respond

import (
	"context"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// Target is the device an action is taken against, and why.
type Target struct {
	Tenant   event.TenantID
	Device   event.DeviceID
	ActionID string
	AlertID  string
	Playbook string
	Actor    string // "automation" or the approving operator
	Reason   string // human-readable: alert kind, alert id, playbook
}

// Undo says how to reverse an action. It is stored as JSON in
// store.Action.Undo.
type Undo struct {
	// Kind: release_quarantine, resume_sim, reissue (a revoked device must
	// be re-enrolled), none (nothing to reverse).
	Kind string            `json:"kind"`
	From store.DeviceState `json:"from,omitempty"` // the state to return to
	Note string            `json:"note,omitempty"`
	// Campaigns the action paused (resume_campaigns) or started
	// (cancel_campaign).
	Campaigns []string `json:"campaigns,omitempty"`
}

// Undo kinds.
const (
	UndoReleaseQuarantine = "release_quarantine"
	UndoResumeSIM         = "resume_sim"
	UndoReissue           = "reissue"
	UndoNone              = "none"
	UndoResumeCampaigns   = "resume_campaigns" // freeze_updates: resume what it paused
	UndoCancelCampaign    = "cancel_campaign"  // schedule_update: cancel the campaign if unfinished
)

// Updates freezes the firmware rollouts that reach a device and schedules
// a device's update (serve: the campaign engine and the signed catalog).
type Updates interface {
	// FreezeUpdates pauses the tenant's running campaigns that target the
	// device; the Undo names them (none running: nothing to pause).
	FreezeUpdates(ctx context.Context, t Target) (Undo, error)
	// ThawUpdates resumes the campaigns of u that are still paused.
	ThawUpdates(ctx context.Context, t Target, u Undo) error
	// ScheduleUpdate starts an emergency campaign updating the device alone
	// to release (a catalog digest, or LatestRelease for its model).
	ScheduleUpdate(ctx context.Context, t Target, release string) (Undo, error)
	// CancelUpdate cancels the campaign of u unless it has finished.
	CancelUpdate(ctx context.Context, t Target, u Undo) error
}

// Quarantiner confines a device (registry state and broker ACL) and
// releases it.
type Quarantiner interface {
	Quarantine(ctx context.Context, t Target) (Undo, error)
	Release(ctx context.Context, t Target, u Undo) error
}

// Disconnecter ends a device's live sessions (MQTT kick, RADIUS
// Disconnect-Request). Disconnecting is not undone: the device reconnects
// when allowed.
type Disconnecter interface {
	Disconnect(ctx context.Context, t Target) error
}

// SIMBlocker suspends a device's SIM and resumes it.
type SIMBlocker interface {
	SuspendSIM(ctx context.Context, t Target) (Undo, error)
	ResumeSIM(ctx context.Context, t Target, u Undo) error
}

// Revoker revokes a device's identity. Revocation is not reversible.
type Revoker interface {
	Revoke(ctx context.Context, t Target) (Undo, error)
}

// Notification is what a notify step sends.
type Notification struct {
	Tenant   event.TenantID
	Device   event.DeviceID
	Alert    alert.Alert
	Playbook string
	Channel  string
	ActionID string
}

// Notifier delivers notifications (webhooks, mail...).
type Notifier interface {
	Notify(ctx context.Context, n Notification) error
}

// IncidentRequest asks for an incident to be opened or the alert attached to
// an open one.
type IncidentRequest struct {
	Tenant   event.TenantID
	Alert    alert.Alert
	Playbook string
	Title    string
	ActionID string
}

// Incidents opens incidents; it returns the incident id.
type Incidents interface {
	OpenIncident(ctx context.Context, r IncidentRequest) (string, error)
}

// AlertSink raises alerts of the response engine itself
// (response.blast_radius).
type AlertSink interface {
	Raise(ctx context.Context, a alert.Alert) error
}

// Publisher publishes events (action.taken) after their change is committed.
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// RegistryBackend carries out quarantine, SIM suspension and revocation as
// registry lifecycle changes (states quarantined, suspended, revoked), each
// audited by the registry. The broker enforces a quarantine from the
// registry state; suspending the SIM at the connectivity platform and
// revoking certificates are further back-ends the platform composes with
// this one.
type RegistryBackend struct {
	Registry *registry.Registry
}

var (
	_ Quarantiner = RegistryBackend{}
	_ SIMBlocker  = RegistryBackend{}
	_ Revoker     = RegistryBackend{}
)

func (b RegistryBackend) move(ctx context.Context, t Target, to store.DeviceState, undoKind string) (Undo, error) {
	c, err := b.Registry.SetState(ctx, t.Tenant, t.Device, to, t.Actor, t.Reason)
	if err != nil {
		return Undo{}, err
	}
	if !c.Changed() {
		// Someone else put it there; undoing this action must not undo theirs.
		return Undo{Kind: UndoNone, Note: "device was already " + string(to)}, nil
	}
	return Undo{Kind: undoKind, From: c.From}, nil
}

func (b RegistryBackend) back(ctx context.Context, t Target, u Undo, want store.DeviceState) error {
	if u.From == "" {
		return nil
	}
	d, err := b.Registry.Get(ctx, t.Tenant, t.Device)
	if err != nil {
		return err
	}
	if d.State != want {
		return fmt.Errorf("device is %s, not %s: %w", d.State, want, store.ErrConflict)
	}
	_, err = b.Registry.SetState(ctx, t.Tenant, t.Device, u.From, t.Actor, t.Reason)
	return err
}

// Quarantine moves the device to quarantined.
func (b RegistryBackend) Quarantine(ctx context.Context, t Target) (Undo, error) {
	return b.move(ctx, t, store.StateQuarantined, UndoReleaseQuarantine)
}

// Release returns a quarantined device to the state it had before.
func (b RegistryBackend) Release(ctx context.Context, t Target, u Undo) error {
	return b.back(ctx, t, u, store.StateQuarantined)
}

// SuspendSIM moves the device to suspended.
func (b RegistryBackend) SuspendSIM(ctx context.Context, t Target) (Undo, error) {
	return b.move(ctx, t, store.StateSuspended, UndoResumeSIM)
}

// ResumeSIM returns a suspended device to the state it had before.
func (b RegistryBackend) ResumeSIM(ctx context.Context, t Target, u Undo) error {
	return b.back(ctx, t, u, store.StateSuspended)
}

// Revoke moves the device to revoked, from which it can only be
// decommissioned.
func (b RegistryBackend) Revoke(ctx context.Context, t Target) (Undo, error) {
	u, err := b.move(ctx, t, store.StateRevoked, UndoReissue)
	if err == nil && u.Kind == UndoReissue {
		u.Note = "a revoked device is re-enrolled as a new identity"
	}
	return u, err
}

// permanent reports whether retrying err cannot help.
func permanent(err error) bool {
	return errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrInvalid) ||
		errors.Is(err, store.ErrNotFound) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
