package creds

import (
	"bytes"
	"strings"
	"testing"
)

func TestFactory(t *testing.T) {
	fc := Factory()
	if fc.Len() < 60 {
		t.Fatalf("factory list has %d pairs, want the Mirai list and kin", fc.Len())
	}
	for _, p := range [][2]string{{"root", "xc3511"}, {"admin", "admin"}, {"root", ""}, {"ubnt", "ubnt"}} {
		if !fc.Pair(p[0], p[1]) {
			t.Errorf("%v not on the list", p)
		}
	}
	if fc.Pair("gw-0001", "Zq8!random") || fc.User("gw-0001") {
		t.Error("a random credential matched")
	}
}

func TestParseSkipsMalformed(t *testing.T) {
	l, err := Parse(strings.NewReader("# c\nroot pass\nthree fields here\n" + strings.Repeat("x", 2000) + " y\nadmin\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != 2 || !l.Pair("root", "pass") || !l.Pair("admin", "") {
		t.Fatalf("parsed %d pairs", l.Len())
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("root xc3511\nadmin\n# c\n"))
	f.Add([]byte(factoryCredentialsData))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, line := range strings.Split(string(data), "\n") {
			fs := strings.Fields(line)
			if len(fs) == 2 && len(line) <= 1024 && !strings.HasPrefix(strings.TrimSpace(line), "#") && !strings.ContainsAny(line, "\r\x85\u2028") && c.Len() > 0 {
				_ = c.Pair(fs[0], fs[1])
			}
		}
	})
}
