// Package pgtest opens PostgreSQL stores for tests, each in a private schema
// that is dropped when the test ends. Tests run against the server named by
// GARRISON_TEST_POSTGRES_URL and are skipped when it is unset.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/garrisonhq/garrison/internal/store/postgres"
)

// EnvURL names the environment variable holding the test server's URL.
const EnvURL = "GARRISON_TEST_POSTGRES_URL"

// URL returns the test server's URL, skipping t when it is not configured.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u == "" {
		t.Skipf("PostgreSQL tests skipped: set %s (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable)", EnvURL)
	}
	return u
}

// DB is a store in a private schema, with a raw pool on the same schema for
// tests that go around the store (tampering with rows).
type DB struct {
	*postgres.DB
	Schema string
	Raw    *pgxpool.Pool
}

// Open creates a fresh schema garrison_test_<random>, opens a migrated store
// in it and drops the schema when t ends.
func Open(t testing.TB) *DB {
	t.Helper()
	url := URL(t)
	ctx := context.Background()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "garrison_test_" + hex.EncodeToString(b[:])
	db, err := postgres.Open(ctx, url, postgres.WithSchema(schema))
	if err != nil {
		t.Fatalf("pgtest: open: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 2
	raw, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		_ = db.Close()
		if _, err := raw.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
		raw.Close()
	})
	return &DB{DB: db, Schema: schema, Raw: raw}
}
