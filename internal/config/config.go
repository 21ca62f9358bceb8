// Package config is Garrison's configuration: one typed struct, [Config],
// loaded in layers (defaults, then a YAML file, then GARRISON_* environment
// variables, then command-line flags; later layers win), then validated.
//
// Loading and validation are separate steps. [Load] fails only on input it
// cannot parse at all (malformed YAML, unknown keys, values of the wrong
// type); [Config.Validate] checks meaning. Both report every problem at once
// as [Errors], each naming its key and the layer the value came from
// ("default", "file garrison.yaml", "env GARRISON_API_ADDR",
// "flag --api-addr").
//
// GARRISON_KEY_PASSPHRASE is a secret, not a key: it is read only by
// [Config.KeyPassphrase], never stored in Config, never printed.
// GARRISON_URL, GARRISON_TOKEN and GARRISON_CA_FILE belong to the operator
// CLI and GARRISON_TEST_* to the test suite; neither is configuration and
// both are ignored here. Other GARRISON_* variables that name no key are
// ignored as well, so that unrelated tools can share the prefix.
//
// Values that may carry secrets (store.url, bus.url) are printed only
// through [Config.Redacted] or [RedactURL].
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// Config is the whole configuration of a Garrison process.
type Config struct {
	// DataDir holds everything the embedded default keeps (SQLite database,
	// JetStream files, TLS certificate). Deleting it is a factory reset.
	DataDir string `yaml:"data_dir" help:"directory for the embedded database, JetStream files and TLS material"`
	// ShutdownTimeout bounds how long a stop waits for components to drain.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" help:"how long SIGINT/SIGTERM waits for components to drain"`
	Log             Log           `yaml:"log"`
	API             API           `yaml:"api"`
	HTTP            HTTP          `yaml:"http"`
	Broker          Broker        `yaml:"broker"`
	Identity        Identity      `yaml:"identity"`
	Store           Store         `yaml:"store"`
	Bus             Bus           `yaml:"bus"`
	Radius          Radius        `yaml:"radius"`
	Flows           Flows         `yaml:"flows"`
	Cells           Cells         `yaml:"cells"`
	Provider        Provider      `yaml:"provider"`
	OTA             OTA           `yaml:"ota"`
	Exports         Exports       `yaml:"exports"`
	Detect          Detect        `yaml:"detect"`
}

// Exports configures webhooks (per tenant endpoints are managed through the
// API; these are the delivery settings) and the platform's syslog collector
// (see docs/EXPORTS.md).
type Exports struct {
	SyslogAddr          string        `yaml:"syslog_addr" help:"host:port of a syslog collector (RFC 5424 over TCP, octet counting) that receives every alert as OCSF; empty: off"`
	SyslogTLS           bool          `yaml:"syslog_tls" help:"speak TLS (RFC 5425) to the syslog collector"`
	SyslogCAFile        string        `yaml:"syslog_ca_file" help:"PEM file of the CA that signs the syslog collector's certificate; empty: the system roots"`
	WebhookAttempts     int           `yaml:"webhook_attempts" help:"attempts before a webhook delivery goes to the dead-letter list"`
	WebhookBackoff      time.Duration `yaml:"webhook_backoff" help:"wait before the first retry of a webhook delivery, doubled per attempt"`
	WebhookMaxBackoff   time.Duration `yaml:"webhook_max_backoff" help:"longest wait between two attempts of a webhook delivery"`
	WebhookTimeout      time.Duration `yaml:"webhook_timeout" help:"time limit of one webhook request"`
	WebhookAllowPrivate bool          `yaml:"webhook_allow_private" help:"let webhooks reach loopback, private and link-local addresses (off: refused, against SSRF)"`
}

