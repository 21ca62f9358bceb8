package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// caEntry is a CA loaded in memory. signer is nil for a CA without a key
// here, or until the key is first needed.
type caEntry struct {
	rec    store.CA
	cert   *x509.Certificate
	signer crypto.Signer
}

type poolEntry struct {
	pool    *x509.CertPool
	cas     map[string]store.CA // trusted anchors by id
	issuers []*caEntry          // every issuing CA of the tenant (for OCSP)
	expires time.Time
	gen     [sha256.Size]byte // poolGen of cas: changes when the anchor set does
}

const poolTTL = time.Minute

// CAID returns the id of a CA certificate: hex SHA-256 of its DER.
func CAID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func sealLabel(tenant event.TenantID, id string) []byte {
	return []byte("garrison-ca:" + string(tenant) + ":" + id)
}

// Start loads the platform root CA, creating it on first start. It fails
// with [ErrWrongPassphrase] if the stored root key does not open under the
// configured passphrase.
func (s *Service) Start(ctx context.Context) error {
	root, err := s.rootCA(ctx)
	if err != nil {
		return err
	}
	if _, err := s.signerOf(root); err != nil {
		return fmt.Errorf("identity: start: root key: %w", err)
	}
	return nil
}

func randSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f // positive
	if b[0] == 0 {
		b[0] = 1 // keep 16 significant bytes
	}
	return new(big.Int).SetBytes(b), nil
}

