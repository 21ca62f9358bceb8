package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestTokenEnrolConnectAndCommands runs the agent against the real
// platform: token enrolment over HTTPS (EST simpleenroll), the key kept
// 0600 in the state dir, a mutual-TLS MQTT session to the built-in broker,
// the boot event and metrics, app telemetry, commands answered with
// command.result, a simulated reboot and a reconnection after a kick.
func TestTokenEnrolConnectAndCommands(t *testing.T) {
	p := startPlatform(t)
	p.addDevice(t, "meter-0001", "m1", "")
	obs := p.observe(t, "meter-0001")
	cfg := p.config(t, "meter-0001")
	cfg.Token = p.token(t, "meter-0001")
	cfg.FirmwareVersion = "1.4.0"
	cfg.FirmwareDigest = strings.Repeat("ab", 32)
	cfg.Commands = map[string]CommandFunc{
		"locate": func(_ context.Context, args json.RawMessage) (string, error) {
			var a struct{ Precision string }
			if err := json.Unmarshal(args, &a); err != nil {
				return "", err
			}
			return "here, " + a.Precision, nil
		},
		"fail": func(context.Context, json.RawMessage) (string, error) { return "", errors.New("sensor offline") },
	}
	ag := runAgent(t, cfg)

	boot := obs.wait(t, "/events", is("type", "boot"))
	require.Equal(t, "1.4.0", boot["fw_version"])
	require.Equal(t, cfg.FirmwareDigest, boot["fw_digest"])
	require.Equal(t, "a", boot["slot"])

	// The identity: a platform certificate for this device, key 0600.
	fi, err := os.Stat(filepath.Join(cfg.StateDir, "identity.pem"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	di, err := os.Stat(cfg.StateDir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), di.Mode().Perm())
	cert := ag.Certificate()
	require.NotNil(t, cert)
	require.Equal(t, "garrison://acme/devices/meter-0001", cert.Leaf.URIs[0].String())
	_, err = p.app.Identity().VerifyClient(context.Background(), []*x509.Certificate{cert.Leaf})
	require.NoError(t, err, "the platform trusts the certificate the agent enrolled")

	m := obs.wait(t, "/metrics", nil)
	require.Equal(t, "1.4.0", m["fw_version"])
	require.Greater(t, m["processes"], float64(0), "process count read from /proc")
	require.Contains(t, m, "listening_ports")
	require.Contains(t, m, "connections")

	require.NoError(t, ag.PublishTelemetry(context.Background(), map[string]any{"temp": 21.5}))
	tel := obs.wait(t, "/telemetry", nil)
	require.Equal(t, 21.5, tel["temp"])
	require.ErrorIs(t, ag.PublishTelemetry(context.Background(), []int{1}), ErrPayload, "telemetry must be an object")

	send := func(v any) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		live, err := p.app.Broker().Command(p.tenant, "meter-0001", b)
		require.NoError(t, err)
		require.True(t, live)
	}
	result := func(id string) map[string]any {
		return obs.wait(t, "/events", func(m map[string]any) bool { return m["type"] == "command.result" && m["id"] == id })
	}
	send(map[string]any{"id": "cmd-1", "name": "ping"})
	r := result("cmd-1")
	require.Equal(t, true, r["ok"])
	require.Equal(t, "pong", r["output"])

	send(map[string]any{"id": "cmd-2", "name": "self-destruct"})
	r = result("cmd-2")
	require.Equal(t, false, r["ok"])
	require.Contains(t, r["error"], "unknown command")

	send(map[string]any{"id": "cmd-3", "name": "locate", "args": map[string]any{"precision": "10m"}})
	r = result("cmd-3")
	require.Equal(t, true, r["ok"])
	require.Equal(t, "here, 10m", r["output"])

	send(map[string]any{"id": "cmd-4", "name": "fail"})
	r = result("cmd-4")
	require.Equal(t, false, r["ok"])
	require.Equal(t, "sensor offline", r["error"])

	send(map[string]any{"id": "cmd-5", "name": "ping", "expires": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)})
	r = result("cmd-5")
	require.Equal(t, false, r["ok"])
	require.Contains(t, r["error"], "expired")

	send(map[string]any{"id": "cmd-6", "name": "report"})
	r = result("cmd-6")
	require.Equal(t, true, r["ok"])
	obs.wait(t, "/metrics", nil)

	// Reboot: answered, then a new session and a new boot event.
	before := ag.Stats().Connects
	send(map[string]any{"id": "cmd-7", "name": "reboot"})
	r = result("cmd-7")
	require.Equal(t, true, r["ok"])
	obs.wait(t, "/events", is("type", "boot"))
	require.Eventually(t, func() bool { return ag.Stats().Connects > before }, 20*time.Second, 20*time.Millisecond)

	// A kick (the platform closing the session) is followed by a reconnect.
	before = ag.Stats().Connects
	require.Eventually(t, func() bool { return p.app.Broker().Kick(p.tenant, "meter-0001", "test") }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return ag.Stats().Connects > before }, 20*time.Second, 20*time.Millisecond)
	send(map[string]any{"id": "cmd-8", "name": "ping"})
	require.Equal(t, true, result("cmd-8")["ok"], "commands reach the device after it resubscribed")
}

