package firmware

import (
	"errors"
	"testing"
)

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"1.2.3", true},
		{"0.0.0", true},
		{"10.20.30-rc.1+build.5", true},
		{"1.0.0-alpha-1", true},
		{"1.2", false},
		{"1.2.3.4", false},
		{"v1.2.3", false},
		{"01.2.3", false},
		{"1.2.3-01", false},
		{"1.2.3-", false},
		{"1.2.3+", false},
		{"1.2.3-a..b", false},
		{"1.2.3-a_b", false},
		{"", false},
		{"1.2.99999999999999999999", false},
		{"1.2.3-" + string(make([]byte, 70)), false},
	} {
		_, err := ParseVersion(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseVersion(%q) error %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseVersion(%q) error %v does not wrap ErrMalformed", tc.in, err)
		}
	}
}

func TestVersionOrder(t *testing.T) {
	// The precedence chain from semver.org, section 11, plus build metadata.
	chain := []string{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
		"1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "10.0.0"}
	for i := range chain {
		for j := range chain {
			got, err := CompareVersions(chain[i], chain[j])
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", chain[i], chain[j], got, want)
			}
		}
	}
	if c, _ := CompareVersions("1.0.0+a", "1.0.0+b"); c != 0 {
		t.Errorf("build metadata must not affect precedence, got %d", c)
	}
}