// Radius configures the RADIUS accounting and authentication servers of the
// private APN. The gateways allowed to talk to them, per tenant with their
// shared secrets, are listed in ClientsFile (see docs/CONNECTIVITY.md).
type Radius struct {
	Enabled     bool   `yaml:"enabled" help:"run the RADIUS accounting and authentication servers"`
	AcctAddr    string `yaml:"acct_addr" help:"RADIUS accounting listen address (UDP)"`
	AuthAddr    string `yaml:"auth_addr" help:"RADIUS authentication listen address (UDP)"`
	Mode        string `yaml:"mode" help:"monitor (report a SIM in a foreign IMEI) or enforce (also reject its Access-Request)"`
	ClientsFile string `yaml:"clients_file" help:"peers file listing the NAS clients (gateways) per tenant with their shared secrets"`
	// RequireMessageAuthenticator drops Access-Requests without one.
	RequireMessageAuthenticator bool `yaml:"require_message_authenticator" help:"drop Access-Requests without a Message-Authenticator (Blast-RADIUS mitigation)"`
}

// Flows configures the IPFIX and NetFlow v9 collector.
type Flows struct {
	Enabled       bool   `yaml:"enabled" help:"run the IPFIX and NetFlow v9 collector"`
	IPFIXAddr     string `yaml:"ipfix_addr" help:"IPFIX listen address (UDP)"`
	NetFlowAddr   string `yaml:"netflow_addr" help:"NetFlow v9 listen address (UDP)"`
	ExportersFile string `yaml:"exporters_file" help:"peers file listing the flow exporters per tenant"`
}

// Cells configures the cell table.
type Cells struct {
	CacheTTL       time.Duration `yaml:"cache_ttl" help:"how long a cell lookup is cached in front of the store"`
	ImportMaxBytes int64         `yaml:"import_max_bytes" help:"largest cell file accepted by the import route, in bytes"`
}

// Provider configures the tenants' connectivity-management platforms.
type Provider struct {
	File string `yaml:"file" help:"peers file listing each tenant's connectivity platform (HTTP URL templates)"`
}

// Broker configures the MQTT broker's mutual-TLS listener and the legacy
// password listener (off by default; see docs/BROKER.md).
type Broker struct {
	Addr string `yaml:"addr" help:"MQTT over mutual TLS listen address; :0 picks a free port (written to <data_dir>/run/mqtt.addr)"`
	// PasswordEnabled runs the second listener for legacy devices that
	// cannot hold a certificate: server-only TLS, per-device passwords.
	PasswordEnabled bool   `yaml:"password_enabled" help:"run the legacy password listener (MQTT over server-only TLS, username TENANT/DEVICE, per-device generated passwords); off by default"`
	PasswordAddr    string `yaml:"password_addr" help:"password listener address; :0 picks a free port (written to <data_dir>/run/mqtt-password.addr)"`
	// PasswordAllowTLS12 lets old TLS stacks in (ECDHE+AEAD suites only).
	PasswordAllowTLS12 bool `yaml:"password_allow_tls12" help:"accept TLS 1.2 (ECDHE with AEAD suites only) on the password listener; default TLS 1.3 only"`
	// PasswordInsecurePlaintext serves the password listener without TLS.
	PasswordInsecurePlaintext bool `yaml:"password_insecure_plaintext" help:"INSECURE: serve the password listener as plain TCP, passwords in clear; for a lab only, logs a warning at every start"`
	PasswordMaxFailures       int  `yaml:"password_max_failures" help:"failed password logins one source host may make per minute before it is refused unverified"`
	// Connect-rate limits (docs/BROKER.md): per source address before the
	// TLS handshake, generous because a fleet may share one carrier NAT
	// address; per device at CONNECT, against reconnect loops.
	SourceConnectsPerSecond int `yaml:"source_connects_per_second" help:"new connections one source address (IPv4 host, IPv6 /64) may open per second, both listeners together, refused before the TLS handshake; 0 turns the limit off"`
	SourceConnectBurst      int `yaml:"source_connect_burst" help:"connections a source address may open at once before source_connects_per_second applies"`
	DeviceConnectsPerMinute int `yaml:"device_connects_per_minute" help:"CONNECTs one device may make per minute once its burst is spent; 0 turns the limit off"`
	DeviceConnectBurst      int `yaml:"device_connect_burst" help:"CONNECTs a device may make at once before device_connects_per_minute applies"`
}

