package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

func TestDefaultYAMLLoadsToDefaults(t *testing.T) {
	cfg, src, err := Load(Input{File: "defaults.yaml", FileData: []byte(DefaultYAML())})
	require.NoError(t, err)
	require.Equal(t, Default(), cfg)
	require.NoError(t, cfg.Validate(src))
	for _, k := range Keys() {
		require.Contains(t, DefaultYAML(), EnvName(k), "every key documented")
		require.Equal(t, "file defaults.yaml", src[k], k)
	}
}

func TestPrecedence(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindFlags(fs)
	require.NoError(t, fs.Parse([]string{"--api-addr", "127.0.0.1:9003"}))
	cfg, src, err := Load(Input{
		File:     "g.yaml",
		FileData: []byte("api:\n  addr: 127.0.0.1:9001\nhttp:\n  addr: 127.0.0.1:9101\nlog:\n  level: debug\n"),
		Environ: []string{
			"GARRISON_API_ADDR=127.0.0.1:9002", "GARRISON_HTTP_ADDR=127.0.0.1:9102",
			"GARRISON_URL=https://x", "GARRISON_TOKEN=gar_secret", "GARRISON_TEST_POSTGRES_URL=postgres://h/db",
			"GARRISON_DATA_DIR=/tmp/g", "GARRISON_SHUTDOWN_TIMEOUT=3s", "PATH=/bin",
		},
		Flags: fs,
	})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9003", cfg.API.Addr)
	require.Equal(t, "flag --api-addr", src["api.addr"])
	require.Equal(t, "127.0.0.1:9102", cfg.HTTP.Addr)
	require.Equal(t, "env GARRISON_HTTP_ADDR", src["http.addr"])
	require.Equal(t, "debug", cfg.Log.Level)
	require.Equal(t, "/tmp/g", cfg.DataDir)
	require.Equal(t, 3*time.Second, cfg.ShutdownTimeout)
	require.Equal(t, "", cfg.Store.URL, "GARRISON_URL and GARRISON_TEST_* are not config")
	require.Equal(t, Default().API.MaxBodyBytes, cfg.API.MaxBodyBytes)
}

func TestLoadErrorsAllAtOnce(t *testing.T) {
	_, _, err := Load(Input{
		File:     "bad.yaml",
		FileData: []byte("api:\n  addr: [1, 2]\n  max_body_bytes: lots\nnope: 1\nshutdown_timeout: 5\n"),
		Environ:  []string{"GARRISON_API_TOKEN_TTL=forever"},
	})
	var es Errors
	require.ErrorAs(t, err, &es)
	require.ErrorIs(t, err, ErrInvalid)
	msg := err.Error()
	for _, want := range []string{
		"api.addr (file bad.yaml): want a string",
		"api.max_body_bytes (file bad.yaml): want an integer",
		"nope (file bad.yaml): unknown key",
		"shutdown_timeout (file bad.yaml): want a duration",
		"api.token_ttl (env GARRISON_API_TOKEN_TTL): want a duration",
	} {
		require.Contains(t, msg, want)
	}
	require.Len(t, es, 5)
}

