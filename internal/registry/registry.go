// Package registry keeps the device registry: devices bound to their
// hardware (serial, IMEI) and SIM (ICCID, IMSI), their lifecycle state, and
// selectors that pick devices for groups and mass actions.
//
// Contract:
//   - Lifecycle transitions are enforced by [CanTransition]; a refused
//     transition returns an error matching both [ErrTransition] and
//     store.ErrConflict and changes nothing.
//   - Every change (registration, state change, SIM binding change, manifest
//     import) appends its audit record (package audit) in the same
//     store.Update as the change, so both commit or neither does.
//   - Every committed state change is published as an event.DeviceState
//     event through the optional [Publisher] after the commit. A failed
//     publish is logged; the change stays committed.
//   - Every method takes the tenant explicitly and never reads or changes a
//     device of another tenant (those are reported as store.ErrNotFound).
//   - Times come from the injected clock.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Errors returned by the registry, wrapped with the operation.
var (
	// ErrTransition: the lifecycle transition is not allowed from the
	// device's current state. Errors carrying it also match store.ErrConflict.
	ErrTransition = errors.New("registry: transition not allowed")
)

// Publisher publishes events after their change is committed.
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// Options configure a [Registry].
type Options struct {
	Store     store.Store  // required
	Clock     clock.Clock  // required
	Logger    *slog.Logger // optional; slog.Default() if nil
	Publisher Publisher    // optional; events are not published if nil
}

// Registry manages devices. It is safe for concurrent use.
type Registry struct {
	st  store.Store
	clk clock.Clock
	log *slog.Logger
	pub Publisher
}

