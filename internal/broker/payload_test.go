package broker

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

var payloadID = Identity{Tenant: "acme", Device: "meter-0001", Serial: "01"}

func TestDecodeDevicePayload(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name, sub, payload string
		kinds              []event.Kind
		attrs              []map[string]any // expected attributes of each event (subset)
		err                string
	}{
		{name: "metrics from the agent", sub: "metrics",
			payload: `{"ts":"2026-11-24T11:59:59Z","fw_version":"1.4.2","fw_digest":"ABCDEF01","slot":"a","listening_ports":[22,443,22],"connections":3,"processes":41,"uptime_s":1200,"future":{"x":[1,2]}}`,
			kinds:   []event.Kind{event.DeviceMetrics},
			attrs: []map[string]any{{"listening_ports": []any{22.0, 443.0}, "connections": 3.0, "processes": 41.0,
				"fw_version": "1.4.2", "fw_digest": "ABCDEF01", "slot": "a", "uptime_s": 1200.0, "reported_at": "2026-11-24T11:59:59Z"}}},
		{name: "metrics empty ports", sub: "metrics", payload: `{"listening_ports":[]}`, kinds: []event.Kind{event.DeviceMetrics},
			attrs: []map[string]any{{"listening_ports": []any{}}}},
		{name: "telemetry with position", sub: "telemetry", payload: ` {"temp":21.5,"lat":48.85,"lon":2.35,"accuracy_m":12} `,
			kinds: []event.Kind{event.DeviceTelemetry, event.Location},
			attrs: []map[string]any{{"payload": `{"temp":21.5,"lat":48.85,"lon":2.35,"accuracy_m":12}`},
				{"lat": 48.85, "lon": 2.35, "accuracy_m": 12.0, "source": "device"}}},
		{name: "telemetry without position", sub: "telemetry/env", payload: `{"temp":21.5}`, kinds: []event.Kind{event.DeviceTelemetry}},
		{name: "boot", sub: "events", payload: `{"type":"boot","fw_version":"2.0.0","fw_digest":"aa","slot":"b"}`,
			kinds: []event.Kind{event.FirmwareReport}, attrs: []map[string]any{{"version": "2.0.0", "digest": "aa", "slot": "b"}}},
		{name: "command result", sub: "events", payload: `{"type":"command.result","id":"cmd-1","ok":false,"error":"unknown command \"x\""}`,
			kinds: []event.Kind{event.CommandResult}, attrs: []map[string]any{{"command_id": "cmd-1", "ok": false, "error": `unknown command "x"`}}},
		{name: "ota status is the campaign engine's", sub: "ota/status", payload: `{"job":"j"}`},

		{name: "not an object", sub: "metrics", payload: `[1,2]`, err: "not a JSON object"},
		{name: "not JSON", sub: "telemetry", payload: `hello`, err: "not a JSON object"},
		{name: "trailing data", sub: "metrics", payload: `{} {}`, err: "trailing data"},
		{name: "truncated", sub: "metrics", payload: `{"processes":`, err: "metrics"},
		{name: "port as string", sub: "metrics", payload: `{"listening_ports":["22"]}`, err: `"listening_ports`},
		{name: "port out of range", sub: "metrics", payload: `{"listening_ports":[70000]}`, err: `"listening_ports[0]"`},
		{name: "fractional count", sub: "metrics", payload: `{"processes":1.5}`, err: `"processes"`},
		{name: "negative count", sub: "metrics", payload: `{"connections":-1}`, err: `"connections"`},
		{name: "huge number", sub: "metrics", payload: `{"connections":1e999}`, err: `"connections"`},
		{name: "long version", sub: "metrics", payload: `{"fw_version":"` + strings.Repeat("v", 300) + `"}`, err: `"fw_version"`},
		{name: "lat without lon", sub: "telemetry", payload: `{"lat":1}`, err: "lat and lon"},
		{name: "lat out of range", sub: "telemetry", payload: `{"lat":91,"lon":0}`, err: `"lat"`},
		{name: "lat as string", sub: "telemetry", payload: `{"lat":"1","lon":0}`, err: `"lat"`},
		{name: "event without type", sub: "events", payload: `{"id":"x"}`, err: `"type" is required`},
		{name: "unknown event type", sub: "events", payload: `{"type":"party"}`, err: `unknown type "party"`},
		{name: "result without id", sub: "events", payload: `{"type":"command.result","ok":true}`, err: `"id" is required`},
		{name: "result without ok", sub: "events", payload: `{"type":"command.result","id":"c"}`, err: `"ok" is required`},
		{name: "ok not a bool", sub: "events", payload: `{"type":"command.result","id":"c","ok":"yes"}`, err: `"ok"`},
		{name: "invalid UTF-8", sub: "metrics", payload: "{\"slot\":\"\xff\"}", err: "UTF-8"},
		{name: "oversized", sub: "metrics", payload: `{"x":"` + strings.Repeat("a", MaxDevicePayload) + `"}`, err: "bytes >"},
		{name: "oversized telemetry", sub: "telemetry", payload: `{"x":"` + strings.Repeat("a", MaxTelemetryForward) + `"}`, err: "forwarded"},
		{name: "unknown subtopic", sub: "commands", payload: `{}`, err: "unknown subtopic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, err := DecodeDevicePayload(payloadID, c.sub, []byte(c.payload), now)
			if c.err != "" {
				if err == nil || !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one wrapping ErrPayload and containing %q", err, c.err)
				}
				if evs != nil {
					t.Fatalf("events returned with an error: %v", evs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != len(c.kinds) {
				t.Fatalf("%d events, want %d", len(evs), len(c.kinds))
			}
			for i, ev := range evs {
				if ev.Kind != c.kinds[i] || ev.Tenant != "acme" || ev.Device != "meter-0001" || !ev.Time.Equal(now) || ev.Source != "device" {
					t.Fatalf("event %d envelope %+v", i, ev)
				}
				if i < len(c.attrs) {
					for k, want := range c.attrs[i] {
						if got := ev.Attrs[k]; !reflect.DeepEqual(got, want) {
							t.Errorf("event %d attr %s = %#v, want %#v", i, k, got, want)
						}
					}
				}
				// Every decoded event survives the bus codec unchanged.
				b, err := event.Marshal(ev)
				if err != nil {
					t.Fatalf("marshal: %v", err)
				}
				var back event.Event
				if err := event.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Attrs, ev.Attrs) {
					t.Fatalf("round trip: %v\n%#v\n%#v", err, back.Attrs, ev.Attrs)
				}
			}
		})
	}
}

