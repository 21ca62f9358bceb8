package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Errors of enrolment and renewal.
var (
	// ErrNoIdentity: the state directory holds no identity and no
	// enrolment method (token or factory certificate) was configured.
	ErrNoIdentity = errors.New("agent: no identity and no enrolment method")
	// ErrEnrolRefused: the platform refused the enrolment or renewal
	// (HTTP 4xx); retrying the same request will not help.
	ErrEnrolRefused = errors.New("agent: enrolment refused")
	// ErrBadResponse: the EST answer is not a certificate for this
	// device and key.
	ErrBadResponse = errors.New("agent: bad EST response")
)

const identityFile = "identity.pem"

// maxESTResponse bounds what is read of an EST answer.
const maxESTResponse = 256 << 10

// devIdentity is the device's current certificate chain and key.
type devIdentity struct {
	cert tls.Certificate
	leaf *x509.Certificate
}

// renewAt is when the identity should be renewed.
func (id *devIdentity) renewAt(frac float64) time.Time {
	life := id.leaf.NotAfter.Sub(id.leaf.NotBefore)
	return id.leaf.NotBefore.Add(time.Duration(frac * float64(life)))
}

// loadIdentity reads identity.pem; (nil, nil) when there is none.
func loadIdentity(dir string) (*devIdentity, error) {
	b, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("agent: load identity: %w", err)
	}
	pair, err := tls.X509KeyPair(b, b)
	if err != nil {
		return nil, fmt.Errorf("agent: load identity: %w", err)
	}
	return &devIdentity{cert: pair, leaf: pair.Leaf}, nil
}

// saveIdentity writes chain and key to identity.pem with mode 0600,
// atomically (a crash leaves the old or the new identity, never half).
func saveIdentity(dir string, chain []*x509.Certificate, key crypto.Signer) (*devIdentity, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("agent: save identity: %w", err)
	}
	var buf bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	_ = pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	if err := writeFileAtomic(filepath.Join(dir, identityFile), buf.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("agent: save identity: %w", err)
	}
	pair, err := tls.X509KeyPair(buf.Bytes(), buf.Bytes())
	clear(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("agent: save identity: %w", err)
	}
	return &devIdentity{cert: pair, leaf: pair.Leaf}, nil
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename, with mode perm.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// newKeyAndCSR generates a P-256 key on the device and a CSR naming the
// device (and its hardware serial, for a claim exchange).
func newKeyAndCSR(device, serial string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: device, SerialNumber: serial},
	}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// estClient talks EST (RFC 7030) to the platform's HTTPS port.
type estClient struct {
	base       string // https://host:port/.well-known/est/TENANT
	roots      *x509.CertPool
	serverName string
}

func newESTClient(cfg *Config) *estClient {
	return &estClient{
		base:       strings.TrimRight(cfg.URL, "/") + "/.well-known/est/" + url.PathEscape(cfg.Tenant),
		roots:      cfg.ServerCA,
		serverName: cfg.ServerName,
	}
}

func (e *estClient) httpClient(getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.roots, ServerName: e.serverName, MinVersion: tls.VersionTLS12,
			GetClientCertificate: getCert},
		ForceAttemptHTTP2: true,
	}}
}

// noCert answers a certificate request with no certificate.
func noCert(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }

func staticCert(c *tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c, nil }
}

// enroll POSTs csr to op (simpleenroll or simplereenroll) and returns the
// certificates of the answer. basic is device:token for token enrolment.
func (e *estClient) enroll(ctx context.Context, op string, csr []byte, basic [2]string,
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) ([]*x509.Certificate, error) {
	body := base64.StdEncoding.EncodeToString(csr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.base+"/"+op, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Content-Transfer-Encoding", "base64")
	if basic[1] != "" {
		req.SetBasicAuth(basic[0], basic[1])
	}
	c := e.httpClient(getCert)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent: EST %s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxESTResponse))
	if err != nil {
		return nil, fmt.Errorf("agent: EST %s: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(b))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return nil, fmt.Errorf("%w: EST %s: %s: %s", ErrEnrolRefused, op, resp.Status, msg)
		}
		return nil, fmt.Errorf("agent: EST %s: %s: %s", op, resp.Status, msg)
	}
	certs, err := parseCertsOnly(b)
	if err != nil {
		return nil, fmt.Errorf("agent: EST %s: %w", op, err)
	}
	return certs, nil
}

