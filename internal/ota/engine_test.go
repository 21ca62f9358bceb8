package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// jobLog records the jobs an engine publishes (the broker's place).
type jobLog struct {
	mu   sync.Mutex
	jobs []Job
	to   []event.DeviceID
}

func (l *jobLog) PublishJob(_ context.Context, _ event.TenantID, d event.DeviceID, payload []byte) error {
	var j Job
	if err := json.Unmarshal(payload, &j); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.jobs = append(l.jobs, j)
	l.to = append(l.to, d)
	return nil
}

func (l *jobLog) take() ([]Job, []event.DeviceID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j, d := l.jobs, l.to
	l.jobs, l.to = nil, nil
	return j, d
}

type alertCount struct {
	mu sync.Mutex
	n  map[event.DeviceID]int // alerts after the wave start
}

func (a *alertCount) CountAlerts(_ context.Context, _ event.TenantID, ds map[event.DeviceID]bool, from, to time.Time) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for d, k := range a.n {
		if ds[d] && to.After(t0) {
			n += k
		}
	}
	return n, nil
}

type campFixture struct {
	*fixture
	log    *jobLog
	alerts *alertCount
	eng    *Engine
	entry  Entry
}

func newCampFixture(t *testing.T, devices int, states map[int]store.DeviceState) *campFixture {
	t.Helper()
	f := newFixture(t)
	art := []byte("firmware image 1.2.0")
	e, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(art), f.rel), strings.NewReader(string(art)))
	require.NoError(t, err)
	require.NoError(t, f.st.Update(f.ctx, func(tx store.Tx) error {
		for i := range devices {
			st := store.StateActive
			if s, ok := states[i]; ok {
				st = s
			}
			if err := tx.Devices().Create(f.ctx, store.Device{Tenant: tenant, ID: event.DeviceID(fmt.Sprintf("m-%05d", i)),
				Model: "meter-x1", State: st, Firmware: "1.1.0", CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		return tx.Devices().Create(f.ctx, store.Device{Tenant: tenant, ID: "cam-1", Model: "cam-z", State: store.StateActive, CreatedAt: t0, UpdatedAt: t0})
	}))
	cf := &campFixture{fixture: f, log: &jobLog{}, alerts: &alertCount{n: map[event.DeviceID]int{}}, entry: e}
	cf.eng = cf.newEngine(t)
	return cf
}

func (f *campFixture) newEngine(t *testing.T) *Engine {
	t.Helper()
	eng, err := NewEngine(EngineOptions{Store: f.st, Clock: f.clk, Catalog: f.cat, Publisher: f.log, Alerts: f.alerts,
		ArtifactBase: "https://garrison.test:8443", MaxConcurrent: 1000, WaveTimeout: time.Hour})
	require.NoError(t, err)
	return eng
}

func (f *campFixture) step(t *testing.T) ([]Job, []event.DeviceID) {
	t.Helper()
	require.NoError(t, f.eng.Step(f.ctx))
	return f.log.take()
}

func (f *campFixture) report(t *testing.T, j Job, d event.DeviceID, state string) {
	t.Helper()
	st := Status{Job: j.Job, State: state}
	if state == TargetSucceeded {
		st.Version, st.Digest = f.entry.Version, f.entry.Digest
	}
	b, _ := json.Marshal(st)
	require.NoError(t, f.eng.Report(f.ctx, tenant, d, b))
}

func (f *campFixture) campaign(t *testing.T, id string) (store.Campaign, map[string]int) {
	t.Helper()
	var c store.Campaign
	counts := map[string]int{}
	require.NoError(t, f.st.View(f.ctx, func(tx store.Tx) error {
		var err error
		if c, err = tx.Campaigns().Get(f.ctx, tenant, id); err != nil {
			return err
		}
		cs, err := tx.Campaigns().CountTargets(f.ctx, tenant, id)
		for _, x := range cs {
			counts[x.State] += x.N
		}
		return err
	}))
	return c, counts
}

func (f *campFixture) auditActions(t *testing.T) []string {
	t.Helper()
	var out []string
	require.NoError(t, f.st.View(f.ctx, func(tx store.Tx) error {
		rs, err := tx.Audit().Range(f.ctx, tenant, 0, 10_000)
		for _, r := range rs {
			if strings.HasPrefix(r.Action, "ota.campaign.") {
				out = append(out, r.Action)
			}
		}
		return err
	}))
	return out
}

func ratio(v float64) *float64 { return &v }

func TestCampaignWavesToCompletion(t *testing.T) {
	f := newCampFixture(t, 100, map[int]store.DeviceState{3: store.StateQuarantined, 4: store.StateRevoked, 5: store.StateSuspended})
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{10, 50, 100}, MaxConcurrent: 7})
	require.NoError(t, err)
	require.Equal(t, store.CampaignRunning, c.State)
	_, counts := f.campaign(t, c.ID)
	require.Equal(t, map[string]int{TargetPending: 98}, counts, "revoked and suspended devices are not targeted")

	seen := map[event.DeviceID]bool{}
	waveSizes := []int{}
	for round := 0; round < 100; round++ {
		jobs, to := f.step(t)
		cur, _ := f.campaign(t, c.ID)
		if cur.State == store.CampaignCompleted {
			break
		}
		require.LessOrEqual(t, len(jobs), 7, "never more than max_concurrent jobs in progress")
		if len(waveSizes) <= cur.Wave {
			waveSizes = append(waveSizes, 0)
		}
		waveSizes[cur.Wave] += len(jobs)
		for i, j := range jobs {
			require.False(t, seen[to[i]], "one job per device")
			seen[to[i]] = true
			require.Equal(t, JobID(c.ID, to[i]), j.Job)
			require.Equal(t, "https://garrison.test:8443/api/v1/firmware/artifacts/"+f.entry.Digest, j.URL)
			// The device can verify what it received against its root.
			m, _, err := firmware.Verify(j.Manifest, j.Keys, pubOf(f.root), 0, f.clk.Now())
			require.NoError(t, err)
			require.NoError(t, firmware.VerifyForDevice(m, "meter-x1", "1.1.0", f.clk.Now()))
			f.report(t, j, to[i], TargetDownloading)
			f.report(t, j, to[i], TargetSucceeded)
		}
	}
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCompleted, cur.State)
	require.Equal(t, map[string]int{TargetSucceeded: 98}, counts)
	require.True(t, seen["m-00003"], "a quarantined device is updated: that is its way back")
	require.Equal(t, []int{10, 39, 49}, waveSizes)
	require.Equal(t, []string{"ota.campaign.create", "ota.campaign.gate_passed", "ota.campaign.gate_passed",
		"ota.campaign.gate_passed", "ota.campaign.complete"}, f.auditActions(t))
}

