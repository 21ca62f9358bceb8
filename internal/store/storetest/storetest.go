// Package storetest is the conformance suite every [store.Store]
// implementation passes: call [Run] from the implementation's tests with a
// function that opens a fresh, empty store.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Opener returns a fresh, empty store; it registers its own cleanup.
type Opener func(t *testing.T) store.Store

// Run runs every conformance test against stores made by open.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Tenants", testTenants},
		{"Operators", testOperators},
		{"Tokens", testTokens},
		{"Settings", testSettings},
		{"Audit", testAudit},
		{"AuditConcurrentAppends", testAuditConcurrent},
		{"Devices", testDevices},
		{"DeviceFilters", testDeviceFilters},
		{"Alerts", testAlerts},
		{"Actions", testActions},
		{"CAs", testCAs},
		{"Certificates", testCertificates},
		{"Bulk", testBulk},           // bulk.go
		{"Playbooks", testPlaybooks}, // response.go
		{"Mass", testMass},           // response.go
		{"Campaigns", testCampaigns},
		{"Cells", testCells},
		{"Rules", testRules},                     // rules.go
		{"Commands", testCommands},               // command.go
		{"Groups", testGroups},                   // group.go
		{"GroupMembership", testGroupMembership}, // group.go
		{"Passwords", testPasswords},             // password.go
		{"Leases", testLeases},                   // lease.go
		{"LeaseContention", testLeaseContention}, // lease.go
		{"TenantIsolation", testIsolation},
		{"Incidents", testIncidents},
		{"IncidentCompareAndSet", testIncidentCAS},
		{"Webhooks", testWebhooks},
		{"Deliveries", testDeliveries},
		{"IncidentIsolation", testIncidentIsolation},
		{"UpdateRollback", testRollback},
		{"ViewIsReadOnly", testViewReadOnly},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// T0 is a base time with sub-microsecond digits, so that tests see what
// precision survives storage.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.FixedZone("X", 3600))

// us truncates to the stored precision and normalizes to UTC.
func us(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

func usp(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := us(*t)
	return &v
}

func ptr[T any](v T) *T { return &v }

func update(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), fn))
}

func view(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	require.NoError(t, s.View(context.Background(), fn))
}

// updateErr runs fn in Update and returns the error fn saw from op (the
// transaction is committed either way unless fn fails).
func updateErr(t *testing.T, s store.Store, op func(context.Context, store.Tx) error) error {
	t.Helper()
	var opErr error
	update(t, s, func(tx store.Tx) error {
		opErr = op(context.Background(), tx)
		return nil
	})
	return opErr
}

func viewErr(t *testing.T, s store.Store, op func(context.Context, store.Tx) error) error {
	t.Helper()
	var opErr error
	view(t, s, func(tx store.Tx) error {
		opErr = op(context.Background(), tx)
		return nil
	})
	return opErr
}

func testTenants(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		for _, id := range []event.TenantID{"zeta", "acme", "m-2"} {
			require.NoError(t, tx.Tenants().Create(ctx, store.Tenant{ID: id, Name: "Name " + string(id), CreatedAt: t0}))
		}
		return nil
	})
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "again", CreatedAt: t0})
	}), store.ErrConflict)
	for _, bad := range []event.TenantID{"", "Acme", "a_b", "a b", event.TenantID(bytes.Repeat([]byte("a"), 64))} {
		require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.Tenants().Create(ctx, store.Tenant{ID: bad, CreatedAt: t0})
		}), store.ErrInvalid, "id %q", bad)
	}
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Tenants().Get(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, store.Tenant{ID: "acme", Name: "Name acme", CreatedAt: us(t0)}, got)
		_, err = tx.Tenants().Get(ctx, "nope")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := tx.Tenants().List(ctx)
		require.NoError(t, err)
		require.Len(t, list, 3)
		require.Equal(t, []event.TenantID{"acme", "m-2", "zeta"}, []event.TenantID{list[0].ID, list[1].ID, list[2].ID})
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Tenants().Delete(ctx, "m-2"))
		require.ErrorIs(t, tx.Tenants().Delete(ctx, "m-2"), store.ErrNotFound)
		_, err := tx.Tenants().Get(ctx, "m-2")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
}

func testOperators(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		ops := tx.Operators()
		require.NoError(t, ops.Create(ctx, store.Operator{ID: "o2", Tenant: "acme", Name: "zoe", Role: store.RoleViewer, CreatedAt: t0}))
		require.NoError(t, ops.Create(ctx, store.Operator{ID: "o1", Tenant: "acme", Name: "ann", Role: store.RoleAdmin, CreatedAt: t0}))
		require.NoError(t, ops.Create(ctx, store.Operator{ID: "root", Name: "root", Role: store.RolePlatformAdmin, CreatedAt: t0}))
		// Same name in another tenant is fine.
		require.NoError(t, ops.Create(ctx, store.Operator{ID: "o3", Tenant: "other", Name: "ann", Role: store.RoleAdmin, CreatedAt: t0}))
		require.ErrorIs(t, ops.Create(ctx, store.Operator{ID: "o9", Tenant: "acme", Name: "ann", Role: store.RoleAdmin, CreatedAt: t0}), store.ErrConflict)
		require.ErrorIs(t, ops.Create(ctx, store.Operator{ID: "o1", Tenant: "acme", Name: "bob", Role: store.RoleAdmin, CreatedAt: t0}), store.ErrConflict)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		ops := tx.Operators()
		got, err := ops.Get(ctx, "acme", "o1")
		require.NoError(t, err)
		require.Equal(t, store.Operator{ID: "o1", Tenant: "acme", Name: "ann", Role: store.RoleAdmin, CreatedAt: us(t0)}, got)
		got, err = ops.Get(ctx, "", "root")
		require.NoError(t, err)
		require.Equal(t, store.RolePlatformAdmin, got.Role)
		_, err = ops.Get(ctx, "acme", "root")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := ops.List(ctx, "acme")
		require.NoError(t, err)
		require.Len(t, list, 2)
		require.Equal(t, "ann", list[0].Name)
		require.Equal(t, "zoe", list[1].Name)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Operators().Delete(ctx, "acme", "o1"))
		require.ErrorIs(t, tx.Operators().Delete(ctx, "acme", "o1"), store.ErrNotFound)
		return nil
	})
}

func testTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	hash := bytes.Repeat([]byte{0xab}, 32)
	tok := store.Token{ID: "tk_b", Tenant: "acme", Operator: "o1", Role: store.RoleOperator, Name: "ci", Hash: hash,
		CreatedAt: t0, ExpiresAt: t0.Add(90 * 24 * time.Hour)}
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Tokens().Create(ctx, tok))
		require.NoError(t, tx.Tokens().Create(ctx, store.Token{ID: "tk_a", Tenant: "acme", Operator: "o1", Role: store.RoleViewer,
			Hash: hash, CreatedAt: t0.Add(time.Second), ExpiresAt: t0.Add(time.Hour)}))
		require.NoError(t, tx.Tokens().Create(ctx, store.Token{ID: "tk_root", Operator: "root", Role: store.RolePlatformAdmin,
			Hash: hash, CreatedAt: t0.Add(-time.Second)}))
		require.ErrorIs(t, tx.Tokens().Create(ctx, tok), store.ErrConflict)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Tokens().Lookup(ctx, "tk_b")
		require.NoError(t, err)
		want := tok
		want.CreatedAt, want.ExpiresAt = us(tok.CreatedAt), us(tok.ExpiresAt)
		require.Equal(t, want, got)
		got, err = tx.Tokens().Lookup(ctx, "tk_root")
		require.NoError(t, err)
		require.Empty(t, got.Tenant)
		require.True(t, got.ExpiresAt.IsZero(), "zero expiry round-trips as zero")
		_, err = tx.Tokens().Lookup(ctx, "tk_none")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := tx.Tokens().List(ctx, "acme")
		require.NoError(t, err)
		require.Len(t, list, 2)
		require.Equal(t, "tk_b", list[0].ID, "ordered by creation")
		require.Equal(t, "tk_a", list[1].ID)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Tokens().Revoke(ctx, "acme", "tk_b", t0.Add(time.Minute)))
		require.NoError(t, tx.Tokens().Revoke(ctx, "acme", "tk_b", t0.Add(time.Hour)))
		require.ErrorIs(t, tx.Tokens().Revoke(ctx, "acme", "tk_none", t0), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Tokens().Lookup(ctx, "tk_b")
		require.NoError(t, err)
		require.NotNil(t, got.RevokedAt)
		require.True(t, got.RevokedAt.Equal(us(t0.Add(time.Minute))), "second revoke keeps the first time, got %v", got.RevokedAt)
		return nil
	})
}

func testSettings(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		st := tx.Settings()
		require.NoError(t, st.Put(ctx, "acme", "detect.spike", []byte(`{"k": 3}`)))
		require.NoError(t, st.Put(ctx, "acme", "detect.spike", []byte(`{"k":4}`)))
		require.NoError(t, st.Put(ctx, "", "detect.spike", []byte(`{"platform":true}`)))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		v, err := tx.Settings().Get(ctx, "acme", "detect.spike")
		require.NoError(t, err)
		require.Equal(t, `{"k":4}`, string(v))
		v, err = tx.Settings().Get(ctx, "", "detect.spike")
		require.NoError(t, err)
		require.Equal(t, `{"platform":true}`, string(v))
		_, err = tx.Settings().Get(ctx, "acme", "nope")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Settings().Delete(ctx, "acme", "detect.spike"))
		require.ErrorIs(t, tx.Settings().Delete(ctx, "acme", "detect.spike"), store.ErrNotFound)
		_, err := tx.Settings().Get(ctx, "", "detect.spike")
		require.NoError(t, err, "deleting a tenant's key keeps the platform's")
		return nil
	})
}

func auditRec(tenant event.TenantID, seq int64) store.AuditRecord {
	return store.AuditRecord{Tenant: tenant, Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second),
		Actor: "op:o1", Action: "device.update", Target: fmt.Sprintf("device/d%d", seq),
		Details:  []byte(fmt.Sprintf(`{"seq":%d,"nested":{"a":[1,2]}}`, seq)),
		PrevHash: bytes.Repeat([]byte{byte(seq - 1)}, 32), Hash: bytes.Repeat([]byte{byte(seq)}, 32)}
}

func testAudit(t *testing.T, s store.Store) {
	ctx := context.Background()
	require.ErrorIs(t, viewErr(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.Audit().Head(ctx, "acme")
		return err
	}), store.ErrNotFound)
	update(t, s, func(tx store.Tx) error {
		for seq := int64(1); seq <= 5; seq++ {
			require.NoError(t, tx.Audit().Append(ctx, auditRec("acme", seq)))
		}
		require.NoError(t, tx.Audit().Append(ctx, auditRec("other", 1)))
		require.ErrorIs(t, tx.Audit().Append(ctx, auditRec("acme", 3)), store.ErrConflict)
		// The transaction stays usable after a conflict.
		require.NoError(t, tx.Audit().Append(ctx, auditRec("acme", 6)))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		head, err := tx.Audit().Head(ctx, "acme")
		require.NoError(t, err)
		want := auditRec("acme", 6)
		want.Time = us(want.Time)
		require.Equal(t, want, head)
		all, err := tx.Audit().Range(ctx, "acme", 0, 0)
		require.NoError(t, err)
		require.Len(t, all, 6)
		for i, r := range all {
			require.Equal(t, int64(i+1), r.Seq)
		}
		page, err := tx.Audit().Range(ctx, "acme", 2, 2)
		require.NoError(t, err)
		require.Len(t, page, 2)
		require.Equal(t, []int64{3, 4}, []int64{page[0].Seq, page[1].Seq})
		w3 := auditRec("acme", 3)
		w3.Time = us(w3.Time)
		require.Equal(t, w3, page[0])
		page, err = tx.Audit().Range(ctx, "acme", 6, 10)
		require.NoError(t, err)
		require.Empty(t, page)
		return nil
	})
}

