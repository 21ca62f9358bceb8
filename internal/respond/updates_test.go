package respond_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// updatesFake records the firmware steps' calls.
type updatesFake struct {
	mu                                sync.Mutex
	frozen, thawed, scheduled, cancel []string
}

func (u *updatesFake) FreezeUpdates(_ context.Context, t respond.Target) (respond.Undo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.frozen = append(u.frozen, string(t.Device))
	return respond.Undo{Kind: respond.UndoResumeCampaigns, Campaigns: []string{"c-" + string(t.Device)}}, nil
}

func (u *updatesFake) ThawUpdates(_ context.Context, t respond.Target, un respond.Undo) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.thawed = append(u.thawed, strings.Join(un.Campaigns, ","))
	return nil
}

func (u *updatesFake) ScheduleUpdate(_ context.Context, t respond.Target, release string) (respond.Undo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.scheduled = append(u.scheduled, string(t.Device)+"@"+release)
	return respond.Undo{Kind: respond.UndoCancelCampaign, Campaigns: []string{"upd-" + string(t.Device)}}, nil
}

func (u *updatesFake) CancelUpdate(_ context.Context, t respond.Target, un respond.Undo) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cancel = append(u.cancel, strings.Join(un.Campaigns, ","))
	return nil
}

// TestFirmwareSteps: freeze_updates and schedule_update call the campaign
// back-end with the alert's device and the playbook's release, record how
// to undo, and a false positive resumes what was paused and cancels what
// was scheduled. Without a back-end they are skipped, saying why.
func TestFirmwareSteps(t *testing.T) {
	ctx := context.Background()
	up := &updatesFake{}
	f := newFixture(t, func(o *respond.Options) { o.Updates = up })
	f.fleet(t, "acme", 2)
	doc := `playbooks:
  - name: reflash
    trigger: {kinds: [firmware.unapproved]}
    restore_on_false_positive: true
    steps:
      - freeze_updates
      - quarantine
      - schedule_update: {release: latest}
`
	_, err := f.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", alert.FirmwareUnapproved, t0)))
	require.Equal(t, []string{"dev-00001"}, up.frozen)
	require.Equal(t, []string{"dev-00001@latest"}, up.scheduled)
	freeze, sched := f.action(t, "acme", "al-1/reflash/0"), f.action(t, "acme", "al-1/reflash/2")
	require.Equal(t, store.ActionDone, freeze.State)
	require.Equal(t, store.ActionDone, sched.State)
	require.Contains(t, string(freeze.Undo), `"resume_campaigns"`)
	require.Contains(t, string(sched.Undo), `"upd-dev-00001"`)

	require.NoError(t, f.eng.Resolve(ctx, "acme", "al-1", alert.FalsePositive, "op-3"))
	require.Equal(t, []string{"c-dev-00001"}, up.thawed)
	require.Equal(t, []string{"upd-dev-00001"}, up.cancel)
	require.Equal(t, store.ActionUndone, f.action(t, "acme", "al-1/reflash/0").State)
	require.Equal(t, store.ActionUndone, f.action(t, "acme", "al-1/reflash/2").State)
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00001"))

	// No campaign engine: skipped with the reason, nothing else changes.
	g := newFixture(t, nil)
	g.fleet(t, "acme", 1)
	_, err = g.eng.SetPlaybooks(ctx, "acme", []byte(doc), "op")
	require.NoError(t, err)
	require.NoError(t, g.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00000", alert.FirmwareUnapproved, t0)))
	for _, i := range []string{"0", "2"} {
		act := g.action(t, "acme", "al-2/reflash/"+i)
		require.Equal(t, store.ActionSkipped, act.State)
		require.Equal(t, "no campaign engine configured", act.Reason)
	}
}

// TestScheduleUpdateNeedsARelease: the release parameter is checked when
// the playbook is uploaded, with the line.
func TestScheduleUpdateNeedsARelease(t *testing.T) {
	for _, step := range []string{"schedule_update", "schedule_update: {release: newest}", "schedule_update: {release: ABC}"} {
		_, err := respond.Parse([]byte("playbooks:\n  - name: p\n    trigger: {kinds: [firmware.unapproved]}\n    steps:\n      - " + step + "\n"))
		require.Error(t, err, step)
		require.Contains(t, err.Error(), "line 5", step)
		require.Contains(t, err.Error(), "schedule_update needs release", step)
	}
	pbs, err := respond.Parse([]byte("playbooks:\n  - name: p\n    trigger: {kinds: [firmware.unapproved]}\n    steps:\n      - freeze_updates\n      - schedule_update: {release: " +
		strings.Repeat("ab", 32) + "}\n"))
	require.NoError(t, err)
	require.Equal(t, respond.StepScheduleUpdate, pbs[0].Steps[1].Kind)
	require.True(t, respond.StepScheduleUpdate.Disruptive(), "an update reboots the device: the guard counts it")
	require.False(t, respond.StepFreezeUpdates.Disruptive())
}
