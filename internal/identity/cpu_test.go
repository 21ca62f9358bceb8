package identity

import (
	"runtime/metrics"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the process's user+system CPU time. Benchmarks report
// CPU time per operation next to wall time, because this machine is shared
// and wall-clock rates swing with the load of other processes.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds cpu-µs/op (CPU time of the whole process per operation,
// all goroutines) and the rate one core could sustain at that cost.
func reportCPU(b *testing.B, start time.Duration, ops int) {
	if ops == 0 {
		return
	}
	per := (cpuTime() - start) / time.Duration(ops)
	b.ReportMetric(float64(per.Microseconds()), "cpu-µs/op")
	if per > 0 {
		b.ReportMetric(float64(time.Second)/float64(per), "ops/cpu-s")
	}
}

// idleTime returns the Go runtime's estimate of the CPU time its Ps sat
// idle (GOMAXPROCS × wall time not used by any goroutine, GC or runtime):
// the capacity a benchmark left on the table.
func idleTime() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}
