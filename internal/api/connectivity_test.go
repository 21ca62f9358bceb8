package api_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/connectivity"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// published records what the ingester publishes.
type published struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (p *published) Publish(_ context.Context, e *event.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.evs = append(p.evs, e)
	p.mu.Unlock()
	return nil
}

func (p *published) all() []*event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*event.Event(nil), p.evs...)
}

func newIngester(st store.Store, clk clock.Clock, pub *published) *connectivity.Ingester {
	return &connectivity.Ingester{SIMs: connectivity.StoreSIMs{Store: st}, Publisher: pub,
		Cells: connectivity.NewCellTable(st, clk, nil, 0, 0), Clock: clk}
}

// connectivityBody is the request body of the connectivity routes in the
// RBAC walk.
func connectivityBody(pattern string) (string, bool) {
	switch pattern {
	case "/api/v1/tenants/{tenant}/connectivity/events", "/api/v1/connectivity/events":
		return `{"records":[{"type":"session","time":"2026-11-24T11:59:00Z","imsi":"214010000000017","status":"start","ip":"10.1.2.3"}]}`, true
	case "/api/v1/platform/cells/import":
		return "radio,mcc,net,area,cell,unit,lon,lat,range\nLTE,214,1,6699,11259375,0,-3.70379,40.41678,1000\n", true
	}
	return "", false
}

type invalidations struct{ n int }

func (i *invalidations) Invalidate() { i.n++ }

func newConnEnv(t *testing.T) (*env, *published, *invalidations) {
	t.Helper()
	e := newEnv(t) // for its world; the server under test is ours
	pub, inv := &published{}, &invalidations{}
	srv, err := api.New(api.Options{Store: e.st, Clock: e.clk, MaxBodyBytes: 64 << 10, Connectivity: newIngester(e.st, e.clk, pub),
		CellCache: inv, CellImportMaxBytes: 4096})
	require.NoError(t, err)
	e.srv = srv
	return e, pub, inv
}