// testAuditConcurrent runs appenders in parallel, each reading Head and
// appending Head+1 in one Update, as package audit does. The contract is
// that appends serialize per tenant: every Update succeeds, with no
// collision and no gap.
func testAuditConcurrent(t *testing.T, s store.Store) {
	const workers, each = 4, 10
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				errs <- s.Update(ctx, func(tx store.Tx) error {
					var next int64 = 1
					head, err := tx.Audit().Head(ctx, "acme")
					switch {
					case err == nil:
						next = head.Seq + 1
					case !errors.Is(err, store.ErrNotFound):
						return err
					}
					r := auditRec("acme", next)
					r.Actor = fmt.Sprintf("w%d-%d", w, i)
					return tx.Audit().Append(ctx, r)
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	view(t, s, func(tx store.Tx) error {
		all, err := tx.Audit().Range(ctx, "acme", 0, 0)
		require.NoError(t, err)
		require.Len(t, all, workers*each)
		actors := map[string]bool{}
		for i, r := range all {
			require.Equal(t, int64(i+1), r.Seq)
			actors[r.Actor] = true
		}
		require.Len(t, actors, workers*each, "every append landed once")
		return nil
	})
}

func device(tenant event.TenantID, id string, imsi string) store.Device {
	return store.Device{Tenant: tenant, ID: event.DeviceID(id), Model: "meter-x", State: store.StateRegistered,
		IMSI: imsi, CreatedAt: t0, UpdatedAt: t0}
}

func testDevices(t *testing.T, s store.Store) {
	ctx := context.Background()
	full := store.Device{Tenant: "acme", ID: "meter-0001", Name: "Pump 1", Model: "meter-x", Serial: "SN1",
		IMEI: "490154203237518", ICCID: "8944500102198304826", IMSI: "234150999999999", MSISDN: "447700900123",
		Tags: map[string]string{"site": "north", "floor": "2"}, Groups: []string{"pumps", "north"},
		State: store.StateActive, Firmware: "1.2.3", FirstSeen: ptr(t0), LastSeen: ptr(t0.Add(time.Hour)),
		CreatedAt: t0, UpdatedAt: t0.Add(time.Minute)}
	normalized := func(d store.Device) store.Device {
		d.FirstSeen, d.LastSeen = usp(d.FirstSeen), usp(d.LastSeen)
		d.CreatedAt, d.UpdatedAt = us(d.CreatedAt), us(d.UpdatedAt)
		return d
	}
	update(t, s, func(tx store.Tx) error {
		dv := tx.Devices()
		require.NoError(t, dv.Create(ctx, full))
		require.NoError(t, dv.Create(ctx, device("acme", "meter-0002", "")))
		require.NoError(t, dv.Create(ctx, device("acme", "meter-0003", "")), "two devices without IMSI do not conflict")
		require.ErrorIs(t, dv.Create(ctx, device("acme", "meter-0001", "")), store.ErrConflict)
		require.ErrorIs(t, dv.Create(ctx, device("acme", "meter-0009", full.IMSI)), store.ErrConflict)
		dup := device("acme", "meter-0010", "")
		dup.ICCID = full.ICCID
		require.ErrorIs(t, dv.Create(ctx, dup), store.ErrConflict)
		require.NoError(t, dv.Create(ctx, device("other", "meter-0001", full.IMSI)), "another tenant may reuse ids and IMSIs")
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Devices().Get(ctx, "acme", "meter-0001")
		require.NoError(t, err)
		require.Equal(t, normalized(full), got)
		got, err = tx.Devices().ByIMSI(ctx, "acme", full.IMSI)
		require.NoError(t, err)
		require.Equal(t, full.ID, got.ID)
		_, err = tx.Devices().ByIMSI(ctx, "acme", "000")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = tx.Devices().ByIMSI(ctx, "acme", "")
		require.ErrorIs(t, err, store.ErrNotFound)
		got, err = tx.Devices().Get(ctx, "acme", "meter-0002")
		require.NoError(t, err)
		require.Nil(t, got.Tags)
		require.Nil(t, got.Groups)
		require.Nil(t, got.FirstSeen)
		_, err = tx.Devices().Get(ctx, "acme", "meter-9999")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	changed := full
	changed.State, changed.Firmware, changed.Tags, changed.Groups = store.StateQuarantined, "1.2.4", map[string]string{"site": "south"}, nil
	changed.LastSeen, changed.UpdatedAt = nil, t0.Add(2*time.Hour)
	changed.CreatedAt = t0.Add(999 * time.Hour) // not mutable
	update(t, s, func(tx store.Tx) error {
		dv := tx.Devices()
		require.NoError(t, dv.Update(ctx, changed))
		require.ErrorIs(t, dv.Update(ctx, device("acme", "meter-9999", "")), store.ErrNotFound)
		steal := device("acme", "meter-0002", full.IMSI)
		require.ErrorIs(t, dv.Update(ctx, steal), store.ErrConflict)
		// The transaction stays usable after a conflict.
		rebind := device("acme", "meter-0002", "234150000000002")
		require.NoError(t, dv.Update(ctx, rebind))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Devices().Get(ctx, "acme", "meter-0001")
		require.NoError(t, err)
		want := normalized(changed)
		want.CreatedAt = us(full.CreatedAt)
		require.Equal(t, want, got)
		got, err = tx.Devices().ByIMSI(ctx, "acme", "234150000000002")
		require.NoError(t, err)
		require.Equal(t, event.DeviceID("meter-0002"), got.ID)
		return nil
	})
}

func testDeviceFilters(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		for i := range 10 {
			d := device("acme", fmt.Sprintf("d%02d", i), fmt.Sprintf("2341%d0000000%03d", i%2, i))
			d.Model = []string{"meter-x", "cam-y"}[i%2]
			d.State = []store.DeviceState{store.StateActive, store.StateActive, store.StateQuarantined}[i%3]
			d.Firmware = fmt.Sprintf("1.%d", i%4)
			d.Tags = map[string]string{"site": []string{"north", "south"}[i%2]}
			if i%5 == 0 {
				d.Tags["vip"] = "yes"
			}
			d.Groups = []string{fmt.Sprintf("g%d", i%3), "all"}
			require.NoError(t, tx.Devices().Create(ctx, d))
		}
		require.NoError(t, tx.Devices().Create(ctx, device("other", "d00", "234100000000000")))
		return nil
	})
	ids := func(ds []store.Device) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, string(d.ID))
		}
		return out
	}
	tests := []struct {
		name string
		f    store.DeviceFilter
		want []string
	}{
		{"all", store.DeviceFilter{}, []string{"d00", "d01", "d02", "d03", "d04", "d05", "d06", "d07", "d08", "d09"}},
		{"model", store.DeviceFilter{Model: "cam-y"}, []string{"d01", "d03", "d05", "d07", "d09"}},
		{"state", store.DeviceFilter{State: store.StateQuarantined}, []string{"d02", "d05", "d08"}},
		{"firmware", store.DeviceFilter{Firmware: "1.3"}, []string{"d03", "d07"}},
		{"tag key", store.DeviceFilter{Tag: "vip"}, []string{"d00", "d05"}},
		{"tag key=value", store.DeviceFilter{Tag: "site=south"}, []string{"d01", "d03", "d05", "d07", "d09"}},
		{"tag absent value", store.DeviceFilter{Tag: "site=east"}, []string{}},
		{"group", store.DeviceFilter{Group: "g1"}, []string{"d01", "d04", "d07"}},
		{"imsi prefix", store.DeviceFilter{IMSIPrefix: "23411"}, []string{"d01", "d03", "d05", "d07", "d09"}},
		{"combined", store.DeviceFilter{Model: "cam-y", Group: "g1", Tag: "site=south"}, []string{"d01", "d07"}},
		{"limit", store.DeviceFilter{Limit: 3}, []string{"d00", "d01", "d02"}},
		{"after", store.DeviceFilter{After: "d07"}, []string{"d08", "d09"}},
		{"after limit filter", store.DeviceFilter{After: "d01", Limit: 2, Model: "cam-y"}, []string{"d03", "d05"}},
	}
	view(t, s, func(tx store.Tx) error {
		for _, tc := range tests {
			got, err := tx.Devices().List(ctx, "acme", tc.f)
			require.NoError(t, err, tc.name)
			require.Equal(t, tc.want, ids(got), tc.name)
			n, err := tx.Devices().Count(ctx, "acme", tc.f)
			require.NoError(t, err, tc.name)
			f := tc.f
			f.After, f.Limit = "", 0
			all, err := tx.Devices().List(ctx, "acme", f)
			require.NoError(t, err)
			require.Equal(t, len(all), n, "%s: Count ignores After and Limit", tc.name)
		}
		// Keyset pagination walks every device exactly once.
		var seen []string
		f := store.DeviceFilter{Limit: 4}
		for {
			page, err := tx.Devices().List(ctx, "acme", f)
			require.NoError(t, err)
			if len(page) == 0 {
				break
			}
			seen = append(seen, ids(page)...)
			f.After = page[len(page)-1].ID
		}
		require.Equal(t, tests[0].want, seen)
		return nil
	})
}

