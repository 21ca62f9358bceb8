package sim

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLibraryCoverage checks that the project's scenario library covers
// every attack kind, quiet baselines of every mobility and pattern (with
// outages and a firmware campaign), and several attacks at once.
func TestLibraryCoverage(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "scenarios", "*.yaml"))
	require.NoError(t, err)
	kinds := map[string]bool{}
	quietMobility := map[string]bool{}
	quietPattern := map[string]bool{}
	quietOutages, quietCampaign, combined := false, false, 0
	names := map[string]bool{}
	for _, f := range files {
		sc, err := Load(f)
		require.NoError(t, err)
		require.False(t, names[sc.Name], "unique names")
		names[sc.Name] = true
		require.Equal(t, sc.Name+".yaml", filepath.Base(f), "file named after the scenario")
		for _, a := range sc.Attacks {
			kinds[a.Kind] = true
		}
		if len(sc.Attacks) >= 3 {
			combined++
		}
		// every attack has an expectation of its alert
		for _, a := range sc.Attacks {
			found := false
			for _, e := range sc.Expect {
				if e.Device == a.Device && e.Alert == AlertFor(a.Kind) {
					found = true
				}
			}
			require.True(t, found, "%s: %s on %s has no expectation", sc.Name, a.Kind, a.Device)
		}
		if len(sc.Attacks) == 0 {
			require.Empty(t, sc.Expect)
			for _, c := range sc.Fleet {
				quietMobility[c.Mobility] = true
				quietPattern[c.Pattern] = true
				if c.Outages > 0 {
					quietOutages = true
				}
			}
			if len(sc.Events) > 0 {
				quietCampaign = true
			}
		}
	}
	for _, k := range AttackKinds() {
		require.True(t, kinds[k], "no scenario injects %s", k)
	}
	for _, m := range []string{MobilityStatic, MobilityVehicle, MobilityWearable} {
		require.True(t, quietMobility[m], "no quiet baseline for mobility %s", m)
	}
	for _, p := range []string{PatternFlat, PatternDiurnal, PatternBusinessHours} {
		require.True(t, quietPattern[p], "no quiet baseline for pattern %s", p)
	}
	require.True(t, quietOutages)
	require.True(t, quietCampaign)
	require.GreaterOrEqual(t, combined, 3)
}

// TestLibraryGeneratesFully generates every scenario of the library to its
// end (SIM_FULL=1; about a minute on a loaded machine) and checks time
// order and that each expected device shows activity inside its window.
func TestLibraryGeneratesFully(t *testing.T) {
	if os.Getenv("SIM_FULL") == "" {
		t.Skip("set SIM_FULL=1 to generate the whole library")
	}
	files, _ := filepath.Glob(filepath.Join("..", "..", "scenarios", "*.yaml"))
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			sc := loadT(t, f)
			g := NewGenerator(sc, "sim")
			seen := make([]bool, len(sc.Expect))
			var last time.Time
			n := 0
			for {
				ev, _, ok := g.Next()
				if !ok {
					break
				}
				if ev == nil {
					continue
				}
				n++
				require.False(t, ev.Time.Before(last))
				last = ev.Time
				for i := range sc.Expect {
					e := &sc.Expect[i]
					on := sc.onset(e)
					if string(ev.Device) == e.Device && !ev.Time.Before(on) && !ev.Time.After(on.Add(e.Within.D)) {
						seen[i] = true
					}
				}
			}
			for i, ok := range seen {
				require.True(t, ok, "expectation %d has no event in its window", i)
			}
			t.Logf("%d events", n)
		})
	}
}
