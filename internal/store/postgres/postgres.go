// Package postgres is the scale-out [store.Store] on PostgreSQL (or a
// PostgreSQL-compatible cluster) through pgx v5.
//
// Durability: a committed Update has been flushed to the server's WAL
// (synchronous_commit = on, PostgreSQL's default; do not turn it off for a
// Garrison database). Concurrency: Update runs at READ COMMITTED and is
// retried, up to a few times, on serialization failures and deadlocks
// (SQLSTATE 40001, 40P01); AuditLog.Head inside Update takes a
// transaction-scoped advisory lock on the tenant, so audit appends of one
// tenant serialize while other tenants proceed. View runs at REPEATABLE READ,
// READ ONLY: one consistent snapshot.
//
// The schema is migrated with goose at Open from the SQL files embedded under
// migrations/ into the configured schema (WithSchema), recorded in its
// goose_db_version table.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// auditLockClass namespaces Garrison's advisory locks (the first key of
// pg_advisory_xact_lock(int, int)).
const auditLockClass = 0x6761 // "ga"

var dialect = &sqlstore.Dialect{
	TagKey:   `(d.tags_json ->> (?::text)) IS NOT NULL`,
	TagValue: `d.tags_json @> jsonb_build_object(?::text, ?::text)`,
	Group:    `d.groups_json @> jsonb_build_array(?::text)`,
	Arrays:   true,
	// The lock is deferred: it travels with the head query that follows it
	// (one round trip for both).
	LockAuditHead: func(ctx context.Context, c sqlstore.Conn, tenant event.TenantID) error {
		c.(*conn).ExecDeferred(ctx, `SELECT pg_advisory_xact_lock(?, hashtext(?))`, func(int64) error { return nil }, auditLockClass, string(tenant))
		return nil
	},
}

// DB is a PostgreSQL-backed store.Store.
type DB struct {
	pool     *pgxpool.Pool
	attempts int
}

var _ store.Store = (*DB)(nil)

type options struct {
	schema   string
	attempts int
}

// Option configures Open.
type Option func(*options)

// WithSchema keeps every table in schema (created if absent) by setting the
// connections' search_path. Tests use it to run in a private schema. The
// name must be a plain identifier: [a-z_][a-z0-9_]*, at most 63 bytes.
func WithSchema(schema string) Option { return func(o *options) { o.schema = schema } }

// WithAttempts sets how many times Update runs fn when the transaction
// fails with a serialization failure or deadlock (default 5).
func WithAttempts(n int) Option { return func(o *options) { o.attempts = max(1, n) } }

// Open connects to url (a postgres:// URL or key=value DSN) and applies
// pending migrations.
func Open(ctx context.Context, url string, opts ...Option) (*DB, error) {
	o := options{attempts: 5}
	for _, f := range opts {
		f(&o)
	}
	if o.schema != "" && !plainIdent(o.schema) {
		return nil, fmt.Errorf("postgres open: %w: schema %q is not [a-z_][a-z0-9_]*", store.ErrInvalid, o.schema)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	if o.schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = o.schema
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	if o.schema != "" {
		if _, err := pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{o.schema}.Sanitize()); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres open: create schema: %w", err)
		}
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	return &DB{pool: pool, attempts: o.attempts}, nil
}

func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	return nil
}

// Update implements store.Store.
func (db *DB) Update(ctx context.Context, fn func(store.Tx) error) error {
	var err error
	for attempt := range db.attempts {
		err = db.run(ctx, beginUpdate, true, fn)
		if !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(attempt+1) * 5 * time.Millisecond):
		}
	}
	return err
}

// View implements store.Store.
func (db *DB) View(ctx context.Context, fn func(store.Tx) error) error {
	return db.run(ctx, beginView, false, fn)
}

// The statements that open Update's and View's transactions.
const (
	beginUpdate = `BEGIN ISOLATION LEVEL READ COMMITTED`
	beginView   = `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`
)

