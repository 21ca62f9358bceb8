package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Bulk forms of a few single-row operations, for callers that commit many
// changes in one transaction (identity's group commit of enrolments). They
// are not part of the store interfaces: a caller finds them with a type
// assertion and falls back to the single-row methods. Writes are deferred
// where the Conn can (see Deferrer).
//
// On an engine with array parameters (Dialect.Arrays: PostgreSQL) each
// operation is one statement whatever the count, binding one array per
// column (unnest, = ANY). Elsewhere (SQLite, where a statement costs no
// round trip) a write carries up to 64 rows of VALUES, a count being split
// into chunks of 64, 16, 4 and 1 rows, and a read an IN list of 64, 16, 4
// or 1 keys (padded by repeating the last), so that a few statement texts
// are prepared and cached whatever the count. There the multi-row inserts
// say OR IGNORE rather than ON CONFLICT DO NOTHING (the callers count the
// rows written either way): a statement that may abort half-way (a NOT NULL
// column with the default ABORT) makes SQLite copy every page it touches
// to a statement journal first, which spills to a temporary file past
// 64 KiB; one that cannot abort needs none.

// chunks calls fn with consecutive [lo, hi) ranges covering n rows.
func chunks(n int, fn func(lo, hi int) error) error {
	lo := 0
	for _, size := range [...]int{64, 16, 4, 1} {
		for n-lo >= size {
			if err := fn(lo, lo+size); err != nil {
				return err
			}
			lo += size
		}
	}
	return nil
}

// padded calls fn with consecutive [lo, hi) ranges covering n keys of an
// IN list and the list's length, size (64, 16, 4 or 1, at least hi-lo):
// the caller repeats the last key to fill it, which changes nothing in a
// SELECT or UPDATE and needs one statement per 64 keys.
func padded(n int, fn func(lo, hi, size int) error) error {
	for lo := 0; lo < n; {
		size := 64
		for _, s := range [...]int{1, 4, 16} {
			if n-lo <= s {
				size = s
				break
			}
		}
		hi := min(lo+size, n)
		if err := fn(lo, hi, size); err != nil {
			return err
		}
		lo = hi
	}
	return nil
}

// inList is padded for an engine without array parameters; with them
// (Dialect.Arrays) it calls fn once for all n keys.
func (t *tx) inList(n int, fn func(lo, hi, size int) error) error {
	if t.d.Arrays {
		if n == 0 {
			return nil
		}
		return fn(0, n, n)
	}
	return padded(n, fn)
}

// strs converts ids to the []string an array parameter takes.
func strs[T ~string](ids []T) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = string(id)
	}
	return out
}

// appendPadded appends keys as arguments, then the last one again up to
// size.
func appendPadded[T ~string](args []any, keys []T, size int) []any {
	for _, k := range keys {
		args = append(args, string(k))
	}
	for range size - len(keys) {
		args = append(args, string(keys[len(keys)-1]))
	}
	return args
}

// rowsWant returns a check that n rows changed, else err.
func rowsWant(n int, err error) func(int64) error {
	return func(got int64) error {
		if got != int64(n) {
			return fmt.Errorf("%w: %d of %d rows", err, got, n)
		}
		return nil
	}
}

// marks returns n groups of the placeholder group g joined by commas:
// marks(2, "(?, ?)") is "(?, ?), (?, ?)".
func marks(n int, g string) string {
	var b strings.Builder
	b.Grow(n * (len(g) + 2))
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(g)
	}
	return b.String()
}

