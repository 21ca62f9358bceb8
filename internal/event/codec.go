package event

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Wire format.
//
// [Marshal] writes a compact binary form that starts with the version byte
// [BinaryVersion]:
//
//	0x01 id tenant device kind source unix-seconds(varint) nanos(uvarint) attrs
//
// where each string is a uvarint length and its bytes, and attrs is a
// uvarint count of (key, value) pairs in key order. A value is a tag byte
// then its payload: 0 null, 1 false, 2 true, 3 number (float64, 8 bytes
// little-endian), 4 string, 5 array (uvarint count, values), 6 object
// (uvarint count, key/value pairs in key order). Nesting is limited to
// maxDepth levels. Attribute numbers decode as float64; non-finite numbers
// are refused.
//
// [Unmarshal] also reads a JSON object (first byte '{' or JSON whitespace)
// carrying "v": [WireVersion] and the fields of [Event]; [MarshalJSON]
// writes it for tools and tests that want readable payloads.
// WireVersion is the "v" of the JSON form, the only one [Unmarshal] reads.
const WireVersion = 1

// BinaryVersion is the first byte of the binary form.
const BinaryVersion byte = 0x01

// maxDepth bounds the nesting of attribute arrays and objects.
const maxDepth = 16

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

// MarshalJSON encodes e in the JSON form. It refuses an envelope that
// [Unmarshal] would refuse.
func MarshalJSON(e *Event) ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("event marshal: %w: nil event", ErrInvalid)
	}
	if err := check(e); err != nil {
		return nil, fmt.Errorf("event marshal: %w", err)
	}
	if !attrsDepthOK(e.Attrs) {
		return nil, fmt.Errorf("event marshal: %w: attributes nested deeper than %d", ErrInvalid, maxDepth)
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

// Unmarshal decodes data (binary or JSON form) into e, replacing its
// contents. Unknown fields, trailing data, a wrong version and invalid
// envelopes are refused with an error wrapping [ErrTooLarge],
// [ErrMalformed], [ErrVersion] or [ErrInvalid]; e is left unchanged on
// error. The decoded time is in UTC.
func Unmarshal(data []byte, e *Event) error {
	if len(data) > MaxEncodedSize {
		return fmt.Errorf("event unmarshal: %w: %d bytes > %d", ErrTooLarge, len(data), MaxEncodedSize)
	}
	if len(data) == 0 {
		return fmt.Errorf("event unmarshal: %w: empty", ErrMalformed)
	}
	switch data[0] {
	case '{', ' ', '\t', '\r', '\n':
		return unmarshalJSON(data, e)
	case BinaryVersion:
		return unmarshalBinary(data, e)
	}
	if data[0] > BinaryVersion && data[0] < 0x20 {
		return fmt.Errorf("event unmarshal: %w: binary version %d", ErrVersion, data[0])
	}
	return fmt.Errorf("event unmarshal: %w: neither binary nor a JSON object (first byte 0x%02x)", ErrMalformed, data[0])
}

func unmarshalJSON(data []byte, e *Event) error {
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
	if !attrsDepthOK(w.Attrs) {
		return fmt.Errorf("event unmarshal: %w: attributes nested deeper than %d", ErrMalformed, maxDepth)
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

// Value tags of the binary form.
const (
	tagNull byte = iota
	tagFalse
	tagTrue
	tagNumber
	tagString
	tagArray
	tagObject
)

// Marshal encodes e in the binary form. It refuses an envelope that
// [Unmarshal] would refuse, so whatever Marshal returns decodes again.
// Integer attribute values are written as numbers (float64), []string and
// []float64 as arrays, map[string]string as objects.
func Marshal(e *Event) ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("event marshal: %w: nil event", ErrInvalid)
	}
	if err := check(e); err != nil {
		return nil, fmt.Errorf("event marshal: %w", err)
	}
	b := make([]byte, 0, 64+len(e.ID)+len(e.Device)+len(e.Source)+32*len(e.Attrs))
	b = append(b, BinaryVersion)
	b = appendString(b, e.ID)
	b = appendString(b, string(e.Tenant))
	b = appendString(b, string(e.Device))
	b = appendString(b, string(e.Kind))
	b = appendString(b, e.Source)
	b = binary.AppendVarint(b, e.Time.Unix())
	b = binary.AppendUvarint(b, uint64(e.Time.Nanosecond()))
	var err error
	if b, err = appendObject(b, e.Attrs, 1); err != nil {
		return nil, fmt.Errorf("event marshal: %w: %w", ErrInvalid, err)
	}
	if len(b) > MaxEncodedSize {
		return nil, fmt.Errorf("event marshal: %w: %d bytes > %d", ErrTooLarge, len(b), MaxEncodedSize)
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendObject(b []byte, m map[string]any, depth int) ([]byte, error) {
	b = binary.AppendUvarint(b, uint64(len(m)))
	if len(m) == 0 {
		return b, nil
	}
	var arr [16]string
	keys := arr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var err error
	for _, k := range keys {
		b = appendString(b, k)
		if b, err = appendValue(b, m[k], depth); err != nil {
			return nil, fmt.Errorf("attribute %q: %w", k, err)
		}
	}
	return b, nil
}

func appendNumber(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, errors.New("non-finite number")
	}
	b = append(b, tagNumber)
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(f)), nil
}

func appendValue(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxDepth)
	}
	switch x := v.(type) {
	case nil:
		return append(b, tagNull), nil
	case bool:
		if x {
			return append(b, tagTrue), nil
		}
		return append(b, tagFalse), nil
	case string:
		return appendString(append(b, tagString), x), nil
	case float64:
		return appendNumber(b, x)
	case float32:
		return appendNumber(b, float64(x))
	case int:
		return appendNumber(b, float64(x))
	case int8:
		return appendNumber(b, float64(x))
	case int16:
		return appendNumber(b, float64(x))
	case int32:
		return appendNumber(b, float64(x))
	case int64:
		return appendNumber(b, float64(x))
	case uint:
		return appendNumber(b, float64(x))
	case uint8:
		return appendNumber(b, float64(x))
	case uint16:
		return appendNumber(b, float64(x))
	case uint32:
		return appendNumber(b, float64(x))
	case uint64:
		return appendNumber(b, float64(x))
	case []any:
		b = binary.AppendUvarint(append(b, tagArray), uint64(len(x)))
		var err error
		for _, y := range x {
			if b, err = appendValue(b, y, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case []string:
		b = binary.AppendUvarint(append(b, tagArray), uint64(len(x)))
		for _, y := range x {
			b = appendString(append(b, tagString), y)
		}
		return b, nil
	case []float64:
		b = binary.AppendUvarint(append(b, tagArray), uint64(len(x)))
		var err error
		for _, y := range x {
			if b, err = appendNumber(b, y); err != nil {
				return nil, err
			}
		}
		return b, nil
	case map[string]any:
		return appendObject(append(b, tagObject), x, depth+1)
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, y := range x {
			m[k] = y
		}
		return appendObject(append(b, tagObject), m, depth+1)
	}
	return nil, fmt.Errorf("unsupported value type %T", v)
}

// reader decodes the binary form; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, a...)
	}
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.fail("string length %d beyond the end", n)
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// count reads an element count; every element takes at least one byte, so
// a count beyond the remaining bytes is malformed (and cannot make us
// allocate more than the input's size).
func (r *reader) count() int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		r.fail("count %d beyond the end", n)
		return 0
	}
	return int(n)
}

