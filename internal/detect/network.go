package detect

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// fanWin estimates distinct targets in a sliding window with two halves of
// a linear-counting bitmap (union = OR of the halves).
type fanWin struct {
	Start     int64
	Cur, Prev [8]uint64 // 512 bits each
	Alerted   int64     // Start of the half in which we last raised
}

func (f *fanWin) add(now, half int64, h uint32) float64 {
	if f.Start == 0 || now >= f.Start+2*half {
		f.Start, f.Cur, f.Prev = now, [8]uint64{}, [8]uint64{}
	} else if now >= f.Start+half {
		f.Prev, f.Cur = f.Cur, [8]uint64{}
		f.Start += half
	}
	b := h % 512
	f.Cur[b/64] |= 1 << (b % 64)
	return f.estimate()
}

func (f *fanWin) estimate() float64 {
	zeros := 0
	for i := range f.Cur {
		zeros += 64 - bits.OnesCount64(f.Cur[i]|f.Prev[i])
	}
	if zeros == 0 {
		return 512 * math.Log(512) // saturated: at least this many
	}
	return -512 * math.Log(float64(zeros)/512)
}

type cand struct {
	H     uint32
	N     uint16
	Bytes uint32
	T     int64
}

type netState struct {
	Learned []uint32 // sorted destination hashes (ip, port, proto), capped
	Cand    [4]cand
	Scan    *fanWin // distinct (host, port) outside telnet ports
	Tel     *fanWin // distinct hosts on 23/2323
	MaxFan  uint16  // largest scan estimate seen during warm-up
	Relearn int64   // unix s: learn destinations until then (after a signed update)
	// PortsOpen: a signed update happened and the device has not sent a
	// metrics report since; that report's listeners are learned
	PortsOpen bool
}

func isTelnet(port int64) bool { return port == 23 || port == 2323 }

// inbound reports a flow towards the device (the collector reports it from
// the device's side, so dst is the remote and dst_port the remote's port):
// the scan and destination detectors judge only what the device initiates.
func inbound(ev *event.Event) bool { return ev.Str("direction") == "in" }

// ThreatIntelSettings tunes net.threat_intel.
type ThreatIntelSettings struct {
	CheckSource bool `json:"check_source"` // also match src_ip of flows (inbound)
}

var threatIntelDetector = &Detector{
	Name: "net.threat_intel", Kind: alert.ThreatIntelHit, Severity: alert.Critical,
	Description: "A flow to (or from) an address listed by an imported threat-intelligence feed.",
	Events:      []event.Kind{event.NetFlow},
	defaults:    func() any { return &ThreatIntelSettings{CheckSource: true} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*ThreatIntelSettings)
		if c.e.opt.Intel == nil {
			return
		}
		for _, attr := range [...]string{"dst_ip", "src_ip"} {
			if attr == "src_ip" && !s.CheckSource {
				break
			}
			a, ok := parseIP(c.ev.Str(attr))
			if !ok {
				continue
			}
			if feed, hit := c.e.opt.Intel.Lookup(a); hit {
				c.intelHit = true
				c.raise(d, fmt.Sprintf("flow %s %s:%d listed by feed %q", attr, a, c.ev.Int("dst_port"), feed),
					map[string]any{"feed": feed, "address": a.String(), "direction": attr, "dst_port": c.ev.Int("dst_port"), "bytes": c.ev.Int("bytes")}, *c.ev)
				return
			}
		}
	},
}

// ScanSettings tunes net.telnet_scan and net.port_scan.
type ScanSettings struct {
	Window Duration `json:"window"` // sliding, in two halves
	// MinTargets is the least distinct targets in Window that fire.
	MinTargets int `json:"min_targets"`
	// FanoutFactor: also require more than FanoutFactor x the device's
	// learned fan-out (port scan only).
	FanoutFactor float64  `json:"fanout_factor"`
	Warmup       Duration `json:"warmup"`
}

var telnetScanDetector = &Detector{
	Name: "net.telnet_scan", Kind: alert.TelnetScan, Severity: alert.Critical,
	Description: "Flows from the device to many distinct hosts on telnet ports 23/2323 within a window (Mirai-style propagation).",
	Events:      []event.Kind{event.NetFlow},
	defaults:    func() any { return &ScanSettings{Window: Duration(20 * time.Minute), MinTargets: 6} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*ScanSettings)
		port := c.ev.Int("dst_port")
		if !isTelnet(port) || inbound(c.ev) {
			return
		}
		n := &c.st.Net
		if n.Tel == nil {
			n.Tel = &fanWin{}
		}
		est := n.Tel.add(c.now, secs(s.Window)/2, hash32(c.ev.Str("dst_ip")))
		if est >= float64(s.MinTargets) && n.Tel.Alerted != n.Tel.Start {
			n.Tel.Alerted = n.Tel.Start
			c.raise(d, fmt.Sprintf("~%.0f distinct hosts contacted on telnet ports within %s", est, s.Window.D()),
				map[string]any{"distinct_hosts": round(est, 0), "threshold": s.MinTargets, "window": s.Window.D().String(), "dst_port": port}, *c.ev)
		}
	},
}

