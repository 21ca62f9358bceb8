package detect

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

type fwState struct {
	Digest uint32   // hash of the last reported digest
	Ports  []uint16 // learned listening ports, sorted, capped
	Told   []uint16 // new ports already alerted, sorted, capped: one alert per port
}

// firmwareOf reads (version, digest) from firmware.report or device.metrics.
func firmwareOf(ev *event.Event) (version, digest string) {
	if ev.Kind == event.FirmwareReport {
		return ev.Str("version"), strings.ToLower(ev.Str("digest"))
	}
	return ev.Str("fw_version"), strings.ToLower(ev.Str("fw_digest"))
}

// FirmwareSettings tunes firmware.unapproved and firmware.rollback.
type FirmwareSettings struct {
	// Relearn: after a signed, non-rollback firmware change, destinations
	// are re-learned for this long (an update may add them). Listeners are
	// re-learned from the device's first metrics report after the change
	// (the services the new firmware starts); a port first seen later in
	// this time is judged, and is the cohort's (learned) once enough of
	// the cohort reported it after the update.
	Relearn Duration `json:"relearn"`
}

var firmwareUnapprovedDetector = &Detector{
	Name: "firmware.unapproved", Kind: alert.FirmwareUnapproved, Severity: alert.Critical,
	Description: "The device reports a firmware digest that no signed release of its model has.",
	Events:      []event.Kind{event.FirmwareReport, event.DeviceMetrics},
	defaults:    func() any { return &FirmwareSettings{Relearn: Duration(6 * time.Hour)} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*FirmwareSettings)
		version, digest := firmwareOf(c.ev)
		if digest == "" || c.e.opt.Catalog == nil || !c.hasProf {
			return // without the device's model there is nothing to compare with
		}
		signed, ok := c.e.opt.Catalog.Release(c.key.t, c.prof.Model, digest)
		h := hash32(digest)
		if !ok {
			c.raise(d, fmt.Sprintf("firmware digest %s (reported version %q) is not a signed release of model %q", short(digest), version, c.prof.Model),
				map[string]any{"digest": digest, "reported_version": version, "model": c.prof.Model}, *c.ev)
			c.st.Fw.Digest = h
			return
		}
		f := &c.st.Fw
		if f.Digest != 0 && f.Digest != h {
			min := c.e.opt.Catalog.MinVersion(c.key.t, c.prof.Model)
			if min == "" || CompareVersions(signed, min) >= 0 {
				c.st.Net.Relearn = c.now + secs(s.Relearn)
				c.st.Net.PortsOpen = true
			}
		}
		f.Digest = h
	},
}

func short(d string) string {
	if len(d) > 16 {
		return d[:16] + "…"
	}
	return d
}

// RollbackSettings tunes firmware.rollback.
type RollbackSettings struct{}

var firmwareRollbackDetector = &Detector{
	Name: "firmware.rollback", Kind: alert.FirmwareRollback, Severity: alert.High,
	Description: "The device runs a version below its model's minimum allowed version (semver compare).",
	Events:      []event.Kind{event.FirmwareReport, event.DeviceMetrics},
	defaults:    func() any { return &RollbackSettings{} },
	run: func(c *call, d *Detector, _ any) {
		version, digest := firmwareOf(c.ev)
		if c.e.opt.Catalog == nil || !c.hasProf {
			return
		}
		if digest != "" {
			if v, ok := c.e.opt.Catalog.Release(c.key.t, c.prof.Model, digest); ok {
				version = v // trust the catalog over the report
			}
		}
		min := c.e.opt.Catalog.MinVersion(c.key.t, c.prof.Model)
		if version == "" || min == "" || CompareVersions(version, min) >= 0 {
			return
		}
		c.raise(d, fmt.Sprintf("firmware %s is below the minimum %s of model %q", version, min, c.prof.Model),
			map[string]any{"version": version, "min_version": min, "model": c.prof.Model, "digest": digest}, *c.ev)
	},
}

// ListenerSettings tunes device.listener.
type ListenerSettings struct {
	Warmup     Duration `json:"warmup"`
	MaxLearned int      `json:"max_learned"`
	// A port learned by at least CommonMin devices and CommonShare of the
	// cohort is the cohort's and never fires.
	CommonMin   int     `json:"common_min"`
	CommonShare float64 `json:"common_share"`
}

var listenerDetector = &Detector{
	Name: "device.listener", Kind: alert.UnexpectedListener, Severity: alert.High,
	Description: "The device's own metrics report a listening port it did not have during warm-up and that its cohort does not commonly have.",
	Events:      []event.Kind{event.DeviceMetrics},
	defaults: func() any {
		return &ListenerSettings{Warmup: Duration(24 * time.Hour), MaxLearned: 16, CommonMin: 3, CommonShare: 0.1}
	},
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*ListenerSettings)
		raw, ok := c.ev.Attrs["listening_ports"]
		if !ok {
			return
		}
		f := &c.st.Fw
		n := &c.st.Net
		warm := c.st.warm(c.now, s.Warmup)
		// after a signed update, the first metrics report lists what the
		// new firmware listens on; a port opened later is judged
		learning := !warm || (c.now < n.Relearn && n.PortsOpen)
		if warm {
			n.PortsOpen = false
		}
		relearn := c.now < n.Relearn
		co := c.e.cohort(c.key.t, c.group())
		for _, ps := range c.ev.Strings("listening_ports") {
			var p int
			if _, err := fmt.Sscan(ps, &p); err != nil || p <= 0 || p > 65535 {
				continue
			}
			port := uint16(p)
			i, found := slices.BinarySearch(f.Ports, port)
			if found {
				continue
			}
			if learning {
				if len(f.Ports) < s.MaxLearned {
					f.Ports = slices.Insert(f.Ports, i, port)
					co.learnPort(port)
				}
				continue
			}
			if relearn && !slices.Contains(f.Told, port) {
				// a port the update starts late is reported by much of
				// the cohort after it: count it, so that it becomes the
				// cohort's instead of firing on every device
				co.learnPort(port)
			}
			if co.commonPort(port, s.CommonMin, s.CommonShare) {
				if relearn && len(f.Ports) < s.MaxLearned {
					f.Ports = slices.Insert(f.Ports, i, port)
				}
				continue
			}
			j, told := slices.BinarySearch(f.Told, port)
			if told {
				continue
			}
			if len(f.Told) < s.MaxLearned {
				f.Told = slices.Insert(f.Told, j, port)
			}
			c.raise(d, fmt.Sprintf("new listening port %d (learned: %v)", port, f.Ports),
				map[string]any{"port": port, "learned_ports": slices.Clone(f.Ports), "reported": raw}, *c.ev)
		}
	},
}

func (v cohortView) learnPort(p uint16) {
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	if _, ok := v.c.Ports[p]; ok || len(v.c.Ports) < 1024 {
		v.c.Ports[p]++
	}
}

func (v cohortView) commonPort(p uint16, minN int, share float64) bool {
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	n := int(v.c.Ports[p])
	return n >= minN && float64(n) >= share*float64(v.c.Devices)
}

func (v cohortView) join() {
	v.e.cohortMu.Lock()
	v.c.Devices++
	v.e.cohortMu.Unlock()
}
