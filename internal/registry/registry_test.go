package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

var t0 = time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)

type pubRecorder struct {
	mu     sync.Mutex
	events []*event.Event
}

func (p *pubRecorder) Publish(_ context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, e)
	return nil
}

func (p *pubRecorder) all() []*event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*event.Event(nil), p.events...)
}

type fixture struct {
	st  store.Store
	clk *clock.Manual
	pub *pubRecorder
	reg *registry.Registry
}

func openStore(tb testing.TB) store.Store {
	tb.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "garrison.db"))
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, db.Close()) })
	return db
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	f := &fixture{st: openStore(tb), clk: clock.NewManual(t0), pub: &pubRecorder{}}
	var err error
	f.reg, err = registry.New(registry.Options{Store: f.st, Clock: f.clk, Publisher: f.pub})
	require.NoError(tb, err)
	return f
}

func auditRecords(t *testing.T, st store.Store, tenant event.TenantID) []store.AuditRecord {
	t.Helper()
	var out []store.AuditRecord
	require.NoError(t, st.View(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.Audit().Range(context.Background(), tenant, 0, 100000)
		return err
	}))
	rep, err := audit.Verify(context.Background(), st, tenant)
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
	return out
}

func dev(tenant event.TenantID, id string) store.Device {
	return store.Device{Tenant: tenant, ID: event.DeviceID(id), Model: "acme-meter-2", Serial: "SN-" + id}
}

func TestCanTransition(t *testing.T) {
	allowed := map[string]bool{
		"registered>active": true, "registered>decommissioned": true,
		"active>quarantined": true, "active>suspended": true, "active>revoked": true, "active>decommissioned": true,
		"quarantined>active": true, "quarantined>suspended": true, "quarantined>revoked": true, "quarantined>decommissioned": true,
		"suspended>active": true, "suspended>quarantined": true, "suspended>revoked": true, "suspended>decommissioned": true,
		"revoked>decommissioned": true,
	}
	states := []store.DeviceState{store.StateRegistered, store.StateActive, store.StateQuarantined,
		store.StateSuspended, store.StateRevoked, store.StateDecommissioned, "bogus"}
	n := 0
	for _, from := range states {
		for _, to := range states {
			want := allowed[string(from)+">"+string(to)]
			if want {
				n++
			}
			require.Equal(t, want, registry.CanTransition(from, to), "%s -> %s", from, to)
		}
	}
	require.Equal(t, len(allowed), n)
}

func TestSetStateEnforcedAuditedPublished(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	d, err := f.reg.Register(ctx, dev("acme", "meter-1"), "op-1")
	require.NoError(t, err)
	require.Equal(t, store.StateRegistered, d.State)

	// registered -> quarantined is refused and changes nothing.
	_, err = f.reg.SetState(ctx, "acme", "meter-1", store.StateQuarantined, "op-1", "test")
	require.ErrorIs(t, err, registry.ErrTransition)
	require.ErrorIs(t, err, store.ErrConflict)
	got, err := f.reg.Get(ctx, "acme", "meter-1")
	require.NoError(t, err)
	require.Equal(t, store.StateRegistered, got.State)
	require.Len(t, auditRecords(t, f.st, "acme"), 1)

	f.clk.Advance(time.Minute)
	c, err := f.reg.SetState(ctx, "acme", "meter-1", store.StateActive, "op-1", "first connect")
	require.NoError(t, err)
	require.True(t, c.Changed())
	require.Equal(t, store.StateRegistered, c.From)
	c, err = f.reg.SetState(ctx, "acme", "meter-1", store.StateQuarantined, "automation", "alert a1")
	require.NoError(t, err)
	require.Equal(t, store.StateActive, c.From)
	require.Equal(t, t0.Add(time.Minute), c.Device.UpdatedAt)

	// Same state again: no change, no record, no event.
	c, err = f.reg.SetState(ctx, "acme", "meter-1", store.StateQuarantined, "automation", "alert a1")
	require.NoError(t, err)
	require.False(t, c.Changed())

	recs := auditRecords(t, f.st, "acme")
	require.Len(t, recs, 3)
	require.Equal(t, "device.state", recs[2].Action)
	require.Equal(t, "automation", recs[2].Actor)
	require.Equal(t, "meter-1", recs[2].Target)
	require.JSONEq(t, `{"from":"active","to":"quarantined","reason":"alert a1"}`, string(recs[2].Details))

	evs := f.pub.all()
	require.Len(t, evs, 3) // registered, active, quarantined
	last := evs[2]
	require.Equal(t, event.DeviceState, last.Kind)
	require.Equal(t, event.DeviceID("meter-1"), last.Device)
	require.Equal(t, "active", last.Str("from"))
	require.Equal(t, "quarantined", last.Str("to"))
	require.NoError(t, last.Validate())

	// Unknown target state.
	_, err = f.reg.SetState(ctx, "acme", "meter-1", "bogus", "op", "")
	require.ErrorIs(t, err, store.ErrInvalid)
}

