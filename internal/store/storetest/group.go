package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testGroups(t *testing.T, s store.Store) {
	ctx := context.Background()
	static := store.Group{Tenant: "acme", Name: "pumps", Description: "the pumps", Kind: store.GroupStatic, CreatedAt: us(t0), UpdatedAt: us(t0)}
	cams := store.Group{Tenant: "acme", Name: "cams", Kind: store.GroupDynamic,
		Selector: store.DeviceFilter{Model: "cam-y", Tag: "site=north"}, CreatedAt: us(t0), UpdatedAt: us(t0)}
	update(t, s, func(tx store.Tx) error {
		gs := tx.Groups()
		require.NoError(t, gs.Create(ctx, static))
		require.NoError(t, gs.Create(ctx, cams))
		require.ErrorIs(t, gs.Create(ctx, static), store.ErrConflict)
		other := static
		other.Tenant = "other"
		require.NoError(t, gs.Create(ctx, other), "names are per tenant")
		return nil
	})
	for name, bad := range map[string]store.Group{
		"no name":             {Tenant: "acme", Kind: store.GroupStatic},
		"no tenant":           {Name: "x", Kind: store.GroupStatic},
		"unknown kind":        {Tenant: "acme", Name: "x", Kind: "smart"},
		"static selector":     {Tenant: "acme", Name: "x", Kind: store.GroupStatic, Selector: store.DeviceFilter{Model: "m"}},
		"dynamic no selector": {Tenant: "acme", Name: "x", Kind: store.GroupDynamic},
		"selector limit":      {Tenant: "acme", Name: "x", Kind: store.GroupDynamic, Selector: store.DeviceFilter{Model: "m", Limit: 3}},
		"selects itself":      {Tenant: "acme", Name: "x", Kind: store.GroupDynamic, Selector: store.DeviceFilter{Group: "x"}},
	} {
		require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.Groups().Create(ctx, bad)
		}), store.ErrInvalid, name)
	}
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Groups().Get(ctx, "acme", "cams")
		require.NoError(t, err)
		require.Equal(t, cams, got)
		list, err := tx.Groups().List(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, []store.Group{cams, static}, list, "ordered by name; nothing refused was stored")
		_, err = tx.Groups().Get(ctx, "other", "cams")
		require.ErrorIs(t, err, store.ErrNotFound, "another tenant's group is not found")
		list, err = tx.Groups().List(ctx, "nobody")
		require.NoError(t, err)
		require.Empty(t, list)
		return nil
	})

	// Update changes description and selector, never the kind.
	cams.Description, cams.Selector, cams.UpdatedAt = "north cams", store.DeviceFilter{Model: "cam-y", State: store.StateActive}, us(t0.Add(time.Hour))
	update(t, s, func(tx store.Tx) error {
		gs := tx.Groups()
		require.NoError(t, gs.Update(ctx, cams))
		turned := static
		turned.Kind, turned.Selector = store.GroupDynamic, store.DeviceFilter{Model: "m"}
		require.ErrorIs(t, gs.Update(ctx, turned), store.ErrInvalid, "kind cannot change")
		require.ErrorIs(t, gs.Update(ctx, store.Group{Tenant: "other", Name: "cams", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Model: "m"}}), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Groups().Get(ctx, "acme", "cams")
		require.NoError(t, err)
		require.Equal(t, cams, got)
		return nil
	})

	// Cycles through group= terms are refused, on create and on update.
	update(t, s, func(tx store.Tx) error {
		gs := tx.Groups()
		a := store.Group{Tenant: "acme", Name: "a", Kind: store.GroupDynamic, Selector: store.DeviceFilter{Group: "b"}}
		require.NoError(t, gs.Create(ctx, a), "a group term may name a group not defined yet")
		b := store.Group{Tenant: "acme", Name: "b", Kind: store.GroupDynamic, Selector: store.DeviceFilter{Model: "m", Group: "c"}}
		require.NoError(t, gs.Create(ctx, b))
		c := store.Group{Tenant: "acme", Name: "c", Kind: store.GroupDynamic, Selector: store.DeviceFilter{Group: "a"}}
		err := gs.Create(ctx, c)
		require.ErrorIs(t, err, store.ErrInvalid)
		require.ErrorContains(t, err, "c -> a -> b -> c")
		b.Selector.Group = "a"
		require.ErrorIs(t, gs.Update(ctx, b), store.ErrInvalid, "b -> a -> b")
		b.Selector.Group = "pumps"
		require.NoError(t, gs.Update(ctx, b), "a static group ends the chain")
		_, err = gs.Delete(ctx, "acme", "a")
		require.NoError(t, err)
		_, err = gs.Delete(ctx, "acme", "b")
		return err
	})
	require.ErrorIs(t, viewErr(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.Groups().Get(ctx, "acme", "c")
		return err
	}), store.ErrNotFound, "the refused group was not stored")
}

