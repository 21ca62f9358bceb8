package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"

	"github.com/garrisonhq/garrison/internal/event"
)

// Device is one simulated device as the platform's registry must know it.
type Device struct {
	ID         event.DeviceID
	Index      int // 0-based across the whole fleet
	Cohort     string
	Model      string
	Firmware   string // version at t=0
	IMEI       string // 15 digits, valid Luhn
	IMSI       string // 15 digits, MCC-MNC 214-01
	ICCID      string // 19 digits starting 89, valid Luhn
	CertSerial string // hex serial of the device certificate
	IP         netip.Addr
	Home       Point
	GeofenceKm float64 // 0 = no geofence declared
	APN        string
	// Destinations is the cohort's pool of legitimate endpoints, as an
	// operator would declare them (the device uses a subset).
	Destinations []netip.Prefix
	// ListeningPorts are the servers the model runs at t=0.
	ListeningPorts []int
}

// Endpoint is one legitimate destination.
type Endpoint struct {
	Addr  netip.Addr
	Port  int
	Proto int
}

// Digest returns the hex SHA-256 of the deterministic artifact of a signed
// release (model, version): what the catalog holds and devices report.
func Digest(model, version string) string {
	s := sha256.Sum256([]byte("garrison-sim-firmware\x00" + model + "\x00" + version))
	return hex.EncodeToString(s[:])
}

// hash64 derives a stable 64-bit value from parts.
func hash64(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return h.Sum64()
}

// newRand returns a PCG generator seeded from the scenario seed and a label.
func newRand(seed int64, label ...string) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), hash64(label...)))
}

// luhn returns digits followed by their Luhn check digit.
func luhn(digits string) string {
	sum := 0
	double := true
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return digits + strconv.Itoa((10-sum%10)%10)
}

// luhnValid reports whether s ends with a correct Luhn check digit.
func luhnValid(s string) bool {
	return len(s) > 1 && luhn(s[:len(s)-1]) == s
}

func digits(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteByte(byte('0' + r.IntN(10)))
	}
	return b.String()
}

// tac returns the 8-digit type allocation code of a model.
func tac(model string) string {
	return "35" + strconv.FormatUint(10000_0+hash64("tac", model)%900000, 10)
}

// imeiFor returns a valid IMEI for a model and serial.
func imeiFor(model string, serial uint64) string {
	s := strconv.FormatUint(serial%1_000_000, 10)
	return luhn(tac(model) + strings.Repeat("0", 6-len(s)) + s)
}

// deviceIP returns the Framed-IP of the device with fleet index i in
// 10.64.0.0/10 (skipping .0 and .255 host bytes).
func deviceIP(i int) netip.Addr {
	n := uint32(i/254)<<8 | uint32(i%254+1)
	v := uint32(10)<<24 | 64<<16 | n
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// addr4 builds a.b.c.d.
func addr4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

// cohortPool returns the legitimate endpoints of a cohort: destinations+1
// endpoints in 198.51.100.1-199 and 203.0.113.1-199 (the upper part of both
// ranges is reserved for the threat feed).
func cohortPool(seed int64, c *Cohort) []Endpoint {
	r := newRand(seed, "pool", c.Name)
	n := c.Destinations + 1
	seen := map[netip.Addr]bool{}
	ports := []struct{ port, proto int }{{8883, 6}, {443, 6}, {123, 17}, {53, 17}, {443, 6}, {5684, 17}}
	var out []Endpoint
	for len(out) < n {
		var a netip.Addr
		if r.IntN(2) == 0 {
			a = addr4(198, 51, 100, byte(1+r.IntN(199)))
		} else {
			a = addr4(203, 0, 113, byte(1+r.IntN(199)))
		}
		if seen[a] {
			continue
		}
		seen[a] = true
		p := ports[len(out)%len(ports)]
		out = append(out, Endpoint{Addr: a, Port: p.port, Proto: p.proto})
	}
	return out
}

// modelPorts returns the servers a model listens on by default.
func modelPorts(model string) []int {
	m := strings.ToLower(model)
	switch {
	case strings.Contains(m, "gw") || strings.Contains(m, "gateway") || strings.Contains(m, "router"):
		return []int{22}
	case strings.Contains(m, "cam"):
		return []int{80, 554}
	}
	return nil
}

// buildFleet creates every device of the scenario, deterministically.
func buildFleet(sc *Scenario) []*Device {
	var out []*Device
	for ci := range sc.Fleet {
		c := &sc.Fleet[ci]
		pool := cohortPool(sc.Seed, c)
		prefixes := make([]netip.Prefix, len(pool))
		for i, e := range pool {
			prefixes[i] = netip.PrefixFrom(e.Addr, 32)
		}
		for n := 1; n <= c.Count; n++ {
			id := deviceName(c.Name, n)
			r := newRand(sc.Seed, "identity", id)
			idx := len(out)
			d := &Device{
				ID:             event.DeviceID(id),
				Index:          idx,
				Cohort:         c.Name,
				Model:          c.Model,
				Firmware:       c.Firmware,
				IMEI:           imeiFor(c.Model, r.Uint64()),
				IMSI:           "21401" + digits(r, 10),
				ICCID:          luhn("893401" + digits(r, 12)),
				IP:             deviceIP(idx),
				GeofenceKm:     c.Fence(),
				APN:            c.APN,
				Destinations:   prefixes,
				ListeningPorts: modelPorts(c.Model),
			}
			var ser [12]byte
			for i := range ser {
				ser[i] = byte(r.IntN(256))
			}
			ser[0] &= 0x7f
			d.CertSerial = hex.EncodeToString(ser[:])
			// uniform within the disc
			dist := c.Home.RadiusKm * math.Sqrt(r.Float64())
			d.Home = destination(Point{c.Home.Lat, c.Home.Lon}, r.Float64()*2*math.Pi, dist)
			out = append(out, d)
		}
	}
	return out
}