// New returns a Registry.
func New(o Options) (*Registry, error) {
	if o.Store == nil {
		return nil, errors.New("registry: Options.Store is required")
	}
	if o.Clock == nil {
		return nil, errors.New("registry: Options.Clock is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Registry{st: o.Store, clk: o.Clock, log: o.Logger, pub: o.Publisher}, nil
}

// transitions lists, for each state, the states it may move to.
var transitions = map[store.DeviceState][]store.DeviceState{
	store.StateRegistered:     {store.StateActive, store.StateDecommissioned},
	store.StateActive:         {store.StateQuarantined, store.StateSuspended, store.StateRevoked, store.StateDecommissioned},
	store.StateQuarantined:    {store.StateActive, store.StateSuspended, store.StateRevoked, store.StateDecommissioned},
	store.StateSuspended:      {store.StateActive, store.StateQuarantined, store.StateRevoked, store.StateDecommissioned},
	store.StateRevoked:        {store.StateDecommissioned},
	store.StateDecommissioned: nil,
}

// ValidState reports whether s is a known lifecycle state.
func ValidState(s store.DeviceState) bool {
	_, ok := transitions[s]
	return ok
}

// CanTransition reports whether a device may move from one state to another.
// Staying in the same state is not a transition and reports false.
func CanTransition(from, to store.DeviceState) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Get returns the device or an error matching store.ErrNotFound.
func (r *Registry) Get(ctx context.Context, tenant event.TenantID, id event.DeviceID) (store.Device, error) {
	var d store.Device
	err := r.st.View(ctx, func(tx store.Tx) error {
		var err error
		d, err = tx.Devices().Get(ctx, tenant, id)
		return err
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("registry get %s/%s: %w", tenant, id, err)
	}
	return d, nil
}

// Register adds a device in state registered (or d.State if it is set and
// valid), after validating its identifiers (see [ValidateDevice]). It
// returns an error matching store.ErrConflict if the id, IMSI or ICCID is
// taken in the tenant, and store.ErrInvalid for bad input.
func (r *Registry) Register(ctx context.Context, d store.Device, actor string) (store.Device, error) {
	if d.State == "" {
		d.State = store.StateRegistered
	}
	if err := ValidateDevice(d); err != nil {
		return store.Device{}, fmt.Errorf("registry register: %w", err)
	}
	now := r.clk.Now().UTC()
	d.CreatedAt, d.UpdatedAt = now, now
	err := r.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Devices().Create(ctx, d); err != nil {
			return err
		}
		return audit.Record(ctx, tx, d.Tenant, now, actor, "device.register", string(d.ID), map[string]any{
			"model": d.Model, "serial": d.Serial, "imei": d.IMEI, "iccid": d.ICCID, "imsi": d.IMSI, "state": d.State,
		})
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("registry register %s/%s: %w", d.Tenant, d.ID, err)
	}
	r.publish(ctx, d.Tenant, d.ID, "", d.State, "registered", now)
	return d, nil
}

// Change is the outcome of [Registry.SetState].
type Change struct {
	Device store.Device      // the device after the call
	From   store.DeviceState // its state before the call
}

// Changed reports whether the state moved.
func (c Change) Changed() bool { return c.From != c.Device.State }

// SetState moves a device to state to. Moving a device to the state it is
// already in changes nothing, writes no audit record, publishes nothing and
// returns a Change whose Changed is false (so retries are harmless). A
// transition that [CanTransition] refuses returns an error matching
// [ErrTransition] and store.ErrConflict.
func (r *Registry) SetState(ctx context.Context, tenant event.TenantID, id event.DeviceID, to store.DeviceState, actor, reason string) (Change, error) {
	var c Change
	now := r.clk.Now().UTC()
	err := r.st.Update(ctx, func(tx store.Tx) error {
		var err error
		c.Device, c.From, err = SetStateTx(ctx, tx, tenant, id, to, actor, reason, now)
		return err
	})
	if err != nil {
		return Change{}, fmt.Errorf("registry set state %s/%s: %w", tenant, id, err)
	}
	if c.Changed() {
		r.publish(ctx, tenant, id, c.From, to, reason, now)
	}
	return c, nil
}

// SetStateTx is [Registry.SetState] inside a transaction the caller owns, so
// that a caller (the response engine) can commit the state change together
// with its own records. It returns the device after the change and the state
// it was in before. The caller publishes the event after commit (see
// [StateEvent]).
func SetStateTx(ctx context.Context, tx store.Tx, tenant event.TenantID, id event.DeviceID, to store.DeviceState, actor, reason string, now time.Time) (store.Device, store.DeviceState, error) {
	if !ValidState(to) {
		return store.Device{}, "", fmt.Errorf("%w: unknown state %q", store.ErrInvalid, to)
	}
	d, err := tx.Devices().Get(ctx, tenant, id)
	if err != nil {
		return store.Device{}, "", err
	}
	from := d.State
	if from == to {
		return d, from, nil
	}
	if !CanTransition(from, to) {
		return store.Device{}, from, fmt.Errorf("%w: %s -> %s: %w", ErrTransition, from, to, store.ErrConflict)
	}
	d.State = to
	d.UpdatedAt = now
	if err := tx.Devices().Update(ctx, d); err != nil {
		return store.Device{}, from, err
	}
	if err := audit.Record(ctx, tx, tenant, now, actor, "device.state", string(id), map[string]any{
		"from": from, "to": to, "reason": reason,
	}); err != nil {
		return store.Device{}, from, err
	}
	return d, from, nil
}

// StateEvent returns the event.DeviceState event of a committed change.
func StateEvent(tenant event.TenantID, id event.DeviceID, from, to store.DeviceState, reason string, at time.Time) *event.Event {
	return &event.Event{
		ID:     event.NewID(at),
		Tenant: tenant,
		Device: id,
		Kind:   event.DeviceState,
		Time:   at,
		Source: "registry",
		Attrs:  map[string]any{"from": string(from), "to": string(to), "reason": reason},
	}
}

func (r *Registry) publish(ctx context.Context, tenant event.TenantID, id event.DeviceID, from, to store.DeviceState, reason string, at time.Time) {
	if r.pub == nil {
		return
	}
	if err := r.pub.Publish(ctx, StateEvent(tenant, id, from, to, reason, at)); err != nil {
		r.log.WarnContext(ctx, "device state event not published", "tenant", tenant, "device", id, "err", err)
	}
}

// Binding is the SIM and hardware binding of a device.
type Binding struct {
	ICCID string `json:"iccid"`
	IMSI  string `json:"imsi"`
	IMEI  string `json:"imei"`
}

// BindSIM replaces the device's ICCID/IMSI/IMEI binding, audited with the old
// and the new values. An empty field clears that identifier. It returns an
// error matching store.ErrConflict if the IMSI is bound to another device of
// the tenant, and store.ErrInvalid for malformed identifiers. Binding the same
// values again changes nothing and writes no audit record.
func (r *Registry) BindSIM(ctx context.Context, tenant event.TenantID, id event.DeviceID, b Binding, actor string) (store.Device, error) {
	if err := validateIdentifiers(b.IMEI, b.ICCID, b.IMSI); err != nil {
		return store.Device{}, fmt.Errorf("registry bind sim %s/%s: %w", tenant, id, err)
	}
	now := r.clk.Now().UTC()
	var d store.Device
	err := r.st.Update(ctx, func(tx store.Tx) error {
		var err error
		d, err = tx.Devices().Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		old := Binding{ICCID: d.ICCID, IMSI: d.IMSI, IMEI: d.IMEI}
		if old == b {
			return nil
		}
		if b.IMSI != "" && b.IMSI != d.IMSI {
			other, err := tx.Devices().ByIMSI(ctx, tenant, b.IMSI)
			switch {
			case err == nil && other.ID != id:
				return fmt.Errorf("%w: imsi %s is bound to device %s", store.ErrConflict, b.IMSI, other.ID)
			case err != nil && !errors.Is(err, store.ErrNotFound):
				return err
			}
		}
		d.ICCID, d.IMSI, d.IMEI = b.ICCID, b.IMSI, b.IMEI
		d.UpdatedAt = now
		if err := tx.Devices().Update(ctx, d); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "device.bind_sim", string(id), map[string]any{"old": old, "new": b})
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("registry bind sim %s/%s: %w", tenant, id, err)
	}
	return d, nil
}
