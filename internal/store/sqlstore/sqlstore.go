// Package sqlstore implements every concern of [store.Tx] once, in plain SQL,
// for the drivers in store/sqlite and store/postgres.
//
// A driver supplies a [Conn] bound to one open transaction and a [Dialect]
// with the few fragments that differ between SQL engines. Queries are written
// with `?` placeholders; a driver whose engine numbers its parameters
// rewrites them in its Conn (see [Rebind]).
//
// Both schemas share table and column names (see each driver's migrations):
// times are BIGINT microseconds since the Unix epoch in UTC, nullable times
// are NULL when absent, raw bytes (hashes, DER, JSON documents whose exact
// bytes matter) are BLOB/bytea, and Tags and Groups are JSON.
//
// Uniqueness conflicts are detected with INSERT ... ON CONFLICT DO NOTHING
// and a row count, or with a SELECT before an UPDATE, so that a conflict
// never aborts the caller's transaction on engines (PostgreSQL) where a
// failed statement would.
package sqlstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Conn runs statements inside one transaction.
type Conn interface {
	// Exec runs a statement and returns the number of rows it changed. A
	// uniqueness violation is returned wrapping store.ErrConflict.
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	// Query runs a query returning rows.
	Query(ctx context.Context, query string, args ...any) (Rows, error)
	// QueryRow runs a query returning at most one row; its Scan returns an
	// error wrapping store.ErrNotFound when there is none.
	QueryRow(ctx context.Context, query string, args ...any) Row
}

// Deferrer is implemented by a Conn that can hold a statement back and
// send it with the next statement or before the commit, in one round trip
// (PostgreSQL pipelines them). check gets the statement's row count. An
// error of a deferred statement, or of its check, is returned by the call
// that sends it: a later Exec, Query or QueryRow (whose own statement then
// does not count), or the commit. Only bulk writes whose caller fails the
// whole transaction on any error use it (see bulk.go), and the audit lock.
type Deferrer interface {
	ExecDeferred(ctx context.Context, query string, check func(n int64) error, args ...any)
}

// execChecked runs a statement, deferred if c can, and checks its row
// count.
func execChecked(ctx context.Context, c Conn, q string, check func(n int64) error, args ...any) error {
	if d, ok := c.(Deferrer); ok {
		d.ExecDeferred(ctx, q, check, args...)
		return nil
	}
	n, err := c.Exec(ctx, q, args...)
	if err != nil {
		return err
	}
	return check(n)
}

// Rows iterates over a result.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// Row is one result row.
type Row interface {
	Scan(dest ...any) error
}

// Dialect holds what differs between engines.
type Dialect struct {
	// TagKey returns a condition true when the device row (alias d) has a tag
	// with the key bound to the one placeholder it contains.
	TagKey string
	// TagValue is like TagKey with two placeholders: key, then value.
	TagValue string
	// Group returns a condition true when the device row (alias d) is in
	// the group bound to its one placeholder.
	Group string
	// LockAuditHead, if set, is called by AuditLog.Head in a read-write
	// transaction before reading the head, to serialize appends per tenant.
	LockAuditHead func(ctx context.Context, c Conn, tenant event.TenantID) error
	// Arrays: the engine takes Go slices as array parameters, so bulk
	// statements (bulk.go) bind one array per column with unnest and
	// = ANY, one statement whatever the count, instead of multi-row
	// VALUES and IN lists.
	Arrays bool
}

// NewTx returns the concerns of one transaction. writable is false inside
// View.
func NewTx(c Conn, d *Dialect, writable bool) store.Tx {
	return &tx{c: c, d: d, writable: writable}
}

type tx struct {
	c        Conn
	d        *Dialect
	writable bool
}

var _ store.Tx = (*tx)(nil)

func (t *tx) Tenants() store.Tenants           { return tenants{t} }
func (t *tx) Operators() store.Operators       { return operators{t} }
func (t *tx) Tokens() store.Tokens             { return tokens{t} }
func (t *tx) Audit() store.AuditLog            { return auditLog{t} }
func (t *tx) Settings() store.Settings         { return settings{t} }
func (t *tx) Devices() store.Devices           { return devices{t} }
func (t *tx) Alerts() store.Alerts             { return alerts{t} }
func (t *tx) Actions() store.Actions           { return actions{t} }
func (t *tx) CAs() store.CAs                   { return cas{t} }
func (t *tx) Certificates() store.Certificates { return certificates{t} }
func (t *tx) Incidents() store.Incidents       { return incidents{t} }
func (t *tx) Webhooks() store.Webhooks         { return webhooks{t} }
func (t *tx) Deliveries() store.Deliveries     { return deliveries{t} }
func (t *tx) Playbooks() store.Playbooks       { return playbooks{t} }
func (t *tx) Mass() store.Mass                 { return mass{t} }
func (t *tx) Campaigns() store.Campaigns       { return campaigns{t} }

// Rebind rewrites `?` placeholders as $1, $2, ... It does not look inside
// string literals, so queries given to it must not contain `?` in one.
func Rebind(q string) string {
	if strings.IndexByte(q, '?') < 0 {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// Micros encodes a time as stored: microseconds since the epoch, UTC.
func Micros(t time.Time) int64 { return t.UnixMicro() }

// FromMicros decodes a stored time.
func FromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullMicros(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMicro()
}

func fromNullMicros(v *int64) *time.Time {
	if v == nil {
		return nil
	}
	t := FromMicros(*v)
	return &t
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// notFound reports a zero row count as ErrNotFound.
func notFound(n int64, err error) error {
	if err != nil {
		return err
	}
	if n == 0 {
		return store.ErrNotFound
	}
	return nil
}

// conflict reports a zero row count of an INSERT ... ON CONFLICT DO NOTHING
// as ErrConflict.
func conflict(n int64, err error) error {
	if err != nil {
		return err
	}
	if n == 0 {
		return store.ErrConflict
	}
	return nil
}

// collect runs q and scans every row with scan.
func collect[T any](ctx context.Context, c Conn, scan func(Row) (T, error), q string, args ...any) ([]T, error) {
	rows, err := c.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// where builds a conjunction of conditions and their arguments.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

func (w *where) String() string { return strings.Join(w.conds, " AND ") }

func limit(q string, n int) string {
	if n > 0 {
		return q + " LIMIT " + strconv.Itoa(n)
	}
	return q
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