// Identity configures the certificate authority. The key passphrase itself
// is never a configuration value: it comes from the environment variable
// GARRISON_KEY_PASSPHRASE or from the file named here (see [Config.KeyPassphrase]).
type Identity struct {
	KeyPassphraseFile string        `yaml:"key_passphrase_file" help:"file holding the passphrase that seals CA private keys (else env GARRISON_KEY_PASSPHRASE)"`
	PublicURL         string        `yaml:"public_url" help:"plain-HTTP base URL devices use for CRL and OCSP; empty: http://localhost:<http port>"`
	CertLifetime      time.Duration `yaml:"cert_lifetime" help:"lifetime of device certificates"`
}

// Log configures the process logger.
type Log struct {
	Level  string `yaml:"level" help:"debug, info, warn or error"`
	Format string `yaml:"format" help:"auto (text on a terminal, JSON otherwise), text or json"`
}

// API configures the HTTPS listener of the API, dashboard and metrics.
type API struct {
	Addr         string        `yaml:"addr" help:"HTTPS listen address; :0 picks a free port (written to <data_dir>/run/api.addr)"`
	MaxBodyBytes int64         `yaml:"max_body_bytes" help:"largest request body accepted, in bytes"`
	TokenTTL     time.Duration `yaml:"token_ttl" help:"lifetime of API tokens created without an explicit expiry"`
}

// HTTP configures the plain-HTTP listener that serves only CRL and OCSP.
type HTTP struct {
	Addr string `yaml:"addr" help:"plain HTTP listen address for CRL and OCSP only"`
}

// Store selects the database.
type Store struct {
	URL string `yaml:"url" secret:"true" help:"empty for SQLite in data_dir, or postgres://user:pass@host/db"`
}

// Bus selects the event bus.
type Bus struct {
	URL string `yaml:"url" secret:"true" help:"empty for NATS JetStream embedded in the process, or nats://host:4222"`
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		DataDir:         "./garrison-data",
		ShutdownTimeout: 15 * time.Second,
		Log:             Log{Level: "info", Format: "auto"},
		API:             API{Addr: ":8443", MaxBodyBytes: 1 << 20, TokenTTL: 90 * 24 * time.Hour},
		HTTP:            HTTP{Addr: ":8080"},
		Broker:          defaultBroker(),
		Identity:        Identity{CertLifetime: 90 * 24 * time.Hour},
		Radius:          Radius{AcctAddr: ":1813", AuthAddr: ":1812", Mode: "monitor"},
		Flows:           Flows{IPFIXAddr: ":4739", NetFlowAddr: ":2055"},
		Cells:           Cells{CacheTTL: 10 * time.Minute, ImportMaxBytes: 1 << 30},
		OTA:             defaultOTA(),
		Detect:          defaultDetect(),
		Exports:         Exports{WebhookAttempts: 8, WebhookBackoff: 2 * time.Second, WebhookMaxBackoff: time.Hour, WebhookTimeout: 10 * time.Second},
	}
}

// Source tells where each key's value came from; keys not in the map hold
// their default.
type Source map[string]string

func (s Source) of(key string) string {
	if v, ok := s[key]; ok {
		return v
	}
	return "default"
}

// FieldError is one problem with one key.
type FieldError struct {
	Key    string // dotted key, e.g. api.addr
	Source string // default, file NAME, env NAME, flag --NAME
	Msg    string
}

func (e FieldError) Error() string { return fmt.Sprintf("%s (%s): %s", e.Key, e.Source, e.Msg) }

// Errors is every problem found, in key order.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// ErrInvalid is matched (errors.Is) by every [Errors] value.
var ErrInvalid = errors.New("invalid configuration")

