package platform

import (
	"context"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/scenarios"
)

// raceSubset are the library scenarios still replayed under the race
// detector (10x slower): short ones that cross every path of the plane
// (detection, alert store, quarantine through the registry, revocation).
var raceSubset = map[string]bool{
	"attack-revoked-cert-use.yaml": true,
	"attack-sim-swap.yaml":         true,
}

// TestScenarioLibrary replays every scenario of the project's own library
// through the real bus, detection and response, and requires each to pass
// as `garrison simulate --check` would. Under -race only raceSubset runs;
// .ci/run replays the whole library without the race detector as well.
func TestScenarioLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the scenario library replays days of fleet traffic")
	}
	names, err := fs.Glob(scenarios.FS, "*.yaml")
	if err != nil || len(names) == 0 {
		t.Fatalf("no scenarios embedded: %v", err)
	}
	if only := os.Getenv("GARRISON_SCENARIO"); only != "" {
		names = []string{only}
	}
	for _, name := range names {
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			if raceEnabled && !raceSubset[name] {
				t.Skip("replayed without -race only (see .ci/run)")
			}
			raw, err := scenarios.FS.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			sc, err := sim.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			rep, err := RunScenario(ctx, sc, ScenarioOptions{DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d devices, %s, %d events in %.1fs", rep.Scenario, rep.Devices, rep.Simulated, rep.Events, rep.WallSeconds)
			for _, x := range rep.Expectations {
				switch {
				case !x.Detected:
					t.Errorf("%s %s: missed", x.Device, x.Alert)
				case x.ResponseOK != nil && !*x.ResponseOK:
					t.Errorf("%s %s: detected in %.0fs but response %s not taken", x.Device, x.Alert, *x.TimeToDetectSeconds, x.Response)
				}
			}
			for _, f := range rep.FalseAlerts {
				t.Logf("false alert: %s %s at %s", f.Device, f.Alert, f.At)
			}
			if !rep.Passed {
				t.Errorf("scenario failed (%d false alerts, %d allowed)", len(rep.FalseAlerts), sc.MaxFalseAlerts)
			}
		})
	}
}
