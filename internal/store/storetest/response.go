package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testPlaybooks(t *testing.T, s store.Store) {
	ctx := context.Background()
	v1 := store.PlaybookVersion{Tenant: "acme", Name: "pb", Version: 1, YAML: "name: pb\n", Actor: "op", CreatedAt: us(t0)}
	v2 := v1
	v2.Version, v2.YAML = 2, "name: pb # two\n"
	update(t, s, func(tx store.Tx) error {
		p := tx.Playbooks()
		require.NoError(t, p.PutVersion(ctx, v2))
		require.NoError(t, p.PutVersion(ctx, v1))
		require.ErrorIs(t, p.PutVersion(ctx, v1), store.ErrConflict, "a version is written once")
		require.ErrorIs(t, p.PutVersion(ctx, store.PlaybookVersion{Tenant: "acme", Name: "pb"}), store.ErrInvalid)
		require.NoError(t, p.PutHead(ctx, store.PlaybookHead{Tenant: "acme", Name: "pb", Version: 1, Enabled: true, UpdatedAt: us(t0)}))
		require.NoError(t, p.PutHead(ctx, store.PlaybookHead{Tenant: "acme", Name: "pb", Version: 2, Enabled: false, UpdatedAt: us(t0.Add(time.Second))}))
		require.NoError(t, p.PutHead(ctx, store.PlaybookHead{Tenant: "acme", Name: "default-x", Version: 0, Enabled: false, UpdatedAt: us(t0)}))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		p := tx.Playbooks()
		vs, err := p.Versions(ctx, "acme", "pb")
		require.NoError(t, err)
		require.Equal(t, []store.PlaybookVersion{v1, v2}, vs, "oldest first, exactly as written")
		got, err := p.Version(ctx, "acme", "pb", 2)
		require.NoError(t, err)
		require.Equal(t, v2, got)
		_, err = p.Version(ctx, "acme", "pb", 3)
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = p.Version(ctx, "other", "pb", 1)
		require.ErrorIs(t, err, store.ErrNotFound, "another tenant's version is not found")
		vs, err = p.Versions(ctx, "other", "pb")
		require.NoError(t, err)
		require.Empty(t, vs)
		h, err := p.Head(ctx, "acme", "pb")
		require.NoError(t, err)
		require.Equal(t, store.PlaybookHead{Tenant: "acme", Name: "pb", Version: 2, Enabled: false, UpdatedAt: us(t0.Add(time.Second))}, h)
		_, err = p.Head(ctx, "other", "pb")
		require.ErrorIs(t, err, store.ErrNotFound)
		hs, err := p.Heads(ctx, "acme")
		require.NoError(t, err)
		require.Len(t, hs, 2)
		require.Equal(t, "default-x", hs[0].Name, "ordered by name")
		hs, err = p.Heads(ctx, "other")
		require.NoError(t, err)
		require.Empty(t, hs)
		return nil
	})
}

