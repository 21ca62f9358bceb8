package app

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestPlaybookFirmwareSteps: in serve, a playbook's freeze_updates pauses
// the running campaign that still has the alerted device to update, and
// schedule_update {release: latest} starts an emergency campaign for that
// device alone with the newest signed release of its model; resolving the
// alert as a false positive resumes the paused campaign and cancels the
// scheduled one. A device already on the newest release gets a failed
// action saying so, and no campaign.
func TestPlaybookFirmwareSteps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := massApp(ctx, t)
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	const tenant = event.TenantID("acme")
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for _, d := range []struct{ id, fw string }{{"dev-1", "1.1.0"}, {"dev-2", "1.1.0"}, {"dev-3", "1.3.0"}} {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: event.DeviceID(d.id), Model: "m1", State: store.StateActive,
				Firmware: d.fw, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))

	// The tenant's keys and two signed releases for m1.
	fw := TrustFirmwareKeys(t, ctx, a, tenant)
	release := func(version string) string {
		return fw.AddRelease(t, ctx, a, tenant, bytes.Repeat([]byte("firmware "+version+" "), 100), version)
	}
	v12, v13 := release("1.2.0"), release("1.3.0")

	rollout, err := a.Campaigns().Create(ctx, tenant, "op", ota.Spec{Name: "rollout", Release: v12,
		Selector: ota.Selector{Model: "m1", Devices: []event.DeviceID{"dev-1", "dev-2"}}, Waves: []float64{100}})
	require.NoError(t, err)
	require.Equal(t, store.CampaignRunning, rollout.State)

	svc, err := a.response.get()
	require.NoError(t, err)
	_, err = svc.PutPlaybook(ctx, tenant, "reflash", []byte(`trigger: {kinds: [firmware.unapproved]}
mode: auto
restore_on_false_positive: true
steps:
  - freeze_updates
  - schedule_update: {release: latest}
`), "op")
	require.NoError(t, err)

	campaigns := func() []store.Campaign {
		var cs []store.Campaign
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			cs, err = tx.Campaigns().List(ctx, tenant)
			return err
		}))
		return cs
	}
	actions := func(alertID string) []store.Action {
		var as []store.Action
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			as, err = tx.Actions().List(ctx, tenant, store.ActionFilter{})
			return err
		}))
		var out []store.Action
		for _, x := range as {
			if x.AlertID == alertID && x.Playbook == "reflash" {
				out = append(out, x)
			}
		}
		return out
	}
	raise := func(id string, dev event.DeviceID) {
		require.NoError(t, a.Detection().Raise(ctx, alert.Alert{ID: id, Tenant: tenant, Device: dev, Kind: alert.FirmwareUnapproved,
			Severity: alert.High, Detector: "test", FirstSeen: now, LastSeen: now, Count: 1, State: alert.Open,
			Evidence: alert.Evidence{Summary: "digest unknown to the catalog"}}))
	}
	settled := func(id string, n int) []store.Action {
		var as []store.Action
		require.Eventually(t, func() bool {
			as = actions(id)
			if len(as) < n {
				return false
			}
			for _, x := range as {
				if x.State == store.ActionPending {
					return false
				}
			}
			return true
		}, 20*time.Second, 20*time.Millisecond)
		return as
	}

	raise("al-1", "dev-1")
	for _, x := range settled("al-1", 2) {
		require.Equal(t, store.ActionDone, x.State, "%s: %s", x.Kind, x.Reason)
	}
	cs := campaigns()
	require.Len(t, cs, 2)
	require.Equal(t, store.CampaignPaused, cs[0].State, "the rollout reaching the device is frozen")
	require.Contains(t, cs[0].Reason, "frozen by response")
	require.Equal(t, store.CampaignRunning, cs[1].State)
	require.Equal(t, "automation", cs[1].CreatedBy)
	var spec ota.Spec
	require.NoError(t, json.Unmarshal(cs[1].Spec, &spec))
	require.Equal(t, v13, spec.Release, "latest: the newest signed release for m1")
	require.Equal(t, []event.DeviceID{"dev-1"}, spec.Selector.Devices)
	require.True(t, spec.Emergency)

	require.NoError(t, svc.Resolve(ctx, tenant, "al-1", alert.FalsePositive, "op-3"))
	cs = campaigns()
	require.Equal(t, store.CampaignRunning, cs[0].State, "resumed")
	require.Equal(t, store.CampaignCancelled, cs[1].State, "the scheduled update is cancelled")
	for _, x := range actions("al-1") {
		require.Equal(t, store.ActionUndone, x.State, x.Kind)
	}

	// dev-3 already runs 1.3.0: nothing to schedule; it is in no campaign, so nothing to freeze.
	raise("al-2", "dev-3")
	for _, x := range settled("al-2", 2) {
		switch x.Kind {
		case "freeze_updates":
			require.Equal(t, store.ActionDone, x.State)
		case "schedule_update":
			require.Equal(t, store.ActionFailed, x.State)
			require.Contains(t, x.Reason, "not newer")
		}
	}
	require.Len(t, campaigns(), 2, "no campaign for a device that cannot move forward")
	require.Equal(t, store.CampaignRunning, campaigns()[0].State)
}