var portScanDetector = &Detector{
	Name: "net.port_scan", Kind: alert.PortScan, Severity: alert.High,
	Description: "Flows from the device to many distinct (host, port) targets within a window, beyond its learned fan-out (telnet ports are left to net.telnet_scan).",
	Events:      []event.Kind{event.NetFlow},
	defaults: func() any {
		return &ScanSettings{Window: Duration(20 * time.Minute), MinTargets: 15, FanoutFactor: 3, Warmup: Duration(24 * time.Hour)}
	},
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*ScanSettings)
		port := c.ev.Int("dst_port")
		if isTelnet(port) || inbound(c.ev) {
			return
		}
		n := &c.st.Net
		if n.Scan == nil {
			n.Scan = &fanWin{}
		}
		est := n.Scan.add(c.now, secs(s.Window)/2, hash32(c.ev.Str("dst_ip"), strconv.FormatInt(port, 10)))
		if !c.st.warm(c.now, s.Warmup) {
			n.MaxFan = uint16(math.Max(float64(n.MaxFan), math.Min(est, 65535)))
			return
		}
		limit := math.Max(float64(s.MinTargets), s.FanoutFactor*float64(n.MaxFan)+5)
		if est >= limit && n.Scan.Alerted != n.Scan.Start {
			n.Scan.Alerted = n.Scan.Start
			c.raise(d, fmt.Sprintf("~%.0f distinct host:port targets within %s (threshold %.0f, learned fan-out %d)", est, s.Window.D(), limit, n.MaxFan),
				map[string]any{"distinct_targets": round(est, 0), "threshold": limit, "learned_fanout": n.MaxFan, "window": s.Window.D().String()}, *c.ev)
		}
	},
}

// DestinationSettings tunes net.destination.
type DestinationSettings struct {
	Warmup     Duration `json:"warmup"`
	MaxLearned int      `json:"max_learned"` // cap of the learned set per device
	MinRepeats int      `json:"min_repeats"` // flows to a new endpoint before firing
	// MinRepeatsDeclared applies instead when the group declares an
	// allowlist: leaving a declared policy is a finding at once.
	MinRepeatsDeclared int `json:"min_repeats_declared"`
	// ProbeBytes: a single flow smaller than this (a probe, a SYN) never
	// counts as leaving the declared policy at once.
	ProbeBytes int64 `json:"probe_bytes"`
	MinBytes   int64 `json:"min_bytes"` // or this much volume in one go
	// A destination learned by at least CommonMin devices and CommonShare
	// of the cohort is the cohort's and never fires.
	CommonMin   int     `json:"common_min"`
	CommonShare float64 `json:"common_share"`
}

var destinationDetector = &Detector{
	Name: "net.destination", Kind: alert.DestinationUnapproved, Severity: alert.Medium,
	Description: "After warm-up, repeated flows (or real volume) to an endpoint outside the device's learned set, its group's declared allowlist and its cohort's common destinations.",
	Events:      []event.Kind{event.NetFlow},
	defaults: func() any {
		return &DestinationSettings{Warmup: Duration(24 * time.Hour), MaxLearned: 32, MinRepeats: 2, MinRepeatsDeclared: 1, ProbeBytes: 512, MinBytes: 1 << 20, CommonMin: 3, CommonShare: 0.05}
	},
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*DestinationSettings)
		if c.intelHit || inbound(c.ev) {
			return // net.threat_intel already explains it, or not initiated by the device
		}
		dst, ok := parseIP(c.ev.Str("dst_ip"))
		if !ok {
			return
		}
		for _, p := range c.prof.Destinations {
			if p.Contains(dst) {
				return
			}
		}
		port := c.ev.Int("dst_port")
		if isTelnet(port) {
			return // scanning is net.telnet_scan's
		}
		n := &c.st.Net
		h := hash32(dst.String(), strconv.FormatInt(port, 10), strconv.FormatInt(c.ev.Int("proto"), 10))
		i, found := slices.BinarySearch(n.Learned, h)
		if found {
			return
		}
		co := c.e.cohort(c.key.t, c.group())
		if !c.st.warm(c.now, s.Warmup) || c.now < n.Relearn {
			if len(n.Learned) < s.MaxLearned {
				n.Learned = slices.Insert(n.Learned, i, h)
				co.learnDest(h)
			}
			return
		}
		if co.commonDest(h, s.CommonMin, s.CommonShare) {
			return
		}
		if n.Scan != nil && n.Scan.estimate() >= 10 {
			return // part of a scan: net.port_scan's business
		}
		bytes := c.ev.Int("bytes")
		slot := 0
		for j := range n.Cand {
			if n.Cand[j].H == h && c.now-n.Cand[j].T < 86400 {
				slot = j
				break
			}
			if n.Cand[j].T < n.Cand[slot].T {
				slot = j
			}
		}
		cd := &n.Cand[slot]
		if cd.H != h || c.now-cd.T >= 86400 {
			*cd = cand{H: h}
		}
		cd.N++
		cd.Bytes = uint32(min(int64(cd.Bytes)+bytes, math.MaxUint32))
		cd.T = c.now
		need := s.MinRepeats
		if len(c.prof.Destinations) > 0 && int64(cd.Bytes) >= s.ProbeBytes {
			need = s.MinRepeatsDeclared
		}
		if int(cd.N) >= need || int64(cd.Bytes) >= s.MinBytes {
			c.raise(d, fmt.Sprintf("flows to %s:%d, outside the %d learned destinations and the declared allowlist", dst, port, len(n.Learned)),
				map[string]any{"destination": dst.String(), "dst_port": port, "flows": cd.N, "bytes": cd.Bytes, "learned": len(n.Learned), "declared": len(c.prof.Destinations), "min_repeats": need, "min_bytes": s.MinBytes}, *c.ev)
		}
	},
}

func (v cohortView) learnDest(h uint32) {
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	if _, ok := v.c.Dests[h]; ok || len(v.c.Dests) < 4096 {
		v.c.Dests[h]++
	}
}

func (v cohortView) commonDest(h uint32, minN int, share float64) bool {
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	n := int(v.c.Dests[h])
	return n >= minN && float64(n) >= share*float64(v.c.Devices)
}