func testAlerts(t *testing.T, s store.Store) {
	ctx := context.Background()
	ev := event.Event{ID: "e1", Tenant: "acme", Device: "d1", Kind: event.NetSession, Time: t0.UTC(), Source: "radius",
		Attrs: map[string]any{"imsi": "234150999999999", "bytes_up": 1234.0, "ok": true, "list": []any{"a", 2.0}}}
	a1 := alert.Alert{ID: "a1", Tenant: "acme", Device: "d1", Kind: alert.SIMIMEIMismatch, Severity: alert.High,
		Detector: "binding", FirstSeen: t0, LastSeen: t0.Add(time.Minute), Count: 2, State: alert.Open,
		Evidence: alert.Evidence{Summary: "SIM moved", Events: []event.Event{ev}, Values: map[string]any{"expected": "x", "n": 3.5}}}
	a2 := alert.Alert{ID: "a2", Tenant: "acme", Device: "d2", Kind: alert.DataSpike, Severity: alert.Low,
		FirstSeen: t0.Add(time.Hour), LastSeen: t0.Add(2 * time.Hour), Count: 1, State: alert.Open}
	a3 := alert.Alert{ID: "a3", Tenant: "acme", Device: "d1", Kind: alert.DataSpike, Severity: alert.Medium,
		FirstSeen: t0.Add(30 * time.Minute), LastSeen: t0.Add(3 * time.Hour), Count: 1, State: alert.Resolved}
	update(t, s, func(tx store.Tx) error {
		for _, a := range []alert.Alert{a1, a2, a3} {
			require.NoError(t, tx.Alerts().Put(ctx, a))
		}
		a2.Count = 5
		require.NoError(t, tx.Alerts().Put(ctx, a2), "put replaces")
		require.NoError(t, tx.Alerts().SetState(ctx, "acme", "a2", alert.Acknowledged))
		require.ErrorIs(t, tx.Alerts().SetState(ctx, "acme", "zz", alert.Acknowledged), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Alerts().Get(ctx, "acme", "a1")
		require.NoError(t, err)
		want := a1
		want.FirstSeen, want.LastSeen = us(a1.FirstSeen), us(a1.LastSeen)
		require.Equal(t, want, got, "evidence with events round-trips")
		got, err = tx.Alerts().Get(ctx, "acme", "a2")
		require.NoError(t, err)
		require.Equal(t, 5, got.Count)
		require.Equal(t, alert.Acknowledged, got.State)
		_, err = tx.Alerts().Get(ctx, "acme", "zz")
		require.ErrorIs(t, err, store.ErrNotFound)
		list := func(f store.AlertFilter) []string {
			as, err := tx.Alerts().List(ctx, "acme", f)
			require.NoError(t, err)
			out := []string{}
			for _, a := range as {
				out = append(out, a.ID)
			}
			return out
		}
		require.Equal(t, []string{"a2", "a3", "a1"}, list(store.AlertFilter{}), "newest FirstSeen first")
		require.Equal(t, []string{"a3", "a1"}, list(store.AlertFilter{Device: "d1"}))
		require.Equal(t, []string{"a2", "a3"}, list(store.AlertFilter{Kind: alert.DataSpike}))
		require.Equal(t, []string{"a3"}, list(store.AlertFilter{State: alert.Resolved}))
		require.Equal(t, []string{"a2", "a3"}, list(store.AlertFilter{Since: t0.Add(2 * time.Hour)}), "since is inclusive on LastSeen")
		require.Equal(t, []string{"a2", "a3"}, list(store.AlertFilter{Limit: 2}))
		require.Equal(t, []string{"a3", "a1"}, list(store.AlertFilter{Before: "a2"}), "keyset paging continues after the cursor")
		require.Equal(t, []string{"a3"}, list(store.AlertFilter{Before: "a2", Limit: 1}))
		require.Equal(t, []string{"a1"}, list(store.AlertFilter{Before: "a3", Device: "d1"}))
		require.Empty(t, list(store.AlertFilter{Before: "a1"}), "nothing after the last")
		require.Empty(t, list(store.AlertFilter{Before: "zz"}), "an unknown cursor matches nothing")
		return nil
	})
	// Alerts with the same FirstSeen page by id, so no page skips or repeats one.
	update(t, s, func(tx store.Tx) error {
		for _, id := range []string{"t2", "t1", "t3"} {
			require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: id, Tenant: "acme", Device: "d9", Kind: alert.DataSpike,
				Severity: alert.Low, FirstSeen: t0.Add(-time.Hour), LastSeen: t0.Add(-time.Hour), Count: 1, State: alert.Open}))
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		var got []string
		for cursor := ""; ; {
			as, err := tx.Alerts().List(ctx, "acme", store.AlertFilter{Device: "d9", Before: cursor, Limit: 1})
			require.NoError(t, err)
			if len(as) == 0 {
				break
			}
			got = append(got, as[0].ID)
			cursor = as[0].ID
		}
		require.Equal(t, []string{"t3", "t2", "t1"}, got)
		return nil
	})
}

