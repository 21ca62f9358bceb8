package identity

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// ErrAlreadyEnrolled: a claim exchange for a device that already has a
// certificate.
var ErrAlreadyEnrolled = errors.New("device already enrolled")

func claimRevokedKey(fingerprint string) string { return "identity.claim_revoked." + fingerprint }

// Claim certificates. A claim certificate is model-wide: the factory puts
// the same one in every device of a model; its subject CN names the model
// and it chains to a CA the tenant registered with role "claim" (see
// [Service.Import]). A device presents it with a CSR whose subject
// serialNumber is its hardware serial; [Service.ExchangeClaim] then issues
// the device's own identity once, only for a serial already in the registry
// (of that model) with no certificate yet.

// ExchangeClaim exchanges a claim certificate chain (leaf first) for the
// identity of the registered device with the hardware serial named in the
// CSR's subject serialNumber. Every refusal changes nothing.
func (s *Service) ExchangeClaim(ctx context.Context, tenant event.TenantID, claim []*x509.Certificate, csrDER []byte) (Issued, error) {
	fail := func(err error) (Issued, error) {
		return Issued{}, fmt.Errorf("identity: claim exchange %s: %w", tenant, err)
	}
	if err := checkIDs(tenant, ""); err != nil {
		return fail(err)
	}
	if len(claim) == 0 {
		return fail(fmt.Errorf("%w: no claim certificate", ErrUntrusted))
	}
	var cas []store.CA
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		cas, err = tx.CAs().List(ctx, tenant)
		return err
	}); err != nil {
		return fail(err)
	}
	now := s.clk.Now()
	roots := x509.NewCertPool()
	for _, c := range cas {
		if c.Role == RoleClaim && c.Trusted && c.RevokedAt == nil && now.Before(c.NotAfter) {
			if cert, err := x509.ParseCertificate(c.CertDER); err == nil {
				roots.AddCert(cert)
			}
		}
	}
	inter := x509.NewCertPool()
	for _, c := range claim[1:] {
		inter.AddCert(c)
	}
	leaf := claim[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fail(fmt.Errorf("%w: claim certificate: %w", ErrUntrusted, err))
	}
	model := leaf.Subject.CommonName
	fp := CAID(leaf.Raw)
	raw, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrBadCSR, err))
	}
	serial := raw.Subject.SerialNumber
	if serial == "" || model == "" {
		return fail(fmt.Errorf("%w: CSR subject serialNumber (hardware serial) required", ErrBadCSR))
	}
	// Find the pre-registered device of that model with that serial.
	var dev store.Device
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		devs, err := tx.Devices().List(ctx, tenant, store.DeviceFilter{Model: model})
		if err != nil {
			return err
		}
		for _, d := range devs {
			if d.Serial == serial {
				dev = d
				return nil
			}
		}
		return ErrUnknownDevice
	}); err != nil {
		return fail(err)
	}
	csr, err := ParseCSR(csrDER, tenant, dev.ID)
	if err != nil {
		return fail(err)
	}
	opt := IssueOptions{Actor: "claim/" + fp[:16], Reason: "claim"}
	iss, err := s.sign(ctx, tenant, dev.ID, csr.PublicKey, &opt)
	if err != nil {
		return fail(err)
	}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Settings().Get(ctx, tenant, claimRevokedKey(fp)); err == nil {
			return fmt.Errorf("claim certificate: %w", ErrRevoked)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		certs, err := tx.Certificates().ByDevice(ctx, tenant, dev.ID)
		if err != nil {
			return err
		}
		if len(certs) > 0 || (dev.State != "" && dev.State != store.StateRegistered) {
			return fmt.Errorf("%w: %s", ErrAlreadyEnrolled, dev.ID)
		}
		if err := s.audit(ctx, tx, tenant, opt.Actor, "enrol.claim", "device/"+string(dev.ID),
			map[string]any{"claim": fp, "model": model, "serial": serial}); err != nil {
			return err
		}
		// A claim certificate is shared by a whole model: the device stays
		// registered until an operator activates it (unlike a token,
		// which the operator made for it, or a factory certificate of its
		// own).
		return s.persist(ctx, tx, iss, opt)
	})
	if err != nil {
		return fail(err)
	}
	s.published(ctx, iss, opt)
	return iss, nil
}

// RevokeClaim revokes a claim certificate as a whole (by its DER): no
// device can exchange it any more. Devices already enrolled keep their own
// certificates.
func (s *Service) RevokeClaim(ctx context.Context, tenant event.TenantID, claimDER []byte, actor string) error {
	cert, err := x509.ParseCertificate(claimDER)
	if err != nil {
		return fmt.Errorf("identity: revoke claim: %w", err)
	}
	fp := CAID(claimDER)
	b, _ := json.Marshal(map[string]any{"subject": cert.Subject.String(), "revoked_at": s.clk.Now()})
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().Put(ctx, tenant, claimRevokedKey(fp), b); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, actor, "claim.revoke", "claim/"+fp, map[string]any{"subject": cert.Subject.String()})
	})
	if err != nil {
		return fmt.Errorf("identity: revoke claim: %w", err)
	}
	return nil
}