func TestTenantIsolation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, err := f.reg.Register(ctx, dev("acme", "meter-1"), "op")
	require.NoError(t, err)
	_, err = f.reg.SetState(ctx, "other", "meter-1", store.StateActive, "op", "")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.reg.Get(ctx, "other", "meter-1")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = f.reg.BindSIM(ctx, "other", "meter-1", registry.Binding{IMSI: "214010000000001"}, "op")
	require.ErrorIs(t, err, store.ErrNotFound)
	n, err := f.reg.Count(ctx, "other", registry.Selector{})
	require.NoError(t, err)
	require.Zero(t, n)
	got, err := f.reg.Get(ctx, "acme", "meter-1")
	require.NoError(t, err)
	require.Equal(t, store.StateRegistered, got.State)
	require.Empty(t, got.IMSI)
}

func TestRegisterValidation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	cases := []struct {
		name string
		mod  func(*store.Device)
		want string
	}{
		{"no id", func(d *store.Device) { d.ID = "" }, "device id"},
		{"bad id", func(d *store.Device) { d.ID = "a b" }, "device id"},
		{"no model", func(d *store.Device) { d.Model = "" }, "model"},
		{"short imei", func(d *store.Device) { d.IMEI = "1234" }, "imei"},
		{"letters in iccid", func(d *store.Device) { d.ICCID = "89340000000000000X" }, "iccid"},
		{"long imsi", func(d *store.Device) { d.IMSI = "2140100000000001" }, "imsi"},
		{"bad state", func(d *store.Device) { d.State = "broken" }, "state"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := dev("acme", "meter-1")
			tc.mod(&d)
			_, err := f.reg.Register(ctx, d, "op")
			require.ErrorIs(t, err, store.ErrInvalid)
			require.Contains(t, err.Error(), tc.want)
		})
	}
	n, err := f.reg.Count(ctx, "acme", registry.Selector{})
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestBindSIM(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a := dev("acme", "meter-1")
	a.IMSI, a.ICCID, a.IMEI = "214010000000001", "8934010000000000001", "356938035643809"
	_, err := f.reg.Register(ctx, a, "op")
	require.NoError(t, err)
	_, err = f.reg.Register(ctx, dev("acme", "meter-2"), "op")
	require.NoError(t, err)

	// Taking meter-1's IMSI for meter-2 is a conflict and changes nothing.
	_, err = f.reg.BindSIM(ctx, "acme", "meter-2", registry.Binding{IMSI: "214010000000001", ICCID: "8934010000000000002", IMEI: "356938035643810"}, "op")
	require.ErrorIs(t, err, store.ErrConflict)

	b := registry.Binding{IMSI: "214010000000009", ICCID: "8934010000000000009", IMEI: "356938035643809"}
	d, err := f.reg.BindSIM(ctx, "acme", "meter-1", b, "op-7")
	require.NoError(t, err)
	require.Equal(t, "214010000000009", d.IMSI)
	byIMSI, err := func() (store.Device, error) {
		var out store.Device
		err := f.st.View(ctx, func(tx store.Tx) error {
			var err error
			out, err = tx.Devices().ByIMSI(ctx, "acme", "214010000000009")
			return err
		})
		return out, err
	}()
	require.NoError(t, err)
	require.Equal(t, event.DeviceID("meter-1"), byIMSI.ID)

	// Same binding again: no new record.
	_, err = f.reg.BindSIM(ctx, "acme", "meter-1", b, "op-7")
	require.NoError(t, err)
	recs := auditRecords(t, f.st, "acme")
	require.Len(t, recs, 3)
	require.Equal(t, "device.bind_sim", recs[2].Action)
	require.Equal(t, "op-7", recs[2].Actor)
	require.Contains(t, string(recs[2].Details), `"old":{"iccid":"8934010000000000001","imsi":"214010000000001"`)
	require.Contains(t, string(recs[2].Details), `"new":{"iccid":"8934010000000000009","imsi":"214010000000009"`)

	_, err = f.reg.BindSIM(ctx, "acme", "meter-1", registry.Binding{IMSI: "21401x"}, "op")
	require.ErrorIs(t, err, store.ErrInvalid)
}

