package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// RFC 5280 CRLReason codes accepted by Revoke.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonPrivilegeWithdrawn   = 9
)

// crlCacheTTL bounds how long a generated CRL is served before it is made
// again (so a revocation made by another process shows up).
const crlCacheTTL = time.Minute

type crlEntry struct {
	der     []byte
	made    time.Time
	expires time.Time
}

func checkReason(r int) error {
	if r < 0 || r > 10 || r == 7 || r == 8 {
		return fmt.Errorf("identity: revocation reason %d not allowed (RFC 5280 reasons 0-6, 9, 10): %w", r, store.ErrInvalid)
	}
	return nil
}

// Revoke revokes one certificate of the tenant (serial in hex). Revoking a
// revoked certificate changes nothing and returns nil. The CRL of its
// issuer is regenerated on next request, OCSP answers revoked at once, and
// identity.cert_revoked is published.
func (s *Service) Revoke(ctx context.Context, tenant event.TenantID, serial string, reason int, actor string) error {
	if err := checkReason(reason); err != nil {
		return err
	}
	serial = strings.ToLower(strings.TrimLeft(serial, "0"))
	var done []store.Certificate
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		done = done[:0]
		c, err := tx.Certificates().Get(ctx, tenant, serial)
		if err != nil {
			return err
		}
		if c.RevokedAt != nil {
			return nil
		}
		done, err = s.revokeIn(ctx, tx, []store.Certificate{c}, reason, actor)
		return err
	})
	if err != nil {
		return fmt.Errorf("identity: revoke %s/%s: %w", tenant, serial, err)
	}
	s.revoked(ctx, done, reason)
	return nil
}

// RevokeDevice revokes every unrevoked certificate of a device and returns
// how many it revoked.
func (s *Service) RevokeDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID, reason int, actor string) (int, error) {
	if err := checkReason(reason); err != nil {
		return 0, err
	}
	var done []store.Certificate
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		done = done[:0]
		certs, err := tx.Certificates().ByDevice(ctx, tenant, device)
		if err != nil {
			return err
		}
		var live []store.Certificate
		for _, c := range certs {
			if c.RevokedAt == nil {
				live = append(live, c)
			}
		}
		done, err = s.revokeIn(ctx, tx, live, reason, actor)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("identity: revoke device %s/%s: %w", tenant, device, err)
	}
	s.revoked(ctx, done, reason)
	return len(done), nil
}

func (s *Service) revokeIn(ctx context.Context, tx store.Tx, certs []store.Certificate, reason int, actor string) ([]store.Certificate, error) {
	now := s.clk.Now()
	for i, c := range certs {
		if err := tx.Certificates().Revoke(ctx, c.Tenant, c.Serial, now, reason); err != nil {
			return nil, err
		}
		if err := s.audit(ctx, tx, c.Tenant, actor, "cert.revoke", "cert/"+c.Serial,
			map[string]any{"device": c.Device, "issuer": c.Issuer, "reason": reason}); err != nil {
			return nil, err
		}
		certs[i].RevokedAt = &now
		certs[i].RevocationReason = reason
	}
	return certs, nil
}

func (s *Service) revoked(ctx context.Context, certs []store.Certificate, reason int) {
	for _, c := range certs {
		s.mu.Lock()
		delete(s.crls, caKey{c.Tenant, c.Issuer})
		s.mu.Unlock()
		s.log.InfoContext(ctx, "identity: certificate revoked", "tenant", c.Tenant, "device", c.Device, "serial", c.Serial, "reason", reason)
		s.publish(ctx, event.CertRevoked, c.Tenant, c.Device, map[string]any{"serial": c.Serial, "reason": reasonName(reason)})
	}
}

// CertificatesRevoked tells the service that certificates of the tenant
// were revoked in the store by another component (a mass revocation): the
// tenant's cached CRLs are dropped, so the next request regenerates them
// with the new entries (OCSP reads the store and needs nothing).
func (s *Service) CertificatesRevoked(tenant event.TenantID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.crls {
		if k.tenant == tenant {
			delete(s.crls, k)
		}
	}
}

func reasonName(r int) string {
	switch r {
	case ReasonKeyCompromise:
		return "key_compromise"
	case ReasonCACompromise:
		return "ca_compromise"
	case ReasonAffiliationChanged:
		return "affiliation_changed"
	case ReasonSuperseded:
		return "superseded"
	case ReasonCessationOfOperation:
		return "cessation_of_operation"
	case ReasonCertificateHold:
		return "certificate_hold"
	case ReasonPrivilegeWithdrawn:
		return "privilege_withdrawn"
	}
	return "unspecified"
}

