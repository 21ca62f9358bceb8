package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func testCampaigns(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(tenant event.TenantID, id string, st store.CampaignState, at time.Duration) store.Campaign {
		return store.Campaign{Tenant: tenant, ID: id, Release: "ab12", Spec: []byte(`{"waves":[1,100]}`), State: st,
			CreatedBy: "op1", CreatedAt: t0.Add(at), UpdatedAt: t0.Add(at), WaveAt: t0.Add(at)}
	}
	update(t, s, func(tx store.Tx) error {
		c := tx.Campaigns()
		require.NoError(t, c.Create(ctx, mk("acme", "c2", store.CampaignRunning, time.Minute)))
		require.NoError(t, c.Create(ctx, mk("acme", "c1", store.CampaignPaused, 0)))
		require.NoError(t, c.Create(ctx, mk("acme", "c3", store.CampaignCompleted, 2*time.Minute)))
		require.NoError(t, c.Create(ctx, mk("beta", "c1", store.CampaignRunning, 0)))
		return nil
	})
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.Campaigns().Create(ctx, mk("acme", "c1", store.CampaignRunning, 0))
	}), store.ErrConflict)
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.Campaigns().Create(ctx, store.Campaign{Tenant: "acme", ID: "x"})
	}), store.ErrInvalid)
	view(t, s, func(tx store.Tx) error {
		c := tx.Campaigns()
		got, err := c.Get(ctx, "acme", "c1")
		require.NoError(t, err)
		want := mk("acme", "c1", store.CampaignPaused, 0)
		want.CreatedAt, want.UpdatedAt, want.WaveAt = us(want.CreatedAt), us(want.UpdatedAt), us(want.WaveAt)
		require.Equal(t, want, got)
		_, err = c.Get(ctx, "gamma", "c1")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := c.List(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, []string{"c1", "c2", "c3"}, []string{list[0].ID, list[1].ID, list[2].ID})
		open, err := c.Open(ctx)
		require.NoError(t, err)
		var ids []string
		for _, o := range open {
			ids = append(ids, string(o.Tenant)+"/"+o.ID)
		}
		require.Equal(t, []string{"acme/c1", "acme/c2", "beta/c1"}, ids)
		return nil
	})
	upd := mk("acme", "c1", store.CampaignAborted, 0)
	upd.Wave, upd.Reason, upd.Spec, upd.UpdatedAt, upd.WaveAt = 2, "gate failed", []byte(`{"waves":[100]}`), t0.Add(time.Hour), t0.Add(time.Hour)
	upd.CreatedBy = "ignored"
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Campaigns().Update(ctx, upd))
		require.ErrorIs(t, tx.Campaigns().Update(ctx, mk("gamma", "c1", store.CampaignRunning, 0)), store.ErrNotFound)
		return nil
	})
	// Update is a compare-and-set on Rev: a writer that read revision 0
	// cannot overwrite the change that made it 1.
	require.ErrorIs(t, updateErr(t, s, func(ctx context.Context, tx store.Tx) error {
		stale := mk("acme", "c1", store.CampaignRunning, 0)
		return tx.Campaigns().Update(ctx, stale)
	}), store.ErrConflict)
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Campaigns().Get(ctx, "acme", "c1")
		require.NoError(t, err)
		require.Equal(t, store.CampaignAborted, got.State)
		require.Equal(t, 2, got.Wave)
		require.Equal(t, "gate failed", got.Reason)
		require.Equal(t, "op1", got.CreatedBy, "Update leaves creation fields alone")
		require.EqualValues(t, 1, got.Rev, "one update")
		require.Equal(t, us(t0.Add(time.Hour)), got.WaveAt)
		require.JSONEq(t, `{"waves":[100]}`, string(got.Spec))
		return nil
	})

	tg := func(tenant event.TenantID, dev string, wave int, st string) store.CampaignTarget {
		return store.CampaignTarget{Tenant: tenant, Campaign: "c2", Device: event.DeviceID(dev), Wave: wave, State: st, UpdatedAt: t0}
	}
	update(t, s, func(tx store.Tx) error {
		c := tx.Campaigns()
		require.NoError(t, c.PutTargets(ctx, []store.CampaignTarget{
			tg("acme", "d3", 1, "pending"), tg("acme", "d1", 0, "sent"), tg("acme", "d2", 0, "sent"), tg("beta", "d1", 0, "sent"),
		}))
		done := tg("acme", "d2", 0, "succeeded")
		done.Version, done.Digest, done.Reason = "1.2.0", "ab12", "ok"
		require.NoError(t, c.PutTargets(ctx, []store.CampaignTarget{done}))
		require.ErrorIs(t, c.PutTargets(ctx, []store.CampaignTarget{{Tenant: "acme", Campaign: "c2"}}), store.ErrInvalid)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		c := tx.Campaigns()
		ts, err := c.Targets(ctx, "acme", "c2", "", 0)
		require.NoError(t, err)
		require.Len(t, ts, 3)
		require.Equal(t, event.DeviceID("d1"), ts[0].Device)
		require.Equal(t, store.CampaignTarget{Tenant: "acme", Campaign: "c2", Device: "d2", Wave: 0, State: "succeeded",
			Reason: "ok", Version: "1.2.0", Digest: "ab12", UpdatedAt: us(t0)}, ts[1])
		page, err := c.Targets(ctx, "acme", "c2", "d1", 1)
		require.NoError(t, err)
		require.Len(t, page, 1)
		require.Equal(t, event.DeviceID("d2"), page[0].Device)
		counts, err := c.CountTargets(ctx, "acme", "c2")
		require.NoError(t, err)
		require.Equal(t, []store.TargetCount{{Wave: 0, State: "sent", N: 1}, {Wave: 0, State: "succeeded", N: 1}, {Wave: 1, State: "pending", N: 1}}, counts)
		one, err := c.Target(ctx, "acme", "c2", "d2")
		require.NoError(t, err)
		require.Equal(t, ts[1], one)
		_, err = c.Target(ctx, "acme", "c2", "d9")
		require.ErrorIs(t, err, store.ErrNotFound)
		_, err = c.Target(ctx, "beta", "c2", "d2")
		require.ErrorIs(t, err, store.ErrNotFound, "another tenant's campaign of the same id")
		none, err := c.Targets(ctx, "gamma", "c2", "", 0)
		require.NoError(t, err)
		require.Empty(t, none)
		return nil
	})
}
