package detect

import (
	"bufio"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrFeed reports a feed that could not be parsed at all (no address column,
// unreadable input). Single bad lines are skipped, not errors.
var ErrFeed = errors.New("detect: bad threat-intelligence feed")

// maxFeedLine bounds one feed line.
const maxFeedLine = 64 << 10

// ipRange is an inclusive range of addresses as 128-bit numbers (IPv4 is
// mapped into ::ffff:0:0/96), tagged with the feed that listed it.
type ipRange struct {
	loHi, loLo, hiHi, hiLo uint64
	feed                   uint16
}

type intelTable struct {
	r     []ipRange // sorted by lo, non-overlapping
	feeds []string
}

// ThreatIntel holds imported IP/CIDR feeds and answers lookups in
// O(log n) over sorted, merged ranges. Lookups are lock-free; Import
// rebuilds the table and swaps it atomically. Safe for concurrent use.
type ThreatIntel struct {
	mu      sync.Mutex // serialises Import
	entries map[string][]ipRange
	tab     atomic.Pointer[intelTable]
}

// NewThreatIntel returns an empty intel store.
func NewThreatIntel() *ThreatIntel {
	ti := &ThreatIntel{entries: map[string][]ipRange{}}
	ti.tab.Store(&intelTable{})
	return ti
}

func addrU128(a netip.Addr) (uint64, uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

func prefixRange(p netip.Prefix) ipRange {
	p = p.Masked()
	lo := p.Addr()
	bits := p.Bits()
	if lo.Is4() {
		bits += 96
	}
	hh, hl := addrU128(lo)
	lh, ll := hh, hl
	host := 128 - bits
	switch {
	case host >= 64:
		hl = ^uint64(0)
		if host == 128 {
			hh = ^uint64(0)
		} else {
			hh |= (uint64(1) << (host - 64)) - 1
		}
	case host > 0:
		hl |= (uint64(1) << host) - 1
	}
	return ipRange{loHi: lh, loLo: ll, hiHi: hh, hiLo: hl}
}

// ParseFeed parses one feed: either one address or CIDR per line (with #
// or ; comments, blank lines, and trailing text after whitespace ignored),
// or CSV whose header has a column named ip, address, addr, ip_address,
// cidr, network, indicator or dst_ip. Lines that do not parse are skipped
// and counted in bad.
func ParseFeed(r io.Reader) (prefixes []netip.Prefix, bad int, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	// Detect CSV from the first non-comment line.
	var first string
	for {
		line, rerr := readLine(br)
		if rerr != nil && line == "" {
			if errors.Is(rerr, io.EOF) {
				return nil, 0, nil
			}
			return nil, 0, fmt.Errorf("%w: %w", ErrFeed, rerr)
		}
		t := strings.TrimSpace(line)
		if t == "" || t[0] == '#' || t[0] == ';' {
			if rerr != nil {
				return nil, 0, nil
			}
			continue
		}
		first = t
		break
	}
	if strings.Contains(first, ",") {
		if _, ok := parseAddrOrPrefix(strings.TrimSpace(strings.SplitN(first, ",", 2)[0])); !ok {
			return parseCSV(first, br)
		}
	}
	add := func(s string) {
		if i := strings.IndexAny(s, " \t#;,"); i >= 0 {
			s = s[:i]
		}
		if p, ok := parseAddrOrPrefix(s); ok {
			prefixes = append(prefixes, p)
		} else {
			bad++
		}
	}
	add(first)
	for {
		line, rerr := readLine(br)
		t := strings.TrimSpace(line)
		if t != "" && t[0] != '#' && t[0] != ';' {
			add(t)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return prefixes, bad, nil
			}
			return prefixes, bad, fmt.Errorf("%w: %w", ErrFeed, rerr)
		}
	}
}

func readLine(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		frag, isPrefix, err := br.ReadLine()
		if sb.Len() < maxFeedLine {
			sb.Write(frag)
		}
		if err != nil {
			return sb.String(), err
		}
		if !isPrefix {
			return sb.String(), nil
		}
	}
}

var addrColumns = []string{"ip", "address", "addr", "ip_address", "ipaddress", "cidr", "network", "indicator", "dst_ip", "ip_or_cidr"}

func parseCSV(header string, br *bufio.Reader) ([]netip.Prefix, int, error) {
	cr := csv.NewReader(io.MultiReader(strings.NewReader(header+"\n"), br))
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.LazyQuotes = true
	cr.ReuseRecord = true
	h, err := cr.Read()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: header: %w", ErrFeed, err)
	}
	col := -1
	for i, name := range h {
		if slices.Contains(addrColumns, strings.ToLower(strings.TrimSpace(name))) {
			col = i
			break
		}
	}
	if col < 0 {
		return nil, 0, fmt.Errorf("%w: no address column in CSV header", ErrFeed)
	}
	var out []netip.Prefix
	bad := 0
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, bad, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				bad++
				continue
			}
			return out, bad, fmt.Errorf("%w: %w", ErrFeed, err)
		}
		if col >= len(rec) {
			bad++
			continue
		}
		if p, ok := parseAddrOrPrefix(strings.TrimSpace(rec[col])); ok {
			out = append(out, p)
		} else {
			bad++
		}
	}
}