func testActions(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(id, dev, kind string, st store.ActionState, at time.Duration) store.Action {
		return store.Action{Tenant: "acme", ID: id, Device: event.DeviceID(dev), Kind: kind, Actor: "automation",
			State: st, CreatedAt: t0.Add(at), UpdatedAt: t0.Add(at)}
	}
	full := mk("x1", "d1", "quarantine", store.ActionApproval, 0)
	full.AlertID, full.Playbook, full.Reason, full.Undo, full.Attempts = "a1", "pb", "blast radius", []byte(`{"state":"active"}`), 2
	update(t, s, func(tx store.Tx) error {
		ac := tx.Actions()
		require.NoError(t, ac.Put(ctx, full))
		require.NoError(t, ac.Put(ctx, mk("x2", "d2", "quarantine", store.ActionDone, time.Minute)))
		require.NoError(t, ac.Put(ctx, mk("x3", "d2", "quarantine", store.ActionPending, 2*time.Minute)))
		require.NoError(t, ac.Put(ctx, mk("x4", "d3", "revoke", store.ActionDone, 3*time.Minute)))
		require.NoError(t, ac.Put(ctx, mk("x5", "d4", "quarantine", store.ActionFailed, 4*time.Minute)))
		require.NoError(t, ac.Put(ctx, mk("x6", "d5", "quarantine", store.ActionDone, -time.Hour)))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		ac := tx.Actions()
		got, err := ac.Get(ctx, "acme", "x1")
		require.NoError(t, err)
		want := full
		want.CreatedAt, want.UpdatedAt = us(full.CreatedAt), us(full.UpdatedAt)
		require.Equal(t, want, got)
		_, err = ac.Get(ctx, "acme", "zz")
		require.ErrorIs(t, err, store.ErrNotFound)
		list := func(f store.ActionFilter) []string {
			as, err := ac.List(ctx, "acme", f)
			require.NoError(t, err)
			out := []string{}
			for _, a := range as {
				out = append(out, a.ID)
			}
			return out
		}
		require.Equal(t, []string{"x6", "x1", "x2", "x3", "x4", "x5"}, list(store.ActionFilter{}), "oldest first")
		require.Equal(t, []string{"x2", "x3"}, list(store.ActionFilter{Device: "d2"}))
		require.Equal(t, []string{"x4"}, list(store.ActionFilter{Kind: "revoke"}))
		require.Equal(t, []string{"x6", "x2", "x4"}, list(store.ActionFilter{State: store.ActionDone}))
		require.Equal(t, []string{"x3", "x4", "x5"}, list(store.ActionFilter{Since: t0.Add(2 * time.Minute)}))
		require.Equal(t, []string{"x6", "x1"}, list(store.ActionFilter{Limit: 2}))
		require.Equal(t, []string{"x2", "x3", "x4", "x5"}, list(store.ActionFilter{After: "x1"}), "keyset paging continues after the cursor")
		require.Equal(t, []string{"x3", "x5"}, list(store.ActionFilter{After: "x2", Kind: "quarantine"}))
		require.Equal(t, []string{"x2"}, list(store.ActionFilter{After: "x1", Limit: 1}))
		require.Empty(t, list(store.ActionFilter{After: "x5"}), "nothing after the last")
		require.Empty(t, list(store.ActionFilter{After: "zz"}), "an unknown cursor matches nothing")
		n, err := ac.CountDevices(ctx, "acme", []string{"quarantine", "revoke"}, t0)
		require.NoError(t, err)
		require.Equal(t, 2, n, "d2 (done and pending, counted once) and d3; not d1 (approval), d4 (failed), d5 (too old)")
		n, err = ac.CountDevices(ctx, "acme", []string{"quarantine"}, t0.Add(-2*time.Hour))
		require.NoError(t, err)
		require.Equal(t, 2, n, "d2 and d5")
		n, err = ac.CountDevices(ctx, "acme", nil, t0.Add(-2*time.Hour))
		require.NoError(t, err)
		require.Zero(t, n)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		x := full
		x.State, x.Attempts, x.Undo = store.ActionDone, 3, nil
		return tx.Actions().Put(ctx, x)
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Actions().Get(ctx, "acme", "x1")
		require.NoError(t, err)
		require.Equal(t, store.ActionDone, got.State)
		require.Equal(t, 3, got.Attempts)
		require.Nil(t, got.Undo)
		return nil
	})
}

