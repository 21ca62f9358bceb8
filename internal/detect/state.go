package detect

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"
)

// devState is everything the engine keeps per device. It is fixed-size
// apart from a few capped slices and lazily allocated scan windows, so
// that a device costs well under 2 KiB. Fields are exported for gob
// (snapshots) only.
type devState struct {
	Last  int64 // unix nanos of the latest event
	Born  int64 // unix seconds of the first event
	Risk  float32
	RiskT int64

	Loc  locState
	Use  usageState
	Net  netState
	Auth authState
	Sess sessState
	Fw   fwState
}

func (s *devState) warm(now int64, d Duration) bool { return now-s.Born >= int64(d.D()/time.Second) }

// Duration is a time.Duration that reads and writes JSON as "10m".
type Duration time.Duration

// D returns the duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler (a duration string or seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("duration: want a string like \"10m\" or seconds")
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

func secs(d Duration) int64 { return int64(d.D() / time.Second) }

const (
	fnvOffset = 2166136261
	fnvPrime  = 16777619
)

// fnvAdd folds s and a 0 separator into an FNV-1a hash, without allocating.
func fnvAdd(h uint32, s string) uint32 {
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= fnvPrime
	}
	return h * fnvPrime // xor with 0, then multiply
}

func hash32(parts ...string) uint32 {
	h := uint32(fnvOffset)
	for _, p := range parts {
		h = fnvAdd(h, p)
	}
	return h
}

// hostOf returns the host part of "ip:port" (or the input if it has no port).
func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

func parseIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

const earthKm = 6371.0088

// haversineKm returns the great-circle distance in km.
func haversineKm(lat1, lon1, lat2, lon2 float64) float64 {
	const r = math.Pi / 180
	dLat, dLon := (lat2-lat1)*r, (lon2-lon1)*r
	a := math.Sin(dLat/2)*math.Sin(dLat/2) + math.Cos(lat1*r)*math.Cos(lat2*r)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * earthKm * math.Asin(math.Min(1, math.Sqrt(a)))
}

func round(v float64, places int) float64 {
	p := math.Pow10(places)
	return math.Round(v*p) / p
}

func unixUTC(s int64) string { return time.Unix(s, 0).UTC().Format(time.RFC3339) }
