package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// The optional bulk forms of the SQL stores (sqlstore/bulk.go), as the
// identity group commit finds them.
type (
	bulkSettings interface {
		GetMany(ctx context.Context, tenant event.TenantID, keys []string) (map[string][]byte, error)
		PutMany(ctx context.Context, tenant event.TenantID, keys []string, values [][]byte) error
	}
	bulkDevices interface {
		GetMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID) (map[event.DeviceID]store.Device, error)
		SetStateMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, from, to store.DeviceState, at time.Time) error
	}
	bulkCerts interface {
		CreateMany(ctx context.Context, cs []store.Certificate) error
	}
	bulkAudit interface {
		AppendMany(ctx context.Context, rs []store.AuditRecord) error
	}
)

// testBulk checks the bulk forms with counts that cross every chunk size
// (70 = 64 + 4 + 1 + 1), keys absent or of another tenant, and conflicts,
// which fail the transaction and leave nothing.
func testBulk(t *testing.T, s store.Store) {
	ctx := context.Background()
	var skip bool
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		_, ok1 := tx.Settings().(bulkSettings)
		_, ok2 := tx.Devices().(bulkDevices)
		_, ok3 := tx.Certificates().(bulkCerts)
		_, ok4 := tx.Audit().(bulkAudit)
		skip = !(ok1 && ok2 && ok3 && ok4)
		return nil
	}))
	if skip {
		t.Skip("this store has no bulk forms")
	}
	const n = 70
	keys := make([]string, n)
	values := make([][]byte, n)
	ids := make([]event.DeviceID, n)
	for i := range n {
		keys[i], values[i] = fmt.Sprintf("k%d", i), []byte(fmt.Sprintf(`{"v":%d}`, i))
		ids[i] = event.DeviceID(fmt.Sprintf("d%d", i))
	}
	values[3] = nil // stored empty
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().(bulkSettings).PutMany(ctx, "acme", keys[:n-5], values[:n-5]); err != nil {
			return err
		}
		if err := tx.Settings().Put(ctx, "other", "k69", []byte(`{}`)); err != nil {
			return err
		}
		for _, id := range ids[:n-5] {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: id, Model: "m", State: store.StateRegistered,
				CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: "other", ID: "d69", State: store.StateRegistered})
	}))
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		got, err := tx.Settings().(bulkSettings).GetMany(ctx, "acme", keys)
		require.NoError(t, err)
		require.Len(t, got, n-5, "absent keys and other tenants' are not returned")
		require.Equal(t, []byte{}, got["k3"])
		require.Equal(t, values[64], got["k64"])
		devs, err := tx.Devices().(bulkDevices).GetMany(ctx, "acme", ids)
		require.NoError(t, err)
		require.Len(t, devs, n-5)
		require.Equal(t, "m", devs["d64"].Model)
		one, err := tx.Devices().(bulkDevices).GetMany(ctx, "acme", ids[:1])
		require.NoError(t, err)
		require.Len(t, one, 1)
		return nil
	}))
	// A put replaces.
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		return tx.Settings().(bulkSettings).PutMany(ctx, "acme", []string{"k0", "k1"}, [][]byte{[]byte(`{"new":0}`), []byte(`{"new":1}`)})
	}))
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		v, err := tx.Settings().Get(ctx, "acme", "k1")
		require.NoError(t, err)
		require.JSONEq(t, `{"new":1}`, string(v))
		return nil
	}))

	// States: all or the transaction fails.
	at := t0.Add(time.Hour)
	err := s.Update(ctx, func(tx store.Tx) error {
		return tx.Devices().(bulkDevices).SetStateMany(ctx, "acme", ids, store.StateRegistered, store.StateActive, at)
	})
	require.ErrorIs(t, err, store.ErrConflict, "5 of the ids are absent")
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		return tx.Devices().(bulkDevices).SetStateMany(ctx, "acme", ids[:n-5], store.StateRegistered, store.StateActive, at)
	}))
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, "acme", "d64")
		require.NoError(t, err)
		require.Equal(t, store.StateActive, d.State)
		require.Equal(t, us(at), d.UpdatedAt)
		o, err := tx.Devices().Get(ctx, "other", "d69")
		require.NoError(t, err)
		require.Equal(t, store.StateRegistered, o.State, "another tenant's device is untouched")
		return nil
	}))

	// Certificates and audit records: a taken key fails the whole call.
	certs := make([]store.Certificate, n)
	recs := make([]store.AuditRecord, n)
	revoked := t0.Add(time.Minute)
	for i := range n {
		certs[i] = store.Certificate{Tenant: "acme", Serial: fmt.Sprintf("%x", 1000+i), Device: ids[i], Issuer: "ca1",
			DER: []byte{0x30, byte(i)}, NotBefore: t0, NotAfter: t0.Add(time.Hour)}
		recs[i] = store.AuditRecord{Tenant: "acme", Seq: int64(i + 1), Time: t0, Actor: "a", Action: "x", Target: "t",
			PrevHash: make([]byte, 32), Hash: []byte{byte(i)}}
	}
	certs[5].RevokedAt, certs[5].RevocationReason = &revoked, 1
	certs[6].DER = nil
	recs[7].Details = []byte(`{"a":1}`)
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		if err := tx.Certificates().(bulkCerts).CreateMany(ctx, certs); err != nil {
			return err
		}
		return tx.Audit().(bulkAudit).AppendMany(ctx, recs)
	}))
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		c, err := tx.Certificates().Get(ctx, "acme", certs[5].Serial)
		require.NoError(t, err)
		require.Equal(t, us(revoked), *c.RevokedAt)
		require.Equal(t, 1, c.RevocationReason)
		c, err = tx.Certificates().Get(ctx, "acme", certs[6].Serial)
		require.NoError(t, err)
		require.Nil(t, c.DER)
		require.Nil(t, c.RevokedAt)
		got, err := tx.Audit().Range(ctx, "acme", 0, 0)
		require.NoError(t, err)
		require.Len(t, got, n)
		require.Equal(t, []byte(`{"a":1}`), got[7].Details)
		require.Nil(t, got[8].Details)
		require.Equal(t, us(t0), got[69].Time)
		return nil
	}))
	extra := store.Certificate{Tenant: "acme", Serial: "fresh", Device: "d0", Issuer: "ca1", NotBefore: t0, NotAfter: t0}
	err = s.Update(ctx, func(tx store.Tx) error {
		return tx.Certificates().(bulkCerts).CreateMany(ctx, []store.Certificate{extra, certs[64]})
	})
	require.ErrorIs(t, err, store.ErrConflict)
	next := store.AuditRecord{Tenant: "acme", Seq: n + 1, Time: t0, Action: "x", PrevHash: make([]byte, 32), Hash: []byte{1}}
	err = s.Update(ctx, func(tx store.Tx) error {
		return tx.Audit().(bulkAudit).AppendMany(ctx, []store.AuditRecord{next, recs[3]})
	})
	require.ErrorIs(t, err, store.ErrConflict)
	require.NoError(t, s.View(ctx, func(tx store.Tx) error {
		_, err := tx.Certificates().Get(ctx, "acme", "fresh")
		require.True(t, errors.Is(err, store.ErrNotFound), "the failed call left nothing: %v", err)
		head, err := tx.Audit().Head(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, int64(n), head.Seq)
		return nil
	}))
}