func seedFleet(t *testing.T, f *fixture, tenant event.TenantID) []store.Device {
	t.Helper()
	ctx := context.Background()
	var out []store.Device
	for i := 0; i < 40; i++ {
		d := dev(tenant, fmt.Sprintf("dev-%03d", i))
		if i%2 == 1 {
			d.Model = "acme-cam-1"
		}
		d.Firmware = []string{"2.4.1", "2.5.0"}[i%3%2]
		d.IMSI = fmt.Sprintf("2140%d%010d", i%3, i)
		d.Tags = map[string]string{"site": []string{"north", "south"}[i%4%2]}
		if i%5 == 0 {
			d.Tags["pilot"] = "yes"
		}
		if i%4 == 0 {
			d.Groups = []string{"g-a"}
		}
		if i%3 == 0 {
			d.State = store.StateActive
		}
		got, err := f.reg.Register(ctx, d, "op")
		require.NoError(t, err)
		out = append(out, got)
	}
	return out
}

func TestSelectMatchesStoreAndMatch(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fleet := seedFleet(t, f, "acme")
	seedFleet(t, f, "other")
	for _, s := range []string{
		"", "model=acme-meter-2", "state=active", "tag=site:north", "tag=pilot", "group=g-a", "imsi^=21401",
		"firmware=2.5.0", "model=acme-cam-1,state=active,tag=site:south,imsi^=21400", "model=nope",
	} {
		t.Run(s, func(t *testing.T) {
			sel, err := registry.ParseSelector(s)
			require.NoError(t, err)
			var want []event.DeviceID
			for _, d := range fleet {
				if sel.Match(d) {
					want = append(want, d.ID)
				}
			}
			got, err := f.reg.Select(ctx, "acme", sel, 0)
			require.NoError(t, err)
			var ids []event.DeviceID
			for _, d := range got {
				require.Equal(t, event.TenantID("acme"), d.Tenant)
				ids = append(ids, d.ID)
			}
			require.Equal(t, want, ids)
			n, err := f.reg.Count(ctx, "acme", sel)
			require.NoError(t, err)
			require.Equal(t, len(want), n)
		})
	}
}