func TestConnectivityEvents(t *testing.T) {
	e, pub, _ := newConnEnv(t)
	w := e.world(t)
	ctx := context.Background()
	require.NoError(t, e.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Devices().Create(ctx, store.Device{Tenant: w.tenant, ID: "meter-0017", Model: "m1", State: store.StateActive,
			IMSI: "214010000000017", IMEI: "490154203237518", CreatedAt: t0, UpdatedAt: t0}); err != nil {
			return err
		}
		return tx.Cells().Put(ctx, []store.Cell{{Radio: "LTE", MCC: 214, MNC: 1, Area: 6699, Cell: 11259375, Lat: 40.41678, Lon: -3.70379, RangeM: 900, UpdatedAt: t0}})
	}))
	path := "/api/v1/tenants/" + string(w.tenant) + "/connectivity/events"
	tok := w.tokens[store.RoleOperator]

	// Bad records: every problem is named, nothing is published or audited.
	before := e.head(t, w.tenant)
	rec := e.do("POST", path, tok, `{"records":[
		{"type":"session","time":"yesterday","imsi":"21401","status":"start"},
		{"type":"location","time":"2026-11-24T11:00:00Z","imsi":"214010000000017","lat":95,"lon":1},
		{"type":"session","time":"2026-11-24T11:00:00Z","imsi":"214010000000017","status":"begin","ip":"10.1.2"}]}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	for _, want := range []string{"records[0].time", "records[0].imsi", "records[1].lat", "records[2].status", "records[2].ip"} {
		require.Contains(t, rec.Body.String(), want)
	}
	requireCode(t, e.do("POST", path, tok, `{"records":[{"type":"session","imsi":"214010000000017","extra":1}]}`), 400, api.CodeBadRequest)
	requireCode(t, e.do("POST", path, tok, `{"records":[]}`), 400, api.CodeInvalid)
	require.Empty(t, pub.all())
	require.Equal(t, before, e.head(t, w.tenant))

	// A session in a known cell and a location: net.session with the
	// cell's position, a location from the network, and one for the
	// pushed coordinates; an unknown SIM's session has no device.
	rec = e.do("POST", path, tok, `{"records":[
		{"type":"session","time":"2026-11-24T11:59:00Z","imsi":"214010000000017","imei":"4901542032375101","status":"start",
		 "session_id":"p-1","ip":"10.1.2.3","rat":"eutran","cell":{"radio":"LTE","mcc":214,"mnc":1,"area":6699,"id":11259375},"bytes_up":10,"bytes_down":20},
		{"type":"location","time":"2026-11-24T11:59:30Z","imsi":"214010000000017","lat":41.38,"lon":2.17,"accuracy_m":150},
		{"type":"session","time":"2026-11-24T11:59:40Z","imsi":"999990000000001","status":"interim"}]}`)
	require.Equal(t, 202, rec.Code, rec.Body.String())
	var res connectivity.IngestResult
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
	require.Equal(t, connectivity.IngestResult{Sessions: 2, Locations: 2, UnknownSIMs: 1}, res)
	evs := pub.all()
	require.Len(t, evs, 4)
	s := evs[0]
	require.Equal(t, event.NetSession, s.Kind)
	require.Equal(t, event.DeviceID("meter-0017"), s.Device)
	require.Equal(t, "webhook", s.Source)
	require.Equal(t, "490154203237518", s.Str("imei"), "an IMEISV is reported as its IMEI with the check digit")
	require.Equal(t, "214-01-0x1a2b-0x00abcdef", s.Str("cell"))
	require.Equal(t, "2026-11-24T11:59:00Z", s.Time.Format("2006-01-02T15:04:05Z07:00"))
	up, _ := s.Float("bytes_up")
	acc, _ := s.Float("accuracy_m")
	require.Equal(t, 10.0, up)
	require.Equal(t, 900.0, acc)
	require.Equal(t, event.Location, evs[1].Kind)
	require.Equal(t, "network", evs[1].Str("source"))
	require.Equal(t, event.Location, evs[2].Kind)
	acc, _ = evs[2].Float("accuracy_m")
	require.Equal(t, 150.0, acc)
	require.Equal(t, event.NetSession, evs[3].Kind)
	require.Empty(t, evs[3].Device)
	require.Greater(t, e.head(t, w.tenant), before, "the ingestion is audited")

	// A viewer may not push; a foreign tenant's token sees nothing.
	requireCode(t, e.do("POST", path, w.tokens[store.RoleViewer], `{"records":[]}`), 403, api.CodeForbidden)
	requireCode(t, e.do("POST", path, w.foreign, `{"records":[]}`), 404, api.CodeNotFound)

	// The short path of the contract takes the tenant from the
	// token: the same SIM's session lands on the same device; in the
	// foreign tenant the SIM is unknown; a platform token must name one.
	const short = "/api/v1/connectivity/events"
	one := `{"records":[{"type":"session","time":"2026-11-24T12:00:00Z","imsi":"214010000000017","status":"interim","session_id":"p-1"}]}`
	rec = e.do("POST", short, tok, one)
	require.Equal(t, 202, rec.Code, rec.Body.String())
	evs = pub.all()
	require.Len(t, evs, 5)
	require.Equal(t, w.tenant, evs[4].Tenant)
	require.Equal(t, event.DeviceID("meter-0017"), evs[4].Device)
	rec = e.do("POST", short, w.foreign, one)
	require.Equal(t, 202, rec.Code, rec.Body.String())
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
	require.Equal(t, 1, res.UnknownSIMs, "the world's SIM is not the foreign tenant's")
	require.NotEqual(t, w.tenant, pub.all()[5].Tenant)
	requireCode(t, e.do("POST", short, w.tokens[store.RolePlatformAdmin], one), 400, api.CodeInvalid)
}

func TestCellImport(t *testing.T) {
	e, _, inv := newConnEnv(t)
	w := e.world(t)
	tok := w.tokens[store.RolePlatformAdmin]
	const path = "/api/v1/platform/cells/import"
	csv := "radio,mcc,net,area,cell,unit,lon,lat,range,samples\n" +
		"LTE,214,1,6699,11259375,0,-3.70379,40.41678,1000,5\n" +
		"GSM,214,7,100,2001,0,2.17,41.38,2500,1\n" +
		"LTE,214,1,6699,abc,0,-3.7,40.4,1000,1\n" + // line 4: bad cell
		"UMTS,214,1,70000,5,0,-3.7,40.4,1000,1\n" + // line 5: area out of range
		"LTE,214,1,6699,11259376,0,-3.7,91,1000,1\n" // line 6: latitude
	before := e.head(t, api.PlatformChain)
	rec := e.do("POST", path, tok, csv, "Content-Type", "text/csv")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	var res connectivity.ImportResult
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
	require.Equal(t, 5, res.Rows)
	require.Equal(t, 2, res.Imported)
	require.Equal(t, 3, res.Rejected)
	var lines []int
	for _, re := range res.Errors {
		lines = append(lines, re.Line)
	}
	require.Equal(t, []int{4, 5, 6}, lines)
	require.Contains(t, res.Errors[1].Error, "area")
	require.Equal(t, 1, inv.n, "the lookup cache is dropped after an import")
	require.Greater(t, e.head(t, api.PlatformChain), before, "the import is audited")
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		c, err := tx.Cells().Get(context.Background(), 214, 7, 100, 2001)
		require.NoError(t, err)
		require.Equal(t, 41.38, c.Lat)
		require.Equal(t, 2500.0, c.RangeM)
		n, err := tx.Cells().Count(context.Background())
		require.NoError(t, err)
		require.Equal(t, 2, n)
		return nil
	}))

	// Headerless 8-column rows (radio,mcc,net,area,cell,lon,lat,range).
	rec = e.do("POST", path, tok, "NR,310,260,1,68719476735,151.2,-33.86,300\n", "Content-Type", "text/csv")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Contains(t, rec.Body.String(), `"imported": 1`)

	before = e.head(t, api.PlatformChain)
	requireCode(t, e.do("POST", path, tok, csv), 415, api.CodeUnsupportedMedia)
	requireCode(t, e.do("POST", path, tok, "radio,mcc\nLTE,1\n", "Content-Type", "text/csv"), 400, api.CodeInvalid)
	big := "radio,mcc,net,area,cell,lon,lat,range\n" + strings.Repeat("LTE,1,1,1,1,1,1,1\n", 300)
	requireCode(t, e.do("POST", path, tok, big, "Content-Type", "text/csv"), 413, api.CodeTooLarge)
	require.Equal(t, before, e.head(t, api.PlatformChain), "refused imports write nothing")
	requireCode(t, e.do("POST", path, w.tokens[store.RoleAdmin], csv, "Content-Type", "text/csv"), 403, api.CodeForbidden)
}

func TestOpenAPIHasConnectivity(t *testing.T) {
	e, _, _ := newConnEnv(t)
	w := e.world(t)
	rec := e.do("GET", "/api/v1/openapi.json", w.tokens[store.RoleViewer], "")
	require.Equal(t, 200, rec.Code)
	for _, want := range []string{"/api/v1/tenants/{tenant}/connectivity/events", "/api/v1/platform/cells/import", "ConnectivityEventsRequest", "ConnectivityImportResult", "text/csv"} {
		require.Contains(t, rec.Body.String(), want)
	}
}
