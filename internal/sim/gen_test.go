package sim

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/stretchr/testify/require"
)

// sharedDir holds the shared acceptance scenarios when present.
const sharedDir = "../../../shared/scenarios"

func loadT(t testing.TB, path string) *Scenario {
	t.Helper()
	sc, err := Load(path)
	require.NoError(t, err)
	return sc
}

// collect runs the generator to the end and returns all events.
func collect(t testing.TB, sc *Scenario) ([]*event.Event, []*Control) {
	t.Helper()
	g := NewGenerator(sc, "sim")
	var evs []*event.Event
	var ctls []*Control
	var last time.Time
	for {
		ev, ctl, ok := g.Next()
		if !ok {
			break
		}
		tm := time.Time{}
		if ev != nil {
			tm = ev.Time
			evs = append(evs, ev)
		} else {
			tm = ctl.Time
			ctls = append(ctls, ctl)
		}
		if tm.Before(last) {
			t.Fatalf("out of order: %s after %s", tm, last)
		}
		last = tm
	}
	return evs, ctls
}

func streamHash(t testing.TB, sc *Scenario) ([32]byte, int) {
	t.Helper()
	g := NewGenerator(sc, "sim")
	h := sha256.New()
	n := 0
	for {
		ev, ctl, ok := g.Next()
		if !ok {
			break
		}
		var b []byte
		var err error
		if ev != nil {
			b, err = json.Marshal(ev)
		} else {
			b, err = json.Marshal(ctl)
		}
		require.NoError(t, err)
		h.Write(b)
		n++
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, n
}

func TestSharedScenariosGenerate(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(sharedDir, "*.yaml"))
	if len(files) == 0 {
		t.Skip("shared scenarios folder absent")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			sc := loadT(t, f)
			if os.Getenv("SIM_FULL") == "" && sc.Duration.D > 24*time.Hour {
				// the first day keeps the test short; SIM_FULL=1 runs it all
				sc.Duration.D = 24 * time.Hour
				sc.Attacks, sc.Expect = nil, nil
			}
			start := time.Now()
			g := NewGenerator(sc, "sim")
			n := 0
			var last time.Time
			for {
				ev, ctl, ok := g.Next()
				if !ok {
					break
				}
				if ctl != nil {
					continue
				}
				require.False(t, ev.Time.Before(last), "time order")
				last = ev.Time
				if n < 1000 {
					require.NoError(t, ev.Validate())
				}
				n++
			}
			t.Logf("%d events in %s", n, time.Since(start))
			require.Positive(t, n)
		})
	}
}
