package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"regexp"
	"time"

	"github.com/garrisonhq/garrison/firmware"
)

// ErrConfig wraps every configuration error returned by [New].
var ErrConfig = errors.New("agent: invalid configuration")

// Clock is the time source. Tests inject a fake one to drive back-off,
// renewal and report schedules without sleeping.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// CommandFunc executes an application-registered command. args is the
// command's "args" object (or null). The returned output (at most a few
// KiB is sensible) and error become the command.result event.
type CommandFunc func(ctx context.Context, args json.RawMessage) (output string, err error)

// BootInfo describes the slot being booted into after an update.
type BootInfo struct {
	Slot    string // "a" or "b"
	Path    string // the slot image
	Version string
	Digest  string // hex SHA-256 of the image
}

// Config configures an [Agent]. Tenant, Device, URL, MQTTAddr and StateDir
// are required; one enrolment method is needed unless StateDir already
// holds an identity.
type Config struct {
	Tenant   string
	Device   string
	Model    string // the device model firmware manifests must target
	StateDir string

	URL        string         // https://HOST:8443 (EST, artifacts)
	MQTTAddr   string         // HOST:8883
	ServerCA   *x509.CertPool // trust for the platform's server certificates; nil: the system roots
	ServerName string         // TLS server name; default: the host of URL / MQTTAddr

	// Enrolment, used when StateDir has no identity yet: Token (a one-time
	// enrolment token, EST simpleenroll with HTTP basic device:token), or
	// Factory (a factory or claim certificate presented in the TLS
	// handshake of simpleenroll). Serial goes into the CSR subject's
	// serialNumber, which a claim exchange needs.
	Token   string
	Factory *tls.Certificate
	Serial  string

	// RenewAt is the fraction of the certificate's lifetime after which
	// it is renewed (default 2/3).
	RenewAt float64

	// OTARoot is the tenant's OTA root public key given at provisioning.
	// Without it every firmware job is refused.
	OTARoot ed25519.PublicKey
	// FirmwareVersion and FirmwareDigest describe the factory image in
	// slot a on first start (default "1.0.0" and the SHA-256 of the
	// running executable).
	FirmwareVersion string
	FirmwareDigest  string
	// BootCheck decides whether a freshly applied slot boots. The default
	// re-reads the image and compares its digest with the manifest's.
	BootCheck func(ctx context.Context, b BootInfo) error

	// Commands are application handlers by command name; they may
	// override the built-in ping, reboot and report.
	Commands map[string]CommandFunc
	// Telemetry, when set, is called every TelemetryInterval and its
	// result (a JSON object) published on devices/{id}/telemetry.
	Telemetry         func(ctx context.Context) (any, error)
	TelemetryInterval time.Duration // default 60s
	MetricsInterval   time.Duration // default 60s
	KeepAlive         time.Duration // MQTT keep-alive, default 60s

	Backoff Backoff // reconnect back-off, default 1s doubling to 5 min
	Clock   Clock
	// Rand returns a uniform number in [0, 1) for the back-off jitter;
	// default math/rand/v2.
	Rand   func() float64
	Logger *slog.Logger
	// ProcRoot is where /proc is read from (default "/proc").
	ProcRoot string
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (c *Config) defaults() error {
	var errs []error
	if !idRE.MatchString(c.Tenant) {
		errs = append(errs, fmt.Errorf("tenant %q: want [A-Za-z0-9._-], 1 to 128 characters", c.Tenant))
	}
	if !idRE.MatchString(c.Device) {
		errs = append(errs, fmt.Errorf("device %q: want [A-Za-z0-9._-], 1 to 128 characters", c.Device))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state dir is required"))
	}
	if u, err := url.Parse(c.URL); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("url %q: want https://HOST:PORT", c.URL))
	}
	if c.MQTTAddr == "" {
		errs = append(errs, errors.New("mqtt address is required"))
	}
	if c.Model != "" {
		if err := firmware.ValidModel(c.Model); err != nil {
			errs = append(errs, err)
		}
	}
	if c.RenewAt == 0 {
		c.RenewAt = 2.0 / 3
	}
	if c.RenewAt <= 0 || c.RenewAt >= 1 {
		errs = append(errs, fmt.Errorf("renew-at %v: want a fraction in (0, 1)", c.RenewAt))
	}
	if c.OTARoot != nil && len(c.OTARoot) != ed25519.PublicKeySize {
		errs = append(errs, errors.New("ota root: not an Ed25519 public key"))
	}
	if c.FirmwareVersion == "" {
		c.FirmwareVersion = "1.0.0"
	}
	if _, err := firmware.ParseVersion(c.FirmwareVersion); err != nil {
		errs = append(errs, fmt.Errorf("firmware version: %w", err))
	}
	if c.FirmwareDigest != "" && !firmware.IsHex(c.FirmwareDigest, 32) {
		errs = append(errs, errors.New("firmware digest: want 64 lowercase hex characters"))
	}
	if c.TelemetryInterval <= 0 {
		c.TelemetryInterval = time.Minute
	}
	if c.MetricsInterval <= 0 {
		c.MetricsInterval = time.Minute
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = time.Minute
	}
	if c.Backoff.Base <= 0 {
		c.Backoff.Base = time.Second
	}
	if c.Backoff.Max <= 0 {
		c.Backoff.Max = 5 * time.Minute
	}
	if c.Backoff.Max < c.Backoff.Base {
		errs = append(errs, fmt.Errorf("backoff: max %v below base %v", c.Backoff.Max, c.Backoff.Base))
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return nil
}
