package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestGroupCLI drives `garrison group` against a real serve over HTTPS.
func TestGroupCLI(t *testing.T) {
	s, out := startServe(t, t.TempDir())
	var admin string
	for deadline := time.Now().Add(15 * time.Second); admin == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		admin = tokenRE.FindString(out.String())
	}
	require.NotEmpty(t, admin)
	for _, tn := range []string{"acme", "globex"} {
		_, e, code := garrison(t, s, admin, "tenant", "create", tn)
		require.Equal(t, 0, code, e)
	}
	secret := func(tenant, role string) string {
		o, e, code := garrison(t, s, admin, "token", "create", role+"-bot", "--tenant", tenant, "--role", role, "-o", "json")
		require.Equal(t, 0, code, e)
		var ct struct{ Secret string }
		require.NoError(t, json.Unmarshal([]byte(o), &ct))
		return ct.Secret
	}
	operator, viewer, globex := secret("acme", "operator"), secret("acme", "viewer"), secret("globex", "admin")
	run := func(token string, args ...string) string {
		t.Helper()
		o, e, code := garrison(t, s, token, append(args, "--tenant", "acme")...)
		require.Equal(t, 0, code, "%v: %s", args, e)
		return o
	}
	fail := func(token, want string, args ...string) {
		t.Helper()
		_, e, code := garrison(t, s, token, append(args, "--tenant", "acme")...)
		require.Equal(t, 1, code, args)
		require.Contains(t, e, want, args)
	}
	for _, d := range [][2]string{{"c1", "cam"}, {"c2", "cam"}, {"m1", "meter"}, {"m2", "meter"}} {
		run(operator, "device", "create", d[0], "--model", d[1])
	}
	show := func(name string) registry.GroupInfo {
		t.Helper()
		var g registry.GroupInfo
		require.NoError(t, json.Unmarshal([]byte(run(viewer, "group", "show", name, "-o", "json")), &g))
		return g
	}

	// A dynamic group: a bad selector is refused naming the term.
	fail(operator, `term 2 "colour=red"`, "group", "create", "bad", "--selector", "model=cam,colour=red")
	o := run(operator, "group", "create", "live-cams", "--selector", "model=cam,state=active", "--description", "cameras in service")
	require.Contains(t, o, "dynamic")
	require.Contains(t, o, "model=cam,state=active")
	require.Zero(t, show("live-cams").Members)
	run(operator, "device", "set-state", "c1", "active")
	require.Equal(t, 1, show("live-cams").Members, "membership follows the device's state")
	o = run(viewer, "group", "members", "live-cams")
	require.Contains(t, o, "c1")
	require.NotContains(t, o, "c2")
	var rv identity.Revocation
	require.NoError(t, json.Unmarshal([]byte(run(operator, "device", "revoke", "--selector", "group=live-cams", "--dry-run", "-o", "json")), &rv))
	require.Equal(t, 1, rv.Devices, "a revocation by group=<dynamic> selects its members")
	run(operator, "group", "update", "live-cams", "--selector", "model=cam")
	require.Equal(t, 2, show("live-cams").Members)
	fail(operator, "group cycle", "group", "update", "live-cams", "--selector", "group=live-cams")

	// A static group: add and remove by id, all or none.
	run(operator, "group", "create", "crew", "--description", "the crew")
	require.Contains(t, run(operator, "group", "add", "crew", "m1", "c1"), "crew: 2 added, 0 unchanged")
	fail(operator, "not_found", "group", "add", "crew", "m2", "ghost")
	require.Equal(t, 2, show("crew").Members, "the refused add changed nothing")
	fail(operator, "static", "group", "update", "crew", "--selector", "model=cam")
	require.Contains(t, run(operator, "group", "remove", "crew", "m1"), "crew: 1 removed, 0 unchanged")
	o = run(viewer, "group", "list")
	require.Contains(t, o, "crew")
	require.Contains(t, o, "live-cams")
	var ds []store.Device
	require.NoError(t, json.Unmarshal([]byte(run(viewer, "group", "members", "crew", "-o", "json")), &ds))
	require.Len(t, ds, 1)
	require.Equal(t, event.DeviceID("c1"), ds[0].ID)

	// Roles and tenants.
	fail(viewer, "forbidden", "group", "create", "nope")
	for _, args := range [][]string{{"group", "show", "crew"}, {"group", "list"}, {"group", "delete", "crew"}, {"group", "add", "crew", "m2"}} {
		_, e, code := garrison(t, s, globex, append(args, "--tenant", "acme")...)
		require.Equal(t, 1, code)
		require.Contains(t, e, "not_found", args)
	}

	// Deleting the group removes its name from its members.
	require.Contains(t, run(operator, "group", "delete", "crew"), "removed from 1 devices")
	var d store.Device
	require.NoError(t, json.Unmarshal([]byte(run(viewer, "device", "show", "c1", "-o", "json")), &d))
	require.Empty(t, d.Groups)
	fail(viewer, "not_found", "group", "show", "crew")

	o = run(secret("acme", "admin"), "audit", "list", "--limit", "1000")
	for _, a := range []string{"group.create", "group.update", "group.members.add", "group.members.remove", "group.delete"} {
		require.Contains(t, o, a)
	}
}
