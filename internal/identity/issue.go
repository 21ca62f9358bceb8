package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// MaxCSRSize bounds the DER of a CSR; larger input is refused unparsed.
const MaxCSRSize = 16 << 10

// maxRSABits bounds the work a CSR signature check can cost.
const maxRSABits = 8192

// ParseCSR parses a DER (or PEM) certificate request for device of tenant
// and validates it: size, signature, key type (ECDSA P-256/P-384, Ed25519,
// RSA 2048-8192 bits) and claimed identity (subject CN empty or the device
// id; URI SANs only garrison://TENANT/devices/DEVICE; DNS SANs only the
// device id; no e-mail or IP SANs). Every failure wraps [ErrBadCSR].
func ParseCSR(data []byte, tenant event.TenantID, device event.DeviceID) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize+1024 {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadCSR, len(data), MaxCSRSize)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q", ErrBadCSR, b.Type)
		}
		data = b.Bytes
	}
	if len(data) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBadCSR, len(data), MaxCSRSize)
	}
	if err := checkIDs(tenant, device); err != nil {
		return nil, err
	}
	if device == "" {
		return nil, fmt.Errorf("%w: device id missing", ErrBadID)
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != string(device) {
		return nil, fmt.Errorf("%w: subject CN %q is not device %q", ErrBadCSR, cn, device)
	}
	want := DeviceURI(tenant, device)
	for _, u := range csr.URIs {
		if u.String() != want {
			return nil, fmt.Errorf("%w: URI SAN %q is not %q", ErrBadCSR, u.String(), want)
		}
	}
	for _, d := range csr.DNSNames {
		if d != string(device) {
			return nil, fmt.Errorf("%w: DNS SAN %q is not device %q", ErrBadCSR, d, device)
		}
	}
	if len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 {
		return nil, fmt.Errorf("%w: e-mail and IP SANs are not allowed", ErrBadCSR)
	}
	return csr, nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s not allowed (P-256, P-384)", ErrBadCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (allowed 2048-%d)", ErrBadCSR, n, maxRSABits)
		}
	default:
		return fmt.Errorf("%w: key type %T not allowed", ErrBadCSR, pub)
	}
	return nil
}

// IssueOptions tune one issuance.
type IssueOptions struct {
	Lifetime time.Duration // 0: Options.CertLifetime; capped by the CA's expiry
	Actor    string        // who asked ("enrol", an operator id...); default "system"
	Reason   string        // enrol, renew, claim...; default "issue"
}

// Issued is a newly issued certificate with its chain.
type Issued struct {
	Cert   *x509.Certificate
	Record store.Certificate
	Chain  []*x509.Certificate // issuing CA, then root
}

// Issue validates csr (see [ParseCSR]) and issues a client certificate for
// device of tenant from the tenant's active issuing CA. The certificate and
// its audit record are stored in one transaction, then identity.cert_issued
// is published. Issue does not consult the registry: enrolment checks the
// device before calling it.
func (s *Service) Issue(ctx context.Context, tenant event.TenantID, device event.DeviceID, csrDER []byte, opt IssueOptions) (Issued, error) {
	s.beginSign()
	csr, err := ParseCSR(csrDER, tenant, device)
	var iss Issued
	if err == nil {
		iss, err = s.sign(ctx, tenant, device, csr.PublicKey, &opt)
	}
	if err != nil {
		s.abortSign()
		return Issued{}, fmt.Errorf("identity: issue %s/%s: %w", tenant, device, err)
	}
	// An enrolment with a factory certificate (EST simpleenroll presenting
	// it) activates a registered device, as a token or a claim does.
	activated, err := s.commitEntry(ctx, &pendingIssue{iss: iss, opt: opt, activate: opt.Reason == "enrol"})
	if err != nil {
		return Issued{}, fmt.Errorf("identity: issue %s/%s: %w", tenant, device, err)
	}
	s.published(ctx, iss, opt)
	if activated {
		s.publishActivated(ctx, tenant, device)
	}
	return iss, nil
}

