package firmware

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const goodManifest = `{"signatures":[],"signed":{"expires":"2026-09-01T00:00:00Z","min_version":"1.0.0","models":["m1"],"notes":"","sha256":"` +
	"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `","size":10,"version":"1.1.0"}}`

func TestParseManifestRefusals(t *testing.T) {
	if _, err := ParseManifest([]byte(goodManifest)); err != nil {
		t.Fatalf("good manifest refused: %v", err)
	}
	repl := func(old, new string) string {
		if !strings.Contains(goodManifest, old) {
			t.Fatalf("test bug: %q not in manifest", old)
		}
		return strings.Replace(goodManifest, old, new, 1)
	}
	for name, in := range map[string]string{
		"unknown top field":    repl(`"signatures"`, `"extra":1,"signatures"`),
		"unknown signed field": repl(`"size":10`, `"size":10,"arch":"arm"`),
		"trailing value":       goodManifest + `{}`,
		"trailing garbage":     goodManifest + `x`,
		"not an object":        `[]`,
		"empty":                ``,
		"oversized":            repl(`"notes":""`, `"notes":"`+strings.Repeat("a", MaxManifestSize)+`"`),
		"notes too long":       repl(`"notes":""`, `"notes":"`+strings.Repeat("a", maxNotesLen+1)+`"`),
		"no models":            repl(`["m1"]`, `[]`),
		"duplicate model":      repl(`["m1"]`, `["m1","m1"]`),
		"bad model chars":      repl(`["m1"]`, `["m 1"]`),
		"bad version":          repl(`"version":"1.1.0"`, `"version":"1.1"`),
		"bad min_version":      repl(`"min_version":"1.0.0"`, `"min_version":"x"`),
		"min above version":    repl(`"min_version":"1.0.0"`, `"min_version":"2.0.0"`),
		"uppercase sha":        repl(`"0123456789abcdef0`, `"0123456789ABCDEF0`),
		"short sha":            repl(`"0123456789abcdef0`, `"0`),
		"zero size":            repl(`"size":10`, `"size":0`),
		"negative size":        repl(`"size":10`, `"size":-1`),
		"no expires":           repl(`"expires":"2026-09-01T00:00:00Z",`, ``),
		"bad expires":          repl(`2026-09-01T00:00:00Z`, `tomorrow`),
		"bad signature":        repl(`"signatures":[]`, `"signatures":[{"keyid":"ab","sig":"cd"}]`),
		"string size":          repl(`"size":10`, `"size":"10"`),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseManifest([]byte(in))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

// TestCanonicalSortedCompact checks the canonical form: keys sorted at
// every level, no whitespace, UTC times, HTML characters not escaped.
func TestCanonicalSortedCompact(t *testing.T) {
	m := &Manifest{Signed: testRelease([]byte("firmware"))}
	c, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, c); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(compact.Bytes(), c) {
		t.Errorf("canonical bytes are not compact:\n%s", c)
	}
	if !bytes.Contains(c, []byte(`<3 & more`)) {
		t.Errorf("notes were escaped: %s", c)
	}
	assertSortedKeys(t, c)
	k := &Keys{Signed: keySet(1, 1, seededKey(1), seededKey(2))}
	kc, err := k.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	assertSortedKeys(t, kc)
}

func assertSortedKeys(t *testing.T, b []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		obj  bool
		keys []string
		next bool // next string token in an object is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.next {
			if s, ok := tok.(string); ok {
				top.keys = append(top.keys, s)
				top.next = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, next: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			if top.obj && !slices.IsSorted(top.keys) {
				t.Errorf("keys not sorted: %v", top.keys)
			}
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].obj {
			stack[len(stack)-1].next = true
		}
	}
	if len(stack) != 0 {
		t.Fatalf("unbalanced JSON %s", b)
	}
}

// TestCanonicalIgnoresInputForm: two inputs that differ only in key order,
// whitespace, time zone and escapes have the same canonical bytes, so a
// signature over one verifies over the other.
func TestCanonicalIgnoresInputForm(t *testing.T) {
	a := `{"signed":{"version":"1.1.0","size":10,"sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	  "notes":"\u0041","models":["m1"],"min_version":"1.0.0","expires":"2026-09-01T02:00:00+02:00"},
	  "signatures":[]}`
	b := `{"signatures":[],"signed":{"expires":"2026-09-01T00:00:00Z","min_version":"1.0.0","models":["m1"],"notes":"A","sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":10,"version":"1.1.0"}}`
	ma, err := ParseManifest([]byte(a))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := ParseManifest([]byte(b))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := ma.Canonical()
	cb, _ := mb.Canonical()
	if !bytes.Equal(ca, cb) {
		t.Fatalf("canonical forms differ:\n%s\n%s", ca, cb)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	b := signedManifest(t, testRelease([]byte("fw")), seededKey(1), seededKey(2))
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Signatures) != 2 {
		t.Fatalf("want 2 signatures, got %d", len(m.Signatures))
	}
	again, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Fatalf("round trip changed the bytes:\n%s\n%s", b, again)
	}
	// Signing again with the same key replaces, not duplicates.
	b2, err := SignManifest(b, seededKey(1))
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := ParseManifest(b2)
	if len(m2.Signatures) != 2 {
		t.Fatalf("re-signing duplicated a signature: %d", len(m2.Signatures))
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(goodManifest))
	f.Add(signedManifest(f, testRelease([]byte("fw")), seededKey(1)))
	f.Add([]byte(`{"signatures":null,"signed":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("refusal %v does not wrap ErrMalformed", err)
			}
			return
		}
		// Whatever parses re-encodes to bytes that parse to the same
		// canonical form (the signature input is stable).
		enc, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(enc)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v\n%s", err, enc)
		}
		c1, _ := m.Canonical()
		c2, _ := m2.Canonical()
		if !bytes.Equal(c1, c2) {
			t.Fatalf("canonical form not stable:\n%s\n%s", c1, c2)
		}
	})
}

func TestNewRelease(t *testing.T) {
	art := []byte("some firmware image")
	r, err := NewRelease(bytes.NewReader(art), []string{"m1"}, "2.0.0", "1.0.0", t0.Add(time.Hour), "n")
	if err != nil {
		t.Fatal(err)
	}
	want := testRelease(art)
	if r.SHA256 != want.SHA256 || r.Size != int64(len(art)) {
		t.Fatalf("got %s %d, want %s %d", r.SHA256, r.Size, want.SHA256, len(art))
	}
	if _, err := NewRelease(bytes.NewReader(nil), []string{"m1"}, "2.0.0", "1.0.0", t0, ""); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty artifact: %v", err)
	}
	if _, err := NewRelease(bytes.NewReader(art), []string{"m1"}, "2.0.0", "3.0.0", t0, ""); !errors.Is(err, ErrMalformed) {
		t.Fatalf("min above version: %v", err)
	}
}