func TestCampaignGateFailurePausesAndResume(t *testing.T) {
	f := newCampFixture(t, 40, nil)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{25, 100}, Gate: Gate{MaxFailure: ratio(0.1), MinSuccess: ratio(0.8)}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 10)
	// 2 of 10 fail: 20% > 10%, the gate fails at once, before the wave ends.
	f.report(t, jobs[0], to[0], TargetFailed)
	f.report(t, jobs[1], to[1], TargetRolledBack)
	f.report(t, jobs[2], to[2], TargetSucceeded)
	more, _ := f.step(t)
	require.Empty(t, more)
	cur, _ := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignPaused, cur.State)
	require.Contains(t, cur.Reason, "failure ratio 0.200 above 0.100")
	// Paused: in-flight devices still report, nothing new is sent.
	for i := 3; i < 10; i++ {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	more, _ = f.step(t)
	require.Empty(t, more)
	_, counts := f.campaign(t, c.ID)
	require.Equal(t, 8, counts[TargetSucceeded])

	_, err = f.eng.Pause(f.ctx, tenant, "op1", c.ID, "")
	require.ErrorIs(t, err, ErrCampaignState)
	_, err = f.eng.Resume(f.ctx, tenant, "op1", c.ID)
	require.NoError(t, err)
	jobs, _ = f.step(t)
	require.Len(t, jobs, 30, "resumed: the operator accepted wave 1, wave 2 starts")
	cur, _ = f.campaign(t, c.ID)
	require.Equal(t, 1, cur.Wave)
	require.Equal(t, []string{"ota.campaign.create", "ota.campaign.gate_paused", "ota.campaign.resume"}, f.auditActions(t))

	_, err = f.eng.Cancel(f.ctx, tenant, "op1", c.ID, "wrong image")
	require.NoError(t, err)
	cur, _ = f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCancelled, cur.State)
	require.Equal(t, "wrong image", cur.Reason)
	_, err = f.eng.Resume(f.ctx, tenant, "op1", c.ID)
	require.ErrorIs(t, err, ErrCampaignState)
	require.ErrorIs(t, f.eng.Report(f.ctx, tenant, to[0], []byte(`{"job":"`+jobs[0].Job+`","state":"succeeded"}`)), ErrUnknownJob)
}

