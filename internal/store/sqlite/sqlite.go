// Package sqlite is the embedded [store.Store]: one SQLite file in the data
// directory, through the pure-Go modernc.org/sqlite driver (no cgo).
//
// Durability: the database runs in WAL mode with synchronous=FULL, so a
// committed Update has its WAL frames fsync'd before Update returns; a power
// cut loses no acknowledged transaction. Concurrency: one writer connection
// serializes every Update (so audit appends of a tenant never race), while
// View transactions read snapshots from a pool of read-only connections and
// never block the writer. Do not call Update or View from inside Update.
//
// The schema is migrated with goose at Open from the SQL files embedded
// under migrations/; the applied versions are recorded in goose_db_version.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"runtime"
	"sync"

	"github.com/pressly/goose/v3"
	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// dialect holds SQLite's JSON fragments (JSON1 is built into the driver).
var dialect = &sqlstore.Dialect{
	TagKey:   `EXISTS (SELECT 1 FROM json_each(d.tags_json) j WHERE j.key = ?)`,
	TagValue: `EXISTS (SELECT 1 FROM json_each(d.tags_json) j WHERE j.key = ? AND j.value = ?)`,
	Group:    `EXISTS (SELECT 1 FROM json_each(d.groups_json) j WHERE j.value = ?)`,
}

// DB is a SQLite-backed store.Store.
type DB struct {
	w      *sql.DB // exactly one connection: every Update
	r      *sql.DB // read-only connections: every View
	stmts  stmtCache
	rstmts stmtCache // the readers' (a View's point lookups: half their CPU is parsing)
}

// stmtCache keeps the prepared statements of one pool (the writer, or the
// readers): parsing SQL is half the CPU of a small write or point read. A
// statement cannot be prepared on the writer while a transaction holds its
// only connection, so a miss is remembered and prepared after that
// transaction ends (on the readers too, which may all be busy). Dynamic queries beyond the cap are
// not cached.
type stmtCache struct {
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	pending map[string]bool
}

const stmtCacheCap = 256

// get returns the prepared statement for q, or nil after noting q as wanted.
func (c *stmtCache) get(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[q]; ok {
		return st
	}
	if len(c.m)+len(c.pending) < stmtCacheCap {
		if c.pending == nil {
			c.pending = map[string]bool{}
		}
		c.pending[q] = true
	}
	return nil
}

// prepare prepares the wanted statements on db; call it while no
// transaction of this goroutine holds the writer.
func (c *stmtCache) prepare(ctx context.Context, db *sql.DB) {
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for q := range pending {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			continue // the unprepared path reports the error
		}
		c.mu.Lock()
		if _, dup := c.m[q]; dup {
			_ = st.Close()
		} else {
			if c.m == nil {
				c.m = map[string]*sql.Stmt{}
			}
			c.m[q] = st
		}
		c.mu.Unlock()
	}
}

func (c *stmtCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, st := range c.m {
		errs = append(errs, st.Close())
	}
	c.m = nil
	return errors.Join(errs...)
}

var _ store.Store = (*DB)(nil)

type options struct {
	readers     int
	busyTimeout int // milliseconds
}

// Option configures Open.
type Option func(*options)

// WithReaders sets the number of read connections (default: GOMAXPROCS, at
// least 2).
func WithReaders(n int) Option { return func(o *options) { o.readers = n } }

// WithBusyTimeout sets how long a statement waits for a lock held by another
// process, in milliseconds (default 5000).
func WithBusyTimeout(ms int) Option { return func(o *options) { o.busyTimeout = ms } }

// Open opens (creating it with mode 0600 if absent) the database at path
// and applies pending migrations.
func Open(ctx context.Context, path string, opts ...Option) (*DB, error) {
	o := options{readers: max(2, runtime.GOMAXPROCS(0)), busyTimeout: 5000}
	for _, f := range opts {
		f(&o)
	}
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	} else if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	dsn := func(readOnly bool) string {
		q := url.Values{}
		q.Set("_busy_timeout", fmt.Sprint(o.busyTimeout))
		q.Set("_journal_mode", "WAL")
		q.Set("_synchronous", "FULL")
		q.Set("_foreign_keys", "1")
		if readOnly {
			q.Set("_query_only", "1")
		} else {
			q.Set("_txlock", "immediate")
		}
		return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	}
	w, err := sql.Open("sqlite", dsn(false))
	if err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn(true))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	r.SetMaxOpenConns(o.readers)
	r.SetMaxIdleConns(o.readers)
	return &DB{w: w, r: r}, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub)
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
	err := db.run(ctx, db.w, true, fn)
	db.stmts.prepare(ctx, db.w)
	return err
}

// View implements store.Store.
func (db *DB) View(ctx context.Context, fn func(store.Tx) error) error {
	err := db.run(ctx, db.r, false, fn)
	db.rstmts.prepare(ctx, db.r)
	return err
}

func (db *DB) run(ctx context.Context, sdb *sql.DB, writable bool, fn func(store.Tx) error) error {
	tx, err := sdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	c := conn{tx: tx, stmts: &db.rstmts}
	if writable {
		c.stmts = &db.stmts
	}
	if err := fn(sqlstore.NewTx(c, dialect, writable)); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite commit: %w", mapErr(err))
	}
	return nil
}

// Close waits for running transactions and closes every connection.
func (db *DB) Close() error {
	return errors.Join(db.rstmts.close(), db.r.Close(), db.stmts.close(), db.w.Close())
}

// conn adapts a *sql.Tx to sqlstore.Conn. stmts are the prepared
// statements of the tx's pool (the writer's or the readers'), reused.
type conn struct {
	tx    *sql.Tx
	stmts *stmtCache
}

var _ sqlstore.Conn = conn{}

// stmt returns q prepared for this transaction, or nil.
func (c conn) stmt(ctx context.Context, q string) *sql.Stmt {
	if c.stmts == nil {
		return nil
	}
	if st := c.stmts.get(q); st != nil {
		return c.tx.StmtContext(ctx, st)
	}
	return nil
}

func (c conn) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	var res sql.Result
	var err error
	if st := c.stmt(ctx, q); st != nil {
		res, err = st.ExecContext(ctx, args...)
	} else {
		res, err = c.tx.ExecContext(ctx, q, args...)
	}
	if err != nil {
		return 0, mapErr(err)
	}
	return res.RowsAffected()
}

func (c conn) Query(ctx context.Context, q string, args ...any) (sqlstore.Rows, error) {
	var rows *sql.Rows
	var err error
	if st := c.stmt(ctx, q); st != nil {
		rows, err = st.QueryContext(ctx, args...)
	} else {
		rows, err = c.tx.QueryContext(ctx, q, args...)
	}
	if err != nil {
		return nil, mapErr(err)
	}
	return sqlRows{rows}, nil
}

func (c conn) QueryRow(ctx context.Context, q string, args ...any) sqlstore.Row {
	if st := c.stmt(ctx, q); st != nil {
		return sqlRow{st.QueryRowContext(ctx, args...)}
	}
	return sqlRow{c.tx.QueryRowContext(ctx, q, args...)}
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

type sqlRow struct{ r *sql.Row }

func (r sqlRow) Scan(dest ...any) error { return mapErr(r.r.Scan(dest...)) }

// mapErr turns "no rows" into store.ErrNotFound and uniqueness violations
// into store.ErrConflict, keeping the driver's error in the chain.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	var se *sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3lib.SQLITE_CONSTRAINT_UNIQUE, sqlite3lib.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		}
	}
	return err
}
