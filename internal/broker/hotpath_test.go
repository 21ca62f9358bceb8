package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// The publish hot path replaced two helpers by cheaper ones; these fuzz
// targets hold them to the originals, kept here as the reference.

// validSubtopicSplit is the original validSubtopic.
func validSubtopicSplit(s string) bool {
	if s == "" {
		return false
	}
	for _, level := range strings.Split(s, "/") {
		if level == "" {
			return false
		}
	}
	return true
}

func FuzzValidSubtopic(f *testing.F) {
	for _, s := range []string{"", "/", "a", "a/b", "/a", "a/", "a//b", "status", "ota/status/x", "//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validSubtopic(s), validSubtopicSplit(s); got != want {
			t.Fatalf("validSubtopic(%q) = %v, reference %v", s, got, want)
		}
	})
}

// decodeObjectDecoder is the original decodeObject, on a json.Decoder.
func decodeObjectDecoder(what string, payload []byte, v any) error {
	b := bytes.TrimSpace(payload)
	if len(b) == 0 || b[0] != '{' {
		return fmt.Errorf("%w: %s: not a JSON object", ErrPayload, what)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%w: %s: not valid UTF-8", ErrPayload, what)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: %s: field %q: want %s, got %s", ErrPayload, what, te.Field, jsonType(te.Type), te.Value)
		}
		return fmt.Errorf("%w: %s: %v", ErrPayload, what, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: trailing data after the object", ErrPayload, what)
	}
	return nil
}