// cacerts fetches the tenant's CA chain (issuing CA first).
func (e *estClient) cacerts(ctx context.Context) ([]*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/cacerts", nil)
	if err != nil {
		return nil, err
	}
	c := e.httpClient(noCert)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent: EST cacerts: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxESTResponse))
	if err != nil {
		return nil, fmt.Errorf("agent: EST cacerts: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent: EST cacerts: %s", resp.Status)
	}
	return parseCertsOnly(b)
}

// parseCertsOnly decodes an EST answer: base64 (with any line breaks) of a
// certs-only PKCS#7 SignedData, or its raw DER. It is a parser of
// untrusted bytes (FuzzParseCertsOnly).
func parseCertsOnly(body []byte) ([]*x509.Certificate, error) {
	der := body
	if len(body) == 0 || body[0] != 0x30 {
		clean := bytes.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
				return -1
			}
			return r
		}, body)
		d, err := base64.StdEncoding.DecodeString(string(clean))
		if err != nil {
			return nil, fmt.Errorf("%w: not base64: %v", ErrBadResponse, err)
		}
		der = d
	}
	var ci struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue `asn1:"optional,tag:0"`
	}
	if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: not a PKCS#7 ContentInfo", ErrBadResponse)
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: PKCS#7 content type %v, want signedData", ErrBadResponse, ci.ContentType)
	}
	var sd struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		ContentInfo      asn1.RawValue
		Certificates     asn1.RawValue `asn1:"optional,tag:0"`
		CRLs             asn1.RawValue `asn1:"optional,tag:1"`
		SignerInfos      asn1.RawValue
	}
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
		return nil, fmt.Errorf("%w: PKCS#7 SignedData: %v", ErrBadResponse, err)
	}
	if len(sd.Certificates.Bytes) == 0 {
		return nil, fmt.Errorf("%w: PKCS#7 holds no certificate", ErrBadResponse)
	}
	certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	return certs, nil
}

var oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}

// checkIssued verifies that the EST answer's first certificate is for key
// and names this device, and returns the chain to present (leaf, then the
// tenant's issuing CA when cacerts gave it).
func checkIssued(certs []*x509.Certificate, key crypto.Signer, tenant, device string, cas []*x509.Certificate) ([]*x509.Certificate, error) {
	leaf := certs[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%w: the certificate is not for this device's key", ErrBadResponse)
	}
	want := "garrison://" + tenant + "/devices/" + device
	named := leaf.Subject.CommonName == device
	for _, u := range leaf.URIs {
		named = named || u.String() == want
	}
	if !named {
		return nil, fmt.Errorf("%w: the certificate names %q, not device %q", ErrBadResponse, leaf.Subject.CommonName, device)
	}
	chain := []*x509.Certificate{leaf}
	if len(cas) > 0 {
		inter := x509.NewCertPool()
		roots := x509.NewCertPool()
		for _, c := range cas {
			if bytes.Equal(c.RawIssuer, c.RawSubject) {
				roots.AddCert(c)
			} else {
				inter.AddCert(c)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: leaf.NotBefore.Add(time.Second)}); err != nil {
			return nil, fmt.Errorf("%w: the certificate does not chain to the tenant's CA: %v", ErrBadResponse, err)
		}
		for _, c := range cas {
			if !bytes.Equal(c.RawIssuer, c.RawSubject) && bytes.Equal(c.RawSubject, leaf.RawIssuer) {
				chain = append(chain, c)
			}
		}
	}
	return chain, nil
}