func (r *reader) object(depth int) map[string]any {
	n := r.count()
	if r.err != nil || n == 0 {
		return nil
	}
	m := make(map[string]any, n)
	prev := ""
	for i := 0; i < n && r.err == nil; i++ {
		k := r.string()
		if i > 0 && k <= prev {
			r.fail("object keys not in strictly increasing order at %q", k)
			return nil
		}
		prev = k
		m[k] = r.value(depth)
	}
	return m
}

func (r *reader) value(depth int) any {
	if depth > maxDepth {
		r.fail("nested deeper than %d", maxDepth)
		return nil
	}
	switch t := r.byte(); t {
	case tagNull:
		return nil
	case tagFalse:
		return false
	case tagTrue:
		return true
	case tagNumber:
		if r.err == nil && len(r.b) < 8 {
			r.fail("truncated number")
		}
		if r.err != nil {
			return nil
		}
		f := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
		r.b = r.b[8:]
		if math.IsNaN(f) || math.IsInf(f, 0) {
			r.fail("non-finite number")
		}
		return f
	case tagString:
		return r.string()
	case tagArray:
		n := r.count()
		a := make([]any, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			a = append(a, r.value(depth+1))
		}
		return a
	case tagObject:
		m := r.object(depth + 1)
		if m == nil {
			m = map[string]any{}
		}
		return m
	default:
		r.fail("unknown value tag %d", t)
		return nil
	}
}

func unmarshalBinary(data []byte, e *Event) error {
	r := reader{b: data[1:]}
	var out Event
	out.ID = r.string()
	out.Tenant = TenantID(r.string())
	out.Device = DeviceID(r.string())
	out.Kind = Kind(r.string())
	out.Source = r.string()
	sec := r.varint()
	nsec := r.uvarint()
	if r.err == nil && nsec > 999_999_999 {
		r.fail("nanoseconds %d out of range", nsec)
	}
	out.Time = time.Unix(sec, int64(nsec)).UTC()
	out.Attrs = r.object(1)
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d bytes of trailing data", len(r.b))
	}
	if r.err != nil {
		return fmt.Errorf("event unmarshal: %w: %w", ErrMalformed, r.err)
	}
	if err := check(&out); err != nil {
		return fmt.Errorf("event unmarshal: %w", err)
	}
	*e = out
	return nil
}

// depthOK reports whether the JSON-decoded value v, found at nesting
// level depth, nests no deeper than the binary form allows (the rule of
// appendValue).
func depthOK(v any, depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch x := v.(type) {
	case map[string]any:
		for _, y := range x {
			if !depthOK(y, depth+1) {
				return false
			}
		}
	case []any:
		for _, y := range x {
			if !depthOK(y, depth+1) {
				return false
			}
		}
	}
	return true
}

func attrsDepthOK(m map[string]any) bool {
	for _, v := range m {
		if !depthOK(v, 1) {
			return false
		}
	}
	return true
}