// Is reports whether target is [ErrInvalid].
func (es Errors) Is(target error) bool { return target == ErrInvalid }

func (es Errors) orNil() error {
	if len(es) == 0 {
		return nil
	}
	sort.SliceStable(es, func(i, j int) bool { return es[i].Key < es[j].Key })
	return es
}

// field is one leaf of Config reached by reflection.
type field struct {
	key    string
	index  []int
	help   string
	secret bool
}

// fields lists every leaf key of Config in declaration order.
func fields() []field {
	var out []field
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := prefix + f.Tag.Get("yaml")
			idx := append(append([]int{}, index...), i)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, key+".", idx)
				continue
			}
			out = append(out, field{key: key, index: idx, help: f.Tag.Get("help"), secret: f.Tag.Get("secret") == "true"})
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
}

// Keys returns every configuration key, dotted, in declaration order.
func Keys() []string {
	fs := fields()
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.key
	}
	return out
}

// EnvName returns the environment variable that sets key.
func EnvName(key string) string {
	return "GARRISON_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// FlagName returns the command-line flag that sets key (without dashes).
func FlagName(key string) string {
	if key == "identity.key_passphrase_file" {
		return "key-passphrase-file" // the name the documentation promises
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// flagKeys lists the keys that [BindFlags] exposes as flags (read only).
var flagKeys = []string{"data_dir", "log.level", "log.format", "api.addr", "http.addr", "broker.addr", "identity.key_passphrase_file", "store.url", "bus.url"}

// BindFlags registers the configuration flags on fs with empty defaults
// (defaults come from [Default]; only flags the user set are applied).
func BindFlags(fs *pflag.FlagSet) {
	for _, f := range fields() {
		for _, k := range flagKeys {
			if k == f.key {
				usage := f.help
				if k == "data_dir" {
					usage += " (default " + Default().DataDir + ")"
				}
				fs.String(FlagName(k), "", usage)
			}
		}
	}
}

// Input is what [Load] reads. Every part is optional.
type Input struct {
	// File is a YAML file to read; FileData, if set, is used instead of
	// reading File (File then only names it in messages).
	File     string
	FileData []byte
	// Environ is the environment, as os.Environ returns it.
	Environ []string
	// Flags are parsed command-line flags registered by [BindFlags]; only
	// those the user set count.
	Flags *pflag.FlagSet
}

// bytesProvider feeds bytes to koanf.
type bytesProvider []byte

func (b bytesProvider) ReadBytes() ([]byte, error)    { return b, nil }
func (b bytesProvider) Read() (map[string]any, error) { return nil, errors.New("not supported") }

// Load builds a Config from defaults and the layers in in. It returns the
// config, where each value came from, and an [Errors] naming every key it
// could not take. It does not validate: call [Config.Validate].
func Load(in Input) (Config, Source, error) {
	cfg := Default()
	src := Source{}
	var errs Errors
	known := map[string]field{}
	for _, f := range fields() {
		known[f.key] = f
	}
	set := func(key string, val any, from string) {
		f, ok := known[key]
		if !ok {
			errs = append(errs, FieldError{Key: key, Source: from, Msg: "unknown key"})
			return
		}
		v := reflect.ValueOf(&cfg).Elem().FieldByIndex(f.index)
		if err := assign(v, val); err != nil {
			errs = append(errs, FieldError{Key: key, Source: from, Msg: err.Error()})
			return
		}
		src[key] = from
	}

	if in.File != "" || in.FileData != nil {
		data := in.FileData
		if data == nil {
			b, err := os.ReadFile(in.File)
			if err != nil {
				return cfg, src, Errors{{Key: "(file)", Source: "file " + in.File, Msg: err.Error()}}
			}
			data = b
		}
		from := "file " + in.File
		k := koanf.New("\x00") // split later: keys may not contain NUL
		if err := k.Load(bytesProvider(data), yaml.Parser()); err != nil {
			return cfg, src, Errors{{Key: "(file)", Source: from, Msg: "malformed YAML: " + err.Error()}}
		}
		flattenInto(k.Raw(), "", func(key string, val any) { set(key, val, from) })
	}

	for _, kv := range in.Environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "GARRISON_") {
			continue
		}
		for key := range known {
			if EnvName(key) == name {
				set(key, val, "env "+name)
			}
		}
	}

	if in.Flags != nil {
		in.Flags.Visit(func(f *pflag.Flag) {
			for _, key := range flagKeys {
				if FlagName(key) == f.Name {
					set(key, f.Value.String(), "flag --"+f.Name)
				}
			}
		})
	}
	return cfg, src, errs.orNil()
}

// flattenInto walks a parsed YAML document, calling fn for every leaf with
// its dotted key. Maps whose key names a leaf are passed whole (so a map
// given where a string belongs becomes a type error, not an unknown key).
func flattenInto(m map[string]any, prefix string, fn func(string, any)) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		key := prefix + k
		if sub, ok := v.(map[string]any); ok && !isLeaf(key) {
			flattenInto(sub, key+".", fn)
			continue
		}
		fn(key, v)
	}
}

