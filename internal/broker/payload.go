package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/garrisonhq/garrison/internal/event"
)

// Bounds of device payload decoding (docs/DEVICE_PROTOCOL.md).
const (
	// MaxDevicePayload is the largest payload [DecodeDevicePayload] reads.
	MaxDevicePayload = 64 << 10
	// MaxTelemetryForward is the largest telemetry payload forwarded to
	// the tenant's data stream: the envelope around it must still fit
	// event.MaxEncodedSize.
	MaxTelemetryForward = 60 << 10
	maxPorts            = 1024
	maxReportString     = 256     // fw_version, fw_digest, slot, ts, type, command id
	maxCount            = 1 << 24 // connections, processes
	maxCommandOutput    = 16 << 10
)

// ErrPayload is wrapped by every error [DecodeDevicePayload] returns.
var ErrPayload = errors.New("device payload")

// DecodeDevicePayload turns one device publish on devices/{id}/<subtopic>
// into the events the platform acts on. It is the single entry point for
// device-reported data: the broker calls it for every publish it accepted
// (past the ACL, quarantine and limits), and the simulator calls it with
// the payloads its devices would send.
//
//   - telemetry (and telemetry/...): a device.telemetry event carrying the
//     payload for the tenant's data stream, plus a location event (source
//     device) when the object has lat and lon;
//   - metrics: device.metrics (listening_ports, connections, processes,
//     fw_version, fw_digest, slot, uptime_s);
//   - events: firmware.report for type boot, device.command_result for
//     type command.result;
//   - ota/...: nothing (the campaign engine reads ota/status itself).
//
// The payload must be one JSON object of at most [MaxDevicePayload] bytes;
// unknown fields are ignored, known fields of the wrong type or out of
// range are refused. Strings are taken as the device sent them (bounded),
// not judged: a rogue firmware digest must reach detection. Event times
// are now, the platform's receive time; the device's own ts is kept as
// reported_at. On error no event is returned and the error, wrapping
// [ErrPayload], names the field.
func DecodeDevicePayload(id Identity, subtopic string, payload []byte, now time.Time) ([]*event.Event, error) {
	return appendDevicePayload(nil, &envelopes{id: id, now: now}, subtopic, payload)
}

// envelopes makes the decoded events of one publish: fresh ones, or with
// attribute maps from a pool on the broker's hot path (which puts them
// back once the events are published).
type envelopes struct {
	id    Identity
	now   time.Time
	attrs *sync.Pool // of map[string]any, cleared; nil: fresh maps
}

func (e *envelopes) newAttrs() map[string]any {
	if e.attrs != nil {
		if m, ok := e.attrs.Get().(map[string]any); ok {
			return m
		}
	}
	return make(map[string]any, 4)
}

func (e *envelopes) event(kind event.Kind, attrs map[string]any) *event.Event {
	return &event.Event{ID: event.NewID(e.now), Tenant: e.id.Tenant, Device: e.id.Device, Kind: kind,
		Time: e.now.UTC(), Source: "device", Attrs: attrs}
}

// appendDevicePayload is [DecodeDevicePayload] appending to dst (the
// broker's hot path passes an array on its stack); on error it returns nil.
func appendDevicePayload(dst []*event.Event, mk *envelopes, subtopic string, payload []byte) ([]*event.Event, error) {
	head, _, _ := strings.Cut(subtopic, "/")
	if len(payload) > MaxDevicePayload {
		return nil, fmt.Errorf("%w: %s: %d bytes > %d", ErrPayload, head, len(payload), MaxDevicePayload)
	}
	switch TopicClass(head) {
	case ClassTelemetry:
		return decodeTelemetry(dst, payload, mk)
	case ClassMetrics:
		return decodeMetrics(dst, payload, mk)
	case ClassEvents:
		return decodeDeviceEvent(dst, payload, mk)
	case ClassOTA:
		return dst, nil
	}
	return nil, fmt.Errorf("%w: unknown subtopic %q", ErrPayload, truncate(subtopic, 64))
}

