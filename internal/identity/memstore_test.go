package identity

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// memStore is a test double for the concerns identity uses (CAs,
// certificates, settings, audit). Update is serialized and rolls back on
// error. Other concerns are absent (calling them panics).
type memStore struct {
	mu       sync.Mutex
	cas      map[string]store.CA // tenant/id
	certs    map[string]store.Certificate
	settings map[string][]byte
	audit    []store.AuditRecord
	devices  map[string]store.Device
}

func newMemStore() *memStore {
	return &memStore{cas: map[string]store.CA{}, certs: map[string]store.Certificate{}, settings: map[string][]byte{}, devices: map[string]store.Device{}}
}

var _ store.Store = (*memStore)(nil)

func (m *memStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cas, certs, settings, devs, n := maps.Clone(m.cas), maps.Clone(m.certs), maps.Clone(m.settings), maps.Clone(m.devices), len(m.audit)
	if err := fn(memTx{m}); err != nil {
		m.cas, m.certs, m.settings, m.devices, m.audit = cas, certs, settings, devs, m.audit[:n]
		return err
	}
	return nil
}

func (m *memStore) View(ctx context.Context, fn func(store.Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fn(memTx{m})
}

func (m *memStore) Close() error { return nil }

type memTx struct{ m *memStore }

func (t memTx) Tenants() store.Tenants           { panic("not in memStore") }
func (t memTx) Operators() store.Operators       { panic("not in memStore") }
func (t memTx) Tokens() store.Tokens             { panic("not in memStore") }
func (t memTx) Devices() store.Devices           { return memDevices{t.m, nil} }
func (t memTx) Alerts() store.Alerts             { panic("not in memStore") }
func (t memTx) Actions() store.Actions           { panic("not in memStore") }
func (t memTx) Audit() store.AuditLog            { return memAudit(t) }
func (t memTx) Settings() store.Settings         { return memSettings(t) }
func (t memTx) CAs() store.CAs                   { return memCAs(t) }
func (t memTx) Certificates() store.Certificates { return memCerts(t) }
func (t memTx) Incidents() store.Incidents       { panic("not in memStore") }
func (t memTx) Webhooks() store.Webhooks         { panic("not in memStore") }
func (t memTx) Deliveries() store.Deliveries     { panic("not in memStore") }
func (t memTx) Playbooks() store.Playbooks       { panic("not in memStore") }
func (t memTx) Mass() store.Mass                 { panic("not in memStore") }
func (t memTx) Campaigns() store.Campaigns       { panic("not in memStore") }
func (t memTx) Cells() store.Cells               { panic("not in memStore") }
func (t memTx) Commands() store.Commands         { panic("not in memStore") }
func (t memTx) Rules() store.Rules               { panic("not in memStore") }
func (t memTx) Groups() store.Groups             { panic("not in memStore") }
func (t memTx) Passwords() store.DevicePasswords { panic("not in memStore") }
func (t memTx) Leases() store.Leases             { panic("not in memStore") }

type memCAs memTx

func (c memCAs) Put(ctx context.Context, ca store.CA) error {
	ca.CertDER = slices.Clone(ca.CertDER)
	ca.KeyEnc = slices.Clone(ca.KeyEnc)
	c.m.cas[string(ca.Tenant)+"/"+ca.ID] = ca
	return nil
}
func (c memCAs) Get(ctx context.Context, tenant event.TenantID, id string) (store.CA, error) {
	ca, ok := c.m.cas[string(tenant)+"/"+id]
	if !ok {
		return store.CA{}, fmt.Errorf("ca %s: %w", id, store.ErrNotFound)
	}
	return ca, nil
}
func (c memCAs) List(ctx context.Context, tenant event.TenantID) ([]store.CA, error) {
	var out []store.CA
	for _, ca := range c.m.cas {
		if ca.Tenant == tenant {
			out = append(out, ca)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

type memCerts memTx

func (c memCerts) Create(ctx context.Context, x store.Certificate) error {
	k := string(x.Tenant) + "/" + x.Serial
	if _, ok := c.m.certs[k]; ok {
		return store.ErrConflict
	}
	c.m.certs[k] = x
	return nil
}
func (c memCerts) Get(ctx context.Context, tenant event.TenantID, serial string) (store.Certificate, error) {
	x, ok := c.m.certs[string(tenant)+"/"+serial]
	if !ok {
		return x, fmt.Errorf("cert %s: %w", serial, store.ErrNotFound)
	}
	return x, nil
}
func (c memCerts) ByDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID) ([]store.Certificate, error) {
	var out []store.Certificate
	for _, x := range c.m.certs {
		if x.Tenant == tenant && x.Device == device {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NotBefore.After(out[j].NotBefore) })
	return out, nil
}
func (c memCerts) Revoke(ctx context.Context, tenant event.TenantID, serial string, at time.Time, reason int) error {
	k := string(tenant) + "/" + serial
	x, ok := c.m.certs[k]
	if !ok {
		return store.ErrNotFound
	}
	if x.RevokedAt == nil {
		x.RevokedAt, x.RevocationReason = &at, reason
		c.m.certs[k] = x
	}
	return nil
}
func (c memCerts) Revoked(ctx context.Context, tenant event.TenantID, issuer string, now time.Time) ([]store.Certificate, error) {
	var out []store.Certificate
	for _, x := range c.m.certs {
		if x.Tenant == tenant && x.Issuer == issuer && x.RevokedAt != nil && x.NotAfter.After(now) {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Serial < out[j].Serial })
	return out, nil
}

type memSettings memTx

func (s memSettings) Get(ctx context.Context, tenant event.TenantID, key string) ([]byte, error) {
	v, ok := s.m.settings[string(tenant)+"/"+key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return v, nil
}
func (s memSettings) Put(ctx context.Context, tenant event.TenantID, key string, v []byte) error {
	s.m.settings[string(tenant)+"/"+key] = slices.Clone(v)
	return nil
}
func (s memSettings) Delete(ctx context.Context, tenant event.TenantID, key string) error {
	delete(s.m.settings, string(tenant)+"/"+key)
	return nil
}

type memAudit memTx

func (a memAudit) Head(ctx context.Context, tenant event.TenantID) (store.AuditRecord, error) {
	for i := len(a.m.audit) - 1; i >= 0; i-- {
		if a.m.audit[i].Tenant == tenant {
			return a.m.audit[i], nil
		}
	}
	return store.AuditRecord{}, store.ErrNotFound
}
func (a memAudit) Append(ctx context.Context, r store.AuditRecord) error {
	a.m.audit = append(a.m.audit, r)
	return nil
}
func (a memAudit) Range(ctx context.Context, tenant event.TenantID, after int64, limit int) ([]store.AuditRecord, error) {
	var out []store.AuditRecord
	for _, r := range a.m.audit {
		if r.Tenant == tenant && r.Seq > after {
			out = append(out, r)
		}
	}
	return out, nil
}

// memDevices implements Create, Get, Update and List; the rest of
// store.Devices panics.
type memDevices struct {
	m *memStore
	store.Devices
}

func (d memDevices) Create(ctx context.Context, x store.Device) error {
	k := string(x.Tenant) + "/" + string(x.ID)
	if _, ok := d.m.devices[k]; ok {
		return store.ErrConflict
	}
	d.m.devices[k] = x
	return nil
}

func (d memDevices) Update(ctx context.Context, x store.Device) error {
	k := string(x.Tenant) + "/" + string(x.ID)
	if _, ok := d.m.devices[k]; !ok {
		return store.ErrNotFound
	}
	d.m.devices[k] = x
	return nil
}

func (d memDevices) Get(ctx context.Context, tenant event.TenantID, id event.DeviceID) (store.Device, error) {
	x, ok := d.m.devices[string(tenant)+"/"+string(id)]
	if !ok {
		return x, store.ErrNotFound
	}
	return x, nil
}

func (d memDevices) List(ctx context.Context, tenant event.TenantID, f store.DeviceFilter) ([]store.Device, error) {
	var out []store.Device
	for _, x := range d.m.devices {
		if x.Tenant == tenant && (f.Model == "" || x.Model == f.Model) {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
