package sim

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/stretchr/testify/require"
)

func scoreScenario(t *testing.T) *Scenario {
	t.Helper()
	sc, err := Parse([]byte(validYAML))
	require.NoError(t, err)
	// onset of the rollback expectation: start + 6h
	return sc
}

func TestScore(t *testing.T) {
	sc := scoreScenario(t)
	onset := sc.Start.Add(6 * time.Hour)
	al := func(dev, kind string, at time.Duration) alert.Alert {
		return alert.Alert{ID: dev + kind, Tenant: "sim", Device: event.DeviceID(dev), Kind: alert.Kind(kind), FirstSeen: onset.Add(at), LastSeen: onset.Add(at), Count: 1}
	}
	done := store.Action{Device: "gw-0002", Kind: "quarantine", State: store.ActionDone}
	tests := []struct {
		name       string
		alerts     []alert.Alert
		actions    []store.Action
		detected   bool
		ttd        float64
		responseOK bool
		falses     int
		passed     bool
	}{
		{"detected with response", []alert.Alert{al("gw-0002", "firmware.rollback", 90*time.Second)}, []store.Action{done}, true, 90, true, 0, true},
		{"missed", nil, []store.Action{done}, false, 0, true, 0, false},
		{"late", []alert.Alert{al("gw-0002", "firmware.rollback", 11*time.Minute)}, []store.Action{done}, false, 0, true, 0, false},
		{"too early", []alert.Alert{al("gw-0002", "firmware.rollback", -2*time.Minute)}, []store.Action{done}, false, 0, true, 0, false},
		{"slightly early counts as zero", []alert.Alert{al("gw-0002", "firmware.rollback", -30*time.Second)}, []store.Action{done}, true, 0, true, 0, true},
		{"wrong device", []alert.Alert{al("gw-0003", "firmware.rollback", time.Minute)}, []store.Action{done}, false, 0, true, 1, false},
		{"no response", []alert.Alert{al("gw-0002", "firmware.rollback", time.Minute)}, nil, true, 60, false, 0, false},
		{"response pending", []alert.Alert{al("gw-0002", "firmware.rollback", time.Minute)}, []store.Action{{Device: "gw-0002", Kind: "quarantine", State: store.ActionPending}}, true, 60, false, 0, false},
		{"response on other device", []alert.Alert{al("gw-0002", "firmware.rollback", time.Minute)}, []store.Action{{Device: "gw-0001", Kind: "quarantine", State: store.ActionDone}}, true, 60, false, 0, false},
		{"false alert", []alert.Alert{al("gw-0002", "firmware.rollback", 0), al("van-0001", "usage.data_spike", -time.Hour)}, []store.Action{done}, true, 0, true, 1, false},
		{"earliest of several", []alert.Alert{al("gw-0002", "firmware.rollback", 5*time.Minute), al("gw-0002", "firmware.rollback", 2*time.Minute)}, []store.Action{done}, true, 120, true, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep := Score(sc, tc.alerts, tc.actions)
			require.Equal(t, "small", rep.Scenario)
			require.Equal(t, 8, rep.Devices)
			require.Equal(t, "12h0m0s", rep.Simulated)
			require.Len(t, rep.Expectations, 1)
			e := rep.Expectations[0]
			require.Equal(t, tc.detected, e.Detected)
			if tc.detected {
				require.NotNil(t, e.TimeToDetectSeconds)
				require.InDelta(t, tc.ttd, *e.TimeToDetectSeconds, 0.001)
			} else {
				require.Nil(t, e.TimeToDetectSeconds)
			}
			require.NotNil(t, e.ResponseOK)
			require.Equal(t, tc.responseOK, *e.ResponseOK)
			require.Len(t, rep.FalseAlerts, tc.falses)
			require.Equal(t, tc.passed, rep.Passed)
		})
	}
	t.Run("max_false_alerts allows some", func(t *testing.T) {
		sc2 := *sc
		sc2.MaxFalseAlerts = 1
		rep := Score(&sc2, []alert.Alert{al("gw-0002", "firmware.rollback", 0), al("van-0001", "usage.data_spike", 0)}, []store.Action{done})
		require.True(t, rep.Passed)
		require.Equal(t, []FalseAlert{{Device: "van-0001", Alert: "usage.data_spike", At: onset.UTC().Format(time.RFC3339)}}, rep.FalseAlerts)
	})
}

func TestReportJSONShape(t *testing.T) {
	sc := scoreScenario(t)
	rep := Score(sc, nil, nil)
	b, err := json.Marshal(rep)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	for _, k := range []string{"scenario", "devices", "simulated", "events", "wall_seconds", "expectations", "false_alerts", "passed"} {
		require.Contains(t, m, k)
	}
	require.Len(t, m, 8)
	e := m["expectations"].([]any)[0].(map[string]any)
	for _, k := range []string{"device", "alert", "detected", "time_to_detect_seconds", "response", "response_ok"} {
		require.Contains(t, e, k)
	}
	require.Equal(t, []any{}, m["false_alerts"])
}

