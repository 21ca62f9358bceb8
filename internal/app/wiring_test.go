package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// TestDeviceConnectsThenIsRevoked runs the whole app on random ports: a
// device certificate issued by the platform CA connects to the broker over
// mutual TLS with a third-party client (mosquitto_pub) and publishes; once
// revoked, a new connection is refused, and the CRL on the plain-HTTP port
// lists it. The API still wants a token; EST answers on the API port.
func TestDeviceConnectsThenIsRevoked(t *testing.T) {
	deviceLifecycle(t, testConfig(t))
}

// TestDeviceConnectsThenIsRevokedPostgresAndNATS is the same on the
// scale-out back-ends.
func TestDeviceConnectsThenIsRevokedPostgresAndNATS(t *testing.T) {
	deviceLifecycle(t, pgNATSConfig(t))
}

func deviceLifecycle(t *testing.T, cfg config.Config) {
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skip("mosquitto_pub not installed (Debian package mosquitto-clients); it is the third-party MQTT client of this test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())

	const tenant, device = event.TenantID("acme"), event.DeviceID("meter-0001")
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: device, Model: "m1", State: store.StateActive,
			CreatedAt: now, UpdatedAt: now})
	}))

	// The device makes its key and CSR; the CA issues.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: string(device)}}, key)
	require.NoError(t, err)
	iss, err := a.Identity().Issue(ctx, tenant, device, csr, identity.IssueOptions{Actor: "test"})
	require.NoError(t, err)

	dir := t.TempDir()
	var certPEM bytes.Buffer
	for _, c := range append([]*x509.Certificate{iss.Cert}, iss.Chain[0]) {
		require.NoError(t, pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "dev.crt"), filepath.Join(dir, "dev.key")
	require.NoError(t, os.WriteFile(certFile, certPEM.Bytes(), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	caFile := filepath.Join(a.DataDir(), "tls", tlsutil.CertFile)

	_, port, err := net.SplitHostPort(a.MQTTAddr().String())
	require.NoError(t, err)
	publish := func() (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, pub, "-h", "localhost", "-p", port, "-V", "mqttv311", "-q", "1",
			"--cafile", caFile, "--cert", certFile, "--key", keyFile, "-i", string(device),
			"-t", "devices/"+string(device)+"/telemetry", "-m", `{"temp":21.5}`).CombinedOutput()
		return string(out), err
	}

	before := a.Broker().Stats()
	out, err := publish()
	require.NoError(t, err, "an active device with a valid certificate publishes: %s", out)
	require.Eventually(t, func() bool { return a.Broker().Stats().Published > before.Published }, 5*time.Second, 20*time.Millisecond,
		"the broker saw the publish")
	require.Equal(t, before.Denied, a.Broker().Stats().Denied, "its own telemetry topic is allowed")

	// EST re-enrolment on the API port, authenticated by the device
	// certificate presented in the TLS handshake (the API listener asks
	// for one without requiring it).
	pair, err := tls.X509KeyPair(certPEM.Bytes(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	require.NoError(t, err)
	reenroll := func() int {
		pool, err := tlsutil.Pool(caFile)
		require.NoError(t, err)
		dc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{pair}}}}
		defer dc.CloseIdleConnections()
		resp, err := dc.Post("https://"+a.APIAddr().String()+"/.well-known/est/"+string(tenant)+"/simplereenroll",
			"application/pkcs10", strings.NewReader(base64.StdEncoding.EncodeToString(csr)))
		require.NoError(t, err)
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	require.Equal(t, 200, reenroll(), "re-enrolment with the current certificate")

	// A live session (a subscriber on its command topic) is closed when the
	// certificate is revoked, through the revocation event on the bus.
	if sub, err := exec.LookPath("mosquitto_sub"); err == nil {
		live := exec.CommandContext(ctx, sub, "-h", "localhost", "-p", port, "-V", "mqttv311",
			"--cafile", caFile, "--cert", certFile, "--key", keyFile, "-i", string(device),
			"-t", "devices/"+string(device)+"/commands")
		require.NoError(t, live.Start())
		defer func() { _ = live.Process.Kill(); _ = live.Wait() }()
		require.Eventually(t, func() bool { return a.Broker().Stats().Sessions == 1 }, 5*time.Second, 20*time.Millisecond,
			"the subscriber is connected")
	} else {
		t.Log("mosquitto_sub not installed: the live-session kick is not checked here")
	}
	kicksBefore := a.Broker().Stats().Kicks

	// Revoke: the next connection is refused by the broker.
	n, err := a.Identity().RevokeDevice(ctx, tenant, device, 1, "test")
	require.NoError(t, err)
	require.Equal(t, 2, n, "the first certificate and its EST renewal")
	if _, err := exec.LookPath("mosquitto_sub"); err == nil {
		require.Eventually(t, func() bool { return a.Broker().Stats().Sessions == 0 }, 2*time.Second, 10*time.Millisecond,
			"the live session is closed within the second after revocation")
		require.Greater(t, a.Broker().Stats().Kicks, kicksBefore)
	}
	before = a.Broker().Stats()
	out, err = publish()
	require.Error(t, err, "a revoked certificate must not connect: %s", out)
	require.Greater(t, a.Broker().Stats().Refused, before.Refused, "refused by the broker, not lost on the way")

	require.NotEqual(t, 200, reenroll(), "a revoked certificate cannot re-enrol")

	// The CRL, at the URL the certificate names, lists the serial.
	require.Len(t, iss.Cert.CRLDistributionPoints, 1)
	crlURL := iss.Cert.CRLDistributionPoints[0]
	_, httpPort, _ := net.SplitHostPort(a.HTTPAddr().String())
	require.True(t, strings.HasPrefix(crlURL, "http://localhost:"+httpPort+"/crl/acme/"), crlURL)
	code, body := get(t, http.DefaultClient, crlURL)
	require.Equal(t, 200, code)
	crl, err := x509.ParseRevocationList(body)
	require.NoError(t, err, "the CRL is DER")
	require.NoError(t, crl.CheckSignatureFrom(iss.Chain[0]))
	found := false
	for _, e := range crl.RevokedCertificateEntries {
		found = found || e.SerialNumber.Cmp(iss.Cert.SerialNumber) == 0
	}
	require.True(t, found, "the revoked serial is on the CRL")
	if openssl, err := exec.LookPath("openssl"); err == nil {
		f := filepath.Join(dir, "ca.crl")
		require.NoError(t, os.WriteFile(f, body, 0o600))
		out, err := exec.Command(openssl, "crl", "-inform", "DER", "-in", f, "-noout", "-text").CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, strings.ToUpper(string(out)), strings.ToUpper(iss.Cert.SerialNumber.Text(16)))
	}

	// OCSP on the same port, asked by openssl as a real client.
	if openssl, err := exec.LookPath("openssl"); err == nil {
		leafFile, issuerFile, chainFile := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "chain.pem")
		require.NoError(t, os.WriteFile(leafFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.Cert.Raw}), 0o600))
		require.NoError(t, os.WriteFile(issuerFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.Chain[0].Raw}), 0o600))
		var chain bytes.Buffer
		for _, c := range iss.Chain {
			require.NoError(t, pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		}
		require.NoError(t, os.WriteFile(chainFile, chain.Bytes(), 0o600))
		out, err := exec.Command(openssl, "ocsp", "-issuer", issuerFile, "-cert", leafFile, "-CAfile", chainFile,
			"-url", "http://"+a.HTTPAddr().String()+"/ocsp/"+string(tenant)).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), leafFile+": revoked", "%s", out)
		require.Contains(t, string(out), "Response verify OK", "%s", out)
	}

	// The plain-HTTP port serves only CRL and OCSP.
	code, _ = get(t, http.DefaultClient, "http://"+a.HTTPAddr().String()+"/healthz")
	require.Equal(t, 404, code)

	// The API port: still 401 without a token; EST answers.
	c := client(t, a)
	defer c.CloseIdleConnections()
	code, body2 := do(t, c, a, "GET", "/api/v1/whoami", "")
	require.Equal(t, 401, code, body2)
	code, body = get(t, c, "https://"+a.APIAddr().String()+"/.well-known/est/acme/cacerts")
	require.Equal(t, 200, code, string(body))
	require.NotEmpty(t, body)
}

func get(t *testing.T, c *http.Client, url string) (int, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}