func parseAddrOrPrefix(s string) (netip.Prefix, bool) {
	if s == "" {
		return netip.Prefix{}, false
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, false
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), true
}

// Import parses a feed (see [ParseFeed]) and replaces the entries of the
// feed called name. It returns how many entries were loaded.
func (ti *ThreatIntel) Import(name string, r io.Reader) (int, error) {
	ps, _, err := ParseFeed(r)
	if err != nil {
		return 0, fmt.Errorf("detect: import feed %q: %w", name, err)
	}
	rs := make([]ipRange, len(ps))
	for i, p := range ps {
		rs[i] = prefixRange(p)
	}
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.entries[name] = rs
	ti.rebuild()
	return len(rs), nil
}

// ImportPrefixes replaces the entries of the feed called name with ps
// (already parsed, e.g. by [ParseFeed]) and returns how many there are.
func (ti *ThreatIntel) ImportPrefixes(name string, ps []netip.Prefix) int {
	rs := make([]ipRange, len(ps))
	for i, p := range ps {
		rs[i] = prefixRange(p)
	}
	ti.mu.Lock()
	defer ti.mu.Unlock()
	ti.entries[name] = rs
	ti.rebuild()
	return len(rs)
}

// Remove drops a feed.
func (ti *ThreatIntel) Remove(name string) {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	delete(ti.entries, name)
	ti.rebuild()
}

func less128(ah, al, bh, bl uint64) bool { return ah < bh || (ah == bh && al < bl) }

func (ti *ThreatIntel) rebuild() {
	names := make([]string, 0, len(ti.entries))
	total := 0
	for n, rs := range ti.entries {
		names = append(names, n)
		total += len(rs)
	}
	slices.Sort(names)
	all := make([]ipRange, 0, total)
	for i, n := range names {
		for _, r := range ti.entries[n] {
			r.feed = uint16(min(i, 65535))
			all = append(all, r)
		}
	}
	slices.SortFunc(all, func(a, b ipRange) int {
		switch {
		case less128(a.loHi, a.loLo, b.loHi, b.loLo):
			return -1
		case less128(b.loHi, b.loLo, a.loHi, a.loLo):
			return 1
		}
		return int(a.feed) - int(b.feed)
	})
	merged := all[:0]
	for _, r := range all {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			// overlapping or adjacent: extend (the first feed keeps the credit)
			if !less128(last.hiHi, last.hiLo, r.loHi, r.loLo) {
				if less128(last.hiHi, last.hiLo, r.hiHi, r.hiLo) {
					last.hiHi, last.hiLo = r.hiHi, r.hiLo
				}
				continue
			}
		}
		merged = append(merged, r)
	}
	ti.tab.Store(&intelTable{r: slices.Clip(merged), feeds: names})
}

// Lookup reports whether a is listed and by which feed.
func (ti *ThreatIntel) Lookup(a netip.Addr) (feed string, ok bool) {
	if !a.IsValid() {
		return "", false
	}
	tab := ti.tab.Load()
	h, l := addrU128(a.Unmap()) // IPv4 maps into ::ffff:0:0/96, as in prefixRange
	// first range with lo > a, then step back
	i, _ := slices.BinarySearchFunc(tab.r, [2]uint64{h, l}, func(r ipRange, k [2]uint64) int {
		if less128(k[0], k[1], r.loHi, r.loLo) {
			return 1
		}
		return -1
	})
	if i == 0 {
		return "", false
	}
	r := tab.r[i-1]
	if less128(r.hiHi, r.hiLo, h, l) {
		return "", false
	}
	return tab.feeds[r.feed], true
}

// Len returns the number of merged ranges.
func (ti *ThreatIntel) Len() int { return len(ti.tab.Load().r) }
