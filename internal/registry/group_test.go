package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

func ids(ds []store.Device) []event.DeviceID {
	out := []event.DeviceID{}
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func TestCreateGroupRefusesBadInputAndStoresNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "loop-a", Kind: store.GroupDynamic, Selector: "group=loop-b"}, "op")
	require.NoError(t, err)
	before := len(auditRecords(t, f.st, "acme"))
	for _, tc := range []struct {
		name string
		spec registry.GroupSpec
		msg  string
	}{
		{"bad selector term", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic, Selector: "model=a,colour=red"}, `term 2 "colour=red"`},
		{"bad selector value", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic, Selector: "state=sleepy"}, `term 1 "state=sleepy"`},
		{"dynamic without selector", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic}, "needs a selector"},
		{"dynamic with star", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic, Selector: "*"}, "needs a selector"},
		{"static with selector", registry.GroupSpec{Name: "g", Selector: "model=a"}, "static group has no selector"},
		{"unknown kind", registry.GroupSpec{Name: "g", Kind: "smart"}, "unknown kind"},
		{"bad name", registry.GroupSpec{Name: "a b"}, "group name"},
		{"name with colon", registry.GroupSpec{Name: "a:b"}, "group name"},
		{"empty name", registry.GroupSpec{}, "group name"},
		{"long description", registry.GroupSpec{Name: "g", Description: strings.Repeat("x", 501)}, "description"},
		{"selects itself", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic, Selector: "model=a,group=g"}, "group cycle g -> g"},
		{"cycle", registry.GroupSpec{Name: "loop-b", Kind: store.GroupDynamic, Selector: "group=loop-a"}, "group cycle loop-b -> loop-a -> loop-b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.reg.CreateGroup(ctx, "acme", tc.spec, "op")
			require.ErrorIs(t, err, store.ErrInvalid)
			require.ErrorContains(t, err, tc.msg)
		})
	}
	var se *registry.SelectorError
	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "g", Kind: store.GroupDynamic, Selector: "model=a,colour=red"}, "op")
	require.True(t, errors.As(err, &se))
	require.Equal(t, 2, se.Term)
	gs, err := f.reg.Groups(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, gs, 1, "nothing refused was stored")
	require.Len(t, auditRecords(t, f.st, "acme"), before, "nor audited")

	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "loop-a"}, "op")
	require.ErrorIs(t, err, store.ErrConflict)
	// Updating into a cycle is refused the same way.
	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "loop-b", Kind: store.GroupDynamic, Selector: "model=m"}, "op")
	require.NoError(t, err)
	loop := "group=loop-a"
	_, err = f.reg.UpdateGroup(ctx, "acme", "loop-b", registry.GroupUpdate{Selector: &loop}, "op")
	require.ErrorIs(t, err, store.ErrInvalid)
	require.ErrorContains(t, err, "group cycle loop-b -> loop-a -> loop-b")
	info, err := f.reg.Group(ctx, "acme", "loop-b")
	require.NoError(t, err)
	require.Equal(t, "model=m", info.Group.Selector, "the refused update changed nothing")
}

