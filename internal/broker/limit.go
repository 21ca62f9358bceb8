package broker

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// bucket is a token bucket on an injected time: rate tokens per second up
// to burst. Safe for concurrent use.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, burst int, now time.Time) *bucket {
	return &bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// allow takes one token if available.
func (b *bucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// Connect-rate limits. One token bucket per key: per source address on
// accept, before the TLS handshake costs anything (IPv4 host, IPv6 /64:
// a host holds a whole /64), and per verified device at CONNECT (a device
// reconnecting in a loop). Refusals are reported at most once per
// reportEvery per key, carrying how many were refused since the last
// report, so that a flood cannot turn into an event flood.
const (
	reportEvery = time.Minute
	// sweepEvery bounds how often a full table is scanned for idle keys,
	// so that a flood of new sources does not scan it on every accept.
	sweepEvery = time.Second
	// maxSources and maxDevices bound the tables (under 100 bytes a key).
	maxSources = 1 << 16
	maxDevices = 1 << 17
)

// rateTable is a token bucket per key for at most max keys. A key whose
// bucket has refilled is forgotten (it is no different from a new one)
// once a minute, and when room is needed. When the table is full of keys still in use
// (a flood from more sources than max), a new key is let through
// untracked: the handshake cap still bounds the CPU, and refusing would
// lock out legitimate devices during someone else's attack. A nil table
// allows everything. Safe for concurrent use.
type rateTable[K comparable] struct {
	rate, burst float64
	max         int

	mu    sync.Mutex
	m     map[K]keyBucket
	swept int64 // Unix nanoseconds of the last sweep
}

// keyBucket is held by value in the table: no allocation per key beyond
// the map's own. Times are Unix nanoseconds.
type keyBucket struct {
	tokens   float64
	last     int64
	reported int64 // last report; 0: never
	refused  int32 // refusals since the last report
}

// newRateTable returns a table of rate tokens per second up to burst per
// key, for at most size keys, or nil (no limit) if rate is not positive.
func newRateTable[K comparable](rate float64, burst, size int) *rateTable[K] {
	if rate <= 0 {
		return nil
	}
	return &rateTable[K]{rate: rate, burst: float64(max(burst, 1)), max: size, m: map[K]keyBucket{}}
}

// take takes one token of k. When it is refused, report is the number of
// refusals to report now (this one included), or 0 if a report of k went
// out less than reportEvery ago.
func (t *rateTable[K]) take(k K, at time.Time) (ok bool, report int) {
	if t == nil {
		return true, 0
	}
	now := at.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if now-t.swept >= int64(reportEvery) {
		t.sweep(now) // keep the table to the keys in use, full or not
	}
	e, found := t.m[k]
	if !found {
		if len(t.m) >= t.max && !t.sweep(now) {
			return true, 0
		}
		e = keyBucket{tokens: t.burst, last: now}
	}
	if dt := now - e.last; dt > 0 {
		e.tokens = min(t.burst, e.tokens+float64(dt)/1e9*t.rate)
		e.last = now
	}
	switch {
	case e.tokens >= 1:
		e.tokens--
		ok = true
	case e.reported != 0 && now-e.reported < int64(reportEvery):
		e.refused++
	default:
		report, e.refused, e.reported = int(e.refused)+1, 0, now
	}
	t.m[k] = e
	return ok, report
}

// sweep forgets the keys whose bucket has refilled and whose last report
// is older than reportEvery, at most once per sweepEvery, and tells
// whether there is room for a new key. t.mu is held.
func (t *rateTable[K]) sweep(now int64) bool {
	if now-t.swept < int64(sweepEvery) {
		return false
	}
	t.swept = now
	refill := int64(t.burst / t.rate * 1e9)
	for k, e := range t.m {
		if now-e.last >= refill && now-e.reported >= int64(reportEvery) {
			delete(t.m, k)
		}
	}
	return len(t.m) < t.max
}

// len returns the number of keys tracked.
func (t *rateTable[K]) len() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// sourceKey is the connect-rate key of a remote address: the IPv4 host,
// or the /64 of an IPv6 host. ok is false for a non-TCP address.
func sourceKey(a net.Addr) (k netip.Addr, ok bool) {
	ta, isTCP := a.(*net.TCPAddr)
	if !isTCP {
		return netip.Addr{}, false
	}
	ip := ta.AddrPort().Addr().Unmap().WithZone("")
	if ip.Is6() {
		p, err := ip.Prefix(64)
		if err != nil {
			return netip.Addr{}, false
		}
		return p.Addr(), true
	}
	return ip, ip.IsValid()
}
