package sim

import (
	"sort"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/store"
)

// Report is the scored outcome of a run, in the documented JSON shape.
type Report struct {
	Scenario     string              `json:"scenario"`
	Devices      int                 `json:"devices"`
	Simulated    string              `json:"simulated"`
	Events       int64               `json:"events"`
	WallSeconds  float64             `json:"wall_seconds"`
	Expectations []ExpectationResult `json:"expectations"`
	FalseAlerts  []FalseAlert        `json:"false_alerts"`
	Passed       bool                `json:"passed"`
}

// ExpectationResult is the outcome of one expectation. TimeToDetectSeconds
// is null when the alert was not detected; Response and ResponseOK are
// omitted when the expectation names no response.
type ExpectationResult struct {
	Device              string   `json:"device"`
	Alert               string   `json:"alert"`
	Detected            bool     `json:"detected"`
	TimeToDetectSeconds *float64 `json:"time_to_detect_seconds"`
	Response            string   `json:"response,omitempty"`
	ResponseOK          *bool    `json:"response_ok,omitempty"`
}

// FalseAlert is an alert on a (device, kind) pair no expectation covers.
type FalseAlert struct {
	Device string `json:"device"`
	Alert  string `json:"alert"`
	At     string `json:"at"` // FirstSeen, RFC 3339
}

// EarlyTolerance is how long before an expectation's onset an alert may
// start and still count (clock granularity of windows and reports).
const EarlyTolerance = time.Minute

// Score compares what the platform reported with the scenario's
// expectations. An expectation is detected when an alert of that device and
// kind has FirstSeen within [onset-EarlyTolerance, onset+within]; the onset is
// the scenario time of the matching attack (see docs/SIMULATOR.md). Its
// response is ok when an action of that kind for that device is done. Every
// alert on a (device, kind) pair no expectation covers is a false alert.
// Score uses only the alerts and actions given.
func Score(sc *Scenario, alerts []alert.Alert, actions []store.Action) *Report {
	devices := 0
	for _, c := range sc.Fleet {
		devices += c.Count
	}
	rep := &Report{
		Scenario:     sc.Name,
		Devices:      devices,
		Simulated:    sc.Duration.D.String(),
		Expectations: []ExpectationResult{},
		FalseAlerts:  []FalseAlert{},
		Passed:       true,
	}
	type pair struct{ dev, kind string }
	covered := map[pair]bool{}
	for i := range sc.Expect {
		e := &sc.Expect[i]
		covered[pair{e.Device, e.Alert}] = true
		onset := sc.onset(e)
		res := ExpectationResult{Device: e.Device, Alert: e.Alert, Response: e.Response}
		var best *time.Time
		for j := range alerts {
			a := &alerts[j]
			if string(a.Device) != e.Device || string(a.Kind) != e.Alert {
				continue
			}
			if a.FirstSeen.Before(onset.Add(-EarlyTolerance)) || a.FirstSeen.After(onset.Add(e.Within.D)) {
				continue
			}
			if best == nil || a.FirstSeen.Before(*best) {
				t := a.FirstSeen
				best = &t
			}
		}
		if best != nil {
			res.Detected = true
			ttd := max(0, best.Sub(onset).Seconds())
			res.TimeToDetectSeconds = &ttd
		} else {
			rep.Passed = false
		}
		if e.Response != "" {
			ok := false
			for _, ac := range actions {
				if string(ac.Device) == e.Device && ac.Kind == e.Response && ac.State == store.ActionDone {
					ok = true
					break
				}
			}
			res.ResponseOK = &ok
			if !ok {
				rep.Passed = false
			}
		}
		rep.Expectations = append(rep.Expectations, res)
	}
	for _, a := range alerts {
		if covered[pair{string(a.Device), string(a.Kind)}] {
			continue
		}
		rep.FalseAlerts = append(rep.FalseAlerts, FalseAlert{Device: string(a.Device), Alert: string(a.Kind), At: a.FirstSeen.UTC().Format(time.RFC3339)})
	}
	sort.Slice(rep.FalseAlerts, func(i, j int) bool {
		x, y := rep.FalseAlerts[i], rep.FalseAlerts[j]
		if x.At != y.At {
			return x.At < y.At
		}
		if x.Device != y.Device {
			return x.Device < y.Device
		}
		return x.Alert < y.Alert
	})
	if len(rep.FalseAlerts) > sc.MaxFalseAlerts {
		rep.Passed = false
	}
	return rep
}
