package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// CAService is what the CA, enrolment-token and revocation routes need
// (*identity.Service). Every method writes its own audit record, with the
// actor given, in the transaction of its change.
type CAService interface {
	ListCAs(ctx context.Context, tenant event.TenantID) ([]store.CA, error)
	Rotate(ctx context.Context, tenant event.TenantID, actor string) (store.CA, error)
	Import(ctx context.Context, tenant event.TenantID, certData []byte, role, actor string) (store.CA, error)
	SetTrusted(ctx context.Context, tenant event.TenantID, id string, trusted bool, actor string) error
	CreateToken(ctx context.Context, tenant event.TenantID, spec identity.TokenSpec, actor string) (string, identity.EnrolToken, error)
	RevokeSelected(ctx context.Context, tenant event.TenantID, f store.DeviceFilter, label string, reason int, actor string, dryRun bool, sample int) (identity.Revocation, error)
	RevokeDeviceState(ctx context.Context, tenant event.TenantID, device event.DeviceID, reason int, actor string, dryRun bool) (identity.Revocation, error)
}

var _ CAService = (*identity.Service)(nil)

// identityRoutes are the CA and enrolment-token routes of a tenant.
func (s *Server) identityRoutes(t string) []Route {
	const get, post = http.MethodGet, http.MethodPost
	return []Route{
		op(get, t+"/ca", auth.PermTenantRead, ScopeTenant, http.StatusOK, "List the tenant's CAs (issuing, retired, imported) with fingerprints and validity; never a private key.", (*Server).listCAs),
		op(post, t+"/ca/rotate", auth.PermCAWrite, ScopeTenant, http.StatusCreated, "Rotate the issuing CA; the previous one stays trusted until its certificates expire.", (*Server).rotateCA),
		op(post, t+"/ca/import", auth.PermCAWrite, ScopeTenant, http.StatusCreated, "Import a CA certificate of the tenant's own (factory or claim CA), PEM.", (*Server).importCA),
		op(post, t+"/ca/{id}/distrust", auth.PermCAWrite, ScopeTenant, http.StatusOK,
			"Stop trusting a retired or imported CA, ending a roll-over: certificates it signed no longer verify (handshakes, EST, OCSP answers stay). The active issuing CA cannot be distrusted (409): rotate first.",
			func(s *Server, ctx context.Context, c *call, _ noBody) (CAInfo, error) {
				return s.setCATrust(ctx, c, false)
			}),
		op(post, t+"/ca/{id}/trust", auth.PermCAWrite, ScopeTenant, http.StatusOK, "Trust a CA again.",
			func(s *Server, ctx context.Context, c *call, _ noBody) (CAInfo, error) {
				return s.setCATrust(ctx, c, true)
			}),
		op(post, t+"/enrolment-tokens", auth.PermDevicesWrite, ScopeTenant, http.StatusCreated, "Create an enrolment token for one device or a batch; the secret is returned once.", (*Server).createEnrolToken),
	}
}

// CAInfo is a CA as the API shows it: the certificate and facts about it,
// never a key.
type CAInfo struct {
	ID          string    `json:"id"`
	Role        string    `json:"role"` // issuing, external, claim
	Active      bool      `json:"active"`
	Trusted     bool      `json:"trusted"`
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	Fingerprint string    `json:"sha256_fingerprint"` // colon-separated hex of the DER
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	Expired     bool      `json:"expired"`
	CreatedAt   time.Time `json:"created_at"`
	CertPEM     string    `json:"cert_pem"`
}

func (s *Server) caInfo(c store.CA) (CAInfo, error) {
	cert, err := x509.ParseCertificate(c.CertDER)
	if err != nil {
		return CAInfo{}, fmt.Errorf("api: stored CA %s: %w", c.ID, err)
	}
	sum := sha256.Sum256(c.CertDER)
	hx := strings.ToUpper(hex.EncodeToString(sum[:]))
	var fp strings.Builder
	for i := 0; i < len(hx); i += 2 {
		if i > 0 {
			fp.WriteByte(':')
		}
		fp.WriteString(hx[i : i+2])
	}
	return CAInfo{ID: c.ID, Role: c.Role, Active: c.Active, Trusted: c.Trusted, Subject: cert.Subject.String(),
		Issuer: cert.Issuer.String(), Fingerprint: fp.String(), NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(),
		Expired: s.opt.Clock.Now().After(cert.NotAfter), CreatedAt: c.CreatedAt.UTC(),
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.CertDER}))}, nil
}

func (s *Server) needCA() error {
	if s.opt.Identity == nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the certificate authority is not running on this server")
	}
	return nil
}

