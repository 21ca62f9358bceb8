package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// GroupKind says how a group's members are decided.
type GroupKind string

// Group kinds.
const (
	// GroupStatic: the members are the devices whose Groups list the name.
	GroupStatic GroupKind = "static"
	// GroupDynamic: the members are the devices whose Groups list the name
	// plus every device its Selector matches, evaluated at query time.
	GroupDynamic GroupKind = "dynamic"
)

// Group is a named set of a tenant's devices.
type Group struct {
	Tenant      event.TenantID
	Name        string
	Description string
	Kind        GroupKind
	// Selector is a dynamic group's rule in store form (package registry
	// converts its text form); it is zero for a static group. After and
	// Limit are never set.
	Selector  DeviceFilter
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Groups stores device groups.
//
// Membership semantics, applied by every [Devices] List and Count (and so by
// mass actions, revocations and campaigns): a [DeviceFilter] with Group G
// matches a device whose Groups list G, or, when G is a dynamic group of the
// tenant, a device its Selector matches. A Selector's own Group term is
// resolved the same way, recursively; a chain of group terms that comes back
// to a group already being resolved stops there (only static membership
// counts for that step), so a cycle that two concurrent writers created
// still evaluates. Create and Update refuse the cycles they can see.
type Groups interface {
	// Create adds g. ErrConflict if (tenant, name) exists. ErrInvalid if
	// the tenant or name is empty, the kind is unknown, a static group has
	// a selector, a dynamic group has none (or one with After or Limit),
	// or the dynamic group's chain of Selector group terms leads back to g.
	Create(ctx context.Context, g Group) error
	// Get returns the group or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, name string) (Group, error)
	// List returns the tenant's groups ordered by name.
	List(ctx context.Context, tenant event.TenantID) ([]Group, error)
	// Update replaces Description, Selector and UpdatedAt of the group
	// matched by tenant and name. ErrNotFound if absent; ErrInvalid if
	// g.Kind differs from the stored kind or g breaks a rule of Create.
	Update(ctx context.Context, g Group) error
	// Delete removes the group and the name from the Groups of every device
	// of the tenant, returning the ids of those devices in id order.
	// ErrNotFound if absent.
	Delete(ctx context.Context, tenant event.TenantID, name string) ([]event.DeviceID, error)
}