// newCA makes a CA key and certificate signed by parent (self-signed if
// parent is nil) and seals its key.
func (s *Service) newCA(tenant event.TenantID, parent *caEntry, role string) (*caEntry, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	now := s.clk.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent == nil {
		tmpl.Subject = pkix.Name{Organization: []string{"Garrison"}, CommonName: "Garrison Root CA " + now.UTC().Format("20060102T150405")}
		tmpl.NotAfter = now.Add(s.opt.RootLifetime)
		tmpl.MaxPathLen = 1
	} else {
		tmpl.Subject = pkix.Name{Organization: []string{"Garrison"}, OrganizationalUnit: []string{string(tenant)},
			CommonName: "Garrison issuing CA " + string(tenant) + " " + now.UTC().Format("20060102T150405")}
		tmpl.NotAfter = now.Add(s.opt.IssuingLifetime)
		if tmpl.NotAfter.After(parent.cert.NotAfter) {
			tmpl.NotAfter = parent.cert.NotAfter
		}
		tmpl.MaxPathLenZero = true
		ps, err := s.signerOf(parent)
		if err != nil {
			return nil, err
		}
		signerCert, signerKey = parent.cert, ps
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	id := CAID(der)
	enc, err := s.opt.Sealer.Seal(pk, sealLabel(tenant, id))
	clear(pk)
	if err != nil {
		return nil, err
	}
	return &caEntry{
		rec: store.CA{Tenant: tenant, ID: id, Role: role, CertDER: der, KeyEnc: enc, Active: true, Trusted: true,
			NotAfter: cert.NotAfter, CreatedAt: now},
		cert: cert, signer: key,
	}, nil
}

// signerOf returns the CA's signer, opening its sealed key on first use.
func (s *Service) signerOf(e *caEntry) (crypto.Signer, error) {
	s.mu.Lock()
	sg := e.signer
	s.mu.Unlock()
	if sg != nil {
		return sg, nil
	}
	if len(e.rec.KeyEnc) == 0 {
		return nil, fmt.Errorf("identity: CA %s: %w", e.rec.ID, ErrNoKey)
	}
	pk, err := s.opt.Sealer.Open(e.rec.KeyEnc, sealLabel(e.rec.Tenant, e.rec.ID))
	if err != nil {
		return nil, fmt.Errorf("identity: open key of CA %s: %w", e.rec.ID, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(pk)
	clear(pk)
	if err != nil {
		return nil, fmt.Errorf("identity: parse key of CA %s: %w", e.rec.ID, err)
	}
	sg, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("identity: key of CA %s is not a signer", e.rec.ID)
	}
	type eq interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := sg.Public().(eq); !ok || !pub.Equal(e.cert.PublicKey) {
		return nil, fmt.Errorf("identity: key of CA %s does not match its certificate", e.rec.ID)
	}
	s.mu.Lock()
	e.signer = sg
	s.mu.Unlock()
	return sg, nil
}

func loadEntry(rec store.CA) (*caEntry, error) {
	cert, err := x509.ParseCertificate(rec.CertDER)
	if err != nil {
		return nil, fmt.Errorf("identity: stored CA %s: %w", rec.ID, err)
	}
	return &caEntry{rec: rec, cert: cert}, nil
}

// rootCA returns the platform root, loading or creating it.
func (s *Service) rootCA(ctx context.Context) (*caEntry, error) {
	s.mu.Lock()
	r := s.root
	s.mu.Unlock()
	if r != nil {
		return r, nil
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	r = s.root
	s.mu.Unlock()
	if r != nil {
		return r, nil
	}
	var fresh *caEntry
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		fresh = nil
		cas, err := tx.CAs().List(ctx, "")
		if err != nil {
			return err
		}
		for _, c := range cas {
			if c.Role == RoleRoot && c.Active {
				r, err = loadEntry(c)
				return err
			}
		}
		fresh, err = s.newCA("", nil, RoleRoot)
		if err != nil {
			return err
		}
		if err := tx.CAs().Put(ctx, fresh.rec); err != nil {
			return err
		}
		r = fresh
		// The audit log is per tenant and the root belongs to none: its
		// creation is logged here and named (details.root) in the audit
		// record of every issuing CA it signs.
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("identity: root CA: %w", err)
	}
	if fresh != nil {
		s.log.InfoContext(ctx, "identity: created platform root CA", "ca", r.rec.ID)
	}
	s.mu.Lock()
	s.root = r
	s.byID[caKey{"", r.rec.ID}] = r
	s.mu.Unlock()
	return r, nil
}

// issuing returns the tenant's active issuing CA, loading or creating it.
func (s *Service) issuing(ctx context.Context, tenant event.TenantID) (*caEntry, error) {
	s.mu.Lock()
	e := s.active[tenant]
	s.mu.Unlock()
	if e != nil {
		return e, nil
	}
	root, err := s.rootCA(ctx)
	if err != nil {
		return nil, err
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	e = s.active[tenant]
	s.mu.Unlock()
	if e != nil {
		return e, nil
	}
	var fresh *caEntry
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		fresh = nil
		cas, err := tx.CAs().List(ctx, tenant)
		if err != nil {
			return err
		}
		for _, c := range cas {
			if c.Role == RoleIssuing && c.Active && c.RevokedAt == nil {
				e, err = loadEntry(c)
				return err
			}
		}
		fresh, err = s.newCA(tenant, root, RoleIssuing)
		if err != nil {
			return err
		}
		if err := tx.CAs().Put(ctx, fresh.rec); err != nil {
			return err
		}
		e = fresh
		return s.audit(ctx, tx, tenant, "system", "ca.create", "ca/"+fresh.rec.ID, map[string]any{"role": RoleIssuing, "root": root.rec.ID, "not_after": fresh.rec.NotAfter})
	})
	if err != nil {
		return nil, fmt.Errorf("identity: issuing CA of %s: %w", tenant, err)
	}
	if fresh != nil {
		s.log.InfoContext(ctx, "identity: created issuing CA", "tenant", tenant, "ca", e.rec.ID)
	}
	s.mu.Lock()
	s.active[tenant] = e
	s.byID[caKey{tenant, e.rec.ID}] = e
	delete(s.pools, tenant)
	s.mu.Unlock()
	return e, nil
}

// caByID returns a CA of the tenant (from cache or store).
func (s *Service) caByID(ctx context.Context, tenant event.TenantID, id string) (*caEntry, error) {
	s.mu.Lock()
	e := s.byID[caKey{tenant, id}]
	s.mu.Unlock()
	if e != nil {
		return e, nil
	}
	var rec store.CA
	err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		rec, err = tx.CAs().Get(ctx, tenant, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	e, err = loadEntry(rec)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if old := s.byID[caKey{tenant, id}]; old != nil {
		e = old
	} else {
		s.byID[caKey{tenant, id}] = e
	}
	s.mu.Unlock()
	return e, nil
}

// EnsureCA returns the tenant's active issuing CA (without its key),
// creating it if the tenant has none.
func (s *Service) EnsureCA(ctx context.Context, tenant event.TenantID) (store.CA, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return store.CA{}, err
	}
	e, err := s.issuing(ctx, tenant)
	if err != nil {
		return store.CA{}, err
	}
	return public(e.rec), nil
}

func public(c store.CA) store.CA {
	c.KeyEnc = nil
	return c
}

// Rotate makes a new issuing CA the tenant's active one. The previous CA
// stays trusted (certificates it issued keep verifying) until it expires.
func (s *Service) Rotate(ctx context.Context, tenant event.TenantID, actor string) (store.CA, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return store.CA{}, err
	}
	root, err := s.rootCA(ctx)
	if err != nil {
		return store.CA{}, err
	}
	if _, err := s.issuing(ctx, tenant); err != nil { // make sure one exists, so rotation has something to retire
		return store.CA{}, err
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	fresh, err := s.newCA(tenant, root, RoleIssuing)
	if err != nil {
		return store.CA{}, fmt.Errorf("identity: rotate: %w", err)
	}
	var retired []string
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		retired = retired[:0]
		cas, err := tx.CAs().List(ctx, tenant)
		if err != nil {
			return err
		}
		for _, c := range cas {
			if c.Role == RoleIssuing && c.Active {
				c.Active = false
				if err := tx.CAs().Put(ctx, c); err != nil {
					return err
				}
				retired = append(retired, c.ID)
			}
		}
		if err := tx.CAs().Put(ctx, fresh.rec); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, actor, "ca.rotate", "ca/"+fresh.rec.ID, map[string]any{"retired": retired, "root": root.rec.ID, "not_after": fresh.rec.NotAfter})
	})
	if err != nil {
		return store.CA{}, fmt.Errorf("identity: rotate: %w", err)
	}
	s.mu.Lock()
	for _, id := range retired {
		if e := s.byID[caKey{tenant, id}]; e != nil {
			e.rec.Active = false
		}
	}
	s.active[tenant] = fresh
	s.byID[caKey{tenant, fresh.rec.ID}] = fresh
	delete(s.pools, tenant)
	s.mu.Unlock()
	s.log.InfoContext(ctx, "identity: rotated issuing CA", "tenant", tenant, "ca", fresh.rec.ID)
	return public(fresh.rec), nil
}