// GetMany returns the values of the keys present among keys.
func (s settings) GetMany(ctx context.Context, tenant event.TenantID, keys []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(keys))
	err := s.inList(len(keys), func(lo, hi, size int) error {
		var rows Rows
		var err error
		if s.d.Arrays {
			rows, err = s.c.Query(ctx, `SELECT name, value FROM settings WHERE tenant = ? AND name = ANY(?::text[])`, string(tenant), keys)
		} else {
			args := appendPadded(append(make([]any, 0, 1+size), string(tenant)), keys[lo:hi], size)
			rows, err = s.c.Query(ctx, `SELECT name, value FROM settings WHERE tenant = ? AND name IN (`+marks(size, "?")+`)`, args...)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var v []byte
			if err := rows.Scan(&k, &v); err != nil {
				return err
			}
			if v == nil {
				v = []byte{}
			}
			out[k] = v
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("settings get many %q: %w", tenant, err)
	}
	return out, nil
}

// PutMany creates or replaces keys[i] with values[i]; the keys must be
// distinct.
func (s settings) PutMany(ctx context.Context, tenant event.TenantID, keys []string, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("settings put many: %w: %d keys, %d values", store.ErrInvalid, len(keys), len(values))
	}
	if s.d.Arrays {
		for _, k := range keys {
			if k == "" {
				return fmt.Errorf("settings put many: %w: empty key", store.ErrInvalid)
			}
		}
		vals := make([][]byte, len(values))
		for i, v := range values {
			if vals[i] = v; v == nil {
				vals[i] = []byte{}
			}
		}
		err := execChecked(ctx, s.c, `INSERT INTO settings (tenant, name, value) SELECT ?::text, * FROM unnest(?::text[], ?::bytea[])
			ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value`, func(int64) error { return nil }, string(tenant), keys, vals)
		if err != nil {
			return fmt.Errorf("settings put many %q: %w", tenant, err)
		}
		return nil
	}
	err := chunks(len(keys), func(lo, hi int) error {
		args := make([]any, 0, 3*(hi-lo))
		for i := lo; i < hi; i++ {
			if keys[i] == "" {
				return fmt.Errorf("%w: empty key", store.ErrInvalid)
			}
			v := values[i]
			if v == nil {
				v = []byte{}
			}
			args = append(args, string(tenant), keys[i], v)
		}
		return execChecked(ctx, s.c, `INSERT INTO settings (tenant, name, value) VALUES `+marks(hi-lo, "(?, ?, ?)")+`
			ON CONFLICT (tenant, name) DO UPDATE SET value = excluded.value`, func(int64) error { return nil }, args...)
	})
	if err != nil {
		return fmt.Errorf("settings put many %q: %w", tenant, err)
	}
	return nil
}

