// Package event defines the one envelope in which everything that happens in
// Garrison travels: identity changes, broker sessions, RADIUS accounting,
// flow records, device reports, alerts and actions.
//
// Producers publish envelopes to the bus; detectors consume them. An [Event]
// is immutable once published. Attribute values are JSON-compatible
// (string, float64, bool, []any, map[string]any) so that an event survives a
// round trip through the wire encoding unchanged; use the typed accessors
// ([Event.Str], [Event.Float], [Event.Int], [Event.Strings]) to read them.
package event

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// TenantID names a tenant. It is lower-case kebab (a-z, 0-9, '-'), 1-63
// characters, and appears in every key, query, subject and route.
type TenantID string

// DeviceID names a device, unique within its tenant (for example meter-0017).
type DeviceID string

// Kind is an event kind, `domain.name` in lower case (for example net.session).
type Kind string

// Event kinds published by the platform. The attribute keys each carries are
// listed beside it; producers set them and detectors read them.
const (
	// Connectivity (RADIUS accounting or provider webhooks):
	// status (start|interim|stop), session_id, imsi, iccid, imei, msisdn, ip,
	// apn, nas, cell, lat, lon, accuracy_m, rat, bytes_up, bytes_down (deltas
	// since the previous record of the session); also imeisv (digits as
	// received) and plmn (serving MCC-MNC). RADIUS Access-Request decisions
	// use status auth with decision (accept|reject), reason (unknown_sim,
	// sim_<state>, imei_mismatch, no_imsi) and bound_imei.
	NetSession Kind = "net.session"
	// Flow records (IPFIX / NetFlow v9): src_ip, src_port, dst_ip, dst_port,
	// proto, bytes, packets, exporter; also direction (out: src is the
	// device; in: the flow was towards the device and is reported from its
	// side), start_ms and end_ms (Unix milliseconds).
	NetFlow Kind = "net.flow"
	// Positions from any source: lat, lon, accuracy_m, source (device|network).
	Location Kind = "location"

	// Broker sessions: remote (ip:port), client_id, cert_serial, session_id,
	// protocol (3.1.1|5); listener "password" for a session of the legacy
	// password listener (cert_serial then empty).
	MQTTConnect Kind = "mqtt.connect"
	// reason, remote, session_id.
	MQTTDisconnect Kind = "mqtt.disconnect"
	// A refused connect: reason (bad_password|default_credentials|
	// revoked_cert|unknown_cert|expired_cert|state|client_id_mismatch|...),
	// remote, username, cert_serial. Device is the claimed identity if any.
	MQTTAuthFailed Kind = "mqtt.auth_failed"
	// Metadata of one publish: topic_class (telemetry|metrics|events|ota),
	// bytes, qos. Payloads never travel in this kind.
	MQTTPublish Kind = "mqtt.publish"
	// ACL denial: topic, action (publish|subscribe).
	MQTTDenied Kind = "mqtt.denied"

	// The device's own view of itself (agent metrics): listening_ports
	// ([]port numbers as float64), connections, processes, fw_version,
	// fw_digest; also slot, uptime_s and reported_at when the device sent
	// them.
	DeviceMetrics Kind = "device.metrics"
	// Running firmware reported by the device after boot: version, digest,
	// slot.
	FirmwareReport Kind = "firmware.report"
	// Application data a device published on devices/{id}/telemetry:
	// payload (the JSON object exactly as sent, a string), bytes,
	// reported_at (the device's own ts, if any; the envelope time is when
	// the platform received it). Routed to the bus's DATA stream, which a
	// tenant's applications consume.
	DeviceTelemetry Kind = "device.telemetry"
	// The outcome of a platform command, reported by the device:
	// command_id, ok, output, error.
	CommandResult Kind = "device.command_result"
	// A command stored by one node for a device with no live session on
	// that node: command_id, origin (the node that stored it). Every node
	// holding a live session of the device delivers it (see
	// internal/command).
	CommandRelay Kind = "device.command_relay"
	// A firmware job progress report a device published on its
	// ota/status, as the broker of the node holding its session received
	// it: status (the report, validated and re-encoded as JSON). The node
	// running the campaign engine consumes it (docs/OTA.md).
	OTAStatus Kind = "device.ota_status"
	// A device subscribed to its ota/job (after a reconnect) on the node
	// holding its session; the campaign engine sends it again the jobs it
	// has not answered. No attributes.
	OTAResend Kind = "device.ota_resend"
	// A firmware job the campaign engine's node could not deliver itself
	// (it holds no session of the device): job (the payload as published
	// on devices/{id}/ota/job), origin (the engine's node). The node
	// holding a live session of the device delivers it.
	OTAJobRelay Kind = "device.ota_job_relay"
	// A device publish the platform could not decode: topic_class,
	// subtopic, reason, bytes. The payload itself is not carried.
	PayloadRejected Kind = "device.payload_rejected"

	// Identity: serial, reason.
	CertIssued  Kind = "identity.cert_issued"
	CertRevoked Kind = "identity.cert_revoked"
	// Registry state change: from, to, reason.
	DeviceState Kind = "device.state"
	// A device's broker password (legacy password listener) set, rotated
	// or cleared: action (set|cleared). Never carries the password. The
	// broker closes the device's password sessions on it.
	DevicePassword Kind = "device.password"
	// A request to close the device's MQTT session wherever it is held
	// (a response disconnect or a mass kick on a node without the
	// session): reason, origin (the asking node). Every other node
	// closes its own session of the device.
	SessionKick Kind = "device.session_kick"

	// An alert raised or updated by detection: alert_id, alert_kind,
	// severity, count. Consumed by the response engine.
	AlertRaised Kind = "alert.raised"
	// An action taken by the response engine: action, alert_id, playbook,
	// outcome, and incident_id when an open_incident step opened or joined
	// one.
	ActionTaken Kind = "action.taken"
	// An alert moved by an operator (acknowledged, resolved, false
	// positive): alert_id, alert_kind, from, to, actor, note. The response
	// engine restores devices on false_positive; exports forward it.
	AlertStateChanged Kind = "alert.state_changed"
)

