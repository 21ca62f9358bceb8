// Package alert defines what detection raises and response acts on.
//
// Alert kinds are `domain.name` identifiers and a public contract of the API
// (see docs/API.md). Repeats of the same (tenant, device, kind) within the
// merge window update one alert's LastSeen and Count instead of opening a new
// alert.
package alert

import (
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// Kind is an alert kind such as sim.imei_mismatch.
type Kind string

// Built-in alert kinds.
const (
	SIMIMEIMismatch         Kind = "sim.imei_mismatch"
	ImpossibleTravel        Kind = "location.impossible_travel"
	GeofenceExit            Kind = "location.geofence_exit"
	DataSpike               Kind = "usage.data_spike"
	MessageRateSpike        Kind = "usage.message_rate_spike"
	Bruteforce              Kind = "auth.bruteforce"
	DefaultCredentials      Kind = "auth.default_credentials"
	TelnetScan              Kind = "net.telnet_scan"
	PortScan                Kind = "net.port_scan"
	ThreatIntelHit          Kind = "net.threat_intel_hit"
	DestinationUnapproved   Kind = "net.destination_unapproved"
	CloneSuspected          Kind = "identity.clone_suspected"
	RevokedCertUse          Kind = "identity.revoked_cert_use"
	FirmwareUnapproved      Kind = "firmware.unapproved"
	FirmwareRollback        Kind = "firmware.rollback"
	UnexpectedListener      Kind = "device.unexpected_listener"
	BlastRadiusGuardEngaged Kind = "response.blast_radius"
)

// Severity orders alerts.
type Severity int

// Severities, lowest first.
const (
	Info Severity = iota + 1
	Low
	Medium
	High
	Critical
)

var severityNames = [...]string{"", "info", "low", "medium", "high", "critical"}

// String returns the lower-case name.
func (s Severity) String() string {
	if s < Info || s > Critical {
		return "unknown"
	}
	return severityNames[s]
}

// ParseSeverity is the inverse of [Severity.String]; it returns 0 for an
// unknown name.
func ParseSeverity(name string) Severity {
	for i, n := range severityNames {
		if i > 0 && n == name {
			return Severity(i)
		}
	}
	return 0
}

// State is where an alert is in its life.
type State string

// Alert states.
const (
	Open          State = "open"
	Acknowledged  State = "acknowledged"
	Resolved      State = "resolved"
	FalsePositive State = "false_positive"
)

// Evidence explains an alert: the events that triggered it and the values
// (baselines, thresholds, feed names) the detector compared them with.
type Evidence struct {
	Summary string         `json:"summary"`
	Events  []event.Event  `json:"events,omitempty"`
	Values  map[string]any `json:"values,omitempty"`
}

// Alert is one finding about one device.
type Alert struct {
	ID        string         `json:"id"`
	Tenant    event.TenantID `json:"tenant"`
	Device    event.DeviceID `json:"device"`
	Kind      Kind           `json:"kind"`
	Severity  Severity       `json:"severity"`
	Detector  string         `json:"detector"`
	FirstSeen time.Time      `json:"first_seen"`
	LastSeen  time.Time      `json:"last_seen"`
	Count     int            `json:"count"`
	State     State          `json:"state"`
	Evidence  Evidence       `json:"evidence"`
}

// StateChanged is the alert.state_changed event of a's move from from to
// a.State by actor at now (note: the operator's, may be empty).
func StateChanged(a Alert, from State, actor, note string, now time.Time) *event.Event {
	attrs := map[string]any{"alert_id": a.ID, "alert_kind": string(a.Kind), "from": string(from), "to": string(a.State), "actor": actor}
	if note != "" {
		attrs["note"] = note
	}
	return &event.Event{ID: event.NewID(now), Tenant: a.Tenant, Device: a.Device, Kind: event.AlertStateChanged, Time: now.UTC(),
		Source: "alert", Attrs: attrs}
}
