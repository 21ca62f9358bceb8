package store

import (
	"context"
	"time"
)

// Lease is a named claim that one node of a deployment holds until
// Expires: the node that holds the lease "ota-campaigns" runs the
// campaign engine, for instance, and the others stand by. A holder keeps
// its lease by renewing it before it expires; another node takes it over
// once it has expired. Times come from the caller's clock, so the nodes'
// clocks must agree to well within the lease's length.
type Lease struct {
	Name       string    `json:"name"`
	Holder     string    `json:"holder"`
	AcquiredAt time.Time `json:"acquired_at"` // when Holder took it (a renewal keeps it)
	Expires    time.Time `json:"expires"`
}

// Leases stores leases, one row per name.
type Leases interface {
	// Acquire takes the lease name for holder until expires, when nobody
	// holds it, its holder's expiry is at or before now, or holder
	// already holds it (a renewal, which keeps AcquiredAt). It is a
	// compare-and-set: of two holders acquiring at once, one gets it.
	// It returns the lease as it stands afterwards and whether holder
	// holds it. ErrInvalid without a name or a holder, or when expires is
	// not after now.
	Acquire(ctx context.Context, name, holder string, now, expires time.Time) (Lease, bool, error)
	// Release gives the lease up if holder holds it (another node may
	// take it at once) and reports whether it did; a lease held by
	// another holder is left alone.
	Release(ctx context.Context, name, holder string) (bool, error)
	// Get returns the lease or ErrNotFound if nobody took it (or it was
	// released).
	Get(ctx context.Context, name string) (Lease, error)
}
