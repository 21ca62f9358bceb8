package broker

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// The device payload decoders read a handful of optional top-level fields
// of an object that is mostly the device's own data (telemetry is
// forwarded as sent). encoding/json's reflective decoding of that object
// was most of the broker's work per publish; decodeFields reads the common
// case directly and leaves everything else to encoding/json, so results
// and errors are encoding/json's (FuzzDecodeFieldsMatchesDecoder holds it
// to that).

// plainField is one JSON field of a payload struct T: its tag and where
// its value goes. Exactly one of str, num, nums and flag is set for the
// kinds decodeFields reads itself; none for a field it leaves to
// encoding/json.
type plainField[T any] struct {
	name string // the json tag, lower case
	str  func(*T) **string
	num  func(*T) **number
	nums func(*T) **[]number
	flag func(*T) **bool
}

// decodeFields decodes payload, which must be exactly one JSON object,
// into p, whose every json field is listed in fields; errors name the
// offending field. When the object is valid, every top-level key is plain
// ASCII without escapes, and each field of p occurs at most once with a
// string without escapes, a number, a bool or null of its own kind (the
// usual payload; arrays of numbers too), it sets those fields itself; anything else is decoded by
// [decodeObject] from scratch.
func decodeFields[T any](what string, payload []byte, p *T, fields []plainField[T]) error {
	b := bytes.TrimSpace(payload)
	if len(b) > 0 && b[0] == '{' && utf8.Valid(b) && validJSON(b) && setPlain(b, p, fields) {
		return nil
	}
	var zero T
	*p = zero
	return decodeObject(what, payload, p)
}

// setPlain walks the top level of b, a valid JSON object, setting the
// fields of p it finds; it returns false as soon as something is not the
// plain case (p then holds part of the object).
func setPlain[T any](b []byte, p *T, fields []plainField[T]) bool {
	var seen uint64
	if len(fields) > 64 {
		return false
	}
	i := skipSpace(b, 1)
	if i < len(b) && b[i] == '}' {
		return i == len(b)-1
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return false
		}
		j := i + 1
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' || b[j] >= utf8.RuneSelf {
				return false // escaped or non-ASCII keys can fold onto a field name
			}
			j++
		}
		if j >= len(b) {
			return false
		}
		key := b[i+1 : j]
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		start := skipSpace(b, i+1)
		end := skipValue(b, start)
		if end < 0 {
			return false
		}
		for k := range fields {
			f := &fields[k]
			if !asciiEqualFold(key, f.name) {
				continue
			}
			if seen&(1<<k) != 0 || !f.set(p, b[start:end]) {
				return false
			}
			seen |= 1 << k
			break
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i == len(b)-1
		default:
			return false
		}
	}
}

// set stores raw, one JSON value, in f's field of p if it is of the plain
// kind the field takes.
func (f *plainField[T]) set(p *T, raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	if string(raw) == "null" {
		return true // a pointer field stays nil, as encoding/json leaves it
	}
	switch {
	case f.str != nil:
		if len(raw) < 2 || raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 {
			return false
		}
		s := string(raw[1 : len(raw)-1])
		*f.str(p) = &s
	case f.num != nil:
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return false
		}
		n := new(number)
		if n.UnmarshalJSON(raw) != nil {
			return false
		}
		*f.num(p) = n
	case f.nums != nil:
		ns, ok := plainNumbers(raw)
		if !ok {
			return false
		}
		*f.nums(p) = &ns
	case f.flag != nil:
		var v bool
		switch string(raw) {
		case "true":
			v = true
		case "false":
		default:
			return false
		}
		*f.flag(p) = &v
	default:
		return false
	}
	return true
}