func TestDynamicGroupFollowsDevices(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fleet := seedFleet(t, f, "acme")
	seedFleet(t, f, "other")
	_, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "pilot-cams", Kind: store.GroupDynamic,
		Selector: "tag=pilot, model=acme-cam-1", Description: "pilot cameras"}, "op")
	require.NoError(t, err)
	// A dynamic group built on the dynamic group and a static name.
	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "new-fw-pilot-cams", Kind: store.GroupDynamic,
		Selector: "group=pilot-cams,firmware=2.5.0"}, "op")
	require.NoError(t, err)
	def, err := registry.ParseSelector("model=acme-cam-1,tag=pilot")
	require.NoError(t, err)

	check := func(fleet []store.Device) {
		t.Helper()
		for _, s := range []string{"group=pilot-cams", "group=new-fw-pilot-cams", "group=pilot-cams,state=active", "group=g-a"} {
			sel, err := registry.ParseSelector(s)
			require.NoError(t, err)
			want := []event.DeviceID{}
			require.NoError(t, f.st.View(ctx, func(tx store.Tx) error {
				for _, d := range fleet {
					ok, err := registry.MatchTx(ctx, tx, "acme", sel, d)
					require.NoError(t, err)
					if ok {
						want = append(want, d.ID)
					}
				}
				return nil
			}))
			got, err := f.reg.Select(ctx, "acme", sel, 0)
			require.NoError(t, err)
			require.Equal(t, want, ids(got), s)
			p, err := f.reg.Preview(ctx, "acme", sel, 3)
			require.NoError(t, err)
			require.Equal(t, len(want), p.Count, "preview of %s", s)
			members, err := f.reg.GroupMembers(ctx, "acme", strings.TrimPrefix(s, "group="), "", 0)
			if err == nil {
				require.Equal(t, want, ids(members), s)
			}
		}
		var want []event.DeviceID
		for _, d := range fleet {
			if def.Match(d) {
				want = append(want, d.ID)
			}
		}
		got, err := f.reg.Select(ctx, "acme", registry.Selector{Group: "pilot-cams"}, 0)
		require.NoError(t, err)
		require.Equal(t, want, ids(got), "pilot-cams are exactly the devices its selector matches")
		require.NotEmpty(t, want)
		info, err := f.reg.Group(ctx, "acme", "pilot-cams")
		require.NoError(t, err)
		require.Equal(t, len(want), info.Members)
	}
	check(fleet)

	// Change a device's model and another's tag: membership follows.
	change := func(id event.DeviceID, fn func(*store.Device)) {
		require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error {
			d, err := tx.Devices().Get(ctx, "acme", id)
			if err != nil {
				return err
			}
			fn(&d)
			return tx.Devices().Update(ctx, d)
		}))
	}
	in, err := f.reg.Select(ctx, "acme", registry.Selector{Group: "pilot-cams"}, 1)
	require.NoError(t, err)
	leaver := in[0].ID
	change(leaver, func(d *store.Device) { d.Model = "acme-meter-2" })
	joiner := event.DeviceID("dev-003") // acme-cam-1, no pilot tag, firmware 2.4.1
	change(joiner, func(d *store.Device) { d.Tags["pilot"] = "yes"; d.Firmware = "2.5.0" })
	all, err := f.reg.Select(ctx, "acme", registry.Selector{}, 0)
	require.NoError(t, err)
	check(all)
	members, err := f.reg.GroupMembers(ctx, "acme", "pilot-cams", "", 0)
	require.NoError(t, err)
	require.NotContains(t, ids(members), leaver)
	require.Contains(t, ids(members), joiner)
	members, err = f.reg.GroupMembers(ctx, "acme", "new-fw-pilot-cams", "", 0)
	require.NoError(t, err)
	require.Contains(t, ids(members), joiner, "the nested group follows too")

	// A mass state change by group=<dynamic> moves exactly its members.
	members, err = f.reg.GroupMembers(ctx, "acme", "pilot-cams", "", 0)
	require.NoError(t, err)
	res, err := f.reg.SetStateSelected(ctx, "acme", registry.Selector{Group: "pilot-cams"}, store.StateDecommissioned, "op", "retire", 2, nil)
	require.NoError(t, err)
	require.Equal(t, len(members), res.Selected)
	require.Equal(t, len(members), res.Changed)
	decom, err := f.reg.Select(ctx, "acme", registry.Selector{State: store.StateDecommissioned}, 0)
	require.NoError(t, err)
	require.Equal(t, ids(members), ids(decom))

	// The other tenant has no such group: the name selects nobody there.
	n, err := f.reg.Count(ctx, "other", registry.Selector{Group: "pilot-cams"})
	require.NoError(t, err)
	require.Zero(t, n)
	_, err = f.reg.Group(ctx, "other", "pilot-cams")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.reg.GroupMembers(ctx, "other", "pilot-cams", "", 0)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func auditDetails(t *testing.T, r store.AuditRecord) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Details, &m))
	return m
}