// TestDecodedMetricsAreWhatDetectionReads checks the attribute shapes the
// listener and firmware detectors read (event.Strings on listening_ports,
// Str on fw_digest).
func TestDecodedMetricsAreWhatDetectionReads(t *testing.T) {
	evs, err := DecodeDevicePayload(payloadID, "metrics", []byte(`{"listening_ports":[22,2323],"fw_digest":"ab12","fw_version":"1.0.0"}`), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	if got := ev.Strings("listening_ports"); !reflect.DeepEqual(got, []string{"22", "2323"}) {
		t.Fatalf("listening_ports as strings = %v", got)
	}
	if ev.Str("fw_digest") != "ab12" || ev.Str("fw_version") != "1.0.0" {
		t.Fatalf("firmware attrs %v", ev.Attrs)
	}
}

func FuzzDecodeDevicePayload(f *testing.F) {
	for _, s := range []struct{ sub, p string }{
		{"metrics", `{"fw_version":"1.0","fw_digest":"ab","listening_ports":[22,443],"connections":1,"processes":40,"uptime_s":5}`},
		{"telemetry", `{"temp":1,"lat":10.5,"lon":-3,"accuracy_m":5,"ts":"2026-01-01T00:00:00Z"}`},
		{"events", `{"type":"boot","fw_version":"1","fw_digest":"cd","slot":"a"}`},
		{"events", `{"type":"command.result","id":"c1","ok":true,"output":"pong"}`},
		{"ota/status", `{"job":"j","state":"received"}`},
	} {
		f.Add(s.sub, []byte(s.p))
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, sub string, payload []byte) {
		evs, err := DecodeDevicePayload(payloadID, sub, payload, now)
		if err != nil {
			if !errors.Is(err, ErrPayload) || evs != nil {
				t.Fatalf("error %v with events %v", err, evs)
			}
			return
		}
		for _, ev := range evs {
			if err := ev.Validate(); err != nil {
				t.Fatalf("invalid event: %v", err)
			}
			b, err := event.Marshal(ev)
			if err != nil {
				t.Fatalf("decoded event does not encode: %v", err)
			}
			var back event.Event
			if err := event.Unmarshal(b, &back); err != nil {
				t.Fatalf("decoded event does not decode: %v", err)
			}
		}
	})
}