func isLeaf(key string) bool {
	for _, f := range fields() {
		if f.key == key {
			return true
		}
	}
	return false
}

// assign converts val (a YAML scalar or an env/flag string) into v.
func assign(v reflect.Value, val any) error {
	switch v.Interface().(type) {
	case time.Duration:
		s, ok := val.(string)
		if !ok {
			return fmt.Errorf("want a duration such as 30s or 5m, got %s", describe(val))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("want a duration such as 30s or 5m, got %q", s)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.Bool:
		switch x := val.(type) {
		case bool:
			v.SetBool(x)
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(x))
			if err != nil {
				return fmt.Errorf("want true or false, got %q", x)
			}
			v.SetBool(b)
		default:
			return fmt.Errorf("want true or false, got %s", describe(val))
		}
	case reflect.String:
		switch x := val.(type) {
		case string:
			v.SetString(x)
		case int, int64, uint64, float64:
			// A bare number where a string belongs (e.g. a port) is kept as written.
			v.SetString(fmt.Sprint(x))
		default:
			return fmt.Errorf("want a string, got %s", describe(val))
		}
	case reflect.Int64, reflect.Int:
		var n int64
		switch x := val.(type) {
		case int:
			n = int64(x)
		case int64:
			n = x
		case uint64:
			if x > 1<<62 {
				return fmt.Errorf("number %d out of range", x)
			}
			n = int64(x)
		case float64:
			if x != float64(int64(x)) {
				return fmt.Errorf("want an integer, got %v", x)
			}
			n = int64(x)
		case string:
			p, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
			if err != nil {
				return fmt.Errorf("want an integer, got %q", x)
			}
			n = p
		default:
			return fmt.Errorf("want an integer, got %s", describe(val))
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("unsupported field kind %s", v.Kind())
	}
	return nil
}

func describe(val any) string {
	switch val.(type) {
	case nil:
		return "nothing"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	default:
		return fmt.Sprintf("%T %v", val, val)
	}
}

// Validate checks the meaning of every value and returns all problems as
// [Errors], naming the key and where its value came from (src may be nil).
func (c Config) Validate(src Source) error {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, FieldError{Key: key, Source: src.of(key), Msg: fmt.Sprintf(format, args...)})
	}
	if strings.TrimSpace(c.DataDir) == "" {
		bad("data_dir", "must not be empty")
	}
	if c.ShutdownTimeout <= 0 || c.ShutdownTimeout > 10*time.Minute {
		bad("shutdown_timeout", "must be between 1ns and 10m, got %s", c.ShutdownTimeout)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "text", "json":
	default:
		bad("log.format", "must be auto, text or json, got %q", c.Log.Format)
	}
	if err := checkAddr(c.API.Addr); err != nil {
		bad("api.addr", "%v", err)
	}
	if err := checkAddr(c.HTTP.Addr); err != nil {
		bad("http.addr", "%v", err)
	}
	if err := checkAddr(c.Broker.Addr); err != nil {
		bad("broker.addr", "%v", err)
	}
	c.validatePasswordListener(bad)
	c.validateConnectRates(bad)
	if c.Identity.PublicURL != "" {
		if u, err := url.Parse(c.Identity.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			bad("identity.public_url", "want an http:// or https:// URL with a host and no user info, got %q", RedactURL(c.Identity.PublicURL))
		}
	}
	if c.Identity.CertLifetime < time.Hour || c.Identity.CertLifetime > 10*365*24*time.Hour {
		bad("identity.cert_lifetime", "must be between 1h and 87600h, got %s", c.Identity.CertLifetime)
	}
	if c.API.MaxBodyBytes < 1024 || c.API.MaxBodyBytes > 64<<20 {
		bad("api.max_body_bytes", "must be between 1024 and 67108864, got %d", c.API.MaxBodyBytes)
	}
	if c.API.TokenTTL < time.Minute {
		bad("api.token_ttl", "must be at least 1m, got %s", c.API.TokenTTL)
	}
	if c.Radius.Enabled {
		if err := checkAddr(c.Radius.AcctAddr); err != nil {
			bad("radius.acct_addr", "%v", err)
		}
		if err := checkAddr(c.Radius.AuthAddr); err != nil {
			bad("radius.auth_addr", "%v", err)
		}
	}
	if c.Radius.Mode != "monitor" && c.Radius.Mode != "enforce" {
		bad("radius.mode", "must be monitor or enforce, got %q", c.Radius.Mode)
	}
	if c.Flows.Enabled {
		if err := checkAddr(c.Flows.IPFIXAddr); err != nil {
			bad("flows.ipfix_addr", "%v", err)
		}
		if err := checkAddr(c.Flows.NetFlowAddr); err != nil {
			bad("flows.netflow_addr", "%v", err)
		}
	}
	if c.Cells.CacheTTL < time.Second || c.Cells.CacheTTL > 24*time.Hour {
		bad("cells.cache_ttl", "must be between 1s and 24h, got %s", c.Cells.CacheTTL)
	}
	if c.Cells.ImportMaxBytes < 1024 {
		bad("cells.import_max_bytes", "must be at least 1024, got %d", c.Cells.ImportMaxBytes)
	}
	c.validateExports(bad)
	if err := checkURL(c.Store.URL, "postgres", "postgresql"); err != nil {
		bad("store.url", "%v", err)
	}
	if err := checkURL(c.Bus.URL, "nats", "tls"); err != nil {
		bad("bus.url", "%v", err)
	}
	c.OTA.validate(bad)
	c.Detect.validate(bad)
	return errs.orNil()
}