// Event is the envelope.
type Event struct {
	ID     string         `json:"id"`
	Tenant TenantID       `json:"tenant"`
	Device DeviceID       `json:"device,omitempty"`
	Kind   Kind           `json:"kind"`
	Time   time.Time      `json:"time"`
	Source string         `json:"source"`
	Attrs  map[string]any `json:"attrs,omitempty"`
}

// Errors returned by [Event.Validate].
var (
	ErrNoTenant = errors.New("event: tenant missing")
	ErrNoKind   = errors.New("event: kind missing")
	ErrNoTime   = errors.New("event: time missing")
)

// Validate reports whether e can be published.
func (e *Event) Validate() error {
	var errs []error
	if e.Tenant == "" {
		errs = append(errs, ErrNoTenant)
	}
	if e.Kind == "" {
		errs = append(errs, ErrNoKind)
	}
	if e.Time.IsZero() {
		errs = append(errs, ErrNoTime)
	}
	return errors.Join(errs...)
}

// NewID returns a random 128-bit identifier in hex, prefixed by the time so
// that ids sort roughly by creation.
func NewID(t time.Time) string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatInt(t.UnixMilli(), 36) + "-" + hex.EncodeToString(b[:])
}

// Str returns the attribute k as a string ("" if absent or not a string).
func (e *Event) Str(k string) string {
	switch v := e.Attrs[k].(type) {
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	}
	return ""
}

// Float returns the attribute k as a float64 and whether it was a number.
func (e *Event) Float(k string) (float64, bool) {
	switch v := e.Attrs[k].(type) {
	case float64:
		return v, true
	case float32:
		return float64(v), true
	case int:
		return float64(v), true
	case int64:
		return float64(v), true
	case uint64:
		return float64(v), true
	case uint32:
		return float64(v), true
	case int32:
		return float64(v), true
	case string:
		f, err := strconv.ParseFloat(v, 64)
		return f, err == nil
	}
	return 0, false
}

// Int returns the attribute k as an int64 (0 if absent).
func (e *Event) Int(k string) int64 {
	f, _ := e.Float(k)
	return int64(f)
}

// Strings returns the attribute k as a string slice, accepting []string and
// []any of strings or numbers (numbers are formatted without a fraction).
func (e *Event) Strings(k string) []string {
	switch v := e.Attrs[k].(type) {
	case []string:
		return v
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			switch y := x.(type) {
			case string:
				out = append(out, y)
			case float64:
				out = append(out, strconv.FormatFloat(y, 'f', -1, 64))
			case int:
				out = append(out, strconv.Itoa(y))
			}
		}
		return out
	}
	return nil
}

// Partitions is the number of device partitions in subjects. Detection work
// can be split over workers by partition; a device always maps to the same one.
const Partitions = 64

// Partition returns the partition of a device, in [0, Partitions).
func Partition(d DeviceID) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(d))
	return int(h.Sum32() % Partitions)
}

// SubjectPrefix is the first token of every event subject.
const SubjectPrefix = "gev"

// Subject returns the bus subject of e: gev.TENANT.KIND.PARTITION, where the
// dots of the kind become underscores so that the token count is fixed:
// gev.acme.net_session.17. Consumers filter with wildcards, for example
// gev.*.*.17 for one partition of every tenant.
func Subject(e *Event) string {
	return SubjectPrefix + "." + string(e.Tenant) + "." + strings.ReplaceAll(string(e.Kind), ".", "_") + "." + strconv.Itoa(Partition(e.Device))
}
