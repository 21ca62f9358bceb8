package ota

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
)

// standby is the engine of another node on the same store: it takes
// operator actions but never runs campaigns (no Load, no Step).
func (f *campFixture) standby(t *testing.T) (*Engine, *jobLog) {
	t.Helper()
	log := &jobLog{}
	eng, err := NewEngine(EngineOptions{Store: f.st, Clock: f.clk, Catalog: f.cat, Publisher: log, Alerts: f.alerts,
		ArtifactBase: "https://other.test:8443", MaxConcurrent: 1000, WaveTimeout: time.Hour})
	require.NoError(t, err)
	return eng, log
}

// TestCampaignActionsThroughAnotherNode: a campaign created, paused and
// switched to emergency through a node that does not run campaigns takes
// effect on the running engine at its next step; the standby never
// publishes a job.
func TestCampaignActionsThroughAnotherNode(t *testing.T) {
	f := newCampFixture(t, 4, nil)
	require.NoError(t, f.eng.Load(f.ctx))
	other, otherLog := f.standby(t)

	c, err := other.Create(f.ctx, tenant, "op2", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 2, "the running engine loaded the campaign created elsewhere")

	_, err = other.Pause(f.ctx, tenant, "op2", c.ID, "hold on")
	require.NoError(t, err)
	for i := range jobs {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	more, _ := f.step(t)
	require.Empty(t, more, "paused through the other node: no new wave")
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignPaused, cur.State)
	require.Equal(t, "hold on", cur.Reason)
	require.Equal(t, 0, cur.Wave)
	require.Equal(t, 2, counts[TargetSucceeded], "reports still written while paused")

	_, err = other.Emergency(f.ctx, tenant, "op2", c.ID)
	require.NoError(t, err)
	_, counts = f.campaign(t, c.ID)
	require.Len(t, counts, 2, "the other node moved the remaining targets")
	var waves []store.TargetCount
	require.NoError(t, f.st.View(f.ctx, func(tx store.Tx) (err error) {
		waves, err = tx.Campaigns().CountTargets(f.ctx, tenant, c.ID)
		return err
	}))
	for _, w := range waves {
		require.Equal(t, 0, w.Wave, "every target in the current wave: %+v", waves)
	}
	jobs, to = f.step(t)
	require.Len(t, jobs, 2, "emergency: the rest at once")
	for i := range jobs {
		require.True(t, jobs[i].Emergency)
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	f.step(t) // gate of the merged wave
	f.step(t) // the emptied last wave
	cur, counts = f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCompleted, cur.State)
	require.Equal(t, map[string]int{TargetSucceeded: 4}, counts)
	j, _ := otherLog.take()
	require.Empty(t, j, "the standby sends nothing")
	require.Equal(t, []string{"ota.campaign.create", "ota.campaign.pause", "ota.campaign.emergency", "ota.campaign.gate_passed", "ota.campaign.complete"}, f.auditActions(t))
}

// TestCampaignCancelThroughAnotherNode: a cancel through another node
// ends the campaign on the running engine at its next step, which still
// writes the report it had received; later reports are refused.
func TestCampaignCancelThroughAnotherNode(t *testing.T) {
	f := newCampFixture(t, 4, nil)
	require.NoError(t, f.eng.Load(f.ctx))
	other, _ := f.standby(t)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 2)
	f.report(t, jobs[0], to[0], TargetDownloading) // in memory until the next step
	_, err = other.Cancel(f.ctx, tenant, "op2", c.ID, "")
	require.NoError(t, err)
	more, _ := f.step(t)
	require.Empty(t, more)
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCancelled, cur.State)
	require.Equal(t, "cancelled by op2", cur.Reason)
	require.Equal(t, 1, counts[TargetDownloading], "the report received before the cancel was written")
	require.ErrorIs(t, f.eng.Report(f.ctx, tenant, to[1], []byte(`{"job":"`+jobs[1].Job+`","state":"failed"}`)), ErrUnknownJob)
	_, err = other.Resume(f.ctx, tenant, "op2", c.ID)
	require.ErrorIs(t, err, ErrCampaignState, "final")
}

// armedStore runs hook once, before the next Update, when armed.
type armedStore struct {
	store.Store
	mu   sync.Mutex
	hook func()
}

func (s *armedStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	s.mu.Lock()
	h := s.hook
	s.hook = nil
	s.mu.Unlock()
	if h != nil {
		h()
	}
	return s.Store.Update(ctx, fn)
}

// TestCampaignStepMergesConcurrentPause: an operator pauses through
// another node between the running engine's refresh and its write of a
// wave change. The write meets the newer revision and merges instead of
// overwriting: the campaign is paused (the operator's) in wave 2 (the
// engine's), both audited; it goes on after a resume.
func TestCampaignStepMergesConcurrentPause(t *testing.T) {
	f := newCampFixture(t, 4, nil)
	st := &armedStore{Store: f.st}
	eng, err := NewEngine(EngineOptions{Store: st, Clock: f.clk, Catalog: f.cat, Publisher: f.log, Alerts: f.alerts,
		ArtifactBase: "https://garrison.test:8443", MaxConcurrent: 1000, WaveTimeout: time.Hour})
	require.NoError(t, err)
	f.eng = eng
	require.NoError(t, f.eng.Load(f.ctx))
	other, _ := f.standby(t)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 2)
	for i := range jobs {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	st.mu.Lock()
	st.hook = func() {
		_, err := other.Pause(f.ctx, tenant, "op2", c.ID, "hold on")
		require.NoError(t, err)
	}
	st.mu.Unlock()
	jobs, to = f.step(t) // gate passes, wave 2 starts; the pause lands before the write
	require.Len(t, jobs, 2, "wave 2's jobs were chosen before the pause was seen")
	cur, _ := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignPaused, cur.State, "the operator's pause stands")
	require.Equal(t, "hold on", cur.Reason)
	require.Equal(t, 1, cur.Wave, "the engine's wave change stands")
	require.Equal(t, []string{"ota.campaign.create", "ota.campaign.pause", "ota.campaign.gate_passed"}, f.auditActions(t))
	more, _ := f.step(t)
	require.Empty(t, more, "the engine follows the merged record: paused")

	_, err = other.Resume(f.ctx, tenant, "op2", c.ID)
	require.NoError(t, err)
	for i := range jobs {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	f.step(t)
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCompleted, cur.State)
	require.Equal(t, map[string]int{TargetSucceeded: 4}, counts)
}