// recorder is an in-test platform: it collects what the simulator sends and
// raises alerts for firmware reports with unsigned or rolled-back versions,
// like a minimal detector would, so that Run's scoring path is exercised.
type recorder struct {
	mu       sync.Mutex
	events   []*event.Event
	devices  []Device
	releases map[string]bool
	min      map[string]string
	feeds    map[string][]byte
	revoked  []event.DeviceID
	advances int
	drained  bool
	alerts   []alert.Alert
}

func (r *recorder) Publish(_ context.Context, ev *event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	if ev.Kind == event.FirmwareReport {
		v := ev.Str("version")
		model := ""
		for _, d := range r.devices {
			if d.ID == ev.Device {
				model = d.Model
			}
		}
		if compareVersions(v, r.min[model]) < 0 && r.releases[ev.Str("digest")] {
			r.alerts = append(r.alerts, alert.Alert{Tenant: ev.Tenant, Device: ev.Device, Kind: alert.FirmwareRollback, FirstSeen: ev.Time, LastSeen: ev.Time, Count: 1})
		}
	}
	return nil
}
func (r *recorder) RegisterDevice(_ context.Context, d Device) error {
	r.devices = append(r.devices, d)
	return nil
}
func (r *recorder) AddRelease(_ context.Context, model, version, digest string) error {
	if digest != Digest(model, version) {
		return errors.New("bad digest")
	}
	r.releases[digest] = true
	return nil
}
func (r *recorder) SetMinVersion(_ context.Context, model, version string) error {
	r.min[model] = version
	return nil
}
func (r *recorder) ImportThreatFeed(_ context.Context, name string, feed []byte) error {
	r.feeds[name] = feed
	return nil
}
func (r *recorder) RevokeDevice(_ context.Context, id event.DeviceID) error {
	r.revoked = append(r.revoked, id)
	return nil
}
func (r *recorder) Alerts(context.Context) ([]alert.Alert, error) { return r.alerts, nil }
func (r *recorder) Actions(context.Context) ([]store.Action, error) {
	var out []store.Action
	for _, a := range r.alerts {
		out = append(out, store.Action{Device: a.Device, Kind: "quarantine", State: store.ActionDone})
	}
	return out, nil
}

func TestRun(t *testing.T) {
	sc := scoreScenario(t)
	r := &recorder{releases: map[string]bool{}, min: map[string]string{}, feeds: map[string][]byte{}}
	var progress int
	rep, err := Run(context.Background(), sc, RunOptions{
		Sink: r, Setup: r, Results: r,
		Progress: func(time.Time, int) { progress++ },
		Drain:    func(context.Context) error { r.drained = true; return nil },
		Advance:  func(context.Context, time.Time) error { r.advances++; return nil },
	})
	require.NoError(t, err)
	require.True(t, r.drained)
	require.Len(t, r.devices, 8)
	require.Equal(t, "3.0.2", r.min["edge-gw-1"])
	require.True(t, r.releases[Digest("edge-gw-1", "3.1.0")], "campaign release registered before")
	require.True(t, r.releases[Digest("edge-gw-1", "2.0.0")], "rollback target existed once")
	require.Empty(t, r.feeds, "no c2_beacon, no feed")
	require.GreaterOrEqual(t, r.advances, 12*60)
	require.Positive(t, progress)
	require.Equal(t, int64(len(r.events)), rep.Events)
	require.True(t, rep.Passed, "%+v", rep)
	require.InDelta(t, 0, *rep.Expectations[0].TimeToDetectSeconds, 1)

	_, err = Run(context.Background(), sc, RunOptions{})
	require.ErrorIs(t, err, ErrOptions)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Run(ctx, sc, RunOptions{Sink: r, Results: r})
	require.ErrorIs(t, err, context.Canceled)
}

func TestRunRevokesAndImportsFeed(t *testing.T) {
	for _, kind := range []string{"revoked_cert_use", "c2_beacon"} {
		sc := attackScenario(t, kind, "gw-0001", "{}")
		r := &recorder{releases: map[string]bool{}, min: map[string]string{}, feeds: map[string][]byte{}}
		_, err := Run(context.Background(), sc, RunOptions{Sink: r, Setup: r, Results: r, PlatformRevokes: true})
		require.NoError(t, err)
		if kind == "revoked_cert_use" {
			require.Equal(t, []event.DeviceID{"gw-0001"}, r.revoked)
			for _, e := range r.events {
				require.NotEqual(t, event.CertRevoked, e.Kind, "the platform emits it")
			}
		} else {
			require.Len(t, r.feeds, 1)
		}
	}
}