// decodeObject decodes payload, which must be exactly one JSON object,
// into v; errors name the offending field.
func decodeObject(what string, payload []byte, v any) error {
	b := bytes.TrimSpace(payload)
	if len(b) == 0 || b[0] != '{' {
		return fmt.Errorf("%w: %s: not a JSON object", ErrPayload, what)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: %s: not valid UTF-8", ErrPayload, what)
	}
	// One pass over the bytes instead of a Decoder (which copies them into
	// its own buffer); Unmarshal checks the whole input, so trailing data
	// fails as a syntax error after a complete first value.
	if err := json.Unmarshal(b, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: %s: field %q: want %s, got %s", ErrPayload, what, te.Field, jsonType(te.Type), te.Value)
		}
		var se *json.SyntaxError
		if errors.As(err, &se) && se.Offset > 0 && json.Valid(b[:se.Offset-1]) {
			return fmt.Errorf("%w: %s: trailing data after the object", ErrPayload, what)
		}
		return fmt.Errorf("%w: %s: %v", ErrPayload, what, err)
	}
	return nil
}

// number is a JSON number literal; unlike json.Number it refuses a
// string holding digits, and non-finite values.
type number float64

func (n *number) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || (b[0] != '-' && (b[0] < '0' || b[0] > '9')) {
		kind := "value"
		switch {
		case len(b) > 0 && b[0] == '"':
			kind = "string"
		case len(b) > 0 && (b[0] == 't' || b[0] == 'f'):
			kind = "bool"
		case len(b) > 0 && b[0] == '[':
			kind = "array"
		case len(b) > 0 && b[0] == '{':
			kind = "object"
		case string(b) == "null":
			kind = "null"
		}
		return &json.UnmarshalTypeError{Value: kind, Type: reflect.TypeFor[float64]()}
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return &json.UnmarshalTypeError{Value: "out-of-range number " + truncate(string(b), 32), Type: reflect.TypeFor[float64]()}
	}
	*n = number(f)
	return nil
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Float64:
		return "number"
	case reflect.Bool:
		return "bool"
	case reflect.String:
		return "string"
	case reflect.Slice:
		return "array"
	}
	return t.String()
}

// str checks a bounded string field.
func str(what, field string, s *string) (string, error) {
	if s == nil {
		return "", nil
	}
	if len(*s) > maxReportString {
		return "", fmt.Errorf("%w: %s: field %q longer than %d bytes", ErrPayload, what, field, maxReportString)
	}
	return *s, nil
}

// num reads an optional number field within [lo, hi]; integer requires a
// whole number.
func num(what, field string, n *number, lo, hi float64, integer bool) (float64, bool, error) {
	if n == nil {
		return 0, false, nil
	}
	f := float64(*n)
	if f < lo || f > hi {
		return 0, false, fmt.Errorf("%w: %s: field %q: %v out of range [%v, %v]", ErrPayload, what, field, f, lo, hi)
	}
	if integer && f != math.Trunc(f) {
		return 0, false, fmt.Errorf("%w: %s: field %q: %v is not a whole number", ErrPayload, what, field, f)
	}
	return f, true, nil
}

type telemetryPayload struct {
	TS        *string `json:"ts"`
	Lat       *number `json:"lat"`
	Lon       *number `json:"lon"`
	AccuracyM *number `json:"accuracy_m"`
}

var telemetryFields = []plainField[telemetryPayload]{
	{name: "ts", str: func(p *telemetryPayload) **string { return &p.TS }},
	{name: "lat", num: func(p *telemetryPayload) **number { return &p.Lat }},
	{name: "lon", num: func(p *telemetryPayload) **number { return &p.Lon }},
	{name: "accuracy_m", num: func(p *telemetryPayload) **number { return &p.AccuracyM }},
}

