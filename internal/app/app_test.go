package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

var tokenRE = regexp.MustCompile(`gar_[0-9a-f]{16}_[0-9a-f]{64}`)

// testPass seals the CA keys of the apps these tests start.
var testPass = []byte("app-test-passphrase-not-secret")

func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.API.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Broker.Addr = "127.0.0.1:0"
	cfg.ShutdownTimeout = 10 * time.Second
	return cfg
}

func TestNewHasNoSideEffects(t *testing.T) {
	cfg := testConfig(t)
	_, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	_, err = os.Stat(cfg.DataDir)
	require.ErrorIs(t, err, os.ErrNotExist)

	cfg.API.Addr = "nope"
	cfg.Log.Level = "loud"
	_, err = app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.ErrorIs(t, err, config.ErrInvalid)
	require.Contains(t, err.Error(), "api.addr")
	require.Contains(t, err.Error(), "log.level")

	_, err = app.New(testConfig(t), nil, app.Options{})
	require.ErrorIs(t, err, config.ErrNoPassphrase, "no passphrase, no app")
}

func TestStartStopEmbedded(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	runLifecycle(t, testConfig(t))
}

// TestStartStopPostgresAndNATS runs the same lifecycle on PostgreSQL and an
// external NATS JetStream server.
func TestStartStopPostgresAndNATS(t *testing.T) {
	runLifecycle(t, pgNATSConfig(t))
}

// pgNATSConfig is testConfig on PostgreSQL (a private schema, dropped
// afterwards) and external NATS, or a skip when they are not configured.
func pgNATSConfig(t *testing.T) config.Config {
	pgURL, natsURL := os.Getenv("GARRISON_TEST_POSTGRES_URL"), os.Getenv("GARRISON_TEST_NATS_URL")
	if pgURL == "" || natsURL == "" {
		t.Skip("set GARRISON_TEST_POSTGRES_URL and GARRISON_TEST_NATS_URL to run against PostgreSQL and external NATS")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgURL)
	require.NoError(t, err)
	schema := fmt.Sprintf("app_test_%d", time.Now().UnixNano())
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		conn.Close(context.Background())
	})
	sep := "?"
	if strings.Contains(pgURL, "?") {
		sep = "&"
	}
	cfg := testConfig(t)
	cfg.Store.URL = pgURL + sep + "search_path=" + schema
	cfg.Bus.URL = natsURL
	return cfg
}

// TestRunStoppedDuringStart: a stop requested while starting is a clean
// stop, not a failure.
func TestRunStoppedDuringStart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, err := app.New(testConfig(t), nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, a.Run(ctx))
}

func runLifecycle(t *testing.T, cfg config.Config) {
	ctx := context.Background()
	var out bytes.Buffer
	a, err := app.New(cfg, nil, app.Options{Out: &out, KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	stopped := false
	defer func() {
		if !stopped {
			a.Stop(context.Background())
		}
	}()
	token := tokenRE.FindString(out.String())
	require.NotEmpty(t, token, "first start prints the bootstrap token")
	addr, err := os.ReadFile(filepath.Join(a.DataDir(), "run", "api.addr"))
	require.NoError(t, err)
	require.Equal(t, a.APIAddr().String()+"\n", string(addr))
	addr, err = os.ReadFile(filepath.Join(a.DataDir(), "run", "mqtt.addr"))
	require.NoError(t, err)
	require.Equal(t, a.MQTTAddr().String()+"\n", string(addr))

	c := client(t, a)
	code, body := do(t, c, a, "GET", "/healthz", "")
	require.Equal(t, 200, code, body)
	code, body = do(t, c, a, "GET", "/readyz", "")
	require.Equal(t, 200, code, body)
	code, _ = do(t, c, a, "GET", "/metrics", "")
	require.Equal(t, 401, code, "metrics need a token")
	code, body = do(t, c, a, "GET", "/api/v1/whoami", token)
	require.Equal(t, 200, code, body)
	require.Contains(t, body, "platform-admin")
	code, body = do(t, c, a, "GET", "/metrics", token)
	require.Equal(t, 200, code)
	require.Contains(t, body, "garrison_api_requests_total")
	require.Contains(t, body, "garrison_broker_sessions")
	c.CloseIdleConnections()

	require.NoError(t, a.Stop(ctx))
	stopped = true
	for _, f := range []string{"api.addr", "mqtt.addr"} {
		_, err = os.Stat(filepath.Join(a.DataDir(), "run", f))
		require.ErrorIs(t, err, os.ErrNotExist, "a clean stop removes the address file %s", f)
	}

	// Second start: the token still works and is not printed again.
	out.Reset()
	b, err := app.New(cfg, nil, app.Options{Out: &out, KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx))
	defer b.Stop(context.Background())
	require.Empty(t, out.String())
	c = client(t, b)
	code, body = do(t, c, b, "GET", "/api/v1/whoami", token)
	require.Equal(t, 200, code, body)
	c.CloseIdleConnections()
	require.NoError(t, b.Stop(ctx))
}

func client(t *testing.T, a *app.App) *http.Client {
	t.Helper()
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
}

func do(t *testing.T, c *http.Client, a *app.App, method, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+a.APIAddr().String()+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}