// CRL returns the current DER CRL of one of the tenant's issuing CAs,
// signed by it, with NextUpdate = now + Options.CRLInterval and a CRL
// number that increases with every generation (kept in the tenant's
// settings, so it survives restarts).
func (s *Service) CRL(ctx context.Context, tenant event.TenantID, caID string) ([]byte, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return nil, err
	}
	now := s.clk.Now()
	k := caKey{tenant, caID}
	s.mu.Lock()
	c := s.crls[k]
	s.mu.Unlock()
	if c != nil && now.Before(c.expires) && !now.Before(c.made) {
		return c.der, nil
	}
	ca, err := s.caByID(ctx, tenant, caID)
	if err != nil {
		return nil, fmt.Errorf("identity: CRL %s/%s: %w", tenant, caID, err)
	}
	if ca.rec.Role != RoleIssuing {
		return nil, fmt.Errorf("identity: CRL %s/%s: not an issuing CA: %w", tenant, caID, store.ErrNotFound)
	}
	signer, err := s.signerOf(ca)
	if err != nil {
		return nil, err
	}
	var revoked []store.Certificate
	var number int64
	key := "identity.crl_number." + caID
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		var err error
		revoked, err = tx.Certificates().Revoked(ctx, tenant, caID, now)
		if err != nil {
			return err
		}
		number = 0
		b, err := tx.Settings().Get(ctx, tenant, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(b, &number); err != nil {
				return fmt.Errorf("CRL number setting: %w", err)
			}
		}
		number++
		b, _ = json.Marshal(number)
		return tx.Settings().Put(ctx, tenant, key, b)
	})
	if err != nil {
		return nil, fmt.Errorf("identity: CRL %s/%s: %w", tenant, caID, err)
	}
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, r := range revoked {
		sn, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("identity: CRL: stored serial %q is not hex", r.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: r.RevokedAt.UTC(), ReasonCode: r.RevocationReason})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                now,
		NextUpdate:                now.Add(s.opt.CRLInterval),
		RevokedCertificateEntries: entries,
	}, ca.cert, signer)
	if err != nil {
		return nil, fmt.Errorf("identity: CRL %s/%s: %w", tenant, caID, err)
	}
	ttl := min(crlCacheTTL, s.opt.CRLInterval/2)
	s.mu.Lock()
	s.crls[k] = &crlEntry{der: der, made: now, expires: now.Add(ttl)}
	s.mu.Unlock()
	return der, nil
}

// CRLHandler serves GET /crl/{tenant}/{ca}.crl as application/pkix-crl.
// It reads the path values "tenant" and "file" set by the mux pattern
// registered in [Service.Routes].
func (s *Service) CRLHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := event.TenantID(r.PathValue("tenant"))
		caID, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
		if !ok || len(caID) != 64 || checkIDs(tenant, "") != nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		der, err := s.CRL(r.Context(), tenant, caID)
		if errors.Is(err, store.ErrNotFound) {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if err != nil {
			s.log.ErrorContext(r.Context(), "identity: CRL", "tenant", tenant, "err", err)
			http.Error(w, "CRL unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write(der)
	})
}

// Routes registers the plain-HTTP revocation endpoints on mux:
//
//	GET  /crl/{tenant}/{ca-id}.crl   DER CRL
//	POST /ocsp/{tenant}              OCSP (RFC 6960), body application/ocsp-request
//	GET  /ocsp/{tenant}/{request}    OCSP, base64 request in the path
func (s *Service) Routes(mux *http.ServeMux) {
	mux.Handle("GET /crl/{tenant}/{file}", s.CRLHandler())
	mux.Handle("POST /ocsp/{tenant}", s.OCSPHandler())
	mux.Handle("GET /ocsp/{tenant}/{req...}", s.OCSPHandler())
}

// RevokeDevices revokes every unrevoked certificate of the listed devices
// (a batch chosen by a registry selector) in one transaction, or with
// dryRun only returns what it would revoke. It returns the certificates
// revoked (or to be revoked).
func (s *Service) RevokeDevices(ctx context.Context, tenant event.TenantID, devices []event.DeviceID, reason int, actor string, dryRun bool) ([]store.Certificate, error) {
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	var done []store.Certificate
	collect := func(tx store.Tx) ([]store.Certificate, error) {
		var live []store.Certificate
		for _, d := range devices {
			certs, err := tx.Certificates().ByDevice(ctx, tenant, d)
			if err != nil {
				return nil, err
			}
			for _, c := range certs {
				if c.RevokedAt == nil {
					live = append(live, c)
				}
			}
		}
		return live, nil
	}
	var err error
	if dryRun {
		err = s.opt.Store.View(ctx, func(tx store.Tx) error {
			done, err = collect(tx)
			return err
		})
	} else {
		err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
			live, err := collect(tx)
			if err != nil {
				return err
			}
			done, err = s.revokeIn(ctx, tx, live, reason, actor)
			return err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("identity: revoke devices %s: %w", tenant, err)
	}
	if !dryRun {
		s.revoked(ctx, done, reason)
	}
	return done, nil
}