// FuzzDecodeObjectMatchesDecoder: decodeObject accepts exactly what the
// Decoder-based original accepted, into the same values; an object
// followed by anything is still reported as trailing data.
func FuzzDecodeObjectMatchesDecoder(f *testing.F) {
	for _, s := range []string{
		`{"ts":"2026-01-01T00:00:00Z","lat":10.5,"lon":-3,"accuracy_m":5,"temp":1}`,
		`{"fw_version":"1.0","listening_ports":[22,443],"connections":1,"uptime_s":5}`,
		`{"type":"command.result","id":"c1","ok":true,"output":"pong"}`,
		`{"LAT":1,"Lon":2}`, `{"lat":null}`, `{"lat":"1"}`, `{"lat":1e999}`, `{} {}`, `{}x`, `{"a":}`,
		`{"a":[1,2,{"b":null}]}` + "\n", `{"ok":"yes"}`, `{"listening_ports":[1,"2"]}`, `{"ts":"\u00e9\ud800"}`, `{"a":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		for _, mk := range []func() any{
			func() any { return new(telemetryPayload) },
			func() any { return new(metricsPayload) },
			func() any { return new(deviceEventPayload) },
		} {
			got, want := mk(), mk()
			gerr, werr := decodeObject("x", payload, got), decodeObjectDecoder("x", payload, want)
			if (gerr == nil) != (werr == nil) {
				t.Fatalf("%T of %q: error %v, reference %v", got, payload, gerr, werr)
			}
			if gerr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%T of %q: %+v, reference %+v", got, payload, got, want)
			}
			if gerr != nil && !errors.Is(gerr, ErrPayload) {
				t.Fatalf("error %v does not wrap ErrPayload", gerr)
			}
			if werr != nil && strings.Contains(werr.Error(), "trailing data") && !strings.Contains(gerr.Error(), "trailing data") {
				t.Fatalf("%q: error %v, reference %v", payload, gerr, werr)
			}
		}
	})
}

// TestPlainFieldsCoverPayloads: every json field of a payload struct is in
// its table, so the direct path never ignores a field encoding/json would
// set, and each entry sets the field it names.
func TestPlainFieldsCoverPayloads(t *testing.T) {
	check := func(typ reflect.Type, names []string) {
		t.Helper()
		var tags []string
		for i := range typ.NumField() {
			tags = append(tags, strings.Split(typ.Field(i).Tag.Get("json"), ",")[0])
		}
		if !reflect.DeepEqual(tags, names) {
			t.Fatalf("%v: table %v, json fields %v", typ, names, tags)
		}
	}
	names := func(n int, name func(int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = name(i)
		}
		return out
	}
	check(reflect.TypeFor[telemetryPayload](), names(len(telemetryFields), func(i int) string { return telemetryFields[i].name }))
	check(reflect.TypeFor[metricsPayload](), names(len(metricsFields), func(i int) string { return metricsFields[i].name }))
	check(reflect.TypeFor[deviceEventPayload](), names(len(deviceEventFields), func(i int) string { return deviceEventFields[i].name }))

	// Each setter writes the field of its own name: a payload naming one
	// field decodes as encoding/json decodes it.
	for _, c := range []struct {
		v      func() any
		dec    func(any, []byte) error
		fields []string
		value  func(string) string
	}{
		{func() any { return new(telemetryPayload) }, func(v any, b []byte) error { return decodeFields("x", b, v.(*telemetryPayload), telemetryFields) },
			[]string{"ts", "lat", "lon", "accuracy_m"}, func(f string) string {
				if f == "ts" {
					return `"t"`
				}
				return "1.5"
			}},
		{func() any { return new(metricsPayload) }, func(v any, b []byte) error { return decodeFields("x", b, v.(*metricsPayload), metricsFields) },
			[]string{"ts", "fw_version", "fw_digest", "slot", "listening_ports", "connections", "processes", "uptime_s"}, func(f string) string {
				if f == "listening_ports" {
					return "[22, 443]"
				}
				if f == "connections" || f == "processes" || f == "uptime_s" {
					return "7"
				}
				return `"` + f + `"`
			}},
		{func() any { return new(deviceEventPayload) }, func(v any, b []byte) error { return decodeFields("x", b, v.(*deviceEventPayload), deviceEventFields) },
			[]string{"type", "ts", "fw_version", "fw_digest", "slot", "id", "ok", "output", "error"}, func(f string) string {
				if f == "ok" {
					return "true"
				}
				return `"` + f + `"`
			}},
	} {
		for _, f := range c.fields {
			payload := []byte(`{"` + f + `":` + c.value(f) + `}`)
			got, want := c.v(), c.v()
			if err := c.dec(got, payload); err != nil {
				t.Fatalf("%s: %v", payload, err)
			}
			if err := decodeObjectDecoder("x", payload, want); err != nil {
				t.Fatalf("%s: reference: %v", payload, err)
			}
			if !reflect.DeepEqual(got, want) || reflect.DeepEqual(want, c.v()) {
				t.Fatalf("%s: %+v, reference %+v", payload, got, want)
			}
		}
	}
}

// FuzzDecodeFieldsMatchesDecoder: decodeFields accepts exactly what the
// original Decoder-based decoding accepted, into the same values, and
// fails with decodeObject's error.
func FuzzDecodeFieldsMatchesDecoder(f *testing.F) {
	for _, s := range []string{
		`{"ts":"2026-01-01T00:00:00Z","lat":10.5,"lon":-3,"accuracy_m":5,"temp":1}`,
		`{"temp":21.5,"hum":40,"seq":1,"pad":"xx"}`,
		`{"fw_version":"1.0","listening_ports":[22,443],"connections":1,"uptime_s":5}`,
		`{"type":"command.result","id":"c1","ok":true,"output":"pong"}`,
		`{"LAT":1,"Lon":2}`, `{"lat":null}`, `{"lat":"1"}`, `{"lat":1e999}`, `{} {}`, `{}x`, `{"a":}`, `{}`, ` { } `,
		`{"a":[1,2,{"b":null,"c":"}"}]}` + "\n", `{"ok":"yes"}`, `{"ok":1}`, `{"ts":5}`, `{"ts":"a\"b"}`, `{"t\u0073":"x"}`,
		`{"listening_ports":[]}`, `{"listening_ports":[ 1 , 2.5,-3 ]}`, `{"listening_ports":[1,null]}`, `{"listening_ports":[1,[2]]}`,
		`{"\u017f":1,"tſ":"x"}`, `{"ts":"a","TS":"b"}`, `{"lat":-0,"lon":1E2}`, `{"a":1}}`, `{"listening_ports":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		for _, c := range []struct {
			v    func() any
			fast func(any) error
		}{
			{func() any { return new(telemetryPayload) }, func(v any) error { return decodeFields("x", payload, v.(*telemetryPayload), telemetryFields) }},
			{func() any { return new(metricsPayload) }, func(v any) error { return decodeFields("x", payload, v.(*metricsPayload), metricsFields) }},
			{func() any { return new(deviceEventPayload) }, func(v any) error { return decodeFields("x", payload, v.(*deviceEventPayload), deviceEventFields) }},
		} {
			got, want, slow := c.v(), c.v(), c.v()
			gerr, werr, serr := c.fast(got), decodeObjectDecoder("x", payload, want), decodeObject("x", payload, slow)
			if (gerr == nil) != (werr == nil) {
				t.Fatalf("%T of %q: error %v, reference %v", got, payload, gerr, werr)
			}
			if gerr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%T of %q: %+v, reference %+v", got, payload, got, want)
			}
			if gerr != nil && gerr.Error() != serr.Error() {
				t.Fatalf("%T of %q: error %v, decodeObject %v", got, payload, gerr, serr)
			}
		}
	})
}

