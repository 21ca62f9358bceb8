package identity

import (
	"crypto/sha256"
	"crypto/x509"
	"slices"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// verifiedMax bounds the cache of verified chains: 65,536 entries of
// about 150 bytes (a fleet's reconnecting devices).
const verifiedMax = 1 << 16

// verifiedCache remembers the client certificates whose chain verified,
// so that a reconnecting device's chain is not built and its signatures
// checked again on every handshake (one ECDSA verification or more, the
// largest part of Verify). An entry is used only
//   - under the same trust-anchor set it was verified against (the pool's
//     generation: a rotation, an import, a distrust, a CA revoked or
//     expired changes it, and the entry is dropped),
//   - within the validity of every certificate of the chain that verified.
//
// Only the chain is remembered: the revocation record, and the device's
// state (the broker's), are read on every handshake. It holds at most max
// entries and evicts an arbitrary one when full.
type verifiedCache struct {
	mu  sync.Mutex
	max int
	m   map[verifiedKey]verifiedEntry
}

type verifiedKey struct {
	tenant event.TenantID
	leaf   [sha256.Size]byte // SHA-256 of the leaf's DER
}

type verifiedEntry struct {
	gen       [sha256.Size]byte // trust pool generation
	anchor    string            // CA id the chain ended at
	notBefore time.Time         // latest NotBefore of the chain
	notAfter  time.Time         // earliest NotAfter of the chain
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{max: max, m: map[verifiedKey]verifiedEntry{}}
}

// get returns the anchor under which leaf verified for tenant, if that
// holds for pool generation gen at now. A stale entry is dropped. A nil
// cache holds nothing.
func (c *verifiedCache) get(k verifiedKey, gen [sha256.Size]byte, now time.Time) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return "", false
	}
	if e.gen != gen || now.Before(e.notBefore) || now.After(e.notAfter) {
		delete(c.m, k)
		return "", false
	}
	return e.anchor, true
}

// put remembers that chain (leaf first, ending at anchor) verified under
// pool generation gen.
func (c *verifiedCache) put(k verifiedKey, gen [sha256.Size]byte, anchor string, chain []*x509.Certificate) {
	if c == nil {
		return
	}
	e := verifiedEntry{gen: gen, anchor: anchor, notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, ct := range chain[1:] {
		if ct.NotBefore.After(e.notBefore) {
			e.notBefore = ct.NotBefore
		}
		if ct.NotAfter.Before(e.notAfter) {
			e.notAfter = ct.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old := range c.m { // map order is random: an arbitrary victim
			delete(c.m, old)
			break
		}
	}
	c.m[k] = e
}

func (c *verifiedCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// poolGen is the generation of a trust pool: a digest of its anchors' ids,
// the same for two pools that trust the same CAs.
func poolGen(ids []string) [sha256.Size]byte {
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	var g [sha256.Size]byte
	h.Sum(g[:0])
	return g
}
