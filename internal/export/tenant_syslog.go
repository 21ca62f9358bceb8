package export

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// SyslogSettingKey is the tenant setting that holds a tenant's own syslog
// target (JSON [SyslogTarget]).
const SyslogSettingKey = "export.syslog"

// maxCAPEM bounds the CA certificate a tenant may give for its collector.
const maxCAPEM = 64 << 10

// SyslogTarget is a tenant's own syslog collector: its alerts go there, as
// RFC 5424 frames carrying OCSF Detection Findings, besides the platform's
// collector. CAPEM (PEM certificates) is the CA to trust with TLS; without
// it the system roots verify the collector.
type SyslogTarget struct {
	Addr      string    `json:"addr"`
	TLS       bool      `json:"tls,omitempty"`
	CAPEM     string    `json:"ca_pem,omitempty"`
	Actor     string    `json:"actor,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate checks a target: addr is host:port with a port in 1-65535; a CA
// is given only with TLS and holds at least one PEM certificate.
func (t SyslogTarget) Validate() error {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil || host == "" || len(t.Addr) > 255 {
		return fmt.Errorf("addr %q must be host:port", t.Addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("addr %q: port must be 1-65535", t.Addr)
	}
	if t.CAPEM != "" {
		if !t.TLS {
			return errors.New("ca_pem is only used with tls")
		}
		if len(t.CAPEM) > maxCAPEM {
			return fmt.Errorf("ca_pem longer than %d bytes", maxCAPEM)
		}
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(t.CAPEM)) {
			return errors.New("ca_pem holds no PEM certificate")
		}
	}
	return nil
}

func (t SyslogTarget) same(o SyslogTarget) bool {
	return t.Addr == o.Addr && t.TLS == o.TLS && t.CAPEM == o.CAPEM
}

// GetSyslogTarget reads the tenant's target; ok is false when it has none.
func GetSyslogTarget(ctx context.Context, tx store.Tx, tenant event.TenantID) (t SyslogTarget, ok bool, err error) {
	raw, err := tx.Settings().Get(ctx, tenant, SyslogSettingKey)
	if errors.Is(err, store.ErrNotFound) {
		return t, false, nil
	}
	if err != nil {
		return t, false, err
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return t, false, fmt.Errorf("export: tenant %s syslog setting: %w", tenant, err)
	}
	return t, true, nil
}

// PutSyslogTarget validates and stores the tenant's target as actor, with
// its syslog.set audit record in tx (the address and whether TLS and a CA
// are used; not the CA itself).
func PutSyslogTarget(ctx context.Context, tx store.Tx, tenant event.TenantID, t SyslogTarget, actor string, now time.Time) (SyslogTarget, error) {
	if err := t.Validate(); err != nil {
		return t, fmt.Errorf("%w: %w", store.ErrInvalid, err)
	}
	t.Actor, t.UpdatedAt = actor, now.UTC()
	raw, err := json.Marshal(t)
	if err != nil {
		return t, err
	}
	if err := tx.Settings().Put(ctx, tenant, SyslogSettingKey, raw); err != nil {
		return t, err
	}
	return t, audit.Record(ctx, tx, tenant, now, actor, "syslog.set", "syslog:"+string(tenant),
		map[string]any{"addr": t.Addr, "tls": t.TLS, "ca": t.CAPEM != ""})
}

// DeleteSyslogTarget removes the tenant's target (ErrNotFound if none),
// audited as syslog.delete.
func DeleteSyslogTarget(ctx context.Context, tx store.Tx, tenant event.TenantID, actor string, now time.Time) error {
	if err := tx.Settings().Delete(ctx, tenant, SyslogSettingKey); err != nil {
		return err
	}
	return audit.Record(ctx, tx, tenant, now, actor, "syslog.delete", "syslog:"+string(tenant), nil)
}

// TenantSyslogOptions configure [TenantSyslogs].
type TenantSyslogOptions struct {
	Store  store.Store // required
	Clock  clock.Clock
	Logger *slog.Logger
	// AllowPrivate lets targets be loopback, private or link-local
	// addresses (exports.webhook_allow_private); otherwise they are
	// refused when dialled, so a tenant cannot reach the platform's
	// network.
	AllowPrivate bool
	Hostname     string
	Version      string
	DialTimeout  time.Duration
}

// TenantSyslogs sends each alert to its tenant's own syslog target, if the
// tenant set one. The target is read from the store for every alert, so a
// change through the API applies to the next alert on every node; a
// connection is kept per tenant while its target stays the same. It is
// safe for concurrent use.
type TenantSyslogs struct {
	o       TenantSyslogOptions
	mu      sync.Mutex
	senders map[event.TenantID]*tenantSender
}

type tenantSender struct {
	target SyslogTarget
	s      *Syslog
}

// NewTenantSyslogs returns the sender; it dials nothing.
func NewTenantSyslogs(o TenantSyslogOptions) (*TenantSyslogs, error) {
	if o.Store == nil {
		return nil, errors.New("export: tenant syslog: store is required")
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &TenantSyslogs{o: o, senders: map[event.TenantID]*tenantSender{}}, nil
}

// SendAlert writes the alert to its tenant's target; it does nothing for a
// tenant without one.
func (ts *TenantSyslogs) SendAlert(ctx context.Context, a alert.Alert) error {
	var t SyslogTarget
	var ok bool
	err := ts.o.Store.View(ctx, func(tx store.Tx) (err error) {
		t, ok, err = GetSyslogTarget(ctx, tx, a.Tenant)
		return err
	})
	if err != nil {
		return err
	}
	s, err := ts.sender(a.Tenant, t, ok)
	if err != nil || s == nil {
		return err
	}
	if err := s.SendAlert(ctx, a); err != nil {
		return fmt.Errorf("export: tenant %s syslog: %w", a.Tenant, err)
	}
	return nil
}

// sender returns the tenant's sender for target t, replacing (and closing)
// one made for another target; nil when the tenant has none.
func (ts *TenantSyslogs) sender(tenant event.TenantID, t SyslogTarget, ok bool) (*Syslog, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	cur := ts.senders[tenant]
	if cur != nil && ok && cur.target.same(t) {
		return cur.s, nil
	}
	if cur != nil {
		_ = cur.s.Close()
		delete(ts.senders, tenant)
	}
	if !ok {
		return nil, nil
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("export: tenant %s syslog target: %w", tenant, err)
	}
	o := SyslogOptions{Addr: t.Addr, Hostname: ts.o.Hostname, Version: ts.o.Version, DialTimeout: ts.o.DialTimeout,
		Clock: ts.o.Clock, Logger: ts.o.Logger}
	if !ts.o.AllowPrivate {
		o.Control = PublicOnly
	}
	if t.TLS {
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if t.CAPEM != "" {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM([]byte(t.CAPEM))
			o.TLS.RootCAs = pool
		}
	}
	s, err := NewSyslog(o)
	if err != nil {
		return nil, err
	}
	ts.senders[tenant] = &tenantSender{target: t, s: s}
	return s, nil
}

// Close closes every tenant's connection.
func (ts *TenantSyslogs) Close() error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var errs []error
	for k, c := range ts.senders {
		errs = append(errs, c.s.Close())
		delete(ts.senders, k)
	}
	return errors.Join(errs...)
}