// plainNumbers reads raw, a valid JSON array, if it holds only numbers.
func plainNumbers(raw []byte) ([]number, bool) {
	if raw[0] != '[' {
		return nil, false
	}
	ns := []number{} // encoding/json sets [] as an empty slice, not nil
	i := skipSpace(raw, 1)
	if i < len(raw) && raw[i] == ']' {
		return ns, i == len(raw)-1
	}
	for i < len(raw) {
		end := skipValue(raw, i)
		if end < 0 || (raw[i] != '-' && (raw[i] < '0' || raw[i] > '9')) {
			return nil, false
		}
		var n number
		if n.UnmarshalJSON(raw[i:end]) != nil {
			return nil, false
		}
		ns = append(ns, n)
		i = skipSpace(raw, end)
		if i >= len(raw) {
			return nil, false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case ']':
			return ns, i == len(raw)-1
		default:
			return nil, false
		}
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipValue returns the index just past the JSON value starting at b[i]
// (b is valid JSON), or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = skipString(b, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i].
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// asciiEqualFold reports whether key equals name (lower-case ASCII) but
// for the case of ASCII letters, as encoding/json matches field names.
func asciiEqualFold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range key {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// maxFastDepth is the nesting validJSON follows itself; deeper documents
// are left to json.Valid.
const maxFastDepth = 64

// validJSON reports json.Valid(b) (FuzzValidJSON holds it to that), in
// one pass without encoding/json's scanner, which was a fifth of the
// broker's work per publish.
func validJSON(b []byte) bool {
	var stack [maxFastDepth]byte // '{' or '[' per open level
	n := 0
	i := skipSpace(b, 0)
value:
	if i >= len(b) {
		return false
	}
	switch c := b[i]; {
	case c == '{':
		if i = skipSpace(b, i+1); i < len(b) && b[i] == '}' {
			i++
			goto end
		}
		if n == len(stack) {
			return json.Valid(b)
		}
		stack[n] = '{'
		n++
		goto key
	case c == '[':
		if i = skipSpace(b, i+1); i < len(b) && b[i] == ']' {
			i++
			goto end
		}
		if n == len(stack) {
			return json.Valid(b)
		}
		stack[n] = '['
		n++
		goto value
	case c == '"':
		if i = scanString(b, i); i < 0 {
			return false
		}
	case c == '-' || ('0' <= c && c <= '9'):
		if i = scanNumber(b, i); i < 0 {
			return false
		}
	case c == 't' && bytes.HasPrefix(b[i:], []byte("true")):
		i += 4
	case c == 'f' && bytes.HasPrefix(b[i:], []byte("false")):
		i += 5
	case c == 'n' && bytes.HasPrefix(b[i:], []byte("null")):
		i += 4
	default:
		return false
	}
end: // just after a value
	i = skipSpace(b, i)
	if n == 0 {
		return i == len(b)
	}
	if i >= len(b) {
		return false
	}
	switch {
	case b[i] == ',':
		i = skipSpace(b, i+1)
		if stack[n-1] == '{' {
			goto key
		}
		goto value
	case (b[i] == '}' && stack[n-1] == '{') || (b[i] == ']' && stack[n-1] == '['):
		n--
		i++
		goto end
	}
	return false
key:
	if i >= len(b) || b[i] != '"' {
		return false
	}
	if i = scanString(b, i); i < 0 {
		return false
	}
	if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
		return false
	}
	i = skipSpace(b, i+1)
	goto value
}

// scanString returns the index just past the JSON string starting at
// b[i], or -1 if it is not one (unterminated, a control character, a bad
// escape). Like encoding/json's scanner it does not check UTF-8.
func scanString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1
		case c < 0x20:
			return -1
		case c == '\\':
			if j++; j >= len(b) {
				return -1
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return -1
				}
				for _, h := range b[j+1 : j+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				j += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// scanNumber returns the index just past the JSON number starting at
// b[i], or -1.
func scanNumber(b []byte, i int) int {
	digits := func(j int) int {
		for j < len(b) && '0' <= b[j] && b[j] <= '9' {
			j++
		}
		return j
	}
	j := i
	if b[j] == '-' {
		j++
	}
	switch {
	case j >= len(b):
		return -1
	case b[j] == '0':
		j++
	case '1' <= b[j] && b[j] <= '9':
		j = digits(j + 1)
	default:
		return -1
	}
	if j < len(b) && b[j] == '.' {
		if k := digits(j + 1); k > j+1 {
			j = k
		} else {
			return -1
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		k := digits(j)
		if k == j {
			return -1
		}
		j = k
	}
	return j
}