func TestParseSelector(t *testing.T) {
	ok := []struct {
		in   string
		want registry.Selector
	}{
		{"", registry.Selector{}},
		{"*", registry.Selector{}},
		{"model=acme-meter-2,state=active,tag=site:north,imsi^=21401",
			registry.Selector{Model: "acme-meter-2", State: store.StateActive, TagKey: "site", TagValue: "north", IMSIPrefix: "21401"}},
		{" firmware = 2.4.1 , group=g1,tag=pilot", registry.Selector{Firmware: "2.4.1", Group: "g1", TagKey: "pilot"}},
	}
	for _, tc := range ok {
		got, err := registry.ParseSelector(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
		again, err := registry.ParseSelector(got.String())
		require.NoError(t, err)
		require.Equal(t, got, again)
	}
	bad := []struct{ in, want string }{
		{"model", "term 1 \"model\": want key=value"},
		{"model=a,,state=active", "term 2 \"\": empty term"},
		{"state=sleeping", "term 1 \"state=sleeping\": unknown state"},
		{"colour=red", "unknown key \"colour\""},
		{"model=a,model=b", "term 2 \"model=b\": key \"model\" given twice"},
		{"imsi^=21a", "imsi prefix must be 1-15 digits"},
		{"imsi=214", "use imsi^=PREFIX"},
		{"tag=:x", "want tag=KEY or tag=KEY:VALUE"},
		{"model=a b", "value must be"},
		{"model=", "value must be"},
		{strings.Repeat("a", 2000), "longer than 1024 bytes"},
	}
	for _, tc := range bad {
		_, err := registry.ParseSelector(tc.in)
		require.Error(t, err, tc.in)
		require.ErrorIs(t, err, registry.ErrSelector)
		require.ErrorIs(t, err, store.ErrInvalid)
		var se *registry.SelectorError
		require.True(t, errors.As(err, &se))
		require.Contains(t, err.Error(), tc.want, tc.in)
	}
}

func TestSetStateSelected(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fleet := seedFleet(t, f, "acme")
	seedFleet(t, f, "other")
	sel, err := registry.ParseSelector("model=acme-meter-2")
	require.NoError(t, err)
	var wantChanged, wantRefused int
	for _, d := range fleet {
		if !sel.Match(d) {
			continue
		}
		if d.State == store.StateActive {
			wantChanged++
		} else {
			wantRefused++ // registered cannot be quarantined
		}
	}
	pv, err := f.reg.Preview(ctx, "acme", sel, 3)
	require.NoError(t, err)
	require.Equal(t, wantChanged+wantRefused, pv.Count)
	require.Len(t, pv.Sample, 3)
	require.Equal(t, "acme-meter-2", pv.Sample[0].Model)
	require.Len(t, auditRecords(t, f.st, "acme"), len(fleet)) // a preview changes nothing
	var batches int
	res, err := f.reg.SetStateSelected(ctx, "acme", sel, store.StateQuarantined, "op", "mass", 3, func(registry.MassResult) { batches++ })
	require.NoError(t, err)
	require.Equal(t, wantChanged+wantRefused, res.Selected)
	require.Equal(t, wantChanged, res.Changed)
	require.Equal(t, wantRefused, res.Refused)
	require.Greater(t, batches, 2)
	q, err := f.reg.Count(ctx, "acme", registry.Selector{State: store.StateQuarantined})
	require.NoError(t, err)
	require.Equal(t, wantChanged, q)
	q, err = f.reg.Count(ctx, "other", registry.Selector{State: store.StateQuarantined})
	require.NoError(t, err)
	require.Zero(t, q)

	// A rerun changes nothing more.
	res, err = f.reg.SetStateSelected(ctx, "acme", sel, store.StateQuarantined, "op", "mass", 3, nil)
	require.NoError(t, err)
	require.Zero(t, res.Changed)
	require.Equal(t, wantChanged, res.Unchanged)
	recs := auditRecords(t, f.st, "acme")[len(fleet):]
	audited := 0
	for _, r := range recs {
		require.Equal(t, "device.state.bulk", r.Action)
		var d struct {
			Count   int
			Devices []struct{ ID, From string }
		}
		require.NoError(t, json.Unmarshal(r.Details, &d))
		require.Len(t, d.Devices, d.Count)
		for _, x := range d.Devices {
			require.Equal(t, "active", x.From)
		}
		audited += d.Count
	}
	require.Equal(t, wantChanged, audited)
}