func (s *Service) persist(ctx context.Context, tx store.Tx, iss Issued, opt IssueOptions) error {
	r := iss.Record
	if err := tx.Certificates().Create(ctx, r); err != nil {
		return err
	}
	return s.audit(ctx, tx, r.Tenant, opt.Actor, "cert.issue", "cert/"+r.Serial,
		map[string]any{"device": r.Device, "issuer": r.Issuer, "not_after": r.NotAfter, "reason": opt.Reason})
}

func (s *Service) published(ctx context.Context, iss Issued, opt IssueOptions) {
	r := iss.Record
	s.log.InfoContext(ctx, "identity: certificate issued", "tenant", r.Tenant, "device", r.Device, "serial", r.Serial, "reason", opt.Reason)
	s.publish(ctx, event.CertIssued, r.Tenant, r.Device, map[string]any{"serial": r.Serial, "reason": opt.Reason})
}

// sign makes the certificate (no store write).
func (s *Service) sign(ctx context.Context, tenant event.TenantID, device event.DeviceID, pub any, opt *IssueOptions) (Issued, error) {
	if opt.Actor == "" {
		opt.Actor = "system"
	}
	if opt.Reason == "" {
		opt.Reason = "issue"
	}
	ca, err := s.issuing(ctx, tenant)
	if err != nil {
		return Issued{}, err
	}
	signer, err := s.signerOf(ca)
	if err != nil {
		return Issued{}, err
	}
	root, err := s.rootCA(ctx)
	if err != nil {
		return Issued{}, err
	}
	serial, err := randSerial()
	if err != nil {
		return Issued{}, err
	}
	life := opt.Lifetime
	if life <= 0 {
		life = s.opt.CertLifetime
	}
	now := s.clk.Now()
	notAfter := now.Add(life)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	u, err := url.Parse(DeviceURI(tenant, device))
	if err != nil {
		return Issued{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: string(device)},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
		CRLDistributionPoints: []string{s.crlURL(tenant, ca.rec.ID)},
		OCSPServer:            []string{s.opt.BaseURL + "/ocsp/" + string(tenant)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, signer)
	if err != nil {
		return Issued{}, fmt.Errorf("sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Issued{}, err
	}
	return Issued{
		Cert:  cert,
		Chain: []*x509.Certificate{ca.cert, root.cert},
		Record: store.Certificate{Tenant: tenant, Serial: serial.Text(16), Device: device, Issuer: ca.rec.ID, DER: der,
			NotBefore: cert.NotBefore, NotAfter: cert.NotAfter},
	}, nil
}

func (s *Service) crlURL(tenant event.TenantID, caID string) string {
	return s.opt.BaseURL + "/crl/" + string(tenant) + "/" + caID + ".crl"
}

// Renew issues a new certificate for the device that current (leaf first)
// identifies, after checking it with [Service.Verify]: it must be valid now,
// trusted and not revoked. The old certificate stays valid until it expires.
func (s *Service) Renew(ctx context.Context, tenant event.TenantID, current []*x509.Certificate, csrDER []byte, opt IssueOptions) (Issued, error) {
	id, err := s.Verify(ctx, tenant, current)
	if err != nil {
		return Issued{}, fmt.Errorf("identity: renew: %w", err)
	}
	if opt.Reason == "" {
		opt.Reason = "renew"
	}
	if opt.Actor == "" {
		opt.Actor = "device:" + string(id.Device)
	}
	return s.Issue(ctx, tenant, id.Device, csrDER, opt)
}

func (s *Service) audit(ctx context.Context, tx store.Tx, tenant event.TenantID, actor, action, target string, details map[string]any) error {
	b, err := json.Marshal(details)
	if err != nil {
		return err
	}
	if actor == "" {
		actor = "system"
	}
	return s.opt.Audit(ctx, tx, audit.Entry{Tenant: tenant, Time: s.clk.Now(), Actor: actor, Action: action, Target: target, Details: b})
}