// GetMany returns the devices of the tenant among ids; absent ones are
// not in the map.
func (s devices) GetMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID) (map[event.DeviceID]store.Device, error) {
	out := make(map[event.DeviceID]store.Device, len(ids))
	err := s.inList(len(ids), func(lo, hi, size int) error {
		var rows Rows
		var err error
		if s.d.Arrays {
			rows, err = s.c.Query(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant = ? AND id = ANY(?::text[])`, string(tenant), strs(ids))
		} else {
			args := appendPadded(append(make([]any, 0, 1+size), string(tenant)), ids[lo:hi], size)
			rows, err = s.c.Query(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant = ? AND id IN (`+marks(size, "?")+`)`, args...)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			d, err := scanDevice(rows)
			if err != nil {
				return err
			}
			out[d.ID] = d
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("devices get many %s: %w", tenant, err)
	}
	return out, nil
}

// SetStateMany moves the devices ids, all distinct and in state from, to
// state to, stamping updated_at; ErrConflict if any is absent or in
// another state. It checks no transition rule: the caller does (see
// registry.CanTransition).
func (s devices) SetStateMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, from, to store.DeviceState, at time.Time) error {
	err := s.inList(len(ids), func(lo, hi, size int) error {
		if s.d.Arrays {
			return execChecked(ctx, s.c, `UPDATE devices SET state = ?, updated_at = ? WHERE tenant = ? AND state = ? AND id = ANY(?::text[])`,
				rowsWant(len(ids), store.ErrConflict), string(to), Micros(at), string(tenant), string(from), strs(ids))
		}
		args := appendPadded(append(make([]any, 0, 4+size), string(to), Micros(at), string(tenant), string(from)), ids[lo:hi], size)
		return execChecked(ctx, s.c, `UPDATE devices SET state = ?, updated_at = ? WHERE tenant = ? AND state = ? AND id IN (`+marks(size, "?")+`)`,
			rowsWant(hi-lo, store.ErrConflict), args...)
	})
	if err != nil {
		return fmt.Errorf("devices set state many %s: %w", tenant, err)
	}
	return nil
}

// CreateMany stores new certificates; ErrConflict (and nothing counted as
// stored by the caller: its transaction must fail) if any serial is taken.
func (s certificates) CreateMany(ctx context.Context, cs []store.Certificate) error {
	if s.d.Arrays {
		var cols struct {
			tenant, serial, device, issuer []string
			der                            [][]byte
			nb, na                         []int64
			revoked                        []*int64
			reason                         []int32
		}
		for _, c := range cs {
			if c.Tenant == "" || c.Serial == "" {
				return fmt.Errorf("certificates create many: %w: tenant and serial are required", store.ErrInvalid)
			}
			var revoked *int64
			if c.RevokedAt != nil {
				us := Micros(*c.RevokedAt)
				revoked = &us
			}
			cols.tenant, cols.serial = append(cols.tenant, string(c.Tenant)), append(cols.serial, c.Serial)
			cols.device, cols.issuer = append(cols.device, string(c.Device)), append(cols.issuer, c.Issuer)
			cols.der = append(cols.der, nilIfEmpty(c.DER))
			cols.nb, cols.na = append(cols.nb, Micros(c.NotBefore)), append(cols.na, Micros(c.NotAfter))
			cols.revoked, cols.reason = append(cols.revoked, revoked), append(cols.reason, int32(c.RevocationReason))
		}
		err := execChecked(ctx, s.c, `INSERT INTO certificates (`+certCols+`)
			SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::bytea[], ?::bigint[], ?::bigint[], ?::bigint[], ?::int[])
			ON CONFLICT DO NOTHING`, rowsWant(len(cs), store.ErrConflict),
			cols.tenant, cols.serial, cols.device, cols.issuer, cols.der, cols.nb, cols.na, cols.revoked, cols.reason)
		if err != nil {
			return fmt.Errorf("certificates create many: %w", err)
		}
		return nil
	}
	err := chunks(len(cs), func(lo, hi int) error {
		args := make([]any, 0, 9*(hi-lo))
		for _, c := range cs[lo:hi] {
			if c.Tenant == "" || c.Serial == "" {
				return fmt.Errorf("%w: tenant and serial are required", store.ErrInvalid)
			}
			args = append(args, string(c.Tenant), c.Serial, string(c.Device), c.Issuer, nilIfEmpty(c.DER), Micros(c.NotBefore), Micros(c.NotAfter),
				nullMicros(c.RevokedAt), c.RevocationReason)
		}
		return execChecked(ctx, s.c, `INSERT OR IGNORE INTO certificates (`+certCols+`) VALUES `+marks(hi-lo, "(?, ?, ?, ?, ?, ?, ?, ?, ?)"),
			rowsWant(hi-lo, store.ErrConflict), args...)
	})
	if err != nil {
		return fmt.Errorf("certificates create many: %w", err)
	}
	return nil
}

// AppendMany writes records whose Seq, PrevHash and Hash the caller
// computed; ErrConflict if any Seq is taken.
func (s auditLog) AppendMany(ctx context.Context, rs []store.AuditRecord) error {
	if s.d.Arrays {
		var cols struct {
			tenant, actor, action, target []string
			seq, time                     []int64
			details, prev, hash           [][]byte
		}
		for _, a := range rs {
			if a.Tenant == "" || a.Seq < 1 {
				return fmt.Errorf("audit append many: %w: tenant and seq >= 1 are required", store.ErrInvalid)
			}
			cols.tenant, cols.seq, cols.time = append(cols.tenant, string(a.Tenant)), append(cols.seq, a.Seq), append(cols.time, Micros(a.Time))
			cols.actor, cols.action, cols.target = append(cols.actor, a.Actor), append(cols.action, a.Action), append(cols.target, a.Target)
			cols.details, cols.prev, cols.hash = append(cols.details, nilIfEmpty(a.Details)), append(cols.prev, a.PrevHash), append(cols.hash, a.Hash)
		}
		err := execChecked(ctx, s.c, `INSERT INTO audit (`+auditCols+`)
			SELECT * FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::text[], ?::text[], ?::text[], ?::bytea[], ?::bytea[], ?::bytea[])
			ON CONFLICT DO NOTHING`, rowsWant(len(rs), store.ErrConflict),
			cols.tenant, cols.seq, cols.time, cols.actor, cols.action, cols.target, cols.details, cols.prev, cols.hash)
		if err != nil {
			return fmt.Errorf("audit append many: %w", err)
		}
		return nil
	}
	err := chunks(len(rs), func(lo, hi int) error {
		args := make([]any, 0, 9*(hi-lo))
		for _, a := range rs[lo:hi] {
			if a.Tenant == "" || a.Seq < 1 {
				return fmt.Errorf("%w: tenant and seq >= 1 are required", store.ErrInvalid)
			}
			args = append(args, string(a.Tenant), a.Seq, Micros(a.Time), a.Actor, a.Action, a.Target, nilIfEmpty(a.Details), a.PrevHash, a.Hash)
		}
		return execChecked(ctx, s.c, `INSERT OR IGNORE INTO audit (`+auditCols+`) VALUES `+marks(hi-lo, "(?, ?, ?, ?, ?, ?, ?, ?, ?)"),
			rowsWant(hi-lo, store.ErrConflict), args...)
	})
	if err != nil {
		return fmt.Errorf("audit append many: %w", err)
	}
	return nil
}
