package event

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sample() *Event {
	t := time.Date(2026, 11, 24, 15, 4, 5, 123456789, time.UTC)
	return &Event{
		ID: NewID(t), Tenant: "acme", Device: "meter-0017", Kind: NetSession, Time: t, Source: "radius",
		Attrs: map[string]any{
			"status": "start", "imsi": "001010123456789", "bytes_up": float64(1234),
			"lat": 52.52, "ok": true, "ports": []any{float64(22), float64(80)},
			"nested": map[string]any{"a": "b"},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		e    *Event
	}{
		{"full", sample()},
		{"minimal", &Event{Tenant: "t", Kind: "k", Time: time.Unix(1, 0).UTC()}},
		{"unicode", &Event{Tenant: "a-b", Kind: "x.y_z", Time: time.Unix(0, 1).UTC(), Source: "ünïcode <&>", Attrs: map[string]any{"k": "\u2028"}}},
	}
	for _, tc := range tests {
		for form, marshal := range map[string]func(*Event) ([]byte, error){"binary": Marshal, "json": MarshalJSON} {
			t.Run(tc.name+"/"+form, func(t *testing.T) {
				b, err := marshal(tc.e)
				if err != nil {
					t.Fatalf("marshal: %v", err)
				}
				var got Event
				if err := Unmarshal(b, &got); err != nil {
					t.Fatalf("Unmarshal: %v", err)
				}
				if !reflect.DeepEqual(&got, tc.e) {
					t.Fatalf("round trip changed the event:\n got %#v\nwant %#v", got, *tc.e)
				}
			})
		}
	}
}

func TestNonUTCTimeAndIntsNormalise(t *testing.T) {
	e := sample()
	e.Time = e.Time.In(time.FixedZone("X", 3600))
	e.Attrs = map[string]any{"n": 7}
	b, err := Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var got Event
	if err := Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(e.Time) || got.Time.Location() != time.UTC {
		t.Fatalf("time %v (%v), want %v in UTC", got.Time, got.Time.Location(), e.Time)
	}
	if v, ok := got.Attrs["n"].(float64); !ok || v != 7 {
		t.Fatalf("attr n = %#v, want float64(7)", got.Attrs["n"])
	}
}

func TestUnmarshalRejects(t *testing.T) {
	good, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	goodJSON, err := MarshalJSON(sample())
	if err != nil {
		t.Fatal(err)
	}
	big := `{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z","source":"` + strings.Repeat("x", MaxEncodedSize) + `"}`
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrMalformed},
		{"garbage", "\x00\x01garbage", ErrMalformed},
		{"array", "[1,2]", ErrMalformed},
		{"truncated binary", string(good[:len(good)/2]), ErrMalformed},
		{"trailing binary", string(good) + "\x00", ErrMalformed},
		{"truncated json", string(goodJSON[:len(goodJSON)/2]), ErrMalformed},
		{"trailing json", string(goodJSON) + "{}", ErrMalformed},
		{"future binary version", "\x02" + string(good[1:]), ErrVersion},
		{"binary huge count", "\x01\x00\x01a\x00\x01k\x00\x00\x00\xff\xff\xff\xff\x0f", ErrMalformed},
		{"binary unsorted keys", "\x01\x00\x01a\x00\x01k\x00\x02\x00\x02\x01b\x00\x01a\x00", ErrMalformed},
		{"binary bad tag", "\x01\x00\x01a\x00\x01k\x00\x02\x00\x01\x01a\x09", ErrMalformed},
		{"binary NaN", "\x01\x00\x01a\x00\x01k\x00\x02\x00\x01\x01a\x03\x01\x00\x00\x00\x00\x00\xf8\x7f", ErrMalformed},
		{"binary bad nanos", "\x01\x00\x01a\x00\x01k\x00\x02\x80\x94\xeb\xdc\x03\x00", ErrMalformed},
		{"binary no tenant", "\x01\x00\x00\x00\x01k\x00\x02\x00\x00", ErrInvalid},
		{"binary valid", "\x01\x00\x01a\x00\x01k\x00\x02\x00\x00", nil},
		{"json deep", `{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z","attrs":{"x":` + strings.Repeat("[", 17) + strings.Repeat("]", 17) + `}}`, ErrMalformed},
		{"json deep ok", `{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z","attrs":{"x":` + strings.Repeat("[", 16) + strings.Repeat("]", 16) + `}}`, nil},
		{"unknown field", `{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z","evil":1}`, ErrMalformed},
		{"bad time", `{"v":1,"tenant":"a","kind":"k","time":"yesterday"}`, ErrMalformed},
		{"huge number", `{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z","attrs":{"n":1e999}}`, ErrMalformed},
		{"too large", big, ErrTooLarge},
		{"no version", `{"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrVersion},
		{"future version", `{"v":2,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrVersion},
		{"no tenant", `{"v":1,"kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"no kind", `{"v":1,"tenant":"a","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"no time", `{"v":1,"tenant":"a","kind":"k"}`, ErrInvalid},
		{"wildcard tenant", `{"v":1,"tenant":"*","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"dotted tenant", `{"v":1,"tenant":"a.b","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"upper tenant", `{"v":1,"tenant":"Acme","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"kind with >", `{"v":1,"tenant":"a","kind":"net.>","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"kind double dot", `{"v":1,"tenant":"a","kind":"net..x","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
		{"long id", `{"v":1,"id":"` + strings.Repeat("i", 200) + `","tenant":"a","kind":"k","time":"2026-01-01T00:00:00Z"}`, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := sample()
			before := *e
			err := Unmarshal([]byte(tc.in), e)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Unmarshal(%.60q) = %v, want success", tc.in, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Unmarshal(%.60q) = %v, want %v", tc.in, err, tc.want)
			}
			if !reflect.DeepEqual(*e, before) {
				t.Fatal("Unmarshal changed the event on error")
			}
		})
	}
}

func TestMarshalRejects(t *testing.T) {
	big := sample()
	big.Attrs = map[string]any{"blob": strings.Repeat("x", MaxEncodedSize)}
	bad := sample()
	bad.Tenant = "a b"
	fn := sample()
	fn.Attrs = map[string]any{"f": func() {}}
	nan := sample()
	nan.Attrs = map[string]any{"f": math.NaN()}
	deep := sample()
	var v any = "leaf"
	for range 17 {
		v = []any{v}
	}
	deep.Attrs = map[string]any{"d": v}
	tests := []struct {
		name string
		e    *Event
		want error
	}{
		{"nil", nil, ErrInvalid},
		{"too large", big, ErrTooLarge},
		{"bad tenant", bad, ErrInvalid},
		{"unencodable attr", fn, ErrInvalid},
		{"NaN attr", nan, ErrInvalid},
		{"too deep", deep, ErrInvalid},
		{"missing fields", &Event{}, ErrNoTenant},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Marshal(tc.e); !errors.Is(err, tc.want) {
				t.Fatalf("Marshal = %v, want %v", err, tc.want)
			}
			if _, err := MarshalJSON(tc.e); err == nil {
				t.Fatal("MarshalJSON accepted it")
			}
		})
	}
}