// Import registers an external CA of the tenant (for example the factory's
// CA, role "external", or a claim CA, role "claim"). The platform trusts it
// but holds no key for it. certData is PEM or DER.
func (s *Service) Import(ctx context.Context, tenant event.TenantID, certData []byte, role, actor string) (store.CA, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return store.CA{}, err
	}
	if role != RoleExternal && role != RoleClaim {
		return store.CA{}, fmt.Errorf("identity: import: %w: role %q: want %q or %q", ErrBadCA, role, RoleExternal, RoleClaim)
	}
	der := certData
	if b, _ := pem.Decode(certData); b != nil {
		if b.Type != "CERTIFICATE" {
			return store.CA{}, fmt.Errorf("identity: import: %w: PEM block %q: want CERTIFICATE", ErrBadCA, b.Type)
		}
		der = b.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return store.CA{}, fmt.Errorf("identity: import: %w: %w", ErrBadCA, err)
	}
	now := s.clk.Now()
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return store.CA{}, fmt.Errorf("identity: import: %w: certificate is not a CA (basic constraints)", ErrBadCA)
	}
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return store.CA{}, fmt.Errorf("identity: import: %w: CA certificate is not currently valid", ErrBadCA)
	}
	// An intermediate signed by another CA is accepted as a trust anchor;
	// a self-signed certificate must carry a good self-signature.
	if string(cert.RawIssuer) == string(cert.RawSubject) {
		if err := cert.CheckSignatureFrom(cert); err != nil {
			return store.CA{}, fmt.Errorf("identity: import: %w: self-signature: %w", ErrBadCA, err)
		}
	}
	rec := store.CA{Tenant: tenant, ID: CAID(der), Role: role, CertDER: der, Trusted: true, NotAfter: cert.NotAfter, CreatedAt: now}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.CAs().Get(ctx, tenant, rec.ID); err == nil {
			return fmt.Errorf("CA %s already registered: %w", rec.ID, store.ErrConflict)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := tx.CAs().Put(ctx, rec); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, actor, "ca.import", "ca/"+rec.ID, map[string]any{"role": role, "subject": cert.Subject.String(), "not_after": cert.NotAfter})
	})
	if err != nil {
		return store.CA{}, fmt.Errorf("identity: import: %w", err)
	}
	s.mu.Lock()
	delete(s.pools, tenant)
	s.mu.Unlock()
	return rec, nil
}

