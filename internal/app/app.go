// Package app assembles a Garrison process from its configuration: one
// struct, [App], lists every subsystem, and [App.Start] reads like a table
// of contents.
//
// Lifecycle: [New] constructs (no side effects: nothing is opened,
// created or listened on), [App.Start] opens and starts every component in
// order, [App.Stop] stops them in reverse order. [App.Run] does both and
// stops on context cancellation (SIGINT/SIGTERM in serve) or when a
// component fails. Every goroutine is started through [App.goroutine],
// which tracks it, so Stop returns only when all of them have returned.
//
// First start: the platform admin operator and a bootstrap API token are
// created in one transaction (with their audit records), and the token is
// printed once to the configured writer. The API's TLS certificate is
// created in <data_dir>/tls and reused afterwards; the MQTT broker presents
// the same certificate.
//
// Listeners: the HTTPS API (api.addr, with EST under /.well-known/est/),
// the plain-HTTP CRL and OCSP responder (http.addr, nothing else) and MQTT
// over mutual TLS (broker.addr). The real API and MQTT addresses are
// written to <data_dir>/run/api.addr and mqtt.addr (useful with :0).
//
// Live MQTT sessions follow identity and the registry: a node closes a
// device's sessions when one of its certificates is revoked
// (identity.cert_revoked) and re-authorises them on device.state, through
// a durable bus consumer per node (named after the host).
//
// The CA private keys are sealed with [Options.KeyPassphrase]; New refuses
// to build an App without one ([config.ErrNoPassphrase]).
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/intel"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// Options are what a process supplies besides its configuration.
type Options struct {
	Logger *slog.Logger
	Clock  clock.Clock
	// Out receives the one-time bootstrap message (stdout in serve).
	Out io.Writer
	// KeyPassphrase seals the CA private keys (required; serve reads it
	// with config.Config.KeyPassphrase). It is never logged.
	KeyPassphrase []byte
	// NoDetection leaves the detection and response plane out (the demo
	// runs its own, on simulated time).
	NoDetection bool
	// BrokerClock, if set, is the MQTT broker's clock instead of Clock: the
	// time it stamps its events with and meters publish rates on. The
	// simulator's devices hold real sessions while the fleet lives on
	// simulated time; certificates are still verified on Clock.
	BrokerClock clock.Clock
	// Node names this process among the nodes of one deployment: its
	// per-node bus consumers (session kicks, command relays) and its
	// leases. Default: the host name. Two processes of one deployment
	// must not share it.
	Node string
	// BusNamespace, when set, prefixes the bus's stream names and subjects
	// so that several deployments (test runs) can share one external NATS
	// server. One token of letters, digits, '-' or '_'.
	BusNamespace string
}

// App is one Garrison process. Fields are set by Start, in order.
type App struct {
	cfg  config.Config
	log  *slog.Logger
	clk  clock.Clock
	bclk clock.Clock // the broker's (Options.BrokerClock, default clk)
	out  io.Writer
	data string // absolute data dir

	passphrase []byte

	metrics   *prometheus.Registry
	store     store.Store
	bus       *bus.Bus
	httpLn    net.Listener
	identity  *identity.Service
	sealer    *identity.Sealer // the key passphrase's: CA keys and webhook secrets
	httpSrv   *http.Server
	tls       tlsutil.Result
	api       *api.Server
	apiLn     net.Listener
	apiSrv    *http.Server
	broker    *broker.Broker
	detection *platform.Detection
	detectors engineRef       // the running detection engine, for the API (detection.go)
	response  responseRef     // the response engine and mass runner, for the API (response.go)
	rules     *platform.Rules // operators' detection rules (rules.go)
	incidents *incidents
	noDetect  bool
	conn      connectivityPlane
	node      string // Options.Node
	busNS     string // Options.BusNamespace
	holder    string // this process as a lease holder (lease.go)
	leases    leaseSet

	// threatIntel is detection's intel table, kept filled by feeds.
	threatIntel *detect.ThreatIntel
	feeds       *intel.Feeds
	// fwView is detection's view of the firmware catalog (detection.go).
	fwView *detect.MemCatalog

	otaCatalog *ota.Catalog
	otaEngine  *ota.Engine
	commands   *command.Service // command.go

	// announce prints the first-start message once the API listens.
	announce func() error

	wg      sync.WaitGroup
	fail    chan error // first fatal error of a background goroutine
	stopped sync.Once
	closers []namedCloser // what Start opened, closed in reverse by Stop
}