func decodeTelemetry(dst []*event.Event, payload []byte, mk *envelopes) ([]*event.Event, error) {
	const what = "telemetry"
	if len(payload) > MaxTelemetryForward {
		return nil, fmt.Errorf("%w: %s: %d bytes > %d forwarded", ErrPayload, what, len(payload), MaxTelemetryForward)
	}
	var p telemetryPayload
	if err := decodeFields(what, payload, &p, telemetryFields); err != nil {
		return nil, err
	}
	ts, err := str(what, "ts", p.TS)
	if err != nil {
		return nil, err
	}
	lat, hasLat, err := num(what, "lat", p.Lat, -90, 90, false)
	if err != nil {
		return nil, err
	}
	lon, hasLon, err := num(what, "lon", p.Lon, -180, 180, false)
	if err != nil {
		return nil, err
	}
	acc, hasAcc, err := num(what, "accuracy_m", p.AccuracyM, 0, 1e7, false)
	if err != nil {
		return nil, err
	}
	if hasLat != hasLon {
		return nil, fmt.Errorf("%w: %s: lat and lon must come together", ErrPayload, what)
	}
	attrs := mk.newAttrs()
	attrs["payload"], attrs["bytes"] = string(bytes.TrimSpace(payload)), float64(len(payload))
	if ts != "" {
		attrs["reported_at"] = ts
	}
	dst = append(dst, mk.event(event.DeviceTelemetry, attrs))
	if hasLat {
		loc := mk.newAttrs()
		loc["lat"], loc["lon"], loc["source"] = lat, lon, "device"
		if hasAcc {
			loc["accuracy_m"] = acc
		}
		if ts != "" {
			loc["reported_at"] = ts
		}
		dst = append(dst, mk.event(event.Location, loc))
	}
	return dst, nil
}

type metricsPayload struct {
	TS             *string   `json:"ts"`
	FWVersion      *string   `json:"fw_version"`
	FWDigest       *string   `json:"fw_digest"`
	Slot           *string   `json:"slot"`
	ListeningPorts *[]number `json:"listening_ports"`
	Connections    *number   `json:"connections"`
	Processes      *number   `json:"processes"`
	UptimeS        *number   `json:"uptime_s"`
}

var metricsFields = []plainField[metricsPayload]{
	{name: "ts", str: func(p *metricsPayload) **string { return &p.TS }},
	{name: "fw_version", str: func(p *metricsPayload) **string { return &p.FWVersion }},
	{name: "fw_digest", str: func(p *metricsPayload) **string { return &p.FWDigest }},
	{name: "slot", str: func(p *metricsPayload) **string { return &p.Slot }},
	{name: "listening_ports", nums: func(p *metricsPayload) **[]number { return &p.ListeningPorts }},
	{name: "connections", num: func(p *metricsPayload) **number { return &p.Connections }},
	{name: "processes", num: func(p *metricsPayload) **number { return &p.Processes }},
	{name: "uptime_s", num: func(p *metricsPayload) **number { return &p.UptimeS }},
}

func decodeMetrics(dst []*event.Event, payload []byte, mk *envelopes) ([]*event.Event, error) {
	const what = "metrics"
	var p metricsPayload
	if err := decodeFields(what, payload, &p, metricsFields); err != nil {
		return nil, err
	}
	attrs := mk.newAttrs()
	for _, f := range []struct {
		field, attr string
		v           *string
	}{{"ts", "reported_at", p.TS}, {"fw_version", "fw_version", p.FWVersion}, {"fw_digest", "fw_digest", p.FWDigest}, {"slot", "slot", p.Slot}} {
		s, err := str(what, f.field, f.v)
		if err != nil {
			return nil, err
		}
		if s != "" {
			attrs[f.attr] = s
		}
	}
	if p.ListeningPorts != nil {
		ps := *p.ListeningPorts
		if len(ps) > maxPorts {
			return nil, fmt.Errorf("%w: %s: field \"listening_ports\": %d entries > %d", ErrPayload, what, len(ps), maxPorts)
		}
		ports := make([]any, 0, len(ps))
		seen := map[float64]bool{}
		for i := range ps {
			f, _, err := num(what, fmt.Sprintf("listening_ports[%d]", i), &ps[i], 1, 65535, true)
			if err != nil {
				return nil, err
			}
			if !seen[f] {
				seen[f] = true
				ports = append(ports, f)
			}
		}
		attrs["listening_ports"] = ports
	}
	for _, f := range []struct {
		field string
		v     *number
		hi    float64
	}{{"connections", p.Connections, maxCount}, {"processes", p.Processes, maxCount}, {"uptime_s", p.UptimeS, 1 << 40}} {
		n, ok, err := num(what, f.field, f.v, 0, f.hi, true)
		if err != nil {
			return nil, err
		}
		if ok {
			attrs[f.field] = n
		}
	}
	return append(dst, mk.event(event.DeviceMetrics, attrs)), nil
}

