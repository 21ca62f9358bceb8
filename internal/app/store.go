package app

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/garrisonhq/garrison/internal/store/postgres"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// startStore opens SQLite in the data directory, or PostgreSQL by URL.
func (a *App) startStore(ctx context.Context) error {
	if a.cfg.Store.URL != "" {
		st, err := postgres.Open(ctx, a.cfg.Store.URL)
		if err != nil {
			return fmt.Errorf("open postgres %s: %w", describeStore(a.cfg), err)
		}
		a.store = st
	} else {
		path := filepath.Join(a.data, "garrison.db")
		st, err := sqlite.Open(ctx, path)
		if err != nil {
			return err
		}
		a.store = st
	}
	a.onStop("store", func(context.Context) error { return a.store.Close() })
	return nil
}
