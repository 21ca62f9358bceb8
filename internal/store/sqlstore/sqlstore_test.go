package sqlstore

import (
	"testing"
	"time"
)

func TestRebind(t *testing.T) {
	for in, want := range map[string]string{
		"":                               "",
		"SELECT 1":                       "SELECT 1",
		"a = ?":                          "a = $1",
		"a = ? AND b IN (?, ?) LIMIT 10": "a = $1 AND b IN ($2, $3) LIMIT 10",
		strings12():                      "$1$2$3$4$5$6$7$8$9$10$11$12",
	} {
		if got := Rebind(in); got != want {
			t.Errorf("Rebind(%q) = %q, want %q", in, got, want)
		}
	}
}

func strings12() string {
	s := ""
	for range 12 {
		s += "?"
	}
	return s
}

func TestMicrosRoundTrip(t *testing.T) {
	for _, tm := range []time.Time{
		{},
		time.Unix(0, 0),
		time.Date(2026, 1, 2, 3, 4, 5, 6789, time.FixedZone("X", -7*3600)),
		time.Date(1900, 1, 1, 0, 0, 0, 1000, time.UTC),
	} {
		got := FromMicros(Micros(tm))
		if !got.Equal(tm.Truncate(time.Microsecond)) || got.Location() != time.UTC {
			t.Errorf("round trip of %v gave %v", tm, got)
		}
		if tm.IsZero() && !got.IsZero() {
			t.Errorf("zero time came back as %v", got)
		}
	}
}
