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
	"unicode/utf8"
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