func TestCampaignGateAbortOnSuccessRatioAndTimeout(t *testing.T) {
	f := newCampFixture(t, 20, nil)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{50, 100}, Gate: Gate{MinSuccess: ratio(0.9), OnFail: "abort", WaveTimeoutS: 600}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 10)
	for i := range 8 {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	f.report(t, jobs[8], to[8], TargetDownloading) // then silence
	f.step(t)
	cur, _ := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignRunning, cur.State, "the wave is not over before its timeout")
	f.clk.Advance(10 * time.Minute)
	more, _ := f.step(t)
	require.Empty(t, more)
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignAborted, cur.State)
	require.Contains(t, cur.Reason, "success ratio 0.800 below 0.900")
	require.Equal(t, 2, counts[TargetTimeout])
	_, err = f.eng.Resume(f.ctx, tenant, "op1", c.ID)
	require.ErrorIs(t, err, ErrCampaignState)
}

func TestCampaignAlertGate(t *testing.T) {
	f := newCampFixture(t, 10, nil)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 5)
	for i := range jobs {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	f.alerts.n[to[0]] = 2 // the updated cohort raises alerts
	f.clk.Advance(time.Minute)
	f.step(t)
	cur, _ := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignPaused, cur.State)
	require.Contains(t, cur.Reason, "security alerts of the updated devices rose by 2")
}

func TestCampaignWindowsAndEmergency(t *testing.T) {
	f := newCampFixture(t, 10, nil)
	// t0 is 12:00 UTC; the window opens at 13:00.
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{20, 100}, Windows: []Window{{Start: "13:00", End: "14:00"}}, Gate: Gate{WaveTimeoutS: 86400}})
	require.NoError(t, err)
	jobs, _ := f.step(t)
	require.Empty(t, jobs, "outside the maintenance window nothing is sent")
	f.clk.Advance(time.Hour)
	jobs, to := f.step(t)
	require.Len(t, jobs, 2)
	f.clk.Advance(time.Hour)
	for i := range jobs {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	more, _ := f.step(t)
	require.Empty(t, more, "wave 2 waits for the next window")
	_, err = f.eng.Emergency(f.ctx, tenant, "op1", c.ID)
	require.NoError(t, err)
	more, _ = f.step(t)
	require.Len(t, more, 8, "emergency: every remaining target, outside the window")
	for _, j := range more {
		require.True(t, j.Emergency)
	}
}

func TestCampaignResumesAfterRestart(t *testing.T) {
	f := newCampFixture(t, 10, nil)
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 5)
	for i := range 3 {
		f.report(t, jobs[i], to[i], TargetSucceeded)
	}
	f.step(t) // persists the reports
	f.report(t, jobs[3], to[3], TargetSucceeded)
	// "Crash": the last report was never written; a new engine loads.
	f.eng = f.newEngine(t)
	require.NoError(t, f.eng.Load(f.ctx))
	again, againTo := f.step(t)
	require.ElementsMatch(t, to[3:5], againTo, "jobs without a report are sent again")
	for i := range again {
		f.report(t, again[i], againTo[i], TargetSucceeded)
	}
	for range 3 {
		js, ds := f.step(t)
		for i := range js {
			f.report(t, js[i], ds[i], TargetSucceeded)
		}
	}
	cur, counts := f.campaign(t, c.ID)
	require.Equal(t, store.CampaignCompleted, cur.State)
	require.Equal(t, 10, counts[TargetSucceeded])
	// The registry knows what the fleet runs now.
	require.NoError(t, f.st.View(f.ctx, func(tx store.Tx) error {
		ds, err := tx.Devices().List(f.ctx, tenant, store.DeviceFilter{Model: "meter-x1"})
		require.Len(t, ds, 10)
		for _, d := range ds {
			require.Equal(t, f.entry.Version, d.Firmware, d.ID)
		}
		return err
	}))
}

