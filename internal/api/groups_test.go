package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

const seededGroup = "crew"

func seedGroup(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, now time.Time) {
	t.Helper()
	require.NoError(t, tx.Groups().Create(ctx, store.Group{Tenant: tenant, Name: seededGroup, Kind: store.GroupStatic,
		CreatedAt: now, UpdatedAt: now}))
}

// groupBody is the request body of the group routes in the RBAC walk.
func groupBody(pattern string, dev event.DeviceID) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/groups":
		return `{"name":"new-group","kind":"dynamic","selector":"model=m1","description":"every m1"}`, true
	case t + "/groups/{name}":
		return `{"description":"the crew"}`, true
	case t + "/groups/{name}/members/add", t + "/groups/{name}/members/remove":
		return fmt.Sprintf(`{"devices":[%q]}`, dev), true
	}
	return "", false
}

func decodeAs[T any](t *testing.T, body []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(body, &v), string(body))
	return v
}

func lastAudit(t *testing.T, e *env, tenant event.TenantID) store.AuditRecord {
	t.Helper()
	var r store.AuditRecord
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) (err error) {
		r, err = tx.Audit().Head(context.Background(), tenant)
		return err
	}))
	return r
}

func TestGroupsAPI(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	w := e.world(t)
	admin, viewer := w.tokens[store.RoleAdmin], w.tokens[store.RoleViewer]
	base := "/api/v1/tenants/" + string(w.tenant)
	foreignTenant := event.TenantID(fmt.Sprintf("globex-%d", e.n))
	// Devices g-0..g-5: even ones are model m2, g-0 and g-1 tagged site=north.
	require.NoError(t, e.st.Update(ctx, func(tx store.Tx) error {
		for i := range 6 {
			d := store.Device{Tenant: w.tenant, ID: event.DeviceID(fmt.Sprintf("g-%d", i)), Model: []string{"m2", "m3"}[i%2],
				State: store.StateActive, CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()}
			if i < 2 {
				d.Tags = map[string]string{"site": "north"}
			}
			if err := tx.Devices().Create(ctx, d); err != nil {
				return err
			}
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: foreignTenant, ID: "g-9", Model: "m2", State: store.StateActive,
			CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()})
	}))

	// A bad selector is refused naming the term; nothing is stored.
	head := e.head(t, w.tenant)
	rec := e.do("POST", base+"/groups", admin, `{"name":"m2s","kind":"dynamic","selector":"model=m2,colour=red"}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Contains(t, decodeAs[api.ErrorBody](t, rec.Body.Bytes()).Error.Message, `term 2 "colour=red"`)
	rec = e.do("POST", base+"/groups", admin, `{"name":"m2s","kind":"dynamic"}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Contains(t, decodeAs[api.ErrorBody](t, rec.Body.Bytes()).Error.Message, "a dynamic group needs a selector")
	rec = e.do("POST", base+"/groups", admin, `{"name":"bad name","kind":"static"}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Equal(t, head, e.head(t, w.tenant))
	gs := decodeAs[[]registry.Group](t, e.do("GET", base+"/groups", viewer, "").Body.Bytes())
	require.Len(t, gs, 1)
	require.Equal(t, seededGroup, gs[0].Name)

	// A cycle through group= terms is refused with the path.
	require.Equal(t, 201, e.do("POST", base+"/groups", admin, `{"name":"loop-a","kind":"dynamic","selector":"group=loop-b"}`).Code)
	rec = e.do("POST", base+"/groups", admin, `{"name":"loop-b","kind":"dynamic","selector":"state=active,group=loop-a"}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Contains(t, decodeAs[api.ErrorBody](t, rec.Body.Bytes()).Error.Message, "group cycle loop-b -> loop-a -> loop-b")
	requireCode(t, e.do("POST", base+"/groups", admin, `{"name":"loop-a"}`), 409, api.CodeConflict)

	// A dynamic group: members follow the devices.
	rec = e.do("POST", base+"/groups", admin, `{"name":"m2s","kind":"dynamic","selector":"model=m2","description":"every m2"}`)
	require.Equal(t, 201, rec.Code, rec.Body.String())
	g := decodeAs[registry.Group](t, rec.Body.Bytes())
	require.Equal(t, registry.Group{Name: "m2s", Description: "every m2", Kind: store.GroupDynamic, Selector: "model=m2",
		CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()}, g)
	require.Equal(t, "group.create", lastAudit(t, e, w.tenant).Action)
	info := decodeAs[registry.GroupInfo](t, e.do("GET", base+"/groups/m2s", viewer, "").Body.Bytes())
	require.Equal(t, 3, info.Members)
	page := decodeAs[[]store.Device](t, e.do("GET", base+"/groups/m2s/members?limit=2", viewer, "").Body.Bytes())
	require.Equal(t, []event.DeviceID{"g-0", "g-2"}, deviceIDs(page))
	page = decodeAs[[]store.Device](t, e.do("GET", base+"/groups/m2s/members?limit=2&after=g-2", viewer, "").Body.Bytes())
	require.Equal(t, []event.DeviceID{"g-4"}, deviceIDs(page))
	require.NoError(t, e.st.Update(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, w.tenant, "g-1")
		if err != nil {
			return err
		}
		d.Model = "m2"
		return tx.Devices().Update(ctx, d)
	}))
	page = decodeAs[[]store.Device](t, e.do("GET", base+"/groups/m2s/members", viewer, "").Body.Bytes())
	require.Equal(t, []event.DeviceID{"g-0", "g-1", "g-2", "g-4"}, deviceIDs(page), "g-1 became an m2 and joined")

	// Narrow it to the north: mass preview and revoke dry-run by group=m2s
	// count exactly its members.
	rec = e.do("PATCH", base+"/groups/m2s", admin, `{"selector":"model=m2,tag=site:north"}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Equal(t, "model=m2,tag=site:north", decodeAs[registry.Group](t, rec.Body.Bytes()).Selector)
	upd := lastAudit(t, e, w.tenant)
	require.Equal(t, "group.update", upd.Action)
	require.JSONEq(t, `{"old":{"description":"every m2","selector":"model=m2"},"new":{"description":"every m2","selector":"model=m2,tag=site:north"}}`, string(upd.Details))
	rec = e.do("GET", base+"/mass/preview?sample=10&selector="+url.QueryEscape("group=m2s"), viewer, "")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	p := decodeAs[respond.MassPreview](t, rec.Body.Bytes())
	require.Equal(t, 2, p.Count)
	require.Equal(t, []event.DeviceID{"g-0", "g-1"}, deviceIDs(p.Sample))
	head = e.head(t, w.tenant)
	rec = e.do("POST", base+"/devices/revoke", admin, `{"selector":"group=m2s","dry_run":true,"sample":10}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	rv := decodeAs[identity.Revocation](t, rec.Body.Bytes())
	require.True(t, rv.DryRun)
	require.Equal(t, 2, rv.Devices)
	require.Equal(t, head, e.head(t, w.tenant), "a dry run changes nothing")

	// A static group: add and remove by id, all or nothing, audited.
	head = e.head(t, w.tenant)
	for _, bad := range []string{`{"devices":["g-3","g-9"]}`, `{"devices":["g-3","nope"]}`} {
		requireCode(t, e.do("POST", base+"/groups/crew/members/add", admin, bad), 404, api.CodeNotFound)
	}
	requireCode(t, e.do("POST", base+"/groups/crew/members/add", admin, `{"devices":[]}`), 400, api.CodeInvalid)
	requireCode(t, e.do("POST", base+"/groups/m2s/members/add", admin, `{"devices":["g-3"]}`), 400, api.CodeInvalid)
	requireCode(t, e.do("PATCH", base+"/groups/crew", admin, `{"selector":"model=m2"}`), 400, api.CodeInvalid)
	requireCode(t, e.do("POST", base+"/groups/crew/members/add", viewer, `{"devices":["g-3"]}`), 403, api.CodeForbidden)
	require.Equal(t, head, e.head(t, w.tenant), "refused calls change nothing")
	rec = e.do("POST", base+"/groups/crew/members/add", admin, `{"devices":["g-3","g-5"]}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Equal(t, registry.Membership{Group: "crew", Changed: []event.DeviceID{"g-3", "g-5"}, Unchanged: []event.DeviceID{}},
		decodeAs[registry.Membership](t, rec.Body.Bytes()))
	add := lastAudit(t, e, w.tenant)
	require.Equal(t, "group.members.add", add.Action)
	require.JSONEq(t, `{"devices":[{"id":"g-3","old":[],"new":["crew"]},{"id":"g-5","old":[],"new":["crew"]}],"unchanged":[]}`, string(add.Details))
	rec = e.do("POST", base+"/groups/crew/members/remove", admin, `{"devices":["g-5"]}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Equal(t, "group.members.remove", lastAudit(t, e, w.tenant).Action)
	require.Equal(t, 1, decodeAs[registry.GroupInfo](t, e.do("GET", base+"/groups/crew", viewer, "").Body.Bytes()).Members)

	// Another tenant sees none of it.
	for _, path := range []string{"/groups", "/groups/crew", "/groups/crew/members"} {
		requireCode(t, e.do("GET", base+path, w.foreign, ""), 404, api.CodeNotFound)
	}
	requireCode(t, e.do("GET", "/api/v1/tenants/"+string(foreignTenant)+"/groups/crew", w.foreign, ""), 404, api.CodeNotFound)

	// Deleting the static group removes the membership in the same call.
	rec = e.do("DELETE", base+"/groups/crew", admin, "")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Equal(t, api.GroupDeleted{Group: "crew", RemovedFrom: []event.DeviceID{"g-3"}}, decodeAs[api.GroupDeleted](t, rec.Body.Bytes()))
	require.Equal(t, "group.delete", lastAudit(t, e, w.tenant).Action)
	d := decodeAs[store.Device](t, e.do("GET", base+"/devices/g-3", viewer, "").Body.Bytes())
	require.Empty(t, d.Groups)
	requireCode(t, e.do("GET", base+"/groups/crew", viewer, ""), 404, api.CodeNotFound)
	requireCode(t, e.do("DELETE", base+"/groups/crew", admin, ""), 404, api.CodeNotFound)
}

func deviceIDs(ds []store.Device) []event.DeviceID {
	out := []event.DeviceID{}
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}
