package radius

import (
	"context"
	"net/netip"
	"sync"

	"github.com/garrisonhq/garrison/internal/event"
)

// Leases maps the Framed-IP-Address of live data sessions to their devices,
// per tenant (private APNs of different tenants may reuse addresses). The
// accounting server fills it; the flow collector reads it. It is safe for
// concurrent use. Lock order: Server.mu before Leases.mu.
type Leases struct {
	mu sync.RWMutex
	m  map[leaseKey]lease
}

type leaseKey struct {
	tenant event.TenantID
	ip     netip.Addr
}

type lease struct {
	dev  event.DeviceID
	sess sessKey
}

// NewLeases returns an empty map.
func NewLeases() *Leases { return &Leases{m: map[leaseKey]lease{}} }

// DeviceByIP returns the device holding ip in tenant's APN.
func (l *Leases) DeviceByIP(_ context.Context, tenant event.TenantID, ip netip.Addr) (event.DeviceID, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	x, ok := l.m[leaseKey{tenant, ip.Unmap()}]
	return x.dev, ok
}

// Set records that dev holds ip (for tests and for providers that push
// sessions by webhook).
func (l *Leases) Set(tenant event.TenantID, ip netip.Addr, dev event.DeviceID) {
	l.set(tenant, ip, dev, sessKey{})
}

// Len returns the number of live leases.
func (l *Leases) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.m)
}

func (l *Leases) set(tenant event.TenantID, ip netip.Addr, dev event.DeviceID, s sessKey) {
	l.mu.Lock()
	l.m[leaseKey{tenant, ip.Unmap()}] = lease{dev: dev, sess: s}
	l.mu.Unlock()
}

// release forgets ip if it still belongs to session s (a newer session may
// have been given the address meanwhile).
func (l *Leases) release(tenant event.TenantID, ip netip.Addr, s sessKey) {
	if !ip.IsValid() {
		return
	}
	k := leaseKey{tenant, ip.Unmap()}
	l.mu.Lock()
	if x, ok := l.m[k]; ok && x.sess == s {
		delete(l.m, k)
	}
	l.mu.Unlock()
}

// Release forgets ip if dev holds it through [Leases.Set] (a session pushed
// by webhook that stopped); leases of RADIUS sessions are left alone.
func (l *Leases) Release(tenant event.TenantID, ip netip.Addr, dev event.DeviceID) {
	k := leaseKey{tenant, ip.Unmap()}
	l.mu.Lock()
	if x, ok := l.m[k]; ok && x.dev == dev && x.sess == (sessKey{}) {
		delete(l.m, k)
	}
	l.mu.Unlock()
}
