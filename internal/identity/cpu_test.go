package identity

import (
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