func testCAs(t *testing.T, s store.Store) {
	ctx := context.Background()
	root := store.CA{ID: "root1", Role: "root", CertDER: []byte{0x30, 0x82, 0x00}, KeyEnc: []byte("sealed"),
		Active: true, Trusted: true, NotAfter: t0.Add(10 * 365 * 24 * time.Hour), CreatedAt: t0}
	ext := store.CA{Tenant: "acme", ID: "ext1", Role: "external", CertDER: []byte{0x30, 0x01}, Trusted: true,
		NotAfter: t0.Add(time.Hour), CreatedAt: t0.Add(time.Second), RevokedAt: ptr(t0.Add(time.Minute))}
	iss := store.CA{Tenant: "acme", ID: "iss1", Role: "issuing", CertDER: []byte{0x30, 0x02}, KeyEnc: []byte("k"),
		Active: true, Trusted: true, NotAfter: t0.Add(time.Hour), CreatedAt: t0}
	update(t, s, func(tx store.Tx) error {
		for _, c := range []store.CA{root, ext, iss} {
			require.NoError(t, tx.CAs().Put(ctx, c))
		}
		iss.Active = false
		require.NoError(t, tx.CAs().Put(ctx, iss), "put replaces")
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.CAs().Get(ctx, "", "root1")
		require.NoError(t, err)
		want := root
		want.NotAfter, want.CreatedAt = us(root.NotAfter), us(root.CreatedAt)
		require.Equal(t, want, got)
		got, err = tx.CAs().Get(ctx, "acme", "ext1")
		require.NoError(t, err)
		require.Nil(t, got.KeyEnc)
		require.Equal(t, usp(ext.RevokedAt), got.RevokedAt)
		_, err = tx.CAs().Get(ctx, "acme", "root1")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := tx.CAs().List(ctx, "acme")
		require.NoError(t, err)
		require.Len(t, list, 2)
		require.Equal(t, "iss1", list[0].ID, "ordered by creation")
		require.False(t, list[0].Active)
		require.Equal(t, "ext1", list[1].ID)
		return nil
	})
}

