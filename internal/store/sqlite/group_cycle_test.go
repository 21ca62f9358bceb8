package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// TestGroupCycleStillEvaluates: Create and Update refuse cycles, but two
// concurrent writers (on PostgreSQL) could still make one; written here
// behind the store's back, a cycle ends at the repeated group instead of
// recursing, and only static membership counts for it.
func TestGroupCycleStillEvaluates(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "garrison.db")
	db, err := sqlite.Open(ctx, path)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	require.NoError(t, db.Update(ctx, func(tx store.Tx) error {
		for _, d := range []store.Device{
			{Tenant: "acme", ID: "d1", Model: "m1", State: store.StateActive},
			{Tenant: "acme", ID: "d2", Model: "m2", State: store.StateActive, Groups: []string{"a"}},
			{Tenant: "acme", ID: "d3", Model: "m3", State: store.StateActive, Groups: []string{"b"}},
		} {
			if err := tx.Devices().Create(ctx, d); err != nil {
				return err
			}
		}
		if err := tx.Groups().Create(ctx, store.Group{Tenant: "acme", Name: "a", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Group: "b"}}); err != nil {
			return err
		}
		return tx.Groups().Create(ctx, store.Group{Tenant: "acme", Name: "b", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Model: "m1"}})
	}))
	raw, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=5000")
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
	_, err = raw.Exec(`UPDATE device_groups SET selector_json = '{"group":"a"}' WHERE tenant = 'acme' AND name = 'b'`)
	require.NoError(t, err)

	var got []string
	require.NoError(t, db.View(ctx, func(tx store.Tx) error {
		ds, err := tx.Devices().List(ctx, "acme", store.DeviceFilter{Group: "a"})
		for _, d := range ds {
			got = append(got, string(d.ID))
		}
		return err
	}))
	require.Equal(t, []string{"d2", "d3"}, got, "a's static members, and b's through a's selector")
}