type namedCloser struct {
	name  string
	close func(context.Context) error
}

// New validates cfg and returns an App ready to Start. It has no side
// effects.
func New(cfg config.Config, src config.Source, opt Options) (*App, error) {
	if err := cfg.Validate(src); err != nil {
		return nil, err
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = clock.Real{}
	}
	if opt.BrokerClock == nil {
		opt.BrokerClock = opt.Clock
	}
	if opt.Out == nil {
		opt.Out = io.Discard
	}
	if len(opt.KeyPassphrase) == 0 {
		return nil, config.ErrNoPassphrase
	}
	data, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("app: data dir: %w", err)
	}
	if opt.Node == "" {
		opt.Node = nodeName()
	}
	opt.Node = consumerToken(opt.Node)
	return &App{cfg: cfg, log: opt.Logger, clk: opt.Clock, bclk: opt.BrokerClock, out: opt.Out, data: data, noDetect: opt.NoDetection,
		node: opt.Node, busNS: opt.BusNamespace, holder: holderID(opt.Node),
		passphrase: append([]byte(nil), opt.KeyPassphrase...), fail: make(chan error, 1)}, nil
}

// Start brings every subsystem up, in this order. On error, what was
// started is stopped again.
func (a *App) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			_ = a.Stop(context.Background())
		}
	}()
	a.log.Info("starting garrison", "data_dir", a.data, "store", describeStore(a.cfg), "bus", describeBus(a.cfg))
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"data directory", a.startDataDir},
		{"metrics", a.startMetrics},
		{"store", a.startStore},
		{"bus", a.startBus},
		{"bootstrap", a.bootstrap},
		{"http listener", a.listenHTTP},
		{"identity", a.startIdentity},
		{"http (CRL, OCSP)", a.startHTTP},
		{"tls", a.startTLS},
		{"connectivity (RADIUS, flows, cells)", a.startConnectivity},
		{"firmware catalog", a.startOTA},
		{"incidents and exports", a.startIncidents},
		{"threat intelligence", a.startIntel},
		{"device commands", a.startCommands},
		{"detection rules", a.startRules},
		{"api (with EST)", a.startAPI},
		{"broker", a.startBroker},
		{"command results", a.followCommandResults},
		{"firmware jobs follow subscriptions", a.followJobSubscriptions},
		{"firmware campaigns", a.runCampaigns},
		{"broker follows revocations", a.followRevocations},
		{"detection and response", a.startDetection},
		{"announce", a.startAnnounce},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("start %s: %w", s.name, err)
		}
	}
	a.log.Info("garrison ready", "api", "https://"+a.apiLn.Addr().String(),
		"http", "http://"+a.httpLn.Addr().String(), "mqtt", a.broker.Addr().String())
	return nil
}

func (a *App) startAnnounce(context.Context) error {
	if a.announce == nil {
		return nil
	}
	return a.announce()
}

// Run starts the app, waits until ctx is done or a component fails, then
// stops everything within the configured shutdown timeout.
func (a *App) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.Cause(ctx))) {
			// Asked to stop while starting: Start stopped what it had
			// started; that is a clean stop, not a failure.
			a.log.Info("stopped during start", "reason", context.Cause(ctx))
			return nil
		}
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
		a.log.Info("stopping garrison", "reason", context.Cause(ctx))
	case runErr = <-a.fail:
		a.log.Error("component failed; stopping", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, a.Stop(sctx))
}

// Stop stops every started subsystem in reverse order and waits for every
// tracked goroutine. It is safe to call more than once.
func (a *App) Stop(ctx context.Context) error {
	var errs []error
	a.stopped.Do(func() {
		for i := len(a.closers) - 1; i >= 0; i-- {
			c := a.closers[i]
			if err := c.close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", c.name, err))
			}
		}
		done := make(chan struct{})
		go func() { a.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("stop: goroutines still running: %w", ctx.Err()))
		}
		a.log.Info("garrison stopped")
	})
	return errors.Join(errs...)
}

// onStop registers what Stop undoes, in reverse order of registration.
func (a *App) onStop(name string, fn func(context.Context) error) {
	a.closers = append(a.closers, namedCloser{name, fn})
}

