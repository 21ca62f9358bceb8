package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// simRig is the platform the demo and `simulate --transport mqtt` run: the
// app on its embedded defaults (store, bus, HTTPS API, MQTT broker) with
// its broker on the scenario's simulated clock, detection and response
// run by the scenario on that same clock (platform.Build), and a fleet of
// devices that enrol with their own keys and hold real mutual-TLS MQTT
// sessions to the broker.
type simRig struct {
	app   *app.App
	pass  []byte
	clk   *clock.Manual
	ids   *identity.Service
	fleet *platform.MQTTFleet
}

// startSimRig starts the app in dir with its API on apiAddr (any free port
// if taken) and the broker on a free loopback port, on simulated time from
// start. first receives the app's bootstrap message (the admin token).
func startSimRig(ctx context.Context, dir, apiAddr string, start time.Time, first io.Writer, log *slog.Logger) (r *simRig, err error) {
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.API.Addr = apiAddr
	if l, err := net.Listen("tcp", apiAddr); err == nil {
		l.Close()
	} else {
		cfg.API.Addr = "127.0.0.1:0" // the usual port is taken: any free one
	}
	cfg.HTTP.Addr = "127.0.0.1:0"   // CRL/OCSP: any free port, the devices do not use them
	cfg.Broker.Addr = "127.0.0.1:0" // MQTT: idem; the fleet is told the address
	cfg.Log.Level = "error"
	pass, err := demoPassphrase(dir)
	if err != nil {
		return nil, err
	}
	clk := clock.NewManual(start)
	a, err := app.New(cfg, config.Source{}, app.Options{Out: first, Logger: log, KeyPassphrase: pass,
		NoDetection: true, // the scenario runs detection on simulated time itself
		BrokerClock: clk}) // and the broker stamps the devices' traffic on it
	if err != nil {
		return nil, err
	}
	if err := a.Start(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_ = a.Stop(sctx)
		}
	}()
	// The app's CA and this identity service share the store, so they
	// share the passphrase. Certificates are issued on the wall clock, so
	// they verify (on the wall clock) when the devices connect and stay
	// valid for exploring afterwards; their identity.cert_issued events
	// stay off the bus, where they would sit days ahead of the simulated
	// fleet's time.
	sealer, err := identity.NewSealer(pass)
	if err != nil {
		return nil, err
	}
	ids, err := identity.New(identity.Options{Store: a.Store(), Sealer: sealer})
	if err != nil {
		return nil, err
	}
	if err := ids.Start(ctx); err != nil {
		return nil, err
	}
	serverCert, err := os.ReadFile(filepath.Join(dir, "tls", tlsutil.CertFile))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(serverCert) {
		return nil, errors.New("broker certificate: no PEM certificate")
	}
	b := a.Broker()
	fleet, err := platform.NewMQTTFleet(platform.MQTTFleetOptions{
		Addr: a.MQTTAddr().String(), TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		Live: b.Live, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	return &simRig{app: a, pass: pass, clk: clk, ids: ids, fleet: fleet}, nil
}

// stop closes the devices' sessions and stops the app.
func (r *simRig) stop() error {
	r.fleet.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return r.app.Stop(sctx)
}

// enrol does what the agent does on first boot: make a key that never
// leaves the device, send a CSR, get the certificate; the device keeps
// both for its MQTT session.
func (r *simRig) enrol(ctx context.Context, t event.TenantID, d event.DeviceID) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	u, _ := url.Parse(identity.DeviceURI(t, d))
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: string(d)}, URIs: []*url.URL{u},
	}, key)
	if err != nil {
		return err
	}
	iss, err := r.ids.Issue(ctx, t, d, csr, identity.IssueOptions{Actor: "enrol", Reason: "enrol"})
	if err != nil {
		return fmt.Errorf("enrol %s: %w", d, err)
	}
	cert := tls.Certificate{Certificate: [][]byte{iss.Cert.Raw}, PrivateKey: key, Leaf: iss.Cert}
	for _, c := range iss.Chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	r.fleet.Add(t, d, cert)
	return nil
}

// mqttRunStats is what the broker and the devices counted in a run.
type mqttRunStats struct {
	Broker broker.Stats
	Fleet  platform.MQTTFleetStats
}

// runScenarioMQTT replays sc through the app's real broker: every device
// enrols with its own key and holds a mutual-TLS session (simSetup), and
// the rest of the run is platform.RunScenario's. dir empty: a temporary
// directory removed afterwards.
func runScenarioMQTT(ctx context.Context, sc *sim.Scenario, dir string, log *slog.Logger, progress func(time.Time, int)) (rep *sim.Report, st mqttRunStats, err error) {
	if dir == "" {
		if dir, err = os.MkdirTemp("", "garrison-sim-*"); err != nil {
			return nil, st, err
		}
		defer os.RemoveAll(dir)
	}
	rig, err := startSimRig(ctx, dir, "127.0.0.1:0", sc.Start, io.Discard, log)
	if err != nil {
		return nil, st, err
	}
	defer func() {
		if serr := rig.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	const tenant = "sim"
	opts := platform.ScenarioOptions{
		Tenant: tenant, Logger: log, Progress: progress, Clock: rig.clk, MQTT: rig.fleet,
		OnRegister: func(ctx context.Context, d sim.Device) error { return rig.enrol(ctx, tenant, d.ID) },
	}
	p, err := platform.Build(ctx, rig.app.Store(), rig.app.Bus(), sc.Start, opts)
	if err != nil {
		return nil, st, err
	}
	defer p.Close()
	rep, err = p.Run(ctx, sc, opts)
	return rep, mqttRunStats{Broker: rig.app.Broker().Stats(), Fleet: rig.fleet.Stats()}, err
}