func testCertificates(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(serial, dev, issuer string, nb time.Duration, life time.Duration) store.Certificate {
		return store.Certificate{Tenant: "acme", Serial: serial, Device: event.DeviceID(dev), Issuer: issuer,
			DER: []byte("der-" + serial), NotBefore: t0.Add(nb), NotAfter: t0.Add(nb + life)}
	}
	update(t, s, func(tx store.Tx) error {
		cs := tx.Certificates()
		require.NoError(t, cs.Create(ctx, mk("0a", "d1", "iss1", 0, 24*time.Hour)))
		require.NoError(t, cs.Create(ctx, mk("0b", "d1", "iss1", time.Hour, 24*time.Hour)))
		require.NoError(t, cs.Create(ctx, mk("0c", "d2", "iss1", 0, time.Minute)))
		require.NoError(t, cs.Create(ctx, mk("0d", "d2", "iss2", 0, 24*time.Hour)))
		require.NoError(t, cs.Create(ctx, mk("0e", "d3", "iss1", 0, 24*time.Hour)))
		require.ErrorIs(t, cs.Create(ctx, mk("0a", "d9", "iss1", 0, time.Hour)), store.ErrConflict)
		require.NoError(t, cs.Revoke(ctx, "acme", "0e", t0.Add(time.Minute), 1))
		require.NoError(t, cs.Revoke(ctx, "acme", "0e", t0.Add(time.Hour), 4))
		require.NoError(t, cs.Revoke(ctx, "acme", "0a", t0.Add(2*time.Minute), 0))
		require.NoError(t, cs.Revoke(ctx, "acme", "0c", t0.Add(30*time.Second), 1))
		require.NoError(t, cs.Revoke(ctx, "acme", "0d", t0.Add(30*time.Second), 1))
		require.ErrorIs(t, cs.Revoke(ctx, "acme", "ff", t0, 1), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		cs := tx.Certificates()
		got, err := cs.Get(ctx, "acme", "0e")
		require.NoError(t, err)
		want := mk("0e", "d3", "iss1", 0, 24*time.Hour)
		want.NotBefore, want.NotAfter = us(want.NotBefore), us(want.NotAfter)
		want.RevokedAt, want.RevocationReason = ptr(us(t0.Add(time.Minute))), 1
		require.Equal(t, want, got, "second revocation keeps the first time and reason")
		_, err = cs.Get(ctx, "acme", "ff")
		require.ErrorIs(t, err, store.ErrNotFound)
		byDev, err := cs.ByDevice(ctx, "acme", "d1")
		require.NoError(t, err)
		require.Len(t, byDev, 2)
		require.Equal(t, "0b", byDev[0].Serial, "newest NotBefore first")
		require.Nil(t, byDev[0].RevokedAt)
		revoked, err := cs.Revoked(ctx, "acme", "iss1", t0.Add(time.Hour))
		require.NoError(t, err)
		serials := []string{}
		for _, c := range revoked {
			serials = append(serials, c.Serial)
		}
		require.Equal(t, []string{"0a", "0e"}, serials, "revoked, unexpired, this issuer, by serial")
		return nil
	})
}

// testIsolation writes one record of every concern in tenant a and proves
// tenant b sees none of them and can change none of them.
func testIsolation(t *testing.T, s store.Store) {
	ctx := context.Background()
	const a, b event.TenantID = "tenant-a", "tenant-b"
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Operators().Create(ctx, store.Operator{ID: "op", Tenant: a, Name: "n", Role: store.RoleAdmin, CreatedAt: t0}))
		require.NoError(t, tx.Tokens().Create(ctx, store.Token{ID: "tok", Tenant: a, Operator: "op", Role: store.RoleAdmin, Hash: []byte{1}, CreatedAt: t0}))
		require.NoError(t, tx.Audit().Append(ctx, auditRec(a, 1)))
		require.NoError(t, tx.Settings().Put(ctx, a, "k", []byte(`{}`)))
		require.NoError(t, tx.Devices().Create(ctx, device(a, "dev", "234150000000001")))
		require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: "al", Tenant: a, Device: "dev", Kind: alert.PortScan, State: alert.Open, FirstSeen: t0, LastSeen: t0}))
		require.NoError(t, tx.Actions().Put(ctx, store.Action{ID: "ac", Tenant: a, Device: "dev", Kind: "quarantine", State: store.ActionDone, CreatedAt: t0}))
		require.NoError(t, tx.CAs().Put(ctx, store.CA{ID: "ca", Tenant: a, Role: "issuing", CreatedAt: t0}))
		require.NoError(t, tx.Certificates().Create(ctx, store.Certificate{Serial: "01", Tenant: a, Device: "dev", Issuer: "ca", NotAfter: t0.Add(time.Hour)}))
		require.NoError(t, tx.Certificates().Revoke(ctx, a, "01", t0, 1))
		return nil
	})
	notFound := []struct {
		name string
		op   func(context.Context, store.Tx) error
	}{
		{"operators get", func(ctx context.Context, tx store.Tx) error { _, err := tx.Operators().Get(ctx, b, "op"); return err }},
		{"operators delete", func(ctx context.Context, tx store.Tx) error { return tx.Operators().Delete(ctx, b, "op") }},
		{"tokens revoke", func(ctx context.Context, tx store.Tx) error { return tx.Tokens().Revoke(ctx, b, "tok", t0) }},
		{"audit head", func(ctx context.Context, tx store.Tx) error { _, err := tx.Audit().Head(ctx, b); return err }},
		{"settings get", func(ctx context.Context, tx store.Tx) error { _, err := tx.Settings().Get(ctx, b, "k"); return err }},
		{"settings delete", func(ctx context.Context, tx store.Tx) error { return tx.Settings().Delete(ctx, b, "k") }},
		{"devices get", func(ctx context.Context, tx store.Tx) error { _, err := tx.Devices().Get(ctx, b, "dev"); return err }},
		{"devices by imsi", func(ctx context.Context, tx store.Tx) error {
			_, err := tx.Devices().ByIMSI(ctx, b, "234150000000001")
			return err
		}},
		{"devices update", func(ctx context.Context, tx store.Tx) error { return tx.Devices().Update(ctx, device(b, "dev", "")) }},
		{"alerts get", func(ctx context.Context, tx store.Tx) error { _, err := tx.Alerts().Get(ctx, b, "al"); return err }},
		{"alerts set state", func(ctx context.Context, tx store.Tx) error {
			return tx.Alerts().SetState(ctx, b, "al", alert.Resolved)
		}},
		{"actions get", func(ctx context.Context, tx store.Tx) error { _, err := tx.Actions().Get(ctx, b, "ac"); return err }},
		{"cas get", func(ctx context.Context, tx store.Tx) error { _, err := tx.CAs().Get(ctx, b, "ca"); return err }},
		{"certificates get", func(ctx context.Context, tx store.Tx) error {
			_, err := tx.Certificates().Get(ctx, b, "01")
			return err
		}},
		{"certificates revoke", func(ctx context.Context, tx store.Tx) error {
			return tx.Certificates().Revoke(ctx, b, "01", t0, 1)
		}},
	}
	for _, tc := range notFound {
		require.ErrorIs(t, updateErr(t, s, tc.op), store.ErrNotFound, tc.name)
	}
	view(t, s, func(tx store.Tx) error {
		empty := func(name string, n int, err error) {
			require.NoError(t, err, name)
			require.Zero(t, n, "%s leaks across tenants", name)
		}
		ops, err := tx.Operators().List(ctx, b)
		empty("operators list", len(ops), err)
		toks, err := tx.Tokens().List(ctx, b)
		empty("tokens list", len(toks), err)
		recs, err := tx.Audit().Range(ctx, b, 0, 0)
		empty("audit range", len(recs), err)
		devs, err := tx.Devices().List(ctx, b, store.DeviceFilter{})
		empty("devices list", len(devs), err)
		n, err := tx.Devices().Count(ctx, b, store.DeviceFilter{})
		empty("devices count", n, err)
		als, err := tx.Alerts().List(ctx, b, store.AlertFilter{})
		empty("alerts list", len(als), err)
		acs, err := tx.Actions().List(ctx, b, store.ActionFilter{})
		empty("actions list", len(acs), err)
		n, err = tx.Actions().CountDevices(ctx, b, []string{"quarantine"}, time.Time{})
		empty("actions count devices", n, err)
		cas, err := tx.CAs().List(ctx, b)
		empty("cas list", len(cas), err)
		certs, err := tx.Certificates().ByDevice(ctx, b, "dev")
		empty("certificates by device", len(certs), err)
		certs, err = tx.Certificates().Revoked(ctx, b, "ca", t0)
		empty("certificates revoked", len(certs), err)
		// Tenant a still sees its own, unchanged by b's attempts.
		al, err := tx.Alerts().Get(ctx, a, "al")
		require.NoError(t, err)
		require.Equal(t, alert.Open, al.State)
		c, err := tx.Certificates().Revoked(ctx, a, "ca", t0)
		require.NoError(t, err)
		require.Len(t, c, 1)
		return nil
	})
}

