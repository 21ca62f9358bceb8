package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
	"github.com/garrisonhq/garrison/internal/store/storetest"
)

func open(t *testing.T) store.Store {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "garrison.db"))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	return db
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

// TestReopen: data survives Close, migrations are recorded once and a second
// Open applies nothing, and the file is private to its owner.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "garrison.db")
	db, err := sqlite.Open(ctx, path)
	require.NoError(t, err)
	require.NoError(t, db.Update(ctx, func(tx store.Tx) error {
		return tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme"})
	}))
	require.NoError(t, db.Close())

	db, err = sqlite.Open(ctx, path)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(ctx, func(tx store.Tx) error {
		got, err := tx.Tenants().Get(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, "Acme", got.Name)
		return nil
	}))

	raw, err := sql.Open("sqlite", "file:"+path+"?_query_only=1")
	require.NoError(t, err)
	defer raw.Close()
	var versions, maxVersion int
	require.NoError(t, raw.QueryRow(`SELECT COUNT(*), MAX(version_id) FROM goose_db_version WHERE version_id > 0`).Scan(&versions, &maxVersion))
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	last := 0
	for _, f := range files {
		var n int
		_, err := fmt.Sscanf(filepath.Base(f), "%d_", &n)
		require.NoError(t, err, f)
		last = max(last, n)
	}
	require.Equal(t, len(files), versions, "each migration recorded once")
	require.Equal(t, last, maxVersion)
	var mode string
	require.NoError(t, raw.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode)

	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// TestOpenOddPaths: relative paths and characters that mean something in a
// URI still name the file given.
func TestOpenOddPaths(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, p := range []string{"plain.db", "with space/x.db", "q?mark#hash%25/x.db"} {
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
		db, err := sqlite.Open(context.Background(), p)
		require.NoError(t, err, p)
		require.NoError(t, db.Close())
		_, err = os.Stat(p)
		require.NoError(t, err, "database created at %q", p)
		entries, _ := os.ReadDir(filepath.Dir(p))
		for _, e := range entries {
			require.Contains(t, []string{filepath.Base(p), filepath.Base(p) + "-wal", filepath.Base(p) + "-shm", "with space", "q?mark#hash%25", "plain.db"}, e.Name(), "stray file for %q", p)
		}
	}
}

// TestReadStatementsSeeWrites: reads reuse prepared statements after the
// first (see stmtCache) on every reader connection, and each read still
// sees what was committed before it, from several goroutines at once.
func TestReadStatementsSeeWrites(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	get := func() (store.Tenant, error) {
		var tn store.Tenant
		err := db.View(ctx, func(tx store.Tx) error {
			var err error
			tn, err = tx.Tenants().Get(ctx, "acme")
			return err
		})
		return tn, err
	}
	for i := range 6 {
		name := fmt.Sprintf("Acme %d", i)
		require.NoError(t, db.Update(ctx, func(tx store.Tx) error {
			if i > 0 {
				if err := tx.Tenants().Delete(ctx, "acme"); err != nil {
					return err
				}
			}
			return tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: name})
		}))
		errs := make(chan error, 4)
		for range 4 {
			go func() {
				tn, err := get()
				if err == nil && tn.Name != name {
					err = fmt.Errorf("read %q after writing %q", tn.Name, name)
				}
				errs <- err
			}()
		}
		for range 4 {
			require.NoError(t, <-errs)
		}
	}
	require.NoError(t, db.Update(ctx, func(tx store.Tx) error { return tx.Tenants().Delete(ctx, "acme") }))
	_, err := get()
	require.ErrorIs(t, err, store.ErrNotFound)
}