func TestCampaignBadInput(t *testing.T) {
	f := newCampFixture(t, 4, nil)
	for _, tc := range []struct {
		spec Spec
		want error
	}{
		{Spec{Release: "nope", Selector: Selector{Model: "meter-x1"}}, ErrBadSpec},
		{Spec{Release: strings.Repeat("a", 64), Selector: Selector{Model: "meter-x1"}}, store.ErrNotFound},
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "cam-z"}}, firmware.ErrWrongModel},
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x2"}}, ErrBadSpec}, // matches nothing
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{50, 20, 100}}, ErrBadSpec},
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{50}}, ErrBadSpec},
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Gate: Gate{OnFail: "explode"}}, ErrBadSpec},
		{Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Windows: []Window{{Start: "25:00", End: "01:00"}}}, ErrBadSpec},
	} {
		_, err := f.eng.Create(f.ctx, tenant, "op1", tc.spec)
		require.ErrorIs(t, err, tc.want, "%+v", tc.spec)
	}
	require.Empty(t, f.auditActions(t), "a refused campaign writes nothing")

	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"}, Waves: []float64{100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 4)
	for _, bad := range []string{`[]`, `{"job":1}`, `{"job":"x","state":"done"}`, `not json`} {
		require.ErrorIs(t, f.eng.Report(f.ctx, tenant, to[0], []byte(bad)), ErrBadStatus, bad)
	}
	// A device cannot report for another device's job, or another tenant's.
	require.ErrorIs(t, f.eng.Report(f.ctx, tenant, to[1], []byte(`{"job":"`+jobs[0].Job+`","state":"failed"}`)), ErrUnknownJob)
	require.ErrorIs(t, f.eng.Report(f.ctx, "other", to[0], []byte(`{"job":"`+jobs[0].Job+`","state":"failed"}`)), ErrUnknownJob)
	// Succeeded with another digest is a failure.
	require.NoError(t, f.eng.Report(f.ctx, tenant, to[0], []byte(`{"job":"`+jobs[0].Job+`","state":"succeeded","version":"1.2.0","digest":"`+strings.Repeat("0", 64)+`"}`)))
	f.step(t)
	var ts []store.CampaignTarget
	require.NoError(t, f.st.View(f.ctx, func(tx store.Tx) error {
		var err error
		ts, err = tx.Campaigns().Targets(f.ctx, tenant, c.ID, "", 0)
		return err
	}))
	for _, x := range ts {
		if x.Device == to[0] {
			require.Equal(t, TargetFailed, x.State)
			require.Contains(t, x.Reason, "expected 1.2.0")
		}
	}
	_, err = f.eng.Pause(f.ctx, tenant, "op1", "c-nope", "")
	require.True(t, errors.Is(err, store.ErrNotFound), err)
}

func TestWaveSizes(t *testing.T) {
	require.Equal(t, []int{1, 9, 40, 50}, waveSizes(100, []float64{1, 10, 50, 100}))
	require.Equal(t, []int{1000, 9000, 40000, 50000}, waveSizes(100_000, []float64{1, 10, 50, 100}))
	require.Equal(t, []int{1, 1, 1, 0}, waveSizes(3, []float64{1, 10, 50, 100}))
	require.Equal(t, []int{1, 0}, waveSizes(1, []float64{1, 100}))
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(`{"job":"c-1:d","state":"succeeded","version":"1.2.0","digest":"ab","progress":1}`))
	f.Add([]byte(`{"job":"c-1:d","state":"downloading","progress":0.5,"extra":{}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatus(b)
		if err != nil {
			if !errors.Is(err, ErrBadStatus) {
				t.Fatalf("error %v does not wrap ErrBadStatus", err)
			}
			return
		}
		if s.Job == "" || len(s.Reason) > maxReasonLen {
			t.Fatalf("accepted %+v", s)
		}
	})
}

// TestResendOnSubscription: a device that was sent a job while offline
// gets the same job again when it subscribes (Resend), once per call; a
// device that answered gets nothing; other tenants are not touched.
func TestResendOnSubscription(t *testing.T) {
	f := newCampFixture(t, 4, nil)
	_, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1"},
		Waves: []float64{50, 100}})
	require.NoError(t, err)
	jobs, to := f.step(t)
	require.Len(t, jobs, 2)
	f.report(t, jobs[0], to[0], TargetDownloading) // answered
	f.step(t)

	require.Zero(t, f.eng.Resend("other-tenant", to[1]))
	require.Zero(t, f.eng.Resend(tenant, to[0]), "it answered: its job arrived")
	require.Equal(t, 1, f.eng.Resend(tenant, to[1]))
	require.Equal(t, 0, f.eng.Resend(tenant, to[1]), "queued once until the next step")
	again, againTo := f.step(t)
	require.Equal(t, []event.DeviceID{to[1]}, againTo)
	require.Equal(t, jobs[1].Job, again[0].Job, "the same job, not a new one")
	_, none := f.step(t)
	require.Empty(t, none, "a resend is one publish per subscription")
}

// TestCampaignTargetsDynamicGroup: a campaign's group names a dynamic
// group; its targets are the devices the group's selector matches now.
func TestCampaignTargetsDynamicGroup(t *testing.T) {
	f := newCampFixture(t, 20, map[int]store.DeviceState{1: store.StateQuarantined, 2: store.StateQuarantined})
	require.NoError(t, f.st.Update(f.ctx, func(tx store.Tx) error {
		return tx.Groups().Create(f.ctx, store.Group{Tenant: tenant, Name: "in-service", Kind: store.GroupDynamic,
			Selector: store.DeviceFilter{State: store.StateActive}, CreatedAt: t0, UpdatedAt: t0})
	}))
	c, err := f.eng.Create(f.ctx, tenant, "op1", Spec{Release: f.entry.Digest, Selector: Selector{Model: "meter-x1", Group: "in-service"}})
	require.NoError(t, err)
	_, counts := f.campaign(t, c.ID)
	require.Equal(t, map[string]int{TargetPending: 18}, counts, "the active devices, not the quarantined ones")
}