func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port or :port, got %q", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("bad host %q", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port must be 0-65535, got %q", port)
	}
	return nil
}

func checkURL(raw string, schemes ...string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL: %s", RedactURL(raw))
	}
	for _, s := range schemes {
		if u.Scheme == s {
			if u.Host == "" {
				return fmt.Errorf("missing host in %s", RedactURL(raw))
			}
			return nil
		}
	}
	return fmt.Errorf("scheme must be %s (or empty for the embedded default), got %q", strings.Join(schemes, " or "), u.Scheme)
}

// RedactURL hides the password of a URL, in its user info or in a password
// query parameter. A string that does not parse is hidden entirely.
func RedactURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable, redacted)"
	}
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "token") {
			q.Set(k, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.Redacted()
}

// Redacted returns a copy of c whose secret values are redacted, for logs
// and printing.
func (c Config) Redacted() Config {
	c.Store.URL = RedactURL(c.Store.URL)
	c.Bus.URL = RedactURL(c.Bus.URL)
	return c
}

func (c Config) validateExports(bad func(key, format string, args ...any)) {
	e := c.Exports
	if e.SyslogAddr != "" {
		if host, _, err := net.SplitHostPort(e.SyslogAddr); err != nil || host == "" {
			bad("exports.syslog_addr", "want host:port of the collector, got %q", e.SyslogAddr)
		}
	}
	if (e.SyslogTLS || e.SyslogCAFile != "") && e.SyslogAddr == "" {
		bad("exports.syslog_tls", "syslog_tls and syslog_ca_file need exports.syslog_addr")
	}
	if e.SyslogCAFile != "" && !e.SyslogTLS {
		bad("exports.syslog_ca_file", "needs exports.syslog_tls: true")
	}
	if e.WebhookAttempts < 1 || e.WebhookAttempts > 100 {
		bad("exports.webhook_attempts", "must be between 1 and 100, got %d", e.WebhookAttempts)
	}
	if e.WebhookBackoff < 10*time.Millisecond || e.WebhookBackoff > e.WebhookMaxBackoff {
		bad("exports.webhook_backoff", "must be between 10ms and exports.webhook_max_backoff (%s), got %s", e.WebhookMaxBackoff, e.WebhookBackoff)
	}
	if e.WebhookMaxBackoff > 24*time.Hour {
		bad("exports.webhook_max_backoff", "must be at most 24h, got %s", e.WebhookMaxBackoff)
	}
	if e.WebhookTimeout < time.Second || e.WebhookTimeout > 5*time.Minute {
		bad("exports.webhook_timeout", "must be between 1s and 5m, got %s", e.WebhookTimeout)
	}
}

// defaultBroker: the connect-rate defaults are explained in docs/BROKER.md.
func defaultBroker() Broker {
	return Broker{Addr: ":8883", PasswordAddr: ":8884", PasswordMaxFailures: 10,
		SourceConnectsPerSecond: 100, SourceConnectBurst: 1000, DeviceConnectsPerMinute: 6, DeviceConnectBurst: 10}
}

// validateConnectRates checks the broker's connect-rate limits.
func (c Config) validateConnectRates(bad func(key, format string, args ...any)) {
	b := c.Broker
	for _, k := range []struct {
		key       string
		v, lo, hi int
	}{
		{"broker.source_connects_per_second", b.SourceConnectsPerSecond, 0, 100_000},
		{"broker.source_connect_burst", b.SourceConnectBurst, 1, 1_000_000},
		{"broker.device_connects_per_minute", b.DeviceConnectsPerMinute, 0, 60_000},
		{"broker.device_connect_burst", b.DeviceConnectBurst, 1, 10_000},
	} {
		if k.v < k.lo || k.v > k.hi {
			bad(k.key, "must be between %d and %d, got %d", k.lo, k.hi, k.v)
		}
	}
}

// validatePasswordListener checks the legacy password listener's keys:
// its options need it enabled, and plaintext excludes a TLS setting.
func (c Config) validatePasswordListener(bad func(key, format string, args ...any)) {
	b := c.Broker
	if err := checkAddr(b.PasswordAddr); err != nil {
		bad("broker.password_addr", "%v", err)
	} else if b.PasswordEnabled && b.PasswordAddr == b.Addr && !strings.HasSuffix(b.Addr, ":0") {
		bad("broker.password_addr", "must differ from broker.addr (%s)", b.Addr)
	}
	if b.PasswordMaxFailures < 1 || b.PasswordMaxFailures > 10000 {
		bad("broker.password_max_failures", "must be between 1 and 10000, got %d", b.PasswordMaxFailures)
	}
	if !b.PasswordEnabled {
		if b.PasswordInsecurePlaintext {
			bad("broker.password_insecure_plaintext", "needs broker.password_enabled: true")
		}
		if b.PasswordAllowTLS12 {
			bad("broker.password_allow_tls12", "needs broker.password_enabled: true")
		}
	}
	if b.PasswordInsecurePlaintext && b.PasswordAllowTLS12 {
		bad("broker.password_allow_tls12", "contradicts broker.password_insecure_plaintext (no TLS at all)")
	}
}
