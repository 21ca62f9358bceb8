package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/crypto/ocsp"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// MaxOCSPRequest bounds an OCSP request body.
const MaxOCSPRequest = 4 << 10

// ErrBadOCSPRequest: the OCSP request could not be parsed.
var ErrBadOCSPRequest = errors.New("malformed OCSP request")

// OCSP answers one DER OCSP request for the tenant. It always returns a DER
// response to send (an error status for malformed requests or a CA that is
// not the tenant's); the error, if any, says why for the log. Responses are
// signed by the issuing CA that issued the certificate, with NextUpdate =
// now + Options.OCSPValidity; status is good, revoked (with time and reason)
// or unknown (a serial the CA did not issue).
func (s *Service) OCSP(ctx context.Context, tenant event.TenantID, reqDER []byte) ([]byte, error) {
	req, err := ocsp.ParseRequest(reqDER)
	if err != nil || req.SerialNumber == nil {
		return ocsp.MalformedRequestErrorResponse, fmt.Errorf("%w: %v", ErrBadOCSPRequest, err)
	}
	if checkIDs(tenant, "") != nil {
		return ocsp.UnauthorizedErrorResponse, fmt.Errorf("identity: OCSP: %w", ErrBadID)
	}
	p, err := s.pool(ctx, tenant)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, err
	}
	var ca *caEntry
	for _, e := range p.issuers {
		if matchIssuer(req, e.cert) {
			ca = e
			break
		}
	}
	if ca == nil {
		return ocsp.UnauthorizedErrorResponse, fmt.Errorf("identity: OCSP %s: issuer is not a CA of this tenant", tenant)
	}
	signer, err := s.signerOf(ca)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, err
	}
	serial := req.SerialNumber.Text(16)
	var rec store.Certificate
	err = s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		rec, err = tx.Certificates().Get(ctx, tenant, serial)
		return err
	})
	now := s.clk.Now()
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber,
		ThisUpdate:   now,
		NextUpdate:   now.Add(s.opt.OCSPValidity),
		IssuerHash:   req.HashAlgorithm,
	}
	switch {
	case errors.Is(err, store.ErrNotFound) || (err == nil && rec.Issuer != ca.rec.ID):
		tmpl.Status = ocsp.Unknown
	case err != nil:
		return ocsp.InternalErrorErrorResponse, err
	case rec.RevokedAt != nil:
		tmpl.Status = ocsp.Revoked
		tmpl.RevokedAt = rec.RevokedAt.UTC()
		tmpl.RevocationReason = rec.RevocationReason
	default:
		tmpl.Status = ocsp.Good
	}
	der, err := ocsp.CreateResponse(ca.cert, ca.cert, tmpl, signer)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, fmt.Errorf("identity: OCSP sign: %w", err)
	}
	return der, nil
}

// matchIssuer reports whether the request's CertID names ca.
func matchIssuer(req *ocsp.Request, ca *x509.Certificate) bool {
	h := req.HashAlgorithm
	if !h.Available() || (h != crypto.SHA1 && h != crypto.SHA256 && h != crypto.SHA384 && h != crypto.SHA512) {
		return false
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(ca.RawSubjectPublicKeyInfo, &spki); err != nil {
		return false
	}
	kh := h.New()
	kh.Write(spki.PublicKey.RightAlign())
	nh := h.New()
	nh.Write(ca.RawSubject)
	return bytes.Equal(kh.Sum(nil), req.IssuerKeyHash) && bytes.Equal(nh.Sum(nil), req.IssuerNameHash)
}

// OCSPHandler serves RFC 6960 requests: POST with an
// application/ocsp-request body, or GET with the base64 request as the
// path value "req" (see [Service.Routes]).
func (s *Service) OCSPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := event.TenantID(r.PathValue("tenant"))
		var reqDER []byte
		switch r.Method {
		case http.MethodPost:
			b, err := io.ReadAll(io.LimitReader(r.Body, MaxOCSPRequest+1))
			if err != nil || len(b) > MaxOCSPRequest {
				http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
				return
			}
			reqDER = b
		case http.MethodGet:
			raw := r.PathValue("req")
			if un, err := url.PathUnescape(raw); err == nil {
				raw = un
			}
			raw = strings.TrimSpace(raw)
			if len(raw) > MaxOCSPRequest*2 {
				http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
				return
			}
			b, err := base64.StdEncoding.DecodeString(raw)
			if err != nil {
				b = nil // answered as malformed below
			}
			reqDER = b
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		resp, err := s.OCSP(r.Context(), tenant, reqDER)
		if err != nil {
			s.log.WarnContext(r.Context(), "identity: OCSP", "tenant", tenant, "err", err)
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		_, _ = w.Write(resp)
	})
}
