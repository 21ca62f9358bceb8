package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

type dropAlerts struct{}

func (dropAlerts) Raise(context.Context, alert.Alert) error { return nil }

// TestSettingsReloadFollowsTheStore: a change stored by another node's API
// reaches this node's engine at the next reload; an unchanged store
// changes nothing.
func TestSettingsReloadFollowsTheStore(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	var ref engineRef
	require.NoError(t, ref.reload(ctx, st, log), "no engine yet: nothing to do")
	eng := detect.New(detect.Options{Sink: dropAlerts{}})
	ref.set(eng)
	require.NoError(t, ref.reload(ctx, st, log))
	require.Empty(t, eng.Settings().Overrides)

	ts := detect.TenantSettings{}.With("meters", "auth.bruteforce", json.RawMessage(`{"threshold":7}`))
	b, err := json.Marshal(ts)
	require.NoError(t, err)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: time.Now()}); err != nil {
			return err
		}
		return tx.Settings().Put(ctx, "acme", detect.SettingsKey, b)
	}))
	require.NoError(t, ref.reload(ctx, st, log))
	require.Equal(t, 7, eng.SettingsFor("acme", "meters", "auth.bruteforce").(*detect.BruteforceSettings).Threshold)
	require.Equal(t, 8, eng.SettingsFor("acme", "", "auth.bruteforce").(*detect.BruteforceSettings).Threshold) // the default since 2f425ba
}