// TestPublishEventsIndependent: mqtt.publish envelopes and decoded events'
// attribute maps are recycled once Publish returns; what a Publisher copied
// stays as it was published.
func TestPublishEventsIndependent(t *testing.T) {
	p := newTestPKI(t, "test-ca")
	_, _, serverCert, _ := p.issue(t, "", "", time.Now().Add(time.Hour))
	rec := &recorder{}
	br, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		States: &memStates{m: map[event.DeviceID]store.DeviceState{"d1": store.StateActive}}, Publisher: rec})
	if err != nil {
		t.Fatal(err)
	}
	h := &hook{b: br}
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Conn: &conn{id: Identity{Tenant: "acme", Device: "d1"}}, Remote: "127.0.0.1:1"}}
	if !h.OnConnectAuthenticate(cl, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "d1"}}) {
		t.Fatal("connect refused")
	}
	for i, topic := range []string{"devices/d1/ota/status", "devices/d1/metrics", "devices/d1/ota/progress"} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: byte(i % 2)}, TopicName: topic, Payload: []byte(`{"n":` + strings.Repeat("1", i+1) + `}`)}
		if _, err := h.OnPublish(cl, pk); err != nil {
			t.Fatal(err)
		}
	}
	evs := rec.find(event.MQTTPublish, "d1", "", "")
	if len(evs) != 3 {
		t.Fatalf("%d mqtt.publish events, want 3", len(evs))
	}
	ids := map[string]bool{}
	for i, ev := range evs {
		want := map[string]any{"topic_class": []string{"ota", "metrics", "ota"}[i], "bytes": float64(len(`{"n":}`) + i + 1), "qos": float64(i % 2)}
		if !reflect.DeepEqual(ev.Attrs, want) || ev.Tenant != "acme" || ev.Source != "broker" || ids[ev.ID] {
			t.Fatalf("event %d: %+v, want attrs %v", i, ev, want)
		}
		ids[ev.ID] = true
	}

	// Decoded events' attribute maps are recycled too.
	payloads := []string{`{"a":1,"lat":1,"lon":2,"ts":"t1"}`, `{"b":2}`, `{"c":3,"lat":-1,"lon":-2,"accuracy_m":9}`}
	for _, p := range payloads {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/d1/telemetry", Payload: []byte(p)}
		if _, err := h.OnPublish(cl, pk); err != nil {
			t.Fatal(err)
		}
	}
	tel, locs := rec.find(event.DeviceTelemetry, "d1", "", ""), rec.find(event.Location, "d1", "", "")
	if len(tel) != 3 || len(locs) != 2 {
		t.Fatalf("%d telemetry and %d location events, want 3 and 2", len(tel), len(locs))
	}
	for i, ev := range tel {
		want := map[string]any{"payload": payloads[i], "bytes": float64(len(payloads[i]))}
		if i == 0 {
			want["reported_at"] = "t1"
		}
		if !reflect.DeepEqual(ev.Attrs, want) {
			t.Fatalf("telemetry %d: %v, want %v", i, ev.Attrs, want)
		}
	}
	if want := map[string]any{"lat": 1.0, "lon": 2.0, "source": "device", "reported_at": "t1"}; !reflect.DeepEqual(locs[0].Attrs, want) {
		t.Fatalf("location 0: %v, want %v", locs[0].Attrs, want)
	}
	if want := map[string]any{"lat": -1.0, "lon": -2.0, "source": "device", "accuracy_m": 9.0}; !reflect.DeepEqual(locs[1].Attrs, want) {
		t.Fatalf("location 1: %v, want %v", locs[1].Attrs, want)
	}
}

// FuzzValidJSON: validJSON says what json.Valid says, for any bytes.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `[]`, `[1,2,[3,{}]]`, `{"a":1,"b":[true,false,null],"c":{"d":"e"}}`, `"x"`, `1`, `-0.5e+10`,
		`01`, `-`, `1.`, `1e`, `.5`, `{"a":1,}`, `[1,]`, `{"a" 1}`, `{1:2}`, `"\u00e9\n\/"`, `"\x"`, `"\u12g4"`,
		"\"\x01\"", "\"\xff\"", `{"a":1}}`, `{} {}`, `truex`, `nul`, strings.Repeat("[", 70) + strings.Repeat("]", 70),
		strings.Repeat("[", 70) + strings.Repeat("]", 69), "", " ", `{"a":"b"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid %v", b, got, want)
		}
	})
}
