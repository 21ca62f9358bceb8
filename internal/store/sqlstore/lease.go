package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/store"
)

func (t *tx) Leases() store.Leases { return leases{t} }

type leases struct{ *tx }

func (s leases) Acquire(ctx context.Context, name, holder string, now, expires time.Time) (store.Lease, bool, error) {
	if name == "" || holder == "" {
		return store.Lease{}, false, fmt.Errorf("leases acquire: %w: name and holder are required", store.ErrInvalid)
	}
	if !expires.After(now) {
		return store.Lease{}, false, fmt.Errorf("leases acquire %s: %w: expiry must be after now", name, store.ErrInvalid)
	}
	// One statement: insert, or take over an expired lease, or renew our
	// own. The row lock (PostgreSQL) or the write lock (SQLite) makes it
	// a compare-and-set.
	_, err := s.c.Exec(ctx, `INSERT INTO leases (name, holder, acquired_at, expires) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires,
			acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END
		WHERE leases.holder = excluded.holder OR leases.expires <= ?`,
		name, holder, Micros(now), Micros(expires), Micros(now))
	if err != nil {
		return store.Lease{}, false, fmt.Errorf("leases acquire %s: %w", name, err)
	}
	l, err := s.Get(ctx, name)
	if err != nil {
		return store.Lease{}, false, fmt.Errorf("leases acquire %s: %w", name, err)
	}
	return l, l.Holder == holder && l.Expires.Equal(FromMicros(Micros(expires))), nil
}

func (s leases) Release(ctx context.Context, name, holder string) (bool, error) {
	n, err := s.c.Exec(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
	if err != nil {
		return false, fmt.Errorf("leases release %s: %w", name, err)
	}
	return n > 0, nil
}

func (s leases) Get(ctx context.Context, name string) (store.Lease, error) {
	var l store.Lease
	var acquired, expires int64
	err := s.c.QueryRow(ctx, `SELECT name, holder, acquired_at, expires FROM leases WHERE name = ?`, name).
		Scan(&l.Name, &l.Holder, &acquired, &expires)
	if err != nil {
		return store.Lease{}, fmt.Errorf("leases get %s: %w", name, err)
	}
	l.AcquiredAt, l.Expires = FromMicros(acquired), FromMicros(expires)
	return l, nil
}
