package sim

import (
	"testing"
)

// BenchmarkGenerate measures generation speed on the project's 7-day
// quiet baseline (reported as events/s).
func BenchmarkGenerate(b *testing.B) {
	sc, err := Load("/tmp/bq.yaml")
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
}