// goroutine runs fn in a tracked goroutine. A non-nil error from fn is
// fatal for the process: Run stops everything.
func (a *App) goroutine(name string, fn func() error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := fn(); err != nil {
			select {
			case a.fail <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
}

// APIAddr is the API's listening address once started (useful with :0).
func (a *App) APIAddr() net.Addr { return a.apiLn.Addr() }

// MQTTAddr is the broker's listening address once started.
func (a *App) MQTTAddr() net.Addr { return a.broker.Addr() }

// HTTPAddr is the plain-HTTP (CRL, OCSP) listening address once started.
func (a *App) HTTPAddr() net.Addr { return a.httpLn.Addr() }

// Broker is the MQTT broker (after Start).
func (a *App) Broker() *broker.Broker { return a.broker }

// Identity is the CA service (after Start).
func (a *App) Identity() *identity.Service { return a.identity }

// Store is the opened store (after Start).
func (a *App) Store() store.Store { return a.store }

// Bus returns the event bus (nil before Start).
func (a *App) Bus() *bus.Bus { return a.bus }

// DataDir is the absolute data directory.
func (a *App) DataDir() string { return a.data }

func (a *App) startDataDir(context.Context) error {
	for _, d := range []string{a.data, filepath.Join(a.data, "run")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

func (a *App) startMetrics(context.Context) error {
	a.metrics = prometheus.NewRegistry()
	return errors.Join(
		a.metrics.Register(collectors.NewGoCollector()),
		a.metrics.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	)
}

func (a *App) startTLS(context.Context) error {
	res, err := tlsutil.LoadOrCreate(filepath.Join(a.data, "tls"), a.clk.Now())
	if err != nil {
		return err
	}
	if res.Created {
		a.log.Info("created API TLS certificate", "path", res.CertPath)
	}
	a.tls = res
	return nil
}

func (a *App) startAPI(ctx context.Context) error {
	reg, err := a.apiRegistry()
	if err != nil {
		return err
	}
	srv, err := api.New(api.Options{
		Identity:     a.identity,
		Devices:      reg,
		Groups:       reg,
		Passwords:    reg,
		Incidents:    a.incidents.svc,
		Store:        a.store,
		Clock:        a.clk,
		Logger:       a.log.With("component", "api"),
		MaxBodyBytes: a.cfg.API.MaxBodyBytes,
		TokenTTL:     a.cfg.API.TokenTTL,
		Ready:        a.ready,
		Registry:     a.metrics,
		Firmware:     a.otaCatalog,
		Campaigns:    a.otaEngine,
		Commands:     a.commands,
		// Provider webhooks and cell imports (connectivity.go).
		Connectivity: a.conn.ingester, CellCache: a.conn.cells, CellImportMaxBytes: a.cfg.Cells.ImportMaxBytes,
		Detectors: &a.detectors, Feeds: a.feeds,
		Rules:    a.rules,
		Response: &a.response,
		// Webhook secrets are sealed under the key passphrase (incident.go).
		WebhookSecrets: a.sealer,
		Events:         a.bus, // alert.state_changed
	})
	if err != nil {
		return err
	}
	a.api = srv
	ln, err := net.Listen("tcp", a.cfg.API.Addr)
	if err != nil {
		return err
	}
	a.apiLn = ln
	a.apiSrv = &http.Server{
		Handler: a.withArtifacts(withEST(srv, a.identity)),
		// EST re-enrolment reads the device certificate from the
		// connection; a certificate is asked for, never required, and
		// verified only by the EST handlers. API clients send none.
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{a.tls.Cert}, MinVersion: tls.VersionTLS12,
			ClientAuth: tls.RequestClientCert},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          a.errorLog(),
	}
	a.onStop("api", func(ctx context.Context) error {
		err := a.apiSrv.Shutdown(ctx)
		os.Remove(filepath.Join(a.data, "run", "api.addr"))
		return err
	})
	a.goroutine("api", func() error {
		if err := a.apiSrv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return writeFileAtomic(filepath.Join(a.data, "run", "api.addr"), []byte(ln.Addr().String()+"\n"))
}

func (a *App) errorLog() *log.Logger { return slog.NewLogLogger(a.log.Handler(), slog.LevelDebug) }

// ready reports whether the store and the bus answer.
func (a *App) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.store.View(ctx, func(tx store.Tx) error {
		_, err := tx.Tenants().List(ctx)
		return err
	}); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := a.busReady(ctx); err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func describeStore(c config.Config) string {
	if c.Store.URL == "" {
		return "sqlite"
	}
	return config.RedactURL(c.Store.URL)
}

func describeBus(c config.Config) string {
	if c.Bus.URL == "" {
		return "embedded"
	}
	return config.RedactURL(c.Bus.URL)
}
