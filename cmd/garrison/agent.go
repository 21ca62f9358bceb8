package main

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/agent"
	"github.com/garrisonhq/garrison/firmware"
)

// agentFlags are the command-line form of agent.Config.
type agentFlags struct {
	tenant, device, model, stateDir string
	url, mqtt, caFile, serverName   string
	token, tokenFile                string
	factoryCert, factoryKey, serial string
	otaRoot, fwVersion              string
	metricsEvery, keepAlive         time.Duration
	logLevel                        string
}

// newAgentCmd runs the device agent: enrol if the state directory holds no
// identity, then stay connected over mutual-TLS MQTT, report metrics,
// execute commands and apply verified firmware until SIGINT/SIGTERM.
func newAgentCmd(e *cliEnv) *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the device agent: enrol, connect over mutual-TLS MQTT, report metrics, run commands, apply signed updates",
		Long: `Runs the Garrison device agent (the public package github.com/garrisonhq/garrison/agent) as a process.

On first start it makes its key in --state-dir (mode 0600; the key never leaves the device) and
enrols over EST with a one-time token (--token, --token-file or GARRISON_AGENT_TOKEN) or a
factory certificate (--factory-cert/--factory-key). It then keeps a mutual-TLS MQTT session with
jittered back-off, renews its certificate before expiry, publishes its metrics (listening ports
and connections from /proc, process count, firmware), executes commands and applies firmware
jobs that verify against --ota-root.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := f.config(e)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			a, err := agent.New(cfg)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tenant, "tenant", "", "tenant id (required)")
	fl.StringVar(&f.device, "device", "", "device id, as registered (required)")
	fl.StringVar(&f.model, "model", "", "device model firmware manifests must target")
	fl.StringVar(&f.stateDir, "state-dir", "", "where the agent keeps its key, certificate and firmware slots (required)")
	fl.StringVar(&f.url, "url", "", "the platform's HTTPS API, e.g. https://garrison.example:8443 (EST, artifacts; required)")
	fl.StringVar(&f.mqtt, "mqtt", "", "the platform's MQTT broker, HOST:PORT (default: the host of --url, port 8883)")
	fl.StringVar(&f.caFile, "ca-file", "", "PEM file of the CA(s) that sign the platform's server certificates (default: the system roots)")
	fl.StringVar(&f.serverName, "server-name", "", "TLS server name to verify (default: the host of --url / --mqtt)")
	fl.StringVar(&f.token, "token", "", "one-time enrolment token (prefer --token-file or GARRISON_AGENT_TOKEN: arguments are visible to other users)")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the one-time enrolment token")
	fl.StringVar(&f.factoryCert, "factory-cert", "", "factory or claim certificate (PEM) to enrol with instead of a token")
	fl.StringVar(&f.factoryKey, "factory-key", "", "private key (PEM) of --factory-cert")
	fl.StringVar(&f.serial, "serial", "", "hardware serial number, put in the CSR (a claim exchange needs it)")
	fl.StringVar(&f.otaRoot, "ota-root", "", "the tenant's OTA root public key (Ed25519: hex, base64, or @FILE with the PEM of `garrison firmware keygen`); without it every firmware job is refused")
	fl.StringVar(&f.fwVersion, "firmware-version", "", "version of the running image on first start (default 1.0.0)")
	fl.DurationVar(&f.metricsEvery, "metrics-interval", 0, "how often to publish metrics (default 60s)")
	fl.DurationVar(&f.keepAlive, "keepalive", 0, "MQTT keep-alive (default 60s)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// config validates the flags and builds the agent's configuration; every
// problem is reported at once.
func (f *agentFlags) config(e *cliEnv) (agent.Config, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for name, v := range map[string]string{"--tenant": f.tenant, "--device": f.device, "--state-dir": f.stateDir, "--url": f.url} {
		if v == "" {
			bad("%s is required", name)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		bad("--log-level: %v", err)
	}
	cfg := agent.Config{
		Tenant: f.tenant, Device: f.device, Model: f.model, StateDir: f.stateDir,
		URL: f.url, MQTTAddr: f.mqtt, ServerName: f.serverName, Serial: f.serial,
		FirmwareVersion: f.fwVersion, MetricsInterval: f.metricsEvery, KeepAlive: f.keepAlive,
		Logger: slog.New(slog.NewTextHandler(e.Stderr, &slog.HandlerOptions{Level: level})),
	}
	if cfg.MQTTAddr == "" && f.url != "" {
		host := strings.TrimPrefix(strings.TrimPrefix(f.url, "https://"), "http://")
		host, _, _ = strings.Cut(host, "/")
		if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
			host = host[:i]
		}
		cfg.MQTTAddr = host + ":8883"
	}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			bad("--ca-file: %v", err)
		case !pool.AppendCertsFromPEM(pem):
			bad("--ca-file %s: no PEM certificate in it", f.caFile)
		default:
			cfg.ServerCA = pool
		}
	}
	cfg.Token = f.token
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			bad("--token-file: %v", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	if cfg.Token == "" {
		cfg.Token = e.getenv("GARRISON_AGENT_TOKEN")
	}
	if (f.factoryCert == "") != (f.factoryKey == "") {
		bad("--factory-cert and --factory-key go together")
	} else if f.factoryCert != "" {
		c, err := tls.LoadX509KeyPair(f.factoryCert, f.factoryKey)
		if err != nil {
			bad("--factory-cert: %v", err)
		} else {
			cfg.Factory = &c
		}
	}
	if f.otaRoot != "" {
		k, err := parseEd25519Public(f.otaRoot)
		if err != nil {
			bad("--ota-root: %v", err)
		}
		cfg.OTARoot = k
	}
	return cfg, errors.Join(errs...)
}

// parseEd25519Public reads an Ed25519 public key given as hex, base64 or
// @FILE holding either or the PEM that `garrison firmware keygen` writes.
func parseEd25519Public(s string) (ed25519.PublicKey, error) {
	if name, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		if k, err := firmware.ParsePublicKey(b); err == nil {
			return k, nil
		}
		s = strings.TrimSpace(string(b))
	}
	for _, dec := range []func(string) ([]byte, error){hex.DecodeString, base64.StdEncoding.DecodeString, base64.RawURLEncoding.DecodeString} {
		if b, err := dec(s); err == nil && len(b) == ed25519.PublicKeySize {
			return ed25519.PublicKey(b), nil
		}
	}
	return nil, fmt.Errorf("not a %d-byte Ed25519 public key in hex or base64", ed25519.PublicKeySize)
}
