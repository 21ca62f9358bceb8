package detect

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// ErrSnapshot reports a snapshot that cannot be restored.
var ErrSnapshot = errors.New("detect: bad snapshot")

const snapshotVersion = 1

type snapDev struct {
	T event.TenantID
	D event.DeviceID
	S *devState
}

type snapshot struct {
	Version   int
	Watermark int64
	Devices   []snapDev
	Cohorts   map[string]*cohortState
	Sources   map[string]*srcState
	Alerts    []byte // JSON of the open (mergeable) alerts
}

// Snapshot serialises all detection state: per-device state, cohort
// aggregates, source counters and the open alerts repeats merge into.
// Devices are written in a stable order. Take it while no Process call is
// running for a consistent cut.
func (e *Engine) Snapshot() ([]byte, error) {
	s := snapshot{Version: snapshotVersion, Watermark: e.watermark.Load()}
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		for k, st := range sh.m {
			cp := *st
			cp.Net.Learned = slices.Clone(st.Net.Learned)
			cp.Fw.Ports = slices.Clone(st.Fw.Ports)
			cp.Fw.Told = slices.Clone(st.Fw.Told)
			if st.Net.Scan != nil {
				x := *st.Net.Scan
				cp.Net.Scan = &x
			}
			if st.Net.Tel != nil {
				x := *st.Net.Tel
				cp.Net.Tel = &x
			}
			s.Devices = append(s.Devices, snapDev{k.t, k.d, &cp})
		}
		sh.mu.Unlock()
	}
	slices.SortFunc(s.Devices, func(a, b snapDev) int {
		if c := strings.Compare(string(a.T), string(b.T)); c != 0 {
			return c
		}
		return strings.Compare(string(a.D), string(b.D))
	})
	e.cohortMu.Lock()
	s.Cohorts = make(map[string]*cohortState, len(e.cohorts))
	for gk, c := range e.cohorts {
		k := string(gk.t) + "\x00" + gk.g
		cp := *c
		cp.Ports, cp.Dests = make(map[uint16]int32, len(c.Ports)), make(map[uint32]int32, len(c.Dests))
		for p, n := range c.Ports {
			cp.Ports[p] = n
		}
		for p, n := range c.Dests {
			cp.Dests[p] = n
		}
		s.Cohorts[k] = &cp
	}
	e.cohortMu.Unlock()
	e.srcMu.Lock()
	s.Sources = make(map[string]*srcState, len(e.srcs))
	for k, v := range e.srcs {
		cp := *v
		s.Sources[k] = &cp
	}
	e.srcMu.Unlock()
	e.mergeMu.Lock()
	open := make([]alert.Alert, 0, len(e.merge))
	for _, a := range e.merge {
		open = append(open, *a)
	}
	e.mergeMu.Unlock()
	slices.SortFunc(open, func(a, b alert.Alert) int { return strings.Compare(a.ID, b.ID) })
	var err error
	if s.Alerts, err = json.Marshal(open); err != nil {
		return nil, fmt.Errorf("detect: snapshot alerts: %w", err)
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&s); err != nil {
		return nil, fmt.Errorf("detect: snapshot: %w", err)
	}
	return buf.Bytes(), nil
}

// Restore replaces all detection state with a snapshot's. On error the
// engine is unchanged.
func (e *Engine) Restore(b []byte) error {
	var s snapshot
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&s); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	if s.Version != snapshotVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrSnapshot, s.Version, snapshotVersion)
	}
	var open []alert.Alert
	if err := json.Unmarshal(s.Alerts, &open); err != nil {
		return fmt.Errorf("%w: alerts: %w", ErrSnapshot, err)
	}
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		sh.m = map[devKey]*devState{}
		sh.mu.Unlock()
	}
	for _, d := range s.Devices {
		if d.S == nil {
			continue
		}
		k := devKey{d.T, d.D}
		sh := &e.shards[shardOf(k)]
		sh.mu.Lock()
		sh.m[k] = d.S
		sh.mu.Unlock()
	}
	e.cohortMu.Lock()
	e.cohorts = map[groupKey]*cohortState{}
	for sk, c := range s.Cohorts {
		t, g, _ := strings.Cut(sk, "\x00")
		k := groupKey{event.TenantID(t), g}
		if c.Ports == nil {
			c.Ports = map[uint16]int32{}
		}
		if c.Dests == nil {
			c.Dests = map[uint32]int32{}
		}
		e.cohorts[k] = c
	}
	e.cohortMu.Unlock()
	e.srcMu.Lock()
	e.srcs = map[string]*srcState{}
	for k, v := range s.Sources {
		e.srcs[k] = v
	}
	e.srcMu.Unlock()
	e.mergeMu.Lock()
	e.merge = map[mergeKey]*alert.Alert{}
	for i := range open {
		a := open[i]
		e.merge[mergeKey{a.Tenant, a.Device, a.Kind}] = &a
	}
	e.mergeMu.Unlock()
	e.watermark.Store(s.Watermark)
	return nil
}