// SetTrusted trusts or distrusts one of the tenant's CAs (an imported or a
// retired issuing CA). Distrusting the active issuing CA is refused: rotate
// first.
func (s *Service) SetTrusted(ctx context.Context, tenant event.TenantID, id string, trusted bool, actor string) error {
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		c, err := tx.CAs().Get(ctx, tenant, id)
		if err != nil {
			return err
		}
		if c.Active && !trusted {
			return fmt.Errorf("the active issuing CA cannot be distrusted; rotate first: %w", store.ErrConflict)
		}
		c.Trusted = trusted
		if err := tx.CAs().Put(ctx, c); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, actor, "ca.trust", "ca/"+id, map[string]any{"trusted": trusted})
	})
	if err != nil {
		return fmt.Errorf("identity: set trusted: %w", err)
	}
	s.mu.Lock()
	delete(s.pools, tenant)
	if e := s.byID[caKey{tenant, id}]; e != nil {
		e.rec.Trusted = trusted
	}
	s.mu.Unlock()
	return nil
}

// ListCAs returns the tenant's CAs (keys stripped), oldest first. Tenant ""
// lists the platform root.
func (s *Service) ListCAs(ctx context.Context, tenant event.TenantID) ([]store.CA, error) {
	var out []store.CA
	err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		cas, err := tx.CAs().List(ctx, tenant)
		for _, c := range cas {
			out = append(out, public(c))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("identity: list CAs: %w", err)
	}
	return out, nil
}

// Chain returns the tenant's active issuing CA certificate followed by the
// root (what a device needs to build its chain and trust the platform).
func (s *Service) Chain(ctx context.Context, tenant event.TenantID) ([]*x509.Certificate, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return nil, err
	}
	e, err := s.issuing(ctx, tenant)
	if err != nil {
		return nil, err
	}
	root, err := s.rootCA(ctx)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{e.cert, root.cert}, nil
}

// pool returns the tenant's trust anchors for device certificates: its
// trusted, unexpired, unrevoked issuing and external CAs.
func (s *Service) pool(ctx context.Context, tenant event.TenantID) (*poolEntry, error) {
	now := s.clk.Now()
	s.mu.Lock()
	p := s.pools[tenant]
	s.mu.Unlock()
	if p != nil && now.Before(p.expires) {
		return p, nil
	}
	if _, err := s.issuing(ctx, tenant); err != nil {
		return nil, err
	}
	var cas []store.CA
	err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		cas, err = tx.CAs().List(ctx, tenant)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("identity: trust pool: %w", err)
	}
	p = &poolEntry{pool: x509.NewCertPool(), cas: map[string]store.CA{}, expires: now.Add(poolTTL)}
	for _, c := range cas {
		if c.Role == RoleIssuing {
			e, err := s.caByID(ctx, tenant, c.ID)
			if err != nil {
				return nil, fmt.Errorf("identity: trust pool: %w", err)
			}
			p.issuers = append(p.issuers, e)
		}
		if !c.Trusted || c.RevokedAt != nil || now.After(c.NotAfter) || (c.Role != RoleIssuing && c.Role != RoleExternal) {
			continue
		}
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			return nil, fmt.Errorf("identity: trust pool: CA %s: %w", c.ID, err)
		}
		p.pool.AddCert(cert)
		p.cas[c.ID] = c
	}
	ids := make([]string, 0, len(p.cas))
	for id := range p.cas {
		ids = append(ids, id)
	}
	p.gen = poolGen(ids)
	s.mu.Lock()
	s.pools[tenant] = p
	s.mu.Unlock()
	return p, nil
}

// TrustPool returns the CAs a device certificate of the tenant may chain to
// (for tls.Config.ClientCAs). It never contains another tenant's CA.
func (s *Service) TrustPool(ctx context.Context, tenant event.TenantID) (*x509.CertPool, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return nil, err
	}
	p, err := s.pool(ctx, tenant)
	if err != nil {
		return nil, err
	}
	return p.pool, nil
}

