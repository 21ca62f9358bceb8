// Package identity is Garrison's certificate authority and the root of trust
// for every device.
//
// A [Service] keeps a platform root CA (tenant "") and, per tenant, one
// active issuing CA signed by that root; it creates both on first use and
// stores them through [store.CAs] with their private keys sealed by a
// [Sealer] (AES-256-GCM under an scrypt-derived key). Private keys are never
// logged, never returned and never stored in the clear.
//
// It issues short-lived device certificates from CSRs ([Service.Issue],
// [Service.Renew]), checks a presented chain ([Service.Verify], used by the
// broker with [Service.TrustPool]), revokes ([Service.Revoke],
// [Service.RevokeDevice]) and serves revocation status as a DER CRL per
// issuing CA and an RFC 6960 OCSP responder ([Service.Routes]).
//
// Contract:
//   - Every change (CA created, rotated or imported, certificate issued or
//     revoked) is written with its audit record in one store.Update, and the
//     matching event (identity.cert_issued, identity.cert_revoked) is
//     published after the commit.
//   - Bad input (malformed, oversized or weak CSRs, CSRs that claim another
//     device or tenant) returns an error wrapping [ErrBadCSR] and changes
//     nothing.
//   - A tenant sees only its own CAs and certificates: the trust pool of a
//     tenant holds its own issuing and registered CAs, never the platform
//     root, so a certificate of tenant A never verifies for tenant B.
//   - Loaded CAs are cached in memory. A rotation or import made by another
//     process is seen after the trust-pool TTL (one minute) for verification,
//     and on restart for signing.
package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Errors returned by the Service, wrapped with the operation.
var (
	// ErrBadCSR: the CSR is malformed, oversized, badly signed, uses a
	// weak or unsupported key, or claims an identity other than the device's.
	ErrBadCSR = errors.New("bad CSR")
	// ErrBadID: a tenant or device id is not acceptable.
	ErrBadID = errors.New("bad tenant or device id")
	// ErrUntrusted: the chain does not verify against the tenant's trust pool.
	ErrUntrusted = errors.New("certificate not trusted")
	// ErrExpired: the certificate is outside its validity period (also
	// wraps ErrUntrusted).
	ErrExpired = errors.New("certificate expired")
	// ErrRevoked: the certificate (or its CA) is revoked.
	ErrRevoked = errors.New("certificate revoked")
	// ErrUnknownCert: the certificate verifies but the platform has no
	// record of issuing it.
	ErrUnknownCert = errors.New("certificate unknown")
	// ErrNoKey: the CA has no private key here (an imported CA).
	ErrNoKey = errors.New("CA has no private key")
	// ErrBadCA: a CA certificate offered for import is malformed, not a CA,
	// not currently valid, badly self-signed, or the role is unknown. It
	// also matches store.ErrInvalid.
	ErrBadCA = fmt.Errorf("bad CA certificate: %w", store.ErrInvalid)
)

// CA roles stored in [store.CA.Role].
const (
	RoleRoot     = "root"
	RoleIssuing  = "issuing"
	RoleExternal = "external"
	RoleClaim    = "claim"
)

// Publisher sends an event on the bus. The bus package satisfies it.
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// AuditFunc appends one audit record inside tx. The default is
// [audit.Append]; tests or other deployments may wrap it.
type AuditFunc func(ctx context.Context, tx store.Tx, e audit.Entry) error

// Options configure a [Service]. Store and Sealer are required.
type Options struct {
	Store     store.Store
	Sealer    *Sealer
	Audit     AuditFunc    // nil: audit.Append
	Publisher Publisher    // nil: events are not published
	Clock     clock.Clock  // nil: wall clock
	Logger    *slog.Logger // nil: discard
	// BaseURL is the plain-HTTP base for CRL and OCSP URLs put in
	// certificates. Default http://localhost:8080.
	BaseURL string
	// CertLifetime of device certificates. Default 90 days.
	CertLifetime time.Duration
	// CRLInterval is how far ahead a CRL's NextUpdate lies. Default 24h.
	CRLInterval time.Duration
	// OCSPValidity is how far ahead an OCSP response's NextUpdate lies.
	// Default 1h.
	OCSPValidity time.Duration
	// RootLifetime and IssuingLifetime of the CAs. Defaults 20 and 5 years.
	RootLifetime    time.Duration
	IssuingLifetime time.Duration
}

