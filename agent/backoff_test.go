package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoffCeilingAndDelay(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 30 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i, w := range want {
		require.Equal(t, w*time.Second, b.Ceiling(i), "attempt %d", i)
	}
	require.Equal(t, 30*time.Second, b.Ceiling(1000), "no overflow on long outages")
	require.Equal(t, time.Duration(0), b.Delay(3, 0))
	require.Equal(t, 4*time.Second, b.Delay(3, 0.5))
	require.Less(t, b.Delay(3, 0.999999), 8*time.Second, "strictly below the ceiling")
	require.Equal(t, time.Duration(0), b.Delay(3, 1.5), "out-of-range jitter is treated as 0")
}

// TestReconnectScheduleUsesClockAndRand drives the connect loop with a
// dialer that always fails: every wait it asks of the clock is exactly
// Backoff.Delay(attempt, r) for the jitter the injected rand produced.
func TestReconnectScheduleUsesClockAndRand(t *testing.T) {
	clk := newFakeClock(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	jitter := []float64{0.9, 0.1, 0.5, 0.75, 0.3, 0.99, 0.01, 0.6}
	i := 0
	cfg := Config{Tenant: "acme", Device: "d1", StateDir: t.TempDir(), URL: "https://127.0.0.1:1", MQTTAddr: "127.0.0.1:1",
		Clock: clk, Backoff: Backoff{Base: time.Second, Max: 16 * time.Second},
		Rand: func() float64 { r := jitter[i%len(jitter)]; i++; return r }}
	a, err := New(cfg)
	require.NoError(t, err)
	dials := make(chan struct{}, 100)
	a.dial = func(context.Context) (net.Conn, error) {
		dials <- struct{}{}
		return nil, errors.New("broker unreachable")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.connectLoop(ctx); close(done) }()
	const attempts = 8
	for n := 0; n < attempts; n++ {
		<-dials
		// Wait until the loop is parked on its timer, then fire it.
		require.Eventually(t, func() bool { return len(clk.pending()) == 1 }, 5*time.Second, time.Millisecond)
		clk.Advance(16 * time.Second)
	}
	cancel()
	<-done
	got := clk.waited()[:attempts]
	for n := 0; n < attempts; n++ {
		require.Equal(t, cfg.Backoff.Delay(n, jitter[n]), got[n], "wait before retry %d", n+1)
	}
	require.Equal(t, []time.Duration{900 * time.Millisecond, 200 * time.Millisecond, 2 * time.Second, 6 * time.Second,
		4800 * time.Millisecond, 15840 * time.Millisecond, 160 * time.Millisecond, 9600 * time.Millisecond}, got)
}

// TestFleetReconnectSpreads: 2,000 devices losing the broker at the same
// instant, each with its own random source, retry spread evenly over the
// back-off window rather than together: no second of the window receives
// more than twice its fair share, at every attempt.
func TestFleetReconnectSpreads(t *testing.T) {
	const devices = 2000
	b := Backoff{Base: time.Second, Max: 5 * time.Minute}
	for attempt := 0; attempt < 10; attempt++ {
		ceiling := b.Ceiling(attempt)
		buckets := int(ceiling / time.Second)
		count := make([]int, buckets)
		for d := 0; d < devices; d++ {
			r := rand.New(rand.NewPCG(uint64(d), uint64(attempt)))
			count[int(b.Delay(attempt, r.Float64())/time.Second)]++
		}
		fair := float64(devices) / float64(buckets)
		for s, c := range count {
			if buckets >= 8 {
				require.LessOrEqual(t, float64(c), 2*fair+5, "attempt %d: second %d of %d gets %d reconnects (fair share %.0f)",
					attempt, s, buckets, c, fair)
			}
		}
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, ErrConfig)
	for _, want := range []string{"tenant", "device", "state dir", "url", "mqtt"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = New(Config{Tenant: "acme", Device: "d1", StateDir: filepath.Join(t.TempDir(), "s"), URL: "http://x", MQTTAddr: "x:1",
		RenewAt: 1.5, Model: "bad model", FirmwareVersion: "v1"})
	require.ErrorIs(t, err, ErrConfig)
	for _, want := range []string{"https", "renew-at", "model", "firmware version"} {
		require.Contains(t, err.Error(), want)
	}
}