// Verify checks a client chain (leaf first) for the tenant: it must chain to
// one of the tenant's trusted CAs at the current time for client auth; a
// certificate of a platform issuing CA must be on record and not revoked,
// and its URI SAN must name this tenant. For a certificate of an external
// (factory) CA the device is its URI SAN if it has ours, else its CN. On
// failure it still returns what it could read from the leaf (for logs and
// events), and an error wrapping ErrUntrusted, ErrExpired, ErrRevoked or
// ErrUnknownCert.
func (s *Service) Verify(ctx context.Context, tenant event.TenantID, chain []*x509.Certificate) (DeviceIdentity, error) {
	if len(chain) == 0 {
		return DeviceIdentity{}, fmt.Errorf("identity: verify: %w: no certificate", ErrUntrusted)
	}
	leaf := chain[0]
	id := DeviceIdentity{Tenant: tenant, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter}
	t, d, hasURI := parseDeviceURI(leaf.URIs)
	if hasURI && t == tenant {
		id.Device = d
	}
	if err := checkIDs(tenant, ""); err != nil {
		return id, err
	}
	p, err := s.pool(ctx, tenant)
	if err != nil {
		return id, err
	}
	anchor, err := s.verifyChain(tenant, p, chain)
	if err != nil {
		return id, fmt.Errorf("identity: verify %s: %w", id.Serial, err)
	}
	id.Issuer = anchor.ID
	switch {
	case hasURI && t != tenant:
		return id, fmt.Errorf("identity: verify: %w: certificate names tenant %q", ErrUntrusted, t)
	case hasURI:
	case anchor.Role == RoleExternal && deviceRE.MatchString(leaf.Subject.CommonName):
		id.Device = event.DeviceID(leaf.Subject.CommonName)
	default:
		return id, fmt.Errorf("identity: verify: %w: no device identity in certificate", ErrUntrusted)
	}
	var rec store.Certificate
	err = s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		rec, err = tx.Certificates().Get(ctx, tenant, id.Serial)
		return err
	})
	switch {
	case err == nil:
		if rec.RevokedAt != nil {
			return id, fmt.Errorf("identity: verify %s: %w", id.Serial, ErrRevoked)
		}
		if rec.Device != id.Device || string(rec.DER) != string(leaf.Raw) {
			return id, fmt.Errorf("identity: verify %s: %w: does not match the issued certificate", id.Serial, ErrUnknownCert)
		}
	case errors.Is(err, store.ErrNotFound):
		if anchor.Role == RoleIssuing {
			return id, fmt.Errorf("identity: verify %s: %w", id.Serial, ErrUnknownCert)
		}
	default:
		return id, fmt.Errorf("identity: verify: %w", err)
	}
	return id, nil
}

// verifyChain verifies chain (leaf first) against the tenant's pool p at
// the current time for client auth, and returns the trust anchor it ends
// at. A leaf that verified before under the same anchor set, within the
// validity of the chain that verified, is not verified again (see
// verifiedCache).
func (s *Service) verifyChain(tenant event.TenantID, p *poolEntry, chain []*x509.Certificate) (store.CA, error) {
	leaf := chain[0]
	now := s.clk.Now()
	k := verifiedKey{tenant: tenant, leaf: sha256.Sum256(leaf.Raw)}
	if id, ok := s.verified.get(k, p.gen, now); ok {
		if c, ok := p.cas[id]; ok {
			return c, nil
		}
	}
	var inter *x509.CertPool
	if len(chain) > 1 {
		inter = x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: p.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
			return store.CA{}, fmt.Errorf("%w: %w: %w", ErrExpired, ErrUntrusted, err)
		}
		return store.CA{}, fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	// The anchor is the last certificate of a verified chain.
	for _, ch := range chains {
		if c, ok := p.cas[CAID(ch[len(ch)-1].Raw)]; ok {
			s.verified.put(k, p.gen, c.ID, ch)
			return c, nil
		}
	}
	return store.CA{}, fmt.Errorf("%w: no tenant CA in chain", ErrUntrusted)
}

// VerifyClient is Verify for a caller that does not know the tenant yet
// (the broker at connect): the tenant is read from the leaf's URI SAN
// (garrison://TENANT/devices/DEVICE). Certificates of external CAs without
// that SAN need [Service.Verify] with the tenant.
func (s *Service) VerifyClient(ctx context.Context, chain []*x509.Certificate) (DeviceIdentity, error) {
	if len(chain) == 0 {
		return DeviceIdentity{}, fmt.Errorf("identity: verify: %w: no certificate", ErrUntrusted)
	}
	t, _, ok := parseDeviceURI(chain[0].URIs)
	if !ok {
		return DeviceIdentity{Serial: chain[0].SerialNumber.Text(16)}, fmt.Errorf("identity: verify: %w: no garrison URI SAN", ErrUntrusted)
	}
	return s.Verify(ctx, t, chain)
}

// parseDeviceURI finds garrison://TENANT/devices/DEVICE among uris.
func parseDeviceURI(uris []*url.URL) (event.TenantID, event.DeviceID, bool) {
	for _, u := range uris {
		if u.Scheme != "garrison" {
			continue
		}
		dev, ok := strings.CutPrefix(u.Path, "/devices/")
		if !ok || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
			return "", "", false
		}
		t, d := event.TenantID(u.Host), event.DeviceID(dev)
		if checkIDs(t, d) != nil {
			return "", "", false
		}
		return t, d, true
	}
	return "", "", false
}