func testRollback(t *testing.T, s store.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		require.NoError(t, tx.Tenants().Create(ctx, store.Tenant{ID: "acme", CreatedAt: t0}))
		require.NoError(t, tx.Devices().Create(ctx, device("acme", "d1", "")))
		require.NoError(t, tx.Audit().Append(ctx, auditRec("acme", 1)))
		require.NoError(t, tx.Settings().Put(ctx, "acme", "k", []byte(`{}`)))
		return fmt.Errorf("step: %w", boom)
	})
	require.ErrorIs(t, err, boom, "Update returns fn's error")
	view(t, s, func(tx store.Tx) error {
		_, err := tx.Tenants().Get(ctx, "acme")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = tx.Devices().Get(ctx, "acme", "d1")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = tx.Audit().Head(ctx, "acme")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = tx.Settings().Get(ctx, "acme", "k")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	// A committed Update is visible to a later View.
	update(t, s, func(tx store.Tx) error { return tx.Devices().Create(ctx, device("acme", "d1", "")) })
	view(t, s, func(tx store.Tx) error {
		_, err := tx.Devices().Get(ctx, "acme", "d1")
		require.NoError(t, err)
		return nil
	})
}

func testViewReadOnly(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.View(ctx, func(tx store.Tx) error {
		return tx.Tenants().Create(ctx, store.Tenant{ID: "acme", CreatedAt: t0})
	})
	require.Error(t, err, "a write inside View fails")
	view(t, s, func(tx store.Tx) error {
		_, err := tx.Tenants().Get(ctx, "acme")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
}

func testCells(t *testing.T, s store.Store) {
	ctx := context.Background()
	lte := store.Cell{Radio: "LTE", MCC: 214, MNC: 1, Area: 6699, Cell: 11259375, Lat: 40.41678, Lon: -3.70379, RangeM: 1000, UpdatedAt: t0}
	gsm := store.Cell{Radio: "GSM", MCC: 214, MNC: 1, Area: 6699, Cell: 4321, Lat: 41.38, Lon: 2.17, RangeM: 2500, UpdatedAt: t0}
	nr := store.Cell{Radio: "NR", MCC: 310, MNC: 260, Area: 65535, Cell: 1<<36 - 1, Lat: -33.86, Lon: 151.2, RangeM: 300, UpdatedAt: t0}
	view(t, s, func(tx store.Tx) error {
		n, err := tx.Cells().Count(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		_, err = tx.Cells().Get(ctx, 214, 1, 6699, 11259375)
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = tx.Cells().ByECI(ctx, 214, 1, 11259375)
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	cs := []store.Cell{lte, gsm, nr}
	for i := range 450 { // more than one multi-row chunk
		cs = append(cs, store.Cell{Radio: "umts", MCC: 262, MNC: 2, Area: int64(i % 7), Cell: int64(i), Lat: 52, Lon: 13, RangeM: float64(i), UpdatedAt: t0})
	}
	update(t, s, func(tx store.Tx) error { return tx.Cells().Put(ctx, cs) })
	view(t, s, func(tx store.Tx) error {
		n, err := tx.Cells().Count(ctx)
		require.NoError(t, err)
		require.Equal(t, 453, n)
		got, err := tx.Cells().Get(ctx, 214, 1, 6699, 11259375)
		require.NoError(t, err)
		want := lte
		want.UpdatedAt = us(t0)
		require.Equal(t, want, got)
		got, err = tx.Cells().Get(ctx, 310, 260, 65535, 1<<36-1)
		require.NoError(t, err)
		require.Equal(t, nr.Lat, got.Lat)
		got, err = tx.Cells().Get(ctx, 262, 2, 3, 10)
		require.NoError(t, err)
		require.Equal(t, "UMTS", got.Radio, "radio is kept upper case")
		_, err = tx.Cells().Get(ctx, 214, 1, 6698, 11259375)
		require.ErrorIs(t, err, store.ErrNotFound, "area is part of the key")
		got, err = tx.Cells().ByECI(ctx, 214, 1, 11259375)
		require.NoError(t, err)
		require.Equal(t, lte.Lat, got.Lat)
		_, err = tx.Cells().ByECI(ctx, 214, 1, 4321)
		require.ErrorIs(t, err, store.ErrNotFound, "a GSM cell has no ECI")
		return nil
	})
	// Put replaces; ByECI prefers the most recently updated area.
	moved := lte
	moved.Area, moved.Lat, moved.UpdatedAt = 7000, 40.5, t0.Add(time.Hour)
	replaced := gsm
	replaced.RangeM = 100
	update(t, s, func(tx store.Tx) error { return tx.Cells().Put(ctx, []store.Cell{moved, replaced}) })
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Cells().ByECI(ctx, 214, 1, 11259375)
		require.NoError(t, err)
		require.Equal(t, int64(7000), got.Area)
		got, err = tx.Cells().Get(ctx, 214, 1, 6699, 4321)
		require.NoError(t, err)
		require.Equal(t, 100.0, got.RangeM)
		n, err := tx.Cells().Count(ctx)
		require.NoError(t, err)
		require.Equal(t, 454, n)
		return nil
	})
	// A bad cell anywhere in the batch writes nothing.
	for _, bad := range []store.Cell{
		{Radio: "LTE", MCC: 1000, MNC: 1, Lat: 1, Lon: 1},
		{Radio: "LTE", MCC: 1, MNC: 1, Area: 65536, Lat: 1, Lon: 1},
		{Radio: "LTE", MCC: 1, MNC: 1, Cell: -1, Lat: 1, Lon: 1},
		{Radio: "LTE", MCC: 1, MNC: 1, Cell: 1 << 36, Lat: 1, Lon: 1},
		{Radio: "LTE", MCC: 1, MNC: 1, Lat: 91, Lon: 1},
		{Radio: "LTE", MCC: 1, MNC: 1, Lat: 1, Lon: -181},
		{Radio: "LTE", MCC: 1, MNC: 1, Lat: 1, Lon: 1, RangeM: -1},
	} {
		ok := store.Cell{Radio: "GSM", MCC: 999, MNC: 99, Area: 1, Cell: 1, Lat: 1, Lon: 1, UpdatedAt: t0}
		err := updateErr(t, s, func(ctx context.Context, tx store.Tx) error { return tx.Cells().Put(ctx, []store.Cell{ok, bad}) })
		require.ErrorIs(t, err, store.ErrInvalid, "%+v", bad)
		view(t, s, func(tx store.Tx) error {
			_, err := tx.Cells().Get(ctx, 999, 99, 1, 1)
			require.ErrorIs(t, err, store.ErrNotFound, "nothing of a refused batch is written")
			return nil
		})
	}
}