func TestMalformedYAML(t *testing.T) {
	_, _, err := Load(Input{File: "x.yaml", FileData: []byte("api: [\n")})
	require.ErrorContains(t, err, "malformed YAML")
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"defaults", func(*Config) {}, nil},
		{"random ports", func(c *Config) { c.API.Addr = "127.0.0.1:0"; c.HTTP.Addr = ":0"; c.Broker.Addr = ":0" }, nil},
		{"public url", func(c *Config) { c.Identity.PublicURL = "https://pki.example.net:8080/base" }, nil},
		{"postgres and nats", func(c *Config) {
			c.Store.URL = "postgres://u:p@127.0.0.1:5432/test"
			c.Bus.URL = "nats://127.0.0.1:4222"
		}, nil},
		{"everything wrong", func(c *Config) {
			c.DataDir = " "
			c.ShutdownTimeout = 0
			c.Log.Level = "loud"
			c.Log.Format = "xml"
			c.API.Addr = "8443"
			c.HTTP.Addr = ":99999"
			c.API.MaxBodyBytes = 1
			c.API.TokenTTL = time.Second
			c.Store.URL = "mysql://u:hunter2@h/db"
			c.Bus.URL = "nats://"
			c.Broker.Addr = "mqtt"
			c.Identity.PublicURL = "ftp://u:hunter2@pki"
			c.Identity.CertLifetime = time.Minute
			c.OTA.PublicURL, c.OTA.MaxArtifactBytes, c.OTA.Tick = "http://u:hunter2@x", 1, 0
			c.Exports = Exports{SyslogAddr: ":514", SyslogCAFile: "ca.pem", WebhookMaxBackoff: 48 * time.Hour}
			c.Detect = Detect{FeedRefresh: time.Second, FeedTimeout: 0, FeedMaxBytes: 10, SnapshotInterval: time.Second}
			c.Broker.PasswordAddr, c.Broker.PasswordMaxFailures = "8884", 0
			c.Broker.PasswordInsecurePlaintext, c.Broker.PasswordAllowTLS12 = true, true
			c.Broker.SourceConnectsPerSecond, c.Broker.SourceConnectBurst = -1, 0
			c.Broker.DeviceConnectsPerMinute, c.Broker.DeviceConnectBurst = 60_001, 0
		}, []string{"broker.source_connects_per_second", "broker.source_connect_burst", "broker.device_connects_per_minute", "broker.device_connect_burst",
			"broker.password_addr", "broker.password_max_failures", "broker.password_insecure_plaintext",
			"broker.password_allow_tls12", "broker.password_allow_tls12", "detect.feed_refresh", "detect.feed_timeout", "detect.feed_max_bytes", "detect.snapshot_interval", "ota.public_url", "ota.max_artifact_bytes", "ota.tick", "data_dir", "shutdown_timeout", "log.level", "log.format", "api.addr", "http.addr",
			"api.max_body_bytes", "api.token_ttl", "store.url", "bus.url", "broker.addr", "identity.public_url",
			"identity.cert_lifetime", "exports.syslog_addr", "exports.syslog_ca_file", "exports.webhook_attempts",
			"exports.webhook_backoff", "exports.webhook_max_backoff", "exports.webhook_timeout"}},
		{"detect", func(c *Config) {
			c.Detect = Detect{FeedsFile: "/etc/garrison/feeds.yaml", FeedRefresh: 6 * time.Hour, FeedTimeout: 30 * time.Second, FeedMaxBytes: 1 << 20}
		}, nil},
		{"password listener", func(c *Config) {
			c.Broker.PasswordEnabled, c.Broker.PasswordAllowTLS12, c.Broker.PasswordAddr = true, true, "127.0.0.1:0"
		}, nil},
		{"connect rates off", func(c *Config) { c.Broker.SourceConnectsPerSecond, c.Broker.DeviceConnectsPerMinute = 0, 0 }, nil},
		{"password listener plaintext", func(c *Config) { c.Broker.PasswordEnabled, c.Broker.PasswordInsecurePlaintext = true, true }, nil},
		{"syslog over tls", func(c *Config) {
			c.Exports.SyslogAddr, c.Exports.SyslogTLS, c.Exports.SyslogCAFile = "siem.example.net:6514", true, "/etc/garrison/siem-ca.pem"
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(&c)
			err := c.Validate(Source{"api.addr": "flag --api-addr"})
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			var es Errors
			require.True(t, errors.As(err, &es))
			var keys []string
			for _, e := range es {
				keys = append(keys, e.Key)
			}
			require.ElementsMatch(t, tc.want, keys)
			require.Contains(t, err.Error(), "api.addr (flag --api-addr)")
			require.Contains(t, err.Error(), "data_dir (default)")
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"":                               "",
		"postgres://u:hunter2@h:5432/db": "postgres://u:xxxxx@h:5432/db",
		"postgres://h/db?password=hunter2&sslmode=x": "postgres://h/db?password=xxxxx&sslmode=x",
		"nats://h:4222":       "nats://h:4222",
		"postgres://u:p%zz@h": "(unparseable, redacted)",
	} {
		got := RedactURL(in)
		require.Equal(t, want, got, in)
		require.NotContains(t, got, "hunter2")
	}
	c := Default()
	c.Store.URL = "postgres://u:hunter2@h/db"
	require.NotContains(t, c.Redacted().Store.URL, "hunter2")
	require.Contains(t, c.Store.URL, "hunter2", "Redacted returns a copy")
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(DefaultYAML()))
	f.Add([]byte("api:\n  addr: :0\n"))
	f.Add([]byte("store: {url: 5}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, src, err := Load(Input{File: "f.yaml", FileData: data})
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			for _, e := range es {
				if e.Key == "" || !strings.HasPrefix(e.Source, "file ") {
					t.Fatalf("error without key or source: %+v", e)
				}
			}
			return
		}
		_ = cfg.Validate(src)
		_ = cfg.Redacted()
	})
}

func TestPasswordListenerNotOnTheMTLSPort(t *testing.T) {
	c := Default()
	require.False(t, c.Broker.PasswordEnabled, "the password listener is off by default")
	c.Broker.PasswordEnabled, c.Broker.PasswordAddr = true, c.Broker.Addr
	err := c.Validate(nil)
	require.ErrorContains(t, err, "broker.password_addr (default): must differ from broker.addr (:8883)")
	var es Errors
	require.ErrorAs(t, err, &es)
	require.Len(t, es, 1)
}
