package detect

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/garrisonhq/garrison/internal/event"
)

// Point is a WGS84 position in degrees.
type Point struct {
	Lat, Lon float64
}

// Fence is a declared circular geofence.
type Fence struct {
	Center   Point
	RadiusKm float64
}

// Profile is what detection knows about a device beyond its events: its
// registry record, SIM binding, declared geofence and allowed destinations.
type Profile struct {
	Tenant event.TenantID
	ID     event.DeviceID
	Model  string
	Cohort string   // group name; baselines are compared within it
	Groups []string // every group of the device (rules see them)

	Firmware string            // the registry's firmware version (rules see it)
	Tags     map[string]string // the registry's tags (rules see them); not modified

	IMEI, IMSI, ICCID string // the registry's SIM binding

	Home     *Point
	Geofence *Fence // nil if none declared

	Destinations []netip.Prefix // declared allowlist of the device's group, may be empty

	// State is the registry lifecycle state ("active", "revoked", ...).
	// Empty means unknown. A connect while State is "revoked" raises
	// identity.revoked_cert_use.
	State string
}

// Directory answers who a device is. Implementations must be safe for
// concurrent use; a missing device returns ok=false.
type Directory interface {
	Device(t event.TenantID, id event.DeviceID) (Profile, bool)
	ByIMSI(t event.TenantID, imsi string) (Profile, bool)
}

// Catalog is the signed firmware catalog. Implementations must be safe for
// concurrent use.
type Catalog interface {
	// Release returns the version of the signed release of model with that
	// digest; ok=false means no signed release has that digest.
	Release(t event.TenantID, model, digest string) (version string, ok bool)
	// MinVersion returns the lowest version allowed for model ("" = none).
	MinVersion(t event.TenantID, model string) string
}

type devKey struct {
	t event.TenantID
	d event.DeviceID
}

// MemDirectory is an in-memory [Directory], safe for concurrent use.
type MemDirectory struct {
	mu     sync.RWMutex
	byID   map[devKey]Profile
	byIMSI map[string]devKey // tenant + "\x00" + imsi
}

// NewMemDirectory returns an empty directory.
func NewMemDirectory() *MemDirectory {
	return &MemDirectory{byID: map[devKey]Profile{}, byIMSI: map[string]devKey{}}
}

// Put adds or replaces a profile.
func (m *MemDirectory) Put(p Profile) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := devKey{p.Tenant, p.ID}
	if old, ok := m.byID[k]; ok && old.IMSI != "" {
		delete(m.byIMSI, string(old.Tenant)+"\x00"+old.IMSI)
	}
	m.byID[k] = p
	if p.IMSI != "" {
		m.byIMSI[string(p.Tenant)+"\x00"+p.IMSI] = k
	}
}

// Device implements [Directory].
func (m *MemDirectory) Device(t event.TenantID, id event.DeviceID) (Profile, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	p, ok := m.byID[devKey{t, id}]
	return p, ok
}

// ByIMSI implements [Directory].
func (m *MemDirectory) ByIMSI(t event.TenantID, imsi string) (Profile, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	k, ok := m.byIMSI[string(t)+"\x00"+imsi]
	if !ok {
		return Profile{}, false
	}
	p, ok := m.byID[k]
	return p, ok
}

// MemCatalog is an in-memory [Catalog], safe for concurrent use.
type MemCatalog struct {
	mu       sync.RWMutex
	releases map[string]string // tenant \x00 model \x00 digest -> version
	min      map[string]string // tenant \x00 model -> version
}

// NewMemCatalog returns an empty catalog.
func NewMemCatalog() *MemCatalog {
	return &MemCatalog{releases: map[string]string{}, min: map[string]string{}}
}

// Put records a signed release.
func (m *MemCatalog) Put(t event.TenantID, model, version, digest string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releases[string(t)+"\x00"+model+"\x00"+strings.ToLower(digest)] = version
}

// SetMinVersion sets the model's minimum allowed version ("" clears it).
func (m *MemCatalog) SetMinVersion(t event.TenantID, model, version string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.min[string(t)+"\x00"+model] = version
}

// Release implements [Catalog].
func (m *MemCatalog) Release(t event.TenantID, model, digest string) (string, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v, ok := m.releases[string(t)+"\x00"+model+"\x00"+strings.ToLower(digest)]
	return v, ok
}

// MinVersion implements [Catalog].
func (m *MemCatalog) MinVersion(t event.TenantID, model string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.min[string(t)+"\x00"+model]
}

var (
	_ Directory = (*MemDirectory)(nil)
	_ Catalog   = (*MemCatalog)(nil)
)

// CompareVersions compares two dotted versions numerically (semver core,
// optional leading "v"; a pre-release suffix sorts before the release).
// It returns -1, 0 or +1.
func CompareVersions(a, b string) int {
	a, b = strings.TrimPrefix(a, "v"), strings.TrimPrefix(b, "v")
	ac, apre, _ := strings.Cut(a, "-")
	bc, bpre, _ := strings.Cut(b, "-")
	ap, bp := strings.Split(ac, "."), strings.Split(bc, ".")
	for i := 0; i < len(ap) || i < len(bp); i++ {
		var x, y int64
		if i < len(ap) {
			x, _ = strconv.ParseInt(strings.SplitN(ap[i], "+", 2)[0], 10, 64)
		}
		if i < len(bp) {
			y, _ = strconv.ParseInt(strings.SplitN(bp[i], "+", 2)[0], 10, 64)
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case apre == bpre:
		return 0
	case apre == "":
		return 1
	case bpre == "":
		return -1
	case apre < bpre:
		return -1
	}
	return 1
}
