package ota

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// jobSink counts published jobs and remembers whom to answer.
type jobSink struct{ to []event.DeviceID }

func (s *jobSink) PublishJob(_ context.Context, _ event.TenantID, d event.DeviceID, payload []byte) error {
	if len(payload) == 0 {
		return fmt.Errorf("empty job")
	}
	s.to = append(s.to, d)
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCampaign100k orchestrates a campaign over 100,000 devices on the
// embedded store through waves 1%, 10%, 50%, 100% with 5,000 downloads in
// flight: selection and wave assignment, every job built (manifest and keys
// document) and handed to the publisher, every status report entering at
// the engine's entry point (Report, as the broker hook calls it), every
// gate, and every change written to SQLite. Reported: wall time and the
// process CPU time per campaign.
func BenchmarkCampaign100k(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	dir := b.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "g.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	clk := clock.NewManual(t0)
	cat, err := New(Options{Store: st, Clock: clk, DataDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	root, rel := seededKey(1), seededKey(2)
	if err := cat.SetRoot(ctx, tenant, "op", pubOf(root)); err != nil {
		b.Fatal(err)
	}
	if _, err := cat.SetKeys(ctx, tenant, "op", signedKeys(b, keySet(1, 1, rel), root)); err != nil {
		b.Fatal(err)
	}
	art := []byte("firmware image 1.2.0")
	e, err := cat.AddRelease(ctx, tenant, "op", signedManifest(b, testRelease(art), rel), strings.NewReader(string(art)))
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Update(ctx, func(tx store.Tx) error {
		for i := range n {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: event.DeviceID(fmt.Sprintf("m-%06d", i)),
				Model: "meter-x1", State: store.StateActive, CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	okStatus := func(job string) Status {
		return Status{Job: job, State: TargetSucceeded, Version: e.Version, Digest: e.Digest}
	}
	b.ResetTimer()
	var wall, cpu time.Duration
	var steps int
	for range b.N {
		sink := &jobSink{}
		eng, err := NewEngine(EngineOptions{Store: st, Clock: clk, Catalog: cat, Publisher: sink, ArtifactBase: "https://x", MaxConcurrent: 5000})
		if err != nil {
			b.Fatal(err)
		}
		// The engine as the node holding the campaigns lease runs it.
		if err := eng.Load(ctx); err != nil {
			b.Fatal(err)
		}
		start, c0 := time.Now(), cpuTime()
		c, err := eng.Create(ctx, tenant, "op", Spec{Release: e.Digest, Selector: Selector{Model: "meter-x1"}})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if err := eng.Step(ctx); err != nil {
				b.Fatal(err)
			}
			steps++
			to := sink.to
			sink.to = nil
			for _, d := range to {
				if err := eng.ReportStatus(ctx, tenant, d, Status{Job: JobID(c.ID, d), State: TargetDownloading}); err != nil {
					b.Fatal(err)
				}
				if err := eng.ReportStatus(ctx, tenant, d, okStatus(JobID(c.ID, d))); err != nil {
					b.Fatal(err)
				}
			}
			if len(to) == 0 {
				var cur store.Campaign
				_ = st.View(ctx, func(tx store.Tx) error { cur, err = tx.Campaigns().Get(ctx, tenant, c.ID); return err })
				if cur.State == store.CampaignCompleted {
					break
				}
				if cur.State != store.CampaignRunning {
					b.Fatalf("campaign %s: %s", cur.State, cur.Reason)
				}
			}
		}
		wall += time.Since(start)
		cpu += cpuTime() - c0
		var counts []store.TargetCount
		_ = st.View(ctx, func(tx store.Tx) error { counts, err = tx.Campaigns().CountTargets(ctx, tenant, c.ID); return err })
		done := 0
		for _, x := range counts {
			if x.State == TargetSucceeded {
				done += x.N
			}
		}
		if done != n {
			b.Fatalf("%d of %d succeeded", done, n)
		}
	}
	b.ReportMetric(wall.Seconds()/float64(b.N), "wall-s/campaign")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/campaign")
	b.ReportMetric(float64(steps)/float64(b.N), "steps/campaign")
}
