package detect

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestIntelImportAndLookup(t *testing.T) {
	ti := NewThreatIntel()
	plain := "# comment\n; other comment\n\n192.0.2.66\n198.51.100.0/25 # trailing\n2001:db8:bad::/48\nnot-an-ip\n10.0.0.1\tsome note\n"
	n, err := ti.Import("plain", strings.NewReader(plain))
	if err != nil || n != 4 {
		t.Fatalf("plain: n=%d err=%v", n, err)
	}
	csv := "first_seen,ip_address,malware\n2026-01-01,203.0.113.7,mirai\n2026-01-02,\"203.0.113.8\",gafgyt\nbad,row\n"
	if n, err := ti.Import("csv", strings.NewReader(csv)); err != nil || n != 2 {
		t.Fatalf("csv: n=%d err=%v", n, err)
	}
	for _, c := range []struct {
		ip, feed string
		ok       bool
	}{
		{"192.0.2.66", "plain", true}, {"192.0.2.67", "", false}, {"198.51.100.0", "plain", true}, {"198.51.100.127", "plain", true},
		{"198.51.100.128", "", false}, {"2001:db8:bad:ffff::1", "plain", true}, {"2001:db8:bae::1", "", false},
		{"203.0.113.7", "csv", true}, {"203.0.113.8", "csv", true}, {"203.0.113.9", "", false}, {"::ffff:192.0.2.66", "plain", true},
		{"10.0.0.1", "plain", true}, {"0.0.0.0", "", false}, {"255.255.255.255", "", false},
	} {
		feed, ok := ti.Lookup(netip.MustParseAddr(c.ip))
		if ok != c.ok || feed != c.feed {
			t.Errorf("%s: got %q %v, want %q %v", c.ip, feed, ok, c.feed, c.ok)
		}
	}
	ti.Remove("csv")
	if _, ok := ti.Lookup(netip.MustParseAddr("203.0.113.7")); ok {
		t.Error("removed feed still matches")
	}
	if _, err := ti.Import("nocol", strings.NewReader("a,b\n1,2\n")); !errors.Is(err, ErrFeed) {
		t.Errorf("csv without address column: %v", err)
	}
}

func TestIntelOverlaps(t *testing.T) {
	ti := NewThreatIntel()
	_, _ = ti.Import("a", strings.NewReader("10.0.0.0/8\n"))
	_, _ = ti.Import("b", strings.NewReader("10.1.0.0/16\n11.0.0.0/8\n0.0.0.0/0\n"))
	for _, ip := range []string{"10.1.2.3", "11.2.3.4", "9.9.9.9", "255.255.255.255"} {
		if _, ok := ti.Lookup(netip.MustParseAddr(ip)); !ok {
			t.Errorf("%s not matched", ip)
		}
	}
	if _, ok := ti.Lookup(netip.MustParseAddr("2001:db8::1")); ok {
		t.Error("IPv4 /0 matched an IPv6 address")
	}
}

func millionFeed() string {
	var b strings.Builder
	for i := range 1_000_000 {
		// spread over the IPv4 space with gaps: every other /32 in a pattern
		v := uint32(i)*4099 + 1
		fmt.Fprintf(&b, "%d.%d.%d.%d\n", v>>24, v>>16&255, v>>8&255, v&255)
	}
	return b.String()
}

func BenchmarkIntelLookup1M(b *testing.B) {
	ti := NewThreatIntel()
	n, err := ti.Import("big", strings.NewReader(millionFeed()))
	if err != nil || n != 1_000_000 {
		b.Fatalf("n=%d err=%v", n, err)
	}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		v := uint32(i) * 2654435761
		addrs[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	hits := 0
	for i := 0; b.Loop(); i++ {
		if _, ok := ti.Lookup(addrs[i&1023]); ok {
			hits++
		}
	}
	_ = hits
}

func BenchmarkIntelImport1M(b *testing.B) {
	feed := millionFeed()
	b.ReportAllocs()
	for b.Loop() {
		ti := NewThreatIntel()
		if _, err := ti.Import("big", strings.NewReader(feed)); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseFeed(f *testing.F) {
	f.Add([]byte("# c\n192.0.2.1\n10.0.0.0/8\n2001:db8::/32\n"))
	f.Add([]byte("ip,name\n192.0.2.1,x\n\"10.0.0.1\",y\n"))
	f.Add([]byte("a,b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, bad, err := ParseFeed(bytes.NewReader(data))
		if err != nil && !errors.Is(err, ErrFeed) {
			t.Fatalf("unwrapped error %v", err)
		}
		if bad < 0 {
			t.Fatal("negative bad count")
		}
		ti := NewThreatIntel()
		if _, err := ti.Import("f", bytes.NewReader(data)); err == nil {
			for _, p := range ps {
				if _, ok := ti.Lookup(p.Addr()); !ok {
					t.Fatalf("imported %s does not match itself", p)
				}
			}
		}
	})
}

func TestFactoryCredentials(t *testing.T) {
	c := FactoryCredentials()
	if c.Len() < 60 || !c.Pair("root", "xc3511") || !c.Pair("admin", "admin") || c.Pair("root", "hunter2") || !c.User("support") {
		t.Fatalf("factory list: %d pairs", c.Len())
	}
}