func TestStaticGroupMembershipAudited(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	seedFleet(t, f, "acme")
	seedFleet(t, f, "other")
	_, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "g-a", Description: "adopts the existing g-a members"}, "op")
	require.NoError(t, err)
	info, err := f.reg.Group(ctx, "acme", "g-a")
	require.NoError(t, err)
	require.Equal(t, 10, info.Members, "every 4th of 40 devices already lists g-a")
	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "dyn", Kind: store.GroupDynamic, Selector: "model=acme-cam-1"}, "op")
	require.NoError(t, err)

	before := auditRecords(t, f.st, "acme")
	// All or nothing: an unknown id (or another tenant's) changes nothing.
	for _, bad := range [][]event.DeviceID{{"dev-001", "no-such"}, {"dev-001", "dev-003", "dev-999"}} {
		_, err = f.reg.AddToGroup(ctx, "acme", "g-a", bad, "op")
		require.ErrorIs(t, err, store.ErrNotFound)
	}
	_, err = f.reg.AddToGroup(ctx, "acme", "nope", []event.DeviceID{"dev-001"}, "op")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.reg.AddToGroup(ctx, "acme", "dyn", []event.DeviceID{"dev-001"}, "op")
	require.ErrorIs(t, err, store.ErrInvalid, "a dynamic group's members follow its selector")
	_, err = f.reg.AddToGroup(ctx, "acme", "g-a", nil, "op")
	require.ErrorIs(t, err, store.ErrInvalid)
	_, err = f.reg.AddToGroup(ctx, "acme", "g-a", []event.DeviceID{"bad id"}, "op")
	require.ErrorIs(t, err, store.ErrInvalid)
	require.Len(t, auditRecords(t, f.st, "acme"), len(before))
	d, err := f.reg.Get(ctx, "acme", "dev-001")
	require.NoError(t, err)
	require.Nil(t, d.Groups)

	m, err := f.reg.AddToGroup(ctx, "acme", "g-a", []event.DeviceID{"dev-001", "dev-004", "dev-001"}, "alice")
	require.NoError(t, err)
	require.Equal(t, []event.DeviceID{"dev-001"}, m.Changed)
	require.Equal(t, []event.DeviceID{"dev-004"}, m.Unchanged)
	recs := auditRecords(t, f.st, "acme")
	require.Len(t, recs, len(before)+1)
	last := recs[len(recs)-1]
	require.Equal(t, "group.members.add", last.Action)
	require.Equal(t, "alice", last.Actor)
	require.Equal(t, "group:g-a", last.Target)
	det := auditDetails(t, last)
	require.Equal(t, []any{map[string]any{"id": "dev-001", "old": []any{}, "new": []any{"g-a"}}}, det["devices"])
	require.Equal(t, []any{"dev-004"}, det["unchanged"])
	info, err = f.reg.Group(ctx, "acme", "g-a")
	require.NoError(t, err)
	require.Equal(t, 11, info.Members)

	m, err = f.reg.RemoveFromGroup(ctx, "acme", "g-a", []event.DeviceID{"dev-000", "dev-001"}, "bob")
	require.NoError(t, err)
	require.Equal(t, []event.DeviceID{"dev-000", "dev-001"}, m.Changed)
	recs = auditRecords(t, f.st, "acme")
	last = recs[len(recs)-1]
	require.Equal(t, "group.members.remove", last.Action)
	det = auditDetails(t, last)
	require.Equal(t, []any{
		map[string]any{"id": "dev-000", "old": []any{"g-a"}, "new": []any{}},
		map[string]any{"id": "dev-001", "old": []any{"g-a"}, "new": []any{}},
	}, det["devices"])
	info, err = f.reg.Group(ctx, "acme", "g-a")
	require.NoError(t, err)
	require.Equal(t, 9, info.Members)

	// Deleting the group removes the name from its members, audited.
	removed, err := f.reg.DeleteGroup(ctx, "acme", "g-a", "carol")
	require.NoError(t, err)
	require.Len(t, removed, 9)
	recs = auditRecords(t, f.st, "acme")
	last = recs[len(recs)-1]
	require.Equal(t, "group.delete", last.Action)
	require.Len(t, auditDetails(t, last)["removed_from"], 9)
	n, err := f.reg.Count(ctx, "acme", registry.Selector{Group: "g-a"})
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = f.reg.Count(ctx, "other", registry.Selector{Group: "g-a"})
	require.NoError(t, err)
	require.Equal(t, 10, n, "the other tenant's devices keep their groups")
	_, err = f.reg.DeleteGroup(ctx, "acme", "g-a", "carol")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.reg.DeleteGroup(ctx, "other", "dyn", "carol")
	require.ErrorIs(t, err, store.ErrNotFound, "another tenant's group")
}