func testMass(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		for i := 0; i < 6; i++ {
			d := device("acme", fmt.Sprintf("m%d", i), fmt.Sprintf("21401000000000%d", i))
			d.State = store.StateActive
			if i%2 == 1 {
				d.Model = "other"
			}
			switch i {
			case 0:
				d.LastSeen = ptr(t0.Add(-48 * time.Hour))
			case 2:
				d.LastSeen = ptr(t0)
			case 4:
				d.State = store.StateRevoked
			}
			require.NoError(t, tx.Devices().Create(ctx, d))
		}
		// Same ids in another tenant: never selected, never changed.
		for i := 0; i < 3; i++ {
			d := device("beta", fmt.Sprintf("m%d", i), "")
			d.State = store.StateActive
			require.NoError(t, tx.Devices().Create(ctx, d))
		}
		require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: "x1", Tenant: "acme", Device: "m2", Kind: alert.TelnetScan,
			Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
		require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: "x2", Tenant: "acme", Device: "m0", Kind: alert.TelnetScan,
			Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Resolved}))
		require.NoError(t, tx.Alerts().Put(ctx, alert.Alert{ID: "x3", Tenant: "beta", Device: "m0", Kind: alert.TelnetScan,
			Severity: alert.High, FirstSeen: t0, LastSeen: t0, Count: 1, State: alert.Open}))
		return nil
	})
	ids := func(refs []store.DeviceRef) []string {
		var out []string
		for _, r := range refs {
			out = append(out, string(r.ID))
		}
		return out
	}
	meter := store.MassSelection{Filter: store.DeviceFilter{Model: "meter-x"}}
	view(t, s, func(tx store.Tx) error {
		m := tx.Mass()
		refs, err := m.Select(ctx, "acme", meter, "", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"m0", "m2", "m4"}, ids(refs))
		require.Equal(t, store.StateRevoked, refs[2].State)
		refs, err = m.Select(ctx, "acme", meter, "m0", 1)
		require.NoError(t, err)
		require.Equal(t, []string{"m2"}, ids(refs), "keyset paging")
		n, err := m.Count(ctx, "acme", meter)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		refs, err = m.Select(ctx, "acme", store.MassSelection{SeenBefore: t0.Add(-time.Hour)}, "", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"m0", "m1", "m3", "m4", "m5"}, ids(refs), "seen before: old or never seen")
		refs, err = m.Select(ctx, "acme", store.MassSelection{SeenSince: t0.Add(-time.Hour)}, "", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"m2"}, ids(refs))
		refs, err = m.Select(ctx, "acme", store.MassSelection{OpenAlert: alert.TelnetScan}, "", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"m2"}, ids(refs), "only open alerts of the kind, of this tenant")
		return nil
	})
	var moved int
	var certs []store.Certificate
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Certificates().Create(ctx, store.Certificate{Tenant: "acme", Serial: "01", Device: "m0", Issuer: "ca",
			NotBefore: us(t0), NotAfter: us(t0.Add(time.Hour))}))
		require.NoError(t, tx.Certificates().Create(ctx, store.Certificate{Tenant: "beta", Serial: "01", Device: "m0", Issuer: "ca",
			NotBefore: us(t0), NotAfter: us(t0.Add(time.Hour))}))
		var err error
		moved, err = tx.Mass().SetStates(ctx, "acme", []event.DeviceID{"m0", "m2", "m4", "nope"},
			[]store.DeviceState{store.StateActive}, store.StateQuarantined, t0.Add(time.Minute))
		require.NoError(t, err)
		certs, err = tx.Mass().RevokeCertificates(ctx, "acme", []event.DeviceID{"m0", "m2"}, t0.Add(time.Minute), 1)
		require.NoError(t, err)
		return nil
	})
	require.Equal(t, 2, moved, "m4 is revoked, nope absent")
	require.Len(t, certs, 1)
	require.Equal(t, "01", certs[0].Serial)
	require.Equal(t, event.DeviceID("m0"), certs[0].Device)
	require.Equal(t, "ca", certs[0].Issuer)
	require.Equal(t, event.TenantID("acme"), certs[0].Tenant)
	view(t, s, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, "acme", "m0")
		require.NoError(t, err)
		require.Equal(t, store.StateQuarantined, d.State)
		require.Equal(t, us(t0.Add(time.Minute)), d.UpdatedAt)
		d, err = tx.Devices().Get(ctx, "acme", "m4")
		require.NoError(t, err)
		require.Equal(t, store.StateRevoked, d.State)
		d, err = tx.Devices().Get(ctx, "beta", "m0")
		require.NoError(t, err)
		require.Equal(t, store.StateActive, d.State, "another tenant's device of the same id is untouched")
		c, err := tx.Certificates().Get(ctx, "beta", "01")
		require.NoError(t, err)
		require.Nil(t, c.RevokedAt)
		c, err = tx.Certificates().Get(ctx, "acme", "01")
		require.NoError(t, err)
		require.NotNil(t, c.RevokedAt)
		require.Equal(t, 1, c.RevocationReason)
		return nil
	})

	j := store.MassJob{Tenant: "acme", ID: "j1", Kind: "quarantine", Selector: "model=meter-x", Rate: 100, State: "running",
		Total: 3, Actor: "op", CreatedAt: us(t0), UpdatedAt: us(t0)}
	update(t, s, func(tx store.Tx) error {
		m := tx.Mass()
		require.NoError(t, m.CreateJob(ctx, j))
		require.ErrorIs(t, m.CreateJob(ctx, j), store.ErrConflict)
		j2 := j
		j2.ID, j2.CreatedAt, j2.State = "j2", us(t0.Add(time.Second)), "done"
		require.NoError(t, m.CreateJob(ctx, j2))
		j.Cursor, j.Processed, j.Changed, j.Unchanged, j.Refused, j.Error = "m2", 2, 1, 1, 0, "x"
		require.NoError(t, m.UpdateJob(ctx, j))
		ghost := j
		ghost.Tenant = "beta"
		require.ErrorIs(t, m.UpdateJob(ctx, ghost), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		m := tx.Mass()
		got, err := m.Job(ctx, "acme", "j1")
		require.NoError(t, err)
		require.Equal(t, j, got)
		_, err = m.Job(ctx, "beta", "j1")
		require.ErrorIs(t, err, store.ErrNotFound)
		all, err := m.Jobs(ctx, "acme", "", 0)
		require.NoError(t, err)
		require.Len(t, all, 2)
		require.Equal(t, "j2", all[0].ID, "newest first")
		run, err := m.Jobs(ctx, "acme", "running", 10)
		require.NoError(t, err)
		require.Len(t, run, 1)
		return nil
	})
}
