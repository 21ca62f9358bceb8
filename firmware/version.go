package firmware

import (
	"fmt"
	"strconv"
	"strings"
)

// maxVersionLen bounds a version string.
const maxVersionLen = 64

// Version is a parsed Semantic Versioning 2.0.0 version. Build metadata is
// kept in the string form but ignored for precedence, as the spec says.
type Version struct {
	Major, Minor, Patch uint64
	Pre                 []string // pre-release identifiers, nil for a release
}

// ParseVersion parses MAJOR.MINOR.PATCH[-PRE][+BUILD] (no "v" prefix, no
// leading zeros in numeric parts).
func ParseVersion(s string) (Version, error) {
	var v Version
	if s == "" || len(s) > maxVersionLen {
		return v, fmt.Errorf("%w: version %q: empty or longer than %d", ErrMalformed, s, maxVersionLen)
	}
	core := s
	if i := strings.IndexByte(core, '+'); i >= 0 {
		if err := checkIdents(core[i+1:], false); err != nil {
			return v, fmt.Errorf("%w: version %q: build: %v", ErrMalformed, s, err)
		}
		core = core[:i]
	}
	if i := strings.IndexByte(core, '-'); i >= 0 {
		pre := core[i+1:]
		if err := checkIdents(pre, true); err != nil {
			return v, fmt.Errorf("%w: version %q: pre-release: %v", ErrMalformed, s, err)
		}
		v.Pre = strings.Split(pre, ".")
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("%w: version %q: want MAJOR.MINOR.PATCH", ErrMalformed, s)
	}
	nums := [3]*uint64{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		if !isNumeric(p) || (len(p) > 1 && p[0] == '0') {
			return v, fmt.Errorf("%w: version %q: %q is not a number without leading zeros", ErrMalformed, s, p)
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return v, fmt.Errorf("%w: version %q: %v", ErrMalformed, s, err)
		}
		*nums[i] = n
	}
	return v, nil
}

func isNumeric(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// checkIdents validates dot-separated identifiers of [0-9A-Za-z-]; numeric
// pre-release identifiers must not have leading zeros.
func checkIdents(s string, pre bool) error {
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return fmt.Errorf("empty identifier")
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
				return fmt.Errorf("identifier %q has character %q", id, c)
			}
		}
		if pre && isNumeric(id) && len(id) > 1 && id[0] == '0' {
			return fmt.Errorf("identifier %q has a leading zero", id)
		}
	}
	return nil
}

// Compare returns -1, 0 or +1 as v has lower, equal or higher precedence
// than w.
func (v Version) Compare(w Version) int {
	for _, d := range [][2]uint64{{v.Major, w.Major}, {v.Minor, w.Minor}, {v.Patch, w.Patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case len(v.Pre) == 0 && len(w.Pre) == 0:
		return 0
	case len(v.Pre) == 0:
		return 1
	case len(w.Pre) == 0:
		return -1
	}
	for i := 0; i < len(v.Pre) && i < len(w.Pre); i++ {
		if c := compareIdent(v.Pre[i], w.Pre[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(v.Pre) < len(w.Pre):
		return -1
	case len(v.Pre) > len(w.Pre):
		return 1
	}
	return 0
}

func compareIdent(a, b string) int {
	an, bn := isNumeric(a), isNumeric(b)
	switch {
	case an && bn:
		if len(a) != len(b) { // no leading zeros, so longer is larger
			if len(a) < len(b) {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

// CompareVersions parses a and b and compares them.
func CompareVersions(a, b string) (int, error) {
	va, err := ParseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := ParseVersion(b)
	if err != nil {
		return 0, err
	}
	return va.Compare(vb), nil
}