// TestRestartReusesIdentity: a second run on the same state dir needs no
// token (the one-time token is spent) and connects with the stored key.
func TestRestartReusesIdentity(t *testing.T) {
	p := startPlatform(t)
	p.addDevice(t, "meter-0002", "m1", "")
	obs := p.observe(t, "meter-0002")
	cfg := p.config(t, "meter-0002")
	cfg.Token = p.token(t, "meter-0002")

	a1, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a1.Run(ctx) }()
	obs.wait(t, "/events", is("type", "boot"))
	serial := a1.Certificate().Leaf.SerialNumber
	cancel()
	require.NoError(t, <-done)

	cfg.Token = "" // spent
	a2 := runAgent(t, cfg)
	obs.wait(t, "/events", is("type", "boot"))
	require.Zero(t, serial.Cmp(a2.Certificate().Leaf.SerialNumber), "the stored identity is reused")

	// A fresh state dir with the spent token is refused, with a clear error.
	cfg.StateDir = filepath.Join(t.TempDir(), "other")
	cfg.Token = p.token(t, "meter-0002")
	a3, err := New(cfg)
	require.NoError(t, err)
	// The device already has a certificate; a second token still enrols
	// (tokens are per enrolment); a spent one is refused.
	require.NoError(t, runOnce(t, a3))
	cfg.StateDir = filepath.Join(t.TempDir(), "third")
	a4, err := New(cfg) // same, now spent, token
	require.NoError(t, err)
	err = a4.Run(context.Background())
	require.ErrorIs(t, err, ErrEnrolRefused)
	require.Contains(t, err.Error(), "already used")
}

