package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/smallstep/pkcs7"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// maxESTBody bounds an EST request body (a base64 CSR with line breaks).
const maxESTBody = MaxCSRSize*2 + 1024

// ErrBadESTBody: the EST request body is not a base64 (or DER) PKCS#10.
var ErrBadESTBody = errors.New("bad EST request body")

// ESTRoutes registers the EST (RFC 7030) endpoints on mux, with the tenant
// as the CA label. They belong on the HTTPS API port; simplereenroll (and
// simpleenroll with a factory certificate) read the client certificate from
// the TLS connection, so the listener must request one
// (tls.RequestClientCert) and leave verification to the handler.
//
//	GET  /.well-known/est/{tenant}/cacerts         issuing CA + root, certs-only PKCS#7
//	POST /.well-known/est/{tenant}/simpleenroll    CSR; HTTP basic device:token, or a trusted client cert
//	POST /.well-known/est/{tenant}/simplereenroll  CSR; the current device certificate
//	GET  /.well-known/est/{tenant}/csrattrs        the key and signature the CA wants
func (s *Service) ESTRoutes(mux *http.ServeMux) {
	mux.Handle("GET /.well-known/est/{tenant}/cacerts", estHandler(s.estCACerts))
	mux.Handle("POST /.well-known/est/{tenant}/simpleenroll", estHandler(s.estEnroll))
	mux.Handle("POST /.well-known/est/{tenant}/simplereenroll", estHandler(s.estReenroll))
	mux.Handle("GET /.well-known/est/{tenant}/csrattrs", estHandler(s.estCSRAttrs))
}

// estError is an error with the HTTP status and public message to send.
type estError struct {
	status int
	msg    string
	cause  error
}

func (e *estError) Error() string { return e.msg + ": " + e.cause.Error() }
func (e *estError) Unwrap() error { return e.cause }

// estStatus maps an error to the status and public message of the response.
func estStatus(err error) (int, string) {
	var ee *estError
	switch {
	case errors.As(err, &ee):
		return ee.status, ee.msg
	case errors.Is(err, ErrBadCSR), errors.Is(err, ErrBadID), errors.Is(err, ErrBadESTBody):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, ErrTokenInvalid), errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenUsed),
		errors.Is(err, ErrUntrusted), errors.Is(err, ErrRevoked), errors.Is(err, ErrUnknownCert):
		for _, e := range []error{ErrTokenInvalid, ErrTokenExpired, ErrTokenUsed, ErrUntrusted, ErrRevoked, ErrUnknownCert} {
			if errors.Is(err, e) {
				return http.StatusUnauthorized, e.Error()
			}
		}
	case errors.Is(err, ErrAlreadyEnrolled):
		return http.StatusConflict, ErrAlreadyEnrolled.Error()
	case errors.Is(err, ErrTokenScope), errors.Is(err, ErrUnknownDevice):
		if errors.Is(err, ErrTokenScope) {
			return http.StatusForbidden, ErrTokenScope.Error()
		}
		return http.StatusForbidden, ErrUnknownDevice.Error()
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, "not found"
	}
	return http.StatusInternalServerError, "internal error"
}

type estFunc func(w http.ResponseWriter, r *http.Request, tenant event.TenantID) error