func TestUpdateGroup(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	seedFleet(t, f, "acme")
	_, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "st"}, "op")
	require.NoError(t, err)
	_, err = f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "dyn", Kind: store.GroupDynamic, Selector: "model=acme-cam-1"}, "op")
	require.NoError(t, err)
	desc, sel := "cams", "firmware=2.5.0"
	f.clk.Advance(1)
	g, err := f.reg.UpdateGroup(ctx, "acme", "dyn", registry.GroupUpdate{Description: &desc, Selector: &sel}, "op")
	require.NoError(t, err)
	require.Equal(t, "firmware=2.5.0", g.Selector)
	require.Equal(t, "cams", g.Description)
	require.True(t, g.UpdatedAt.After(g.CreatedAt))
	recs := auditRecords(t, f.st, "acme")
	last := recs[len(recs)-1]
	require.Equal(t, "group.update", last.Action)
	require.Equal(t, map[string]any{
		"old": map[string]any{"description": "", "selector": "model=acme-cam-1"},
		"new": map[string]any{"description": "cams", "selector": "firmware=2.5.0"},
	}, auditDetails(t, last))
	_, err = f.reg.UpdateGroup(ctx, "acme", "st", registry.GroupUpdate{Selector: &sel}, "op")
	require.ErrorIs(t, err, store.ErrInvalid, "a static group has no selector")
	bad := "firmware=2.5.0,,"
	_, err = f.reg.UpdateGroup(ctx, "acme", "dyn", registry.GroupUpdate{Selector: &bad}, "op")
	var se *registry.SelectorError
	require.True(t, errors.As(err, &se), "%v", err)
	_, err = f.reg.UpdateGroup(ctx, "acme", "nope", registry.GroupUpdate{Description: &desc}, "op")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Len(t, auditRecords(t, f.st, "acme"), len(recs), "refused updates are not audited")
}

// BenchmarkPreviewByGroup compares a mass preview (count and a sample of
// 10) over 100,000 devices selected by an inline selector, by a dynamic
// group with the same selector, and by a static group of the same
// members, on SQLite: what resolving a dynamic group at query time costs.
func BenchmarkPreviewByGroup(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	f := newFixture(b)
	if err := f.st.Update(ctx, func(tx store.Tx) error {
		for j := 0; j < n; j++ {
			d := dev("acme", fmt.Sprintf("dev-%06d", j))
			d.State, d.CreatedAt, d.UpdatedAt = store.StateActive, t0, t0
			d.Tags = map[string]string{"site": []string{"north", "south"}[j%2]}
			if j%2 == 0 {
				d.Groups = []string{"north-static"}
			}
			if err := tx.Devices().Create(ctx, d); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := f.reg.CreateGroup(ctx, "acme", registry.GroupSpec{Name: "north", Kind: store.GroupDynamic, Selector: "model=acme-meter-2,tag=site:north"}, "op"); err != nil {
		b.Fatal(err)
	}
	for _, s := range []string{"model=acme-meter-2,tag=site:north", "group=north", "group=north-static"} {
		sel, err := registry.ParseSelector(s)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(s, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				p, err := f.reg.Preview(ctx, "acme", sel, 10)
				if err != nil || p.Count != n/2 {
					b.Fatalf("preview %s: %v (%d)", s, err, p.Count)
				}
			}
		})
	}
}
