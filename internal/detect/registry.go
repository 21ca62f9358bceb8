package detect

import (
	"encoding/json"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// Detector is one registered detector: a name, the alert kind it raises,
// the event kinds it reads, typed settings with defaults and its logic.
type Detector struct {
	Name        string
	Kind        alert.Kind
	Severity    alert.Severity
	Description string
	Events      []event.Kind

	defaults func() any                          // a pointer to a fresh settings struct holding the defaults
	run      func(c *call, d *Detector, cfg any) // called with the device's state locked
}

// builtins lists every built-in detector, in evaluation order. This is the
// one place that says what is built in.
var builtins = []*Detector{
	simSwapDetector,
	cloneDetector,
	revokedDetector,
	bruteforceDetector,
	defaultCredsDetector,
	travelDetector,
	geofenceDetector,
	dataSpikeDetector,
	messageRateDetector,
	threatIntelDetector,
	telnetScanDetector,
	portScanDetector,
	destinationDetector,
	firmwareUnapprovedDetector,
	firmwareRollbackDetector,
	listenerDetector,
}

func detectorByName(name string) *Detector {
	for _, d := range builtins {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Info describes a detector for GET /api/v1/detectors.
type Info struct {
	Name        string          `json:"name"`
	Kind        alert.Kind      `json:"alert_kind"`
	Severity    string          `json:"severity"`
	Description string          `json:"description"`
	Events      []event.Kind    `json:"events"`
	Settings    json.RawMessage `json:"settings"` // the defaults
}

// Detectors lists the built-in detectors with their default settings.
func Detectors() []Info {
	out := make([]Info, 0, len(builtins))
	for _, d := range builtins {
		raw, _ := json.Marshal(d.defaults())
		out = append(out, Info{Name: d.Name, Kind: d.Kind, Severity: d.Severity.String(), Description: d.Description, Events: d.Events, Settings: raw})
	}
	return out
}

// SettingsFor returns the effective settings of detector name for a tenant
// and group (nil if no such detector). The value is a pointer to the
// detector's settings struct and must not be modified.
func (e *Engine) SettingsFor(t event.TenantID, group, name string) any {
	for i, d := range builtins {
		if d.Name == name {
			return e.bundleFor(t, group).cfg[i]
		}
	}
	return nil
}