func estHandler(fn estFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := event.TenantID(r.PathValue("tenant"))
		err := checkIDs(tenant, "")
		if err == nil {
			err = fn(w, r, tenant)
		}
		if err == nil {
			return
		}
		status, msg := estStatus(err)
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="garrison-est"`)
		}
		http.Error(w, msg, status)
	})
}

func writeCerts(w http.ResponseWriter, certs ...*x509.Certificate) error {
	var der []byte
	for _, c := range certs {
		der = append(der, c.Raw...)
	}
	p7, err := pkcs7.DegenerateCertificate(der)
	if err != nil {
		return fmt.Errorf("identity: EST: PKCS#7: %w", err)
	}
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	_, err = w.Write(base64Lines(p7))
	return err
}

func base64Lines(b []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(b)
	var out bytes.Buffer
	for len(enc) > 64 {
		out.WriteString(enc[:64])
		out.WriteString("\r\n")
		enc = enc[64:]
	}
	out.WriteString(enc)
	out.WriteString("\r\n")
	return out.Bytes()
}

func (s *Service) estCACerts(w http.ResponseWriter, r *http.Request, tenant event.TenantID) error {
	chain, err := s.Chain(r.Context(), tenant)
	if err != nil {
		return err
	}
	return writeCerts(w, chain...)
}

// DecodeESTBody reads an EST PKCS#10 body: base64 (with any line breaks)
// of the DER, or raw DER. It does not validate the CSR.
func DecodeESTBody(body []byte) ([]byte, error) {
	if len(body) > maxESTBody {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadESTBody, len(body))
	}
	if len(body) > 0 && body[0] == 0x30 { // raw DER SEQUENCE: not base64
		return body, nil
	}
	clean := bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, body)
	der, err := base64.StdEncoding.DecodeString(string(clean))
	if err != nil {
		der, err = base64.RawStdEncoding.DecodeString(string(clean))
	}
	if err != nil || len(der) == 0 {
		return nil, fmt.Errorf("%w: not base64 DER", ErrBadESTBody)
	}
	return der, nil
}

func readCSR(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxESTBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadESTBody, err)
	}
	return DecodeESTBody(body)
}

func (s *Service) estEnroll(w http.ResponseWriter, r *http.Request, tenant event.TenantID) error {
	csr, err := readCSR(r)
	if err != nil {
		return err
	}
	var iss Issued
	if user, pass, ok := r.BasicAuth(); ok {
		device := event.DeviceID(user)
		if device == "" { // the device may name itself in the CSR only
			if c, err := x509.ParseCertificateRequest(csr); err == nil {
				device = event.DeviceID(c.Subject.CommonName)
			}
		}
		iss, err = s.Enrol(r.Context(), tenant, device, pass, csr)
	} else if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		// A factory (or current) certificate authenticates initial enrolment.
		// A claim certificate is exchanged once for the device's identity.
		iss, err = s.Renew(r.Context(), tenant, r.TLS.PeerCertificates, csr, IssueOptions{Reason: "enrol"})
		if errors.Is(err, ErrUntrusted) {
			iss, err = s.ExchangeClaim(r.Context(), tenant, r.TLS.PeerCertificates, csr)
		}
	} else {
		return &estError{status: http.StatusUnauthorized, msg: "authentication required (HTTP basic device:token, or a client certificate)", cause: ErrTokenInvalid}
	}
	if err != nil {
		s.log.InfoContext(r.Context(), "identity: EST enrol refused", "tenant", tenant, "err", err)
		return err
	}
	return writeCerts(w, iss.Cert)
}

func (s *Service) estReenroll(w http.ResponseWriter, r *http.Request, tenant event.TenantID) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return &estError{status: http.StatusUnauthorized, msg: "client certificate required", cause: ErrUntrusted}
	}
	csr, err := readCSR(r)
	if err != nil {
		return err
	}
	iss, err := s.Renew(r.Context(), tenant, r.TLS.PeerCertificates, csr, IssueOptions{})
	if err != nil {
		s.log.InfoContext(r.Context(), "identity: EST re-enrol refused", "tenant", tenant, "err", err)
		return err
	}
	return writeCerts(w, iss.Cert)
}

// csrAttrs returns what the CA wants in a CSR (RFC 7030 4.5.2):
// ecdsa-with-SHA256, and id-ecPublicKey on secp256r1.
func csrAttrs() ([]byte, error) {
	type attr struct {
		Type   asn1.ObjectIdentifier
		Values []asn1.ObjectIdentifier `asn1:"set"`
	}
	type attrs struct {
		Sig asn1.ObjectIdentifier
		Key attr
	}
	return asn1.Marshal(attrs{
		Sig: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2},
		Key: attr{Type: asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, Values: []asn1.ObjectIdentifier{{1, 2, 840, 10045, 3, 1, 7}}},
	})
}

func (s *Service) estCSRAttrs(w http.ResponseWriter, r *http.Request, tenant event.TenantID) error {
	b, err := csrAttrs()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/csrattrs")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	_, err = w.Write(base64Lines(b))
	return err
}