// run runs fn in a transaction on a pooled connection. BEGIN is deferred:
// it travels in the pipeline of the transaction's first statement (one
// round trip fewer than pgx.Tx, which waits for it), and a transaction
// that ran no statement sends nothing. COMMIT travels with the deferred
// writes when none of them has a check to pass first (a check runs here,
// on the result, so COMMIT must wait for it).
func (db *DB) run(ctx context.Context, begin string, writable bool, fn func(store.Tx) error) error {
	pc, err := db.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres begin: %w", err)
	}
	// Release destroys a connection left in a transaction (or broken).
	defer pc.Release()
	c := &conn{tx: pc}
	c.pending = append(c.pending, deferred{query: begin})
	committed := false
	defer func() {
		if c.begun && !committed {
			_, _ = pc.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	if err := fn(sqlstore.NewTx(c, dialect, writable)); err != nil {
		return err
	}
	if !c.begun && len(c.pending) == 1 {
		return nil // no statement but BEGIN: nothing to send
	}
	for _, d := range c.pending {
		if d.check != nil {
			br, err := c.send(ctx, "", nil)
			if err != nil {
				return err
			}
			if err := br.Close(); err != nil {
				return mapErr(err)
			}
			break
		}
	}
	br, err := c.send(ctx, "COMMIT", nil)
	if err != nil {
		return err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && tag.String() == "ROLLBACK" {
		err = pgx.ErrTxCommitRollback
	}
	if err != nil {
		return fmt.Errorf("postgres commit: %w", mapErr(err))
	}
	committed = true
	return nil
}

// Close waits for acquired connections to be released and closes the pool.
func (db *DB) Close() error {
	db.pool.Close()
	return nil
}

func plainIdent(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// conn adapts a connection in a transaction to sqlstore.Conn. It
// implements sqlstore.Deferrer: deferred statements (BEGIN first) are sent
// in one pipeline (pgx.Batch) with the next statement, or with COMMIT.
type conn struct {
	tx      querier
	pending []deferred
	begun   bool // BEGIN was sent
}

// querier is what conn uses of a *pgxpool.Conn.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

type deferred struct {
	query string
	args  []any
	check func(int64) error // nil: none
}

var (
	_ sqlstore.Conn     = (*conn)(nil)
	_ sqlstore.Deferrer = (*conn)(nil)
)

// ExecDeferred implements sqlstore.Deferrer.
func (c *conn) ExecDeferred(ctx context.Context, q string, check func(int64) error, args ...any) {
	c.pending = append(c.pending, deferred{sqlstore.Rebind(q), args, check})
}

// send starts a pipeline of the pending statements and then q (if not
// empty), reads and checks the pending ones' results, and returns the
// batch positioned at q's result; the caller closes it. On error the batch
// is closed.
func (c *conn) send(ctx context.Context, q string, args []any) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	for _, d := range c.pending {
		b.Queue(d.query, d.args...)
	}
	if q != "" {
		b.Queue(q, args...)
	}
	pending := c.pending
	c.pending = nil
	c.begun = true
	br := c.tx.SendBatch(ctx, b)
	for _, d := range pending {
		tag, err := br.Exec()
		if err == nil && d.check != nil {
			err = d.check(tag.RowsAffected())
		}
		if err != nil {
			_ = br.Close()
			return nil, mapErr(err)
		}
	}
	return br, nil
}

func (c *conn) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	if len(c.pending) > 0 {
		br, err := c.send(ctx, sqlstore.Rebind(q), args)
		if err != nil {
			return 0, err
		}
		tag, err := br.Exec()
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, mapErr(err)
		}
		return tag.RowsAffected(), nil
	}
	tag, err := c.tx.Exec(ctx, sqlstore.Rebind(q), args...)
	if err != nil {
		return 0, mapErr(err)
	}
	return tag.RowsAffected(), nil
}

func (c *conn) Query(ctx context.Context, q string, args ...any) (sqlstore.Rows, error) {
	if len(c.pending) > 0 {
		br, err := c.send(ctx, sqlstore.Rebind(q), args)
		if err != nil {
			return nil, err
		}
		rows, err := br.Query()
		if err != nil {
			_ = br.Close()
			return nil, mapErr(err)
		}
		return &batchRows{Rows: rows, br: br}, nil
	}
	rows, err := c.tx.Query(ctx, sqlstore.Rebind(q), args...)
	if err != nil {
		return nil, mapErr(err)
	}
	return rows, nil
}

func (c *conn) QueryRow(ctx context.Context, q string, args ...any) sqlstore.Row {
	if len(c.pending) > 0 {
		br, err := c.send(ctx, sqlstore.Rebind(q), args)
		if err != nil {
			return errRow{err}
		}
		return batchRow{br.QueryRow(), br}
	}
	return row{c.tx.QueryRow(ctx, sqlstore.Rebind(q), args...)}
}

type row struct{ r pgx.Row }

func (r row) Scan(dest ...any) error { return mapErr(r.r.Scan(dest...)) }

type errRow struct{ err error }

func (r errRow) Scan(dest ...any) error { return r.err }

// batchRow is the last result of a pipeline: scanning it closes the batch.
type batchRow struct {
	r  pgx.Row
	br pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.r.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return mapErr(err)
}

// batchRows are the last result of a pipeline: closing them closes the
// batch.
type batchRows struct {
	pgx.Rows
	br  pgx.BatchResults
	err error
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if r.br != nil {
		r.err = r.br.Close()
		r.br = nil
	}
}

// Err is called after the rows were read: it closes the batch too, to
// report its error.
func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return mapErr(err)
	}
	r.Close()
	return mapErr(r.err)
}

// mapErr turns "no rows" into store.ErrNotFound and unique violations into
// store.ErrConflict, keeping the driver's error in the chain.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return fmt.Errorf("%w: %w", store.ErrConflict, err)
	}
	return err
}