func (o *Options) defaults() error {
	if o.Store == nil || o.Sealer == nil {
		return errors.New("identity: Options.Store and Sealer are required")
	}
	if o.Audit == nil {
		o.Audit = func(ctx context.Context, tx store.Tx, e audit.Entry) error {
			_, err := audit.Append(ctx, tx, e)
			return err
		}
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.BaseURL == "" {
		o.BaseURL = "http://localhost:8080"
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	if o.CertLifetime == 0 {
		o.CertLifetime = 90 * 24 * time.Hour
	}
	if o.CRLInterval == 0 {
		o.CRLInterval = 24 * time.Hour
	}
	if o.OCSPValidity == 0 {
		o.OCSPValidity = time.Hour
	}
	if o.RootLifetime == 0 {
		o.RootLifetime = 20 * 365 * 24 * time.Hour
	}
	if o.IssuingLifetime == 0 {
		o.IssuingLifetime = 5 * 365 * 24 * time.Hour
	}
	if o.CertLifetime < time.Hour || o.CRLInterval < time.Minute || o.OCSPValidity < time.Minute {
		return errors.New("identity: CertLifetime >= 1h, CRLInterval and OCSPValidity >= 1m required")
	}
	return nil
}

// Service is the CA and issuance service. It is safe for concurrent use.
// Construct it with [New]; it touches the store only when first used.
type Service struct {
	opt Options
	// customAudit: Options.Audit was given, so every record goes through
	// it (else the group commit writes records in bulk, see batchLog).
	customAudit bool
	log         *slog.Logger
	clk         clock.Clock

	createMu sync.Mutex // serializes creation of root and issuing CAs

	gcMu sync.Mutex // guards gc (group commit of issued certificates)
	gc   groupCommit
	// signing counts issuances between beginSign and their queueing (see
	// linger); maxLinger bounds the leader's wait for them.
	signing   atomic.Int32
	maxLinger time.Duration

	mu     sync.Mutex
	root   *caEntry
	active map[event.TenantID]*caEntry // active issuing CA per tenant
	byID   map[caKey]*caEntry          // every CA loaded with its signer
	pools  map[event.TenantID]*poolEntry
	// verified remembers client chains that verified (not their
	// revocation status): see verifiedCache.
	verified *verifiedCache
	crls     map[caKey]*crlEntry
}

type caKey struct {
	tenant event.TenantID
	id     string
}

// New returns a Service. It has no side effects.
func New(opt Options) (*Service, error) {
	custom := opt.Audit != nil
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	return &Service{
		opt:         opt,
		customAudit: custom,
		log:         opt.Logger,
		clk:         opt.Clock,
		maxLinger:   maxLinger,
		active:      map[event.TenantID]*caEntry{},
		byID:        map[caKey]*caEntry{},
		pools:       map[event.TenantID]*poolEntry{},
		verified:    newVerifiedCache(verifiedMax),
		crls:        map[caKey]*crlEntry{},
	}, nil
}

// DeviceIdentity is who a verified certificate says it is.
type DeviceIdentity struct {
	Tenant   event.TenantID `json:"tenant"`
	Device   event.DeviceID `json:"device"`
	Serial   string         `json:"serial"` // lower-case hex
	Issuer   string         `json:"issuer"` // CA id
	NotAfter time.Time      `json:"not_after"`
}

var (
	tenantRE = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)
	deviceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

func checkIDs(tenant event.TenantID, device event.DeviceID) error {
	if !tenantRE.MatchString(string(tenant)) {
		return fmt.Errorf("%w: tenant %q", ErrBadID, tenant)
	}
	if device != "" && !deviceRE.MatchString(string(device)) {
		return fmt.Errorf("%w: device %q", ErrBadID, device)
	}
	return nil
}

// DeviceURI returns the URI SAN of a device: garrison://TENANT/devices/DEVICE.
func DeviceURI(tenant event.TenantID, device event.DeviceID) string {
	return "garrison://" + string(tenant) + "/devices/" + string(device)
}

func (s *Service) publish(ctx context.Context, kind event.Kind, tenant event.TenantID, device event.DeviceID, attrs map[string]any) {
	if s.opt.Publisher == nil {
		return
	}
	now := s.clk.Now()
	e := event.Event{ID: event.NewID(now), Tenant: tenant, Device: device, Kind: kind, Time: now, Source: "identity", Attrs: attrs}
	if err := s.opt.Publisher.Publish(ctx, &e); err != nil {
		s.log.WarnContext(ctx, "identity: publish failed", "tenant", tenant, "device", device, "kind", kind, "err", err)
	}
}