// FuzzUnmarshal checks that Unmarshal never panics and that whatever it
// accepts survives Marshal and Unmarshal unchanged.
func FuzzUnmarshal(f *testing.F) {
	if b, err := Marshal(sample()); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"tenant":"a","kind":"k","time":"2026-01-01T00:00:00+02:00","attrs":{"x":[1,"2",{"y":null}]}}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte("\x01\x00\x01a\x00\x01k\x00\x02\x00\x01\x01a\x05\x02\x03\x00\x00\x00\x00\x00\x00\xf0\x3f\x06\x01\x01b\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Event
		if err := Unmarshal(data, &e); err != nil {
			return
		}
		b, err := Marshal(&e)
		if err != nil {
			t.Fatalf("Marshal of an accepted event failed: %v", err)
		}
		var e2 Event
		if err := Unmarshal(b, &e2); err != nil {
			t.Fatalf("Unmarshal of Marshal output failed: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip changed the event:\n%#v\n%#v", e, e2)
		}
		b2, err := Marshal(&e2)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %v\n%s\n%s", err, b, b2)
		}
	})
}

func BenchmarkMarshal(b *testing.B) {
	e := sample()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(e); err != nil {
			b.Fatal(err)
		}
	}
}

func TestTypedAttrsEncodeAsNumbersAndArrays(t *testing.T) {
	e := sample()
	e.Attrs = map[string]any{"i": 3, "u": uint16(4), "f32": float32(0.5), "ss": []string{"a"}, "fs": []float64{1}, "ms": map[string]string{"k": "v"}}
	b, err := Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var got Event
	if err := Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"i": 3.0, "u": 4.0, "f32": 0.5, "ss": []any{"a"}, "fs": []any{1.0}, "ms": map[string]any{"k": "v"}}
	if !reflect.DeepEqual(got.Attrs, want) {
		t.Fatalf("attrs %#v, want %#v", got.Attrs, want)
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	data, err := Marshal(sample())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var e Event
		if err := Unmarshal(data, &e); err != nil {
			b.Fatal(err)
		}
	}
}