func testGroupMembership(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(id, model string, tags map[string]string, groups ...string) store.Device {
		d := device("acme", id, "")
		d.Model, d.Tags, d.Groups, d.State = model, tags, groups, store.StateActive
		return d
	}
	update(t, s, func(tx store.Tx) error {
		for _, d := range []store.Device{
			mk("d1", "cam-y", map[string]string{"site": "north"}),
			mk("d2", "cam-y", map[string]string{"site": "south"}, "pumps"),
			mk("d3", "meter-x", map[string]string{"site": "north"}, "pumps", "vip"),
			mk("d4", "meter-x", nil, "cams"), // statically in the dynamic group's name
			mk("d5", "cam-y", map[string]string{"site": "north"}, "vip"),
		} {
			require.NoError(t, tx.Devices().Create(ctx, d))
		}
		o := device("other", "d1", "")
		o.Model, o.Groups = "cam-y", []string{"pumps"}
		require.NoError(t, tx.Devices().Create(ctx, o))
		gs := tx.Groups()
		require.NoError(t, gs.Create(ctx, store.Group{Tenant: "acme", Name: "pumps", Kind: store.GroupStatic}))
		require.NoError(t, gs.Create(ctx, store.Group{Tenant: "acme", Name: "cams", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Model: "cam-y", Tag: "site=north"}}))
		// A dynamic group of a dynamic group: VIP members of cams.
		require.NoError(t, gs.Create(ctx, store.Group{Tenant: "acme", Name: "vip-cams", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Group: "cams", Tag: "vip"}}))
		require.NoError(t, gs.Create(ctx, store.Group{Tenant: "acme", Name: "vip-cams-2", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Group: "vip"}}))
		return nil
	})
	ids := func(ds []store.Device) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, string(d.ID))
		}
		return out
	}
	members := func(f store.DeviceFilter) []string {
		t.Helper()
		var got []string
		view(t, s, func(tx store.Tx) error {
			ds, err := tx.Devices().List(ctx, "acme", f)
			require.NoError(t, err)
			n, err := tx.Devices().Count(ctx, "acme", f)
			require.NoError(t, err)
			require.Equal(t, len(ds), n)
			refs, err := tx.Mass().Select(ctx, "acme", store.MassSelection{Filter: f}, "", 0)
			require.NoError(t, err)
			require.Len(t, refs, n, "mass selections resolve groups the same way")
			got = ids(ds)
			return nil
		})
		return got
	}
	require.Equal(t, []string{"d2", "d3"}, members(store.DeviceFilter{Group: "pumps"}), "static members")
	require.Equal(t, []string{"d1", "d4", "d5"}, members(store.DeviceFilter{Group: "cams"}), "selector matches plus static members")
	require.Equal(t, []string{"d1", "d5"}, members(store.DeviceFilter{Group: "cams", Model: "cam-y"}), "a group term combines with others")
	require.Equal(t, []string{"d3", "d5"}, members(store.DeviceFilter{Group: "vip-cams-2"}), "a dynamic group of a static name")
	require.Equal(t, []string{}, members(store.DeviceFilter{Group: "vip-cams"}), "no vip tag yet")

	// Membership follows device changes.
	update(t, s, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, "acme", "d2")
		require.NoError(t, err)
		d.Tags["site"] = "north"
		require.NoError(t, tx.Devices().Update(ctx, d))
		d, err = tx.Devices().Get(ctx, "acme", "d1")
		require.NoError(t, err)
		d.Model = "meter-x"
		require.NoError(t, tx.Devices().Update(ctx, d))
		d, err = tx.Devices().Get(ctx, "acme", "d5")
		require.NoError(t, err)
		d.Tags["vip"] = "1"
		return tx.Devices().Update(ctx, d)
	})
	require.Equal(t, []string{"d2", "d4", "d5"}, members(store.DeviceFilter{Group: "cams"}), "d2 joined, d1 left")
	require.Equal(t, []string{"d5"}, members(store.DeviceFilter{Group: "vip-cams"}))
	// ... and selector changes.
	update(t, s, func(tx store.Tx) error {
		return tx.Groups().Update(ctx, store.Group{Tenant: "acme", Name: "cams", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{Model: "meter-x"}})
	})
	require.Equal(t, []string{"d1", "d3", "d4"}, members(store.DeviceFilter{Group: "cams"}))

	// Deleting a group removes its name from every device of the tenant.
	var removed []event.DeviceID
	update(t, s, func(tx store.Tx) error {
		var err error
		removed, err = tx.Groups().Delete(ctx, "acme", "pumps")
		return err
	})
	require.Equal(t, []event.DeviceID{"d2", "d3"}, removed)
	require.Equal(t, []string{}, members(store.DeviceFilter{Group: "pumps"}))
	view(t, s, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, "acme", "d3")
		require.NoError(t, err)
		require.Equal(t, []string{"vip"}, d.Groups, "other memberships stay")
		d, err = tx.Devices().Get(ctx, "acme", "d2")
		require.NoError(t, err)
		require.Nil(t, d.Groups)
		o, err := tx.Devices().Get(ctx, "other", "d1")
		require.NoError(t, err)
		require.Equal(t, []string{"pumps"}, o.Groups, "another tenant's devices are untouched")
		_, err = tx.Groups().Get(ctx, "acme", "pumps")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.Groups().Delete(ctx, "acme", "pumps")
		return err
	}), store.ErrNotFound)
	// A dynamic group's deletion also drops the static uses of its name;
	// the name then selects nobody.
	update(t, s, func(tx store.Tx) error {
		removed, err := tx.Groups().Delete(ctx, "acme", "cams")
		require.Equal(t, []event.DeviceID{"d4"}, removed)
		return err
	})
	require.Equal(t, []string{}, members(store.DeviceFilter{Group: "cams"}))
}