type deviceEventPayload struct {
	Type      *string `json:"type"`
	TS        *string `json:"ts"`
	FWVersion *string `json:"fw_version"`
	FWDigest  *string `json:"fw_digest"`
	Slot      *string `json:"slot"`
	ID        *string `json:"id"`
	OK        *bool   `json:"ok"`
	Output    *string `json:"output"`
	Error     *string `json:"error"`
}

var deviceEventFields = []plainField[deviceEventPayload]{
	{name: "type", str: func(p *deviceEventPayload) **string { return &p.Type }},
	{name: "ts", str: func(p *deviceEventPayload) **string { return &p.TS }},
	{name: "fw_version", str: func(p *deviceEventPayload) **string { return &p.FWVersion }},
	{name: "fw_digest", str: func(p *deviceEventPayload) **string { return &p.FWDigest }},
	{name: "slot", str: func(p *deviceEventPayload) **string { return &p.Slot }},
	{name: "id", str: func(p *deviceEventPayload) **string { return &p.ID }},
	{name: "ok", flag: func(p *deviceEventPayload) **bool { return &p.OK }},
	{name: "output", str: func(p *deviceEventPayload) **string { return &p.Output }},
	{name: "error", str: func(p *deviceEventPayload) **string { return &p.Error }},
}

func decodeDeviceEvent(dst []*event.Event, payload []byte, mk *envelopes) ([]*event.Event, error) {
	var p deviceEventPayload
	if err := decodeFields("events", payload, &p, deviceEventFields); err != nil {
		return nil, err
	}
	typ, err := str("events", "type", p.Type)
	if err != nil {
		return nil, err
	}
	what := "events/" + typ
	ts, err := str(what, "ts", p.TS)
	if err != nil {
		return nil, err
	}
	var attrs map[string]any
	var kind event.Kind
	switch typ {
	case "":
		return nil, fmt.Errorf("%w: events: field \"type\" is required", ErrPayload)
	case "boot":
		kind, attrs = event.FirmwareReport, mk.newAttrs()
		for _, f := range []struct {
			field, attr string
			v           *string
		}{{"fw_version", "version", p.FWVersion}, {"fw_digest", "digest", p.FWDigest}, {"slot", "slot", p.Slot}} {
			s, err := str(what, f.field, f.v)
			if err != nil {
				return nil, err
			}
			if s != "" {
				attrs[f.attr] = s
			}
		}
	case "command.result":
		cid, err := str(what, "id", p.ID)
		if err != nil {
			return nil, err
		}
		if cid == "" {
			return nil, fmt.Errorf("%w: %s: field \"id\" is required", ErrPayload, what)
		}
		if p.OK == nil {
			return nil, fmt.Errorf("%w: %s: field \"ok\" is required", ErrPayload, what)
		}
		kind, attrs = event.CommandResult, mk.newAttrs()
		attrs["command_id"], attrs["ok"] = cid, *p.OK
		for _, f := range []struct {
			field string
			v     *string
		}{{"output", p.Output}, {"error", p.Error}} {
			if f.v == nil {
				continue
			}
			if len(*f.v) > maxCommandOutput {
				return nil, fmt.Errorf("%w: %s: field %q longer than %d bytes", ErrPayload, what, f.field, maxCommandOutput)
			}
			attrs[f.field] = *f.v
		}
	default:
		return nil, fmt.Errorf("%w: events: unknown type %q", ErrPayload, truncate(typ, 64))
	}
	if ts != "" {
		attrs["reported_at"] = ts
	}
	return append(dst, mk.event(kind, attrs)), nil
}
