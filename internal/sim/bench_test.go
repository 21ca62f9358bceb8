package sim

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkGenerate measures generation speed (events/s) on week-long quiet
// fleets: the project's mixed week and, when present, the shared
// baseline-quiet.yaml (7 days, 360 devices).
func BenchmarkGenerate(b *testing.B) {
	for _, f := range []string{
		filepath.Join("..", "..", "scenarios", "baseline-mixed-week.yaml"),
		filepath.Join(sharedDir, "baseline-quiet.yaml"),
	} {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		b.Run(filepath.Base(f), func(b *testing.B) {
			sc, err := Load(f)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			total := 0
			for b.Loop() {
				g := NewGenerator(sc, "sim")
				for {
					_, _, ok := g.Next()
					if !ok {
						break
					}
					total++
				}
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(total)/float64(b.N), "events/op")
		})
	}
}