// enrol obtains the first identity with the configured method.
func (a *Agent) enrol(ctx context.Context) (*devIdentity, error) {
	cfg := &a.cfg
	var basic [2]string
	getCert := noCert
	switch {
	case cfg.Token != "":
		basic = [2]string{cfg.Device, cfg.Token}
	case cfg.Factory != nil:
		getCert = staticCert(cfg.Factory)
	default:
		return nil, ErrNoIdentity
	}
	key, csr, err := newKeyAndCSR(cfg.Device, cfg.Serial)
	if err != nil {
		return nil, fmt.Errorf("agent: enrol: %w", err)
	}
	certs, err := a.est.enroll(ctx, "simpleenroll", csr, basic, getCert)
	if err != nil {
		return nil, err
	}
	return a.storeIssued(ctx, certs, key)
}

// renew re-enrols with the current certificate and a fresh key.
func (a *Agent) renew(ctx context.Context) (*devIdentity, error) {
	cur := a.currentIdentity()
	key, csr, err := newKeyAndCSR(a.cfg.Device, a.cfg.Serial)
	if err != nil {
		return nil, fmt.Errorf("agent: renew: %w", err)
	}
	certs, err := a.est.enroll(ctx, "simplereenroll", csr, [2]string{}, staticCert(&cur.cert))
	if err != nil {
		return nil, err
	}
	return a.storeIssued(ctx, certs, key)
}

func (a *Agent) storeIssued(ctx context.Context, certs []*x509.Certificate, key *ecdsa.PrivateKey) (*devIdentity, error) {
	cas, err := a.est.cacerts(ctx)
	if err != nil {
		a.log.Warn("agent: cannot fetch the CA chain; presenting the leaf alone", "err", err)
	}
	chain, err := checkIssued(certs, key, a.cfg.Tenant, a.cfg.Device, cas)
	if err != nil {
		return nil, err
	}
	id, err := saveIdentity(a.cfg.StateDir, chain, key)
	if err != nil {
		return nil, err
	}
	a.setIdentity(id)
	return id, nil
}

// renewLoop renews the certificate once RenewAt of its lifetime has
// passed, retrying with back-off while the platform cannot be reached. A
// certificate that is due again as soon as it arrives (the device's clock
// runs ahead of the platform's) waits the back-off ceiling instead of
// renewing in a loop.
func (a *Agent) renewLoop(ctx context.Context) {
	attempt := 0
	renewed := false
	for {
		id := a.currentIdentity()
		wait := id.renewAt(a.cfg.RenewAt).Sub(a.cfg.Clock.Now())
		if attempt > 0 {
			wait = max(wait, a.cfg.Backoff.Delay(attempt, a.cfg.Rand()))
		} else if renewed && wait <= 0 {
			a.log.Warn("agent: the renewed certificate is already due on this device's clock (clock skew?); waiting before renewing again",
				"device", a.cfg.Device, "renew_at", id.renewAt(a.cfg.RenewAt))
			wait = a.cfg.Backoff.Max
		}
		renewed = false
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-a.cfg.Clock.After(wait):
			}
		}
		if ctx.Err() != nil {
			return
		}
		if _, err := a.renew(ctx); err != nil {
			attempt++
			a.log.Warn("agent: certificate renewal failed", "device", a.cfg.Device, "attempt", attempt, "err", err)
			if !a.cfg.Clock.Now().Before(id.leaf.NotAfter) {
				a.log.Error("agent: certificate expired; the device must enrol again", "device", a.cfg.Device)
			}
			continue
		}
		attempt, renewed = 0, true
		nid := a.currentIdentity()
		a.log.Info("agent: certificate renewed", "device", a.cfg.Device, "not_after", nid.leaf.NotAfter)
		a.renewed.Add(1)
	}
}
