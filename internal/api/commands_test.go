package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// cmdSender stands in for the broker in the API tests (the app tests use
// the real one): it records the payloads and reports every device live.
type cmdSender struct {
	mu   sync.Mutex
	sent map[event.DeviceID][][]byte
}

func (s *cmdSender) Command(_ event.TenantID, d event.DeviceID, p []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent == nil {
		s.sent = map[event.DeviceID][][]byte{}
	}
	s.sent[d] = append(s.sent[d], p)
	return true, nil
}

func newCommands(t testing.TB, st store.Store, clk clock.Clock) *command.Service {
	t.Helper()
	svc, err := command.New(command.Options{Store: st, Sender: &cmdSender{}, Clock: clk})
	require.NoError(t, err)
	return svc
}

func seedCommand(t testing.TB, ctx context.Context, tx store.Tx, tenant event.TenantID, dev event.DeviceID, n int, now time.Time) string {
	t.Helper()
	id := fmt.Sprintf("cmd-seed-%d", n)
	require.NoError(t, tx.Commands().Create(ctx, store.Command{Tenant: tenant, ID: id, Device: dev, Name: "ping",
		Status: store.CommandSent, CreatedBy: "seed", CreatedAt: now, Expires: now.Add(time.Minute)}))
	return id
}

func commandBody(pattern string) (string, bool) {
	if strings.HasSuffix(pattern, "/devices/{id}/commands") { // the tenant's path and the short one
		return `{"name":"ping","args":{"count":1},"ttl_s":60}`, true
	}
	return "", false
}

func TestCommandRoutes(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	tok := w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant) + "/devices/" + string(w.deviceID) + "/commands"

	e.clk.Advance(time.Second) // after the seeded command
	rec := e.do("POST", base, tok, `{"name":"reboot"}`)
	require.Equal(t, http.StatusAccepted, rec.Code, rec.Body.String())
	var cmd store.Command
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &cmd))
	require.Equal(t, store.CommandSent, cmd.Status)
	require.Equal(t, "reboot", cmd.Name)
	require.Equal(t, w.deviceID, cmd.Device)

	rec = e.do("GET", base+"/"+cmd.ID, w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	rec = e.do("GET", base+"?limit=1", w.tokens[store.RoleViewer], "")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var list api.CommandList
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list))
	require.Len(t, list.Commands, 1)
	require.Equal(t, cmd.ID, list.Commands[0].ID, "newest first")

	// The short path of the contract (POST /api/v1/devices/{id}/commands)
	// sends to the token's own tenant's device; a foreign token finds no such device.
	short := "/api/v1/devices/" + string(w.deviceID) + "/commands"
	e.clk.Advance(time.Second)
	rec = e.do("POST", short, tok, `{"name":"ping"}`)
	require.Equal(t, http.StatusAccepted, rec.Code, rec.Body.String())
	var viaShort store.Command
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &viaShort))
	require.Equal(t, w.deviceID, viaShort.Device)
	require.Equal(t, http.StatusOK, e.do("GET", base+"/"+viaShort.ID, w.tokens[store.RoleViewer], "").Code, "readable on the tenant's path")
	requireCode(t, e.do("POST", short, w.foreign, `{"name":"ping"}`), http.StatusNotFound, api.CodeNotFound)

	// The command of one device is not visible under another's path.
	require.NoError(t, e.st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Devices().Create(context.Background(), store.Device{Tenant: w.tenant, ID: "other-dev", Model: "m1",
			State: store.StateSuspended, CreatedAt: e.clk.Now(), UpdatedAt: e.clk.Now()})
	}))
	other := "/api/v1/tenants/" + string(w.tenant) + "/devices/other-dev/commands"
	requireCode(t, e.do("GET", other+"/"+cmd.ID, tok, ""), http.StatusNotFound, api.CodeNotFound)

	for _, tc := range []struct {
		path, body string
		status     int
		code, msg  string
	}{
		{base, `{"name":""}`, http.StatusBadRequest, api.CodeInvalid, "name must be"},
		{base, `{"name":"a b"}`, http.StatusBadRequest, api.CodeInvalid, "name must be"},
		{base, `{"name":"ping","args":[1]}`, http.StatusBadRequest, api.CodeInvalid, "args must be a JSON object"},
		{base, `{"name":"ping","ttl_s":100000}`, http.StatusBadRequest, api.CodeInvalid, "ttl_s"},
		{base, `{"name":"ping","bogus":1}`, http.StatusBadRequest, api.CodeBadRequest, ""},
		{other, `{"name":"ping"}`, http.StatusConflict, api.CodeConflict, "state"},
		{"/api/v1/tenants/" + string(w.tenant) + "/devices/nope/commands", `{"name":"ping"}`, http.StatusNotFound, api.CodeNotFound, ""},
	} {
		before := e.head(t, w.tenant)
		rec := e.do("POST", tc.path, tok, tc.body)
		requireCode(t, rec, tc.status, tc.code)
		require.Contains(t, rec.Body.String(), tc.msg)
		require.Equal(t, before, e.head(t, w.tenant), "a refused command writes nothing")
	}
}
