package sim

import (
	"path/filepath"
	"testing"

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
