package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Wire format.
//
// An encoded event is one JSON object (UTF-8, no trailing data) carrying a
// format version "v" (currently [WireVersion]) beside the fields of [Event].
// JSON keeps the bus readable with the nats CLI; the version lets a later
// binary form coexist. Attribute numbers decode as float64.

// WireVersion is the version written by [Marshal] and the only one
// [Unmarshal] accepts.
const WireVersion = 1

// MaxEncodedSize bounds an encoded event. Larger inputs are refused by
// [Unmarshal] and [Marshal] without being parsed.
const MaxEncodedSize = 64 << 10

// Bounds on the envelope's string fields.
const (
	maxIDLen     = 128
	maxTenantLen = 63
	maxDeviceLen = 256
	maxKindLen   = 64
	maxSourceLen = 256
)

// Errors returned by [Marshal] and [Unmarshal]; the returned error wraps one
// of these, check with errors.Is.
var (
	// ErrTooLarge: the encoded form exceeds MaxEncodedSize.
	ErrTooLarge = errors.New("event: encoded event too large")
	// ErrMalformed: the bytes are not a well-formed encoded event.
	ErrMalformed = errors.New("event: malformed encoding")
	// ErrVersion: the encoding carries a version this binary does not read.
	ErrVersion = errors.New("event: unsupported wire version")
	// ErrInvalid: the envelope decodes but breaks a field rule
	// (missing tenant/kind/time, bad characters, oversized field).
	ErrInvalid = errors.New("event: invalid envelope")
)

// wire is the encoded shape: Event's fields plus the version.
type wire struct {
	V      int            `json:"v"`
	ID     string         `json:"id"`
	Tenant TenantID       `json:"tenant"`
	Device DeviceID       `json:"device,omitempty"`
	Kind   Kind           `json:"kind"`
	Time   time.Time      `json:"time"`
	Source string         `json:"source"`
	Attrs  map[string]any `json:"attrs,omitempty"`
}

// Marshal encodes e. It refuses an envelope that [Unmarshal] would refuse,
// so whatever Marshal returns can be decoded again.
func Marshal(e *Event) ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("event marshal: %w: nil event", ErrInvalid)
	}
	if err := check(e); err != nil {
		return nil, fmt.Errorf("event marshal: %w", err)
	}
	b, err := json.Marshal(wire{
		V: WireVersion, ID: e.ID, Tenant: e.Tenant, Device: e.Device, Kind: e.Kind,
		Time: e.Time.UTC(), Source: e.Source, Attrs: e.Attrs,
	})
	if err != nil {
		return nil, fmt.Errorf("event marshal: %w: %w", ErrInvalid, err)
	}
	if len(b) > MaxEncodedSize {
		return nil, fmt.Errorf("event marshal: %w: %d bytes > %d", ErrTooLarge, len(b), MaxEncodedSize)
	}
	return b, nil
}

// Unmarshal decodes data into e, replacing its contents. Unknown fields,
// trailing data, a wrong version and invalid envelopes are refused with an
// error wrapping [ErrTooLarge], [ErrMalformed], [ErrVersion] or [ErrInvalid];
// e is left unchanged on error. The decoded time is in UTC.
func Unmarshal(data []byte, e *Event) error {
	if len(data) > MaxEncodedSize {
		return fmt.Errorf("event unmarshal: %w: %d bytes > %d", ErrTooLarge, len(data), MaxEncodedSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("event unmarshal: %w: %w", ErrMalformed, err)
	}
	if _, err := dec.Token(); err == nil {
		return fmt.Errorf("event unmarshal: %w: trailing data", ErrMalformed)
	}
	if w.V != WireVersion {
		return fmt.Errorf("event unmarshal: %w: %d", ErrVersion, w.V)
	}
	if len(w.Attrs) == 0 {
		w.Attrs = nil // "attrs":{} and no attrs are the same envelope
	}
	out := Event{ID: w.ID, Tenant: w.Tenant, Device: w.Device, Kind: w.Kind, Time: w.Time.UTC(), Source: w.Source, Attrs: w.Attrs}
	if err := check(&out); err != nil {
		return fmt.Errorf("event unmarshal: %w", err)
	}
	*e = out
	return nil
}

// check applies the field rules shared by Marshal and Unmarshal. Tenant and
// kind end up as subject tokens, so their alphabets are strict.
func check(e *Event) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch {
	case len(e.ID) > maxIDLen:
		return fmt.Errorf("%w: id longer than %d", ErrInvalid, maxIDLen)
	case len(e.Tenant) > maxTenantLen || !tokenOK(string(e.Tenant), false) || strings.ContainsRune(string(e.Tenant), '_'):
		return fmt.Errorf("%w: tenant %q is not lower-case kebab of at most %d characters", ErrInvalid, e.Tenant, maxTenantLen)
	case len(e.Kind) > maxKindLen || !tokenOK(string(e.Kind), true):
		return fmt.Errorf("%w: kind %q is not lower-case domain.name of at most %d characters", ErrInvalid, e.Kind, maxKindLen)
	case len(e.Device) > maxDeviceLen:
		return fmt.Errorf("%w: device longer than %d", ErrInvalid, maxDeviceLen)
	case len(e.Source) > maxSourceLen:
		return fmt.Errorf("%w: source longer than %d", ErrInvalid, maxSourceLen)
	}
	if y := e.Time.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: time %v outside years 1-9999", ErrInvalid, e.Time)
	}
	return nil
}

// tokenOK reports whether s uses only a-z, 0-9, '-' and '_' (and '.' when
// kind is true, for domain.name kinds), and does not start or end with a
// separator.
func tokenOK(s string, kind bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' || c == '_':
			if i == 0 || i == len(s)-1 {
				return false
			}
		case c == '.' && kind:
			if i == 0 || i == len(s)-1 || s[i-1] == '.' {
				return false
			}
		default:
			return false
		}
	}
	return true
}
