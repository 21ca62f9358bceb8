// Package tlsutil creates and keeps the API server's TLS certificate.
//
// On first start [LoadOrCreate] generates a self-signed ECDSA P-256
// certificate for localhost, the loopback addresses and the host name, and
// writes it to <dir>/server.crt and <dir>/server.key (mode 0600, written to
// a temporary file, fsync'd and renamed, so a crash leaves either the old
// pair or the new one). Later starts reuse it until it is within 30 days of
// expiry. Clients trust it by pinning server.crt as their root.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside the TLS directory.
const (
	CertFile = "server.crt"
	KeyFile  = "server.key"
)

// Result says what LoadOrCreate did.
type Result struct {
	Cert     tls.Certificate
	CertPath string
	Created  bool // a new certificate was generated
}

// LoadOrCreate returns the certificate kept in dir, creating it (and dir)
// when absent, unreadable as a pair, or expiring within 30 days of now.
// hosts are extra DNS names or IP addresses to include.
func LoadOrCreate(dir string, now time.Time, hosts ...string) (Result, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && c.Leaf != nil &&
		now.Add(30*24*time.Hour).Before(c.Leaf.NotAfter) {
		return Result{Cert: c, CertPath: certPath}, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Result{}, fmt.Errorf("tlsutil: load %s: %w (delete both files to regenerate)", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("tlsutil: %w", err)
	}
	certPEM, keyPEM, err := generate(now, hosts)
	if err != nil {
		return Result{}, err
	}
	if err := writeAtomic(keyPath, keyPEM, 0o600); err != nil {
		return Result{}, err
	}
	if err := writeAtomic(certPath, certPEM, 0o644); err != nil {
		return Result{}, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return Result{}, fmt.Errorf("tlsutil: reload: %w", err)
	}
	return Result{Cert: c, CertPath: certPath, Created: true}, nil
}

func generate(now time.Time, hosts []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "garrison api", Organization: []string{"Garrison"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(825 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: certificate: %w", err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("tlsutil: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("tlsutil: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("tlsutil: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	return nil
}

// Pool returns a certificate pool holding the PEM certificate(s) in path,
// for clients that pin the server certificate.
func Pool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tlsutil: no certificate in %s", path)
	}
	return p, nil
}

// Ephemeral returns a certificate like the one LoadOrCreate makes, kept only
// in memory, and a pool that trusts it: for a listener that lives as long as
// one process (the simulator's scoring API).
func Ephemeral(now time.Time, hosts ...string) (tls.Certificate, *x509.CertPool, error) {
	certPEM, keyPEM, err := generate(now, hosts)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("tlsutil: %w", err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(certPEM)
	return c, p, nil
}
