package sim

import (
	"bytes"
	"testing"
	"time"
)

// TestRandomScenarios: every drawn scenario is valid, the same seed draws
// the same text, different seeds differ, and starts fall on weekdays.
func TestRandomScenarios(t *testing.T) {
	seen := map[string]bool{}
	for seed := uint64(1); seed <= 300; seed++ {
		raw := Random(seed)
		if !bytes.Equal(raw, Random(seed)) {
			t.Fatalf("seed %d: two draws differ", seed)
		}
		sc, err := Parse(raw)
		if err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, raw)
		}
		if wd := sc.Start.Weekday(); wd == time.Saturday || wd == time.Sunday {
			t.Errorf("seed %d starts on a %s", seed, wd)
		}
		seen[string(raw)] = true
	}
	if len(seen) != 300 {
		t.Errorf("%d distinct scenarios from 300 seeds", len(seen))
	}
}