func (s *Server) listCAs(ctx context.Context, c *call, _ noBody) ([]CAInfo, error) {
	if err := s.needCA(); err != nil {
		return nil, err
	}
	cas, err := s.opt.Identity.ListCAs(ctx, c.tenant)
	if err != nil {
		return nil, identityError(err)
	}
	out := make([]CAInfo, 0, len(cas))
	for _, ca := range cas {
		info, err := s.caInfo(ca)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

func (s *Server) rotateCA(ctx context.Context, c *call, _ noBody) (CAInfo, error) {
	if err := s.needCA(); err != nil {
		return CAInfo{}, err
	}
	ca, err := s.opt.Identity.Rotate(ctx, c.tenant, c.p.Actor())
	if err != nil {
		return CAInfo{}, identityError(err)
	}
	return s.caInfo(ca)
}

// setCATrust sets whether the tenant trusts CA {id} and returns it.
func (s *Server) setCATrust(ctx context.Context, c *call, trusted bool) (CAInfo, error) {
	if err := s.needCA(); err != nil {
		return CAInfo{}, err
	}
	id := c.r.PathValue("id")
	if err := s.opt.Identity.SetTrusted(ctx, c.tenant, id, trusted, c.p.Actor()); err != nil {
		return CAInfo{}, identityError(err)
	}
	cas, err := s.opt.Identity.ListCAs(ctx, c.tenant)
	if err != nil {
		return CAInfo{}, identityError(err)
	}
	for _, ca := range cas {
		if ca.ID == id {
			return s.caInfo(ca)
		}
	}
	return CAInfo{}, errorf(http.StatusNotFound, CodeNotFound, "not found")
}

// ImportCARequest imports a CA certificate of the tenant. Role is
// "external" (default: devices with factory certificates signed by it are
// trusted) or "claim" (its claim certificates may be exchanged once for a
// device identity). A private key in PEM is refused.
type ImportCARequest struct {
	PEM  string `json:"pem"`
	Role string `json:"role,omitempty"`
}

func (s *Server) importCA(ctx context.Context, c *call, req ImportCARequest) (CAInfo, error) {
	if err := s.needCA(); err != nil {
		return CAInfo{}, err
	}
	if req.Role == "" {
		req.Role = identity.RoleExternal
	}
	data := []byte(strings.TrimSpace(req.PEM))
	b, rest := pem.Decode(data)
	switch {
	case b == nil:
		return CAInfo{}, errorf(http.StatusBadRequest, CodeInvalid, "pem must hold one PEM CERTIFICATE block")
	case b.Type != "CERTIFICATE":
		return CAInfo{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("pem holds a %q block; only a CERTIFICATE is accepted (never send a private key)", b.Type))
	case len(strings.TrimSpace(string(rest))) > 0:
		return CAInfo{}, errorf(http.StatusBadRequest, CodeInvalid, "pem must hold exactly one certificate; import them one at a time")
	}
	ca, err := s.opt.Identity.Import(ctx, c.tenant, data, req.Role, c.p.Actor())
	if err != nil {
		return CAInfo{}, identityError(err)
	}
	return s.caInfo(ca)
}

// CreateEnrolTokenRequest asks for an enrolment token: for one registered
// device (Device, Count 1), or for a batch of Count devices, optionally
// only of Models. TTL is a Go duration, default 24h, at most 8760h.
type CreateEnrolTokenRequest struct {
	Device string   `json:"device,omitempty"`
	Models []string `json:"models,omitempty"`
	Count  int      `json:"count,omitempty"`
	TTL    string   `json:"ttl,omitempty"`
}

// EnrolTokenInfo is an enrolment token as stored, without its hash.
type EnrolTokenInfo struct {
	ID        string    `json:"id"`
	Device    string    `json:"device,omitempty"`
	Models    []string  `json:"models,omitempty"`
	Count     int       `json:"count"`
	Remaining int       `json:"remaining"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CreatedEnrolToken is returned once: Secret is never shown again. The
// device presents it with its CSR (EST basic auth: device id and secret).
type CreatedEnrolToken struct {
	Token  EnrolTokenInfo `json:"token"`
	Secret string         `json:"secret"`
}

func (s *Server) createEnrolToken(ctx context.Context, c *call, req CreateEnrolTokenRequest) (CreatedEnrolToken, error) {
	if err := s.needCA(); err != nil {
		return CreatedEnrolToken{}, err
	}
	spec := identity.TokenSpec{Device: event.DeviceID(req.Device), Models: req.Models, Count: req.Count}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Minute || d > 365*24*time.Hour {
			return CreatedEnrolToken{}, errorf(http.StatusBadRequest, CodeInvalid, "ttl must be a duration between 1m and 8760h")
		}
		spec.TTL = d
	}
	if req.Device != "" && len(req.Models) > 0 {
		return CreatedEnrolToken{}, errorf(http.StatusBadRequest, CodeInvalid, "a token is for one device or for a batch (count, models), not both")
	}
	secret, tok, err := s.opt.Identity.CreateToken(ctx, c.tenant, spec, c.p.Actor())
	if err != nil {
		return CreatedEnrolToken{}, identityError(err)
	}
	return CreatedEnrolToken{Secret: secret, Token: EnrolTokenInfo{ID: tok.ID, Device: string(tok.Device), Models: tok.Models,
		Count: tok.Count, Remaining: tok.Remaining, CreatedBy: tok.CreatedBy, CreatedAt: tok.CreatedAt.UTC(), ExpiresAt: tok.ExpiresAt.UTC()}}, nil
}

// identityError gives the identity and registry packages' input errors a
// clear public message (they name only the caller's own tenant's data);
// anything else goes through the generic mapping.
func identityError(err error) error {
	var se *registry.SelectorError
	switch {
	case errors.As(err, &se):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: se.Error(), Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, registry.ErrTransition):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: publicMessage(err, "transition not allowed"), Err: err}
	case errors.Is(err, identity.ErrBadID), errors.Is(err, identity.ErrBadCA), errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: publicMessage(err, "invalid input"), Err: err}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: publicMessage(err, "conflicts with current state"), Err: err}
	}
	return err
}

// publicMessage is the part of err's text after the package prefixes
// ("registry ...: ", "identity: ...: "), starting at the sentinel's own
// words when present, bounded in length.
func publicMessage(err error, fallback string) string {
	msg := err.Error()
	for _, p := range []string{"registry: ", "identity: "} {
		if i := strings.LastIndex(msg, p); i >= 0 {
			msg = msg[i+len(p):]
		}
	}
	if msg == "" {
		msg = fallback
	}
	if len(msg) > 300 {
		msg = msg[:300]
	}
	return msg
}