// runOnce runs a until it has connected once, then stops it.
func runOnce(t *testing.T, a *Agent) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for a.Stats().Connects == 0 && time.Now().Before(deadline) {
		select {
		case err := <-done:
			cancel()
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	return <-done
}

// TestRenewalBeforeExpiry: the agent re-enrols (EST simplereenroll, with
// its current certificate and a fresh key) once RenewAt of the lifetime
// has passed on its clock, stores the new identity, and its next session
// uses it.
func TestRenewalBeforeExpiry(t *testing.T) {
	p := startPlatform(t)
	p.addDevice(t, "meter-0003", "m1", "")
	obs := p.observe(t, "meter-0003")
	cfg := p.config(t, "meter-0003")
	cfg.Token = p.token(t, "meter-0003")
	cfg.RenewAt = 0.5
	clk := newFakeClock(time.Now())
	cfg.Clock = clk
	ag := runAgent(t, cfg)
	obs.wait(t, "/events", is("type", "boot"))
	leaf := ag.Certificate().Leaf
	half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	require.Eventually(t, func() bool {
		for _, at := range clk.pending() {
			if at.Equal(half) {
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "renewal is scheduled at half the lifetime")
	require.Zero(t, ag.Stats().Renewals)

	clk.Advance(half.Sub(clk.Now()))
	require.Eventually(t, func() bool { return ag.Stats().Renewals == 1 }, 20*time.Second, 20*time.Millisecond)
	nl := ag.Certificate().Leaf
	require.NotZero(t, nl.SerialNumber.Cmp(leaf.SerialNumber), "a new certificate")
	require.False(t, nl.PublicKey.(*ecdsa.PublicKey).Equal(leaf.PublicKey), "with a fresh key")
	stored, err := loadIdentity(cfg.StateDir)
	require.NoError(t, err)
	require.Zero(t, stored.leaf.SerialNumber.Cmp(nl.SerialNumber), "stored")

	// The next session presents the renewed certificate.
	before := ag.Stats().Connects
	require.True(t, p.app.Broker().Kick(p.tenant, "meter-0003", "test"))
	require.Eventually(t, func() bool {
		clk.Advance(time.Second) // the back-off waits on the agent's clock
		return ag.Stats().Connects > before
	}, 20*time.Second, 50*time.Millisecond)
	found := false
	for _, c := range p.certsOf(t, "meter-0003") {
		found = found || c.SerialNumber.Cmp(nl.SerialNumber) == 0
	}
	require.True(t, found, "the platform issued the renewed certificate")
}

func (p *platform) certsOf(t *testing.T, device string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	ctx := context.Background()
	require.NoError(t, p.app.Store().View(ctx, func(tx store.Tx) error {
		cs, err := tx.Certificates().ByDevice(ctx, p.tenant, event.DeviceID(device))
		if err != nil {
			return err
		}
		for _, c := range cs {
			x, err := x509.ParseCertificate(c.DER)
			if err != nil {
				return err
			}
			out = append(out, x)
		}
		return nil
	}))
	return out
}

// TestFactoryAndClaimEnrolment: EST simpleenroll authenticated by a
// factory certificate (an external CA the tenant trusts) and by a
// model-wide claim certificate exchanged for the device registered with
// that hardware serial.
func TestFactoryAndClaimEnrolment(t *testing.T) {
	p := startPlatform(t)
	ctx := context.Background()
	factoryCA, factoryKey := selfSignedCA(t, "Acme factory CA")
	_, err := p.app.Identity().Import(ctx, p.tenant, factoryCA.Raw, identity.RoleExternal, "test")
	require.NoError(t, err)
	claimCA, claimKey := selfSignedCA(t, "Acme claim CA")
	_, err = p.app.Identity().Import(ctx, p.tenant, claimCA.Raw, identity.RoleClaim, "test")
	require.NoError(t, err)

	// Factory certificate: names the device (CN).
	p.addDevice(t, "cam-0001", "m1", "")
	obs := p.observe(t, "cam-0001")
	cfg := p.config(t, "cam-0001")
	fc := leafCert(t, factoryCA, factoryKey, "cam-0001")
	cfg.Factory = &fc
	ag := runAgent(t, cfg)
	obs.wait(t, "/events", is("type", "boot"))
	require.Equal(t, "garrison://acme/devices/cam-0001", ag.Certificate().Leaf.URIs[0].String())

	// Claim certificate: names the model; the CSR carries the serial. The
	// device is pre-registered (state registered) and exchanged once; the
	// broker admits it after the operator activates it.
	p.addDeviceIn(t, "cam-0002", "m1", "SN-778899", store.StateRegistered)
	obs2 := p.observe(t, "cam-0002")
	cfg2 := p.config(t, "cam-0002")
	cc := leafCert(t, claimCA, claimKey, "m1")
	cfg2.Factory = &cc
	cfg2.Serial = "SN-778899"
	ag2 := runAgent(t, cfg2)
	require.Eventually(t, func() bool { return ag2.Certificate() != nil }, 20*time.Second, 20*time.Millisecond)
	require.Zero(t, ag2.Stats().Connects, "a registered device is not admitted yet")
	p.setState(t, "cam-0002", store.StateActive)
	obs2.wait(t, "/events", is("type", "boot"))
	require.Equal(t, "garrison://acme/devices/cam-0002", ag2.Certificate().Leaf.URIs[0].String())

	// A claim for a serial nobody registered is refused.
	p.addDeviceIn(t, "cam-0003", "m1", "SN-1", store.StateRegistered)
	cfg3 := p.config(t, "cam-0003")
	cfg3.Factory = &cc
	cfg3.Serial = "SN-unknown"
	a3, err := New(cfg3)
	require.NoError(t, err)
	require.ErrorIs(t, a3.Run(ctx), ErrEnrolRefused)
	_, err = os.Stat(filepath.Join(cfg3.StateDir, "identity.pem"))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing stored")
}

func selfSignedCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return c, key
}

func leafCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	c, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	require.NoError(t, err)
	return c
}

// TestFirmwareJobsThroughPlatform: firmware jobs delivered by the real
// broker; the artifact fetched with the device certificate the platform
// issued (the artifact server trusts the tenant's CA, as the platform's
// artifact route will); progress and outcomes read back from the broker.
// One update succeeds and boots from slot b, a forged one is refused, and
// one that fails its boot check rolls back.
func TestFirmwareJobsThroughPlatform(t *testing.T) {
	p := startPlatform(t)
	ctx := context.Background()
	p.addDevice(t, "gw-0001", "m1", "")
	obs := p.observe(t, "gw-0001")
	chain, err := p.app.Identity().Chain(ctx, p.tenant)
	require.NoError(t, err)
	tenantCAs := x509.NewCertPool()
	for _, c := range chain {
		tenantCAs.AddCert(c)
	}
	srv := newArtifactServer(t, tenantCAs)
	keys := newOTAKeys(t)

	cfg := p.config(t, "gw-0001")
	cfg.Token = p.token(t, "gw-0001")
	cfg.ServerCA = p.pool.Clone()
	cfg.ServerCA.AddCert(srv.srv.Certificate())
	cfg.OTARoot = pub(keys.root)
	cfg.FirmwareVersion = "1.0.0"
	cfg.BootCheck = func(_ context.Context, b BootInfo) error {
		if b.Version == "3.0.0" {
			return errors.New("health probe failed")
		}
		return defaultBootCheck(ctx, b)
	}
	ag := runAgent(t, cfg)
	obs.wait(t, "/events", is("type", "boot"))

	artifacts := map[string][]byte{}
	srv.mu.Lock()
	srv.body = func(path string) []byte { return artifacts[filepath.Base(path)] }
	srv.mu.Unlock()
	kd := keysDoc(t, keys.root, 1, time.Now().Add(24*time.Hour), keys.release)
	job := func(id, version string, signer ed25519.PrivateKey) []byte {
		fw := []byte(strings.Repeat("image "+version+" ", 5000))
		m := manifestFor(t, fw, release{version: version}, signer)
		mm, err := firmware.ParseManifest(m)
		require.NoError(t, err)
		srv.mu.Lock()
		artifacts[mm.Signed.SHA256] = fw
		srv.mu.Unlock()
		return jobJSON(t, id, m, kd, srv.url(mm.Signed.SHA256))
	}
	send := func(b []byte) {
		live, err := p.app.Broker().PublishDevice(p.tenant, "gw-0001", "ota/job", b)
		require.NoError(t, err)
		require.True(t, live)
	}
	status := func(id, state string) map[string]any {
		return obs.wait(t, "/ota/status", func(m map[string]any) bool { return m["job"] == id && m["state"] == state })
	}

	send(job("job-1", "2.0.0", keys.release))
	status("job-1", StateReceived)
	status("job-1", StateVerified)
	ok := status("job-1", StateSucceeded)
	require.Equal(t, "2.0.0", ok["version"])
	boot := obs.wait(t, "/events", is("type", "boot"))
	require.Equal(t, "b", boot["slot"])
	require.Equal(t, "2.0.0", boot["fw_version"])
	require.Equal(t, ok["digest"], boot["fw_digest"])
	srv.mu.Lock()
	require.Contains(t, srv.clients, "gw-0001", "downloaded with the platform-issued device certificate")
	srv.mu.Unlock()

	send(job("job-2", "2.5.0", keys.other))
	refused := status("job-2", StateRefused)
	require.Contains(t, refused["reason"], "not trusted")

	send(job("job-3", "3.0.0", keys.release))
	rb := status("job-3", StateRolledBack)
	require.Contains(t, rb["reason"], "health probe failed")
	require.Equal(t, "2.0.0", rb["version"])
	slot, run := ag.Firmware()
	require.Equal(t, "b", slot)
	require.Equal(t, "2.0.0", run.Version)
}
