package tlsutil

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLoadOrCreateReusesAndRenews(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Now()
	first, err := LoadOrCreate(dir, now)
	require.NoError(t, err)
	require.True(t, first.Created)
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	again, err := LoadOrCreate(dir, now.Add(24*time.Hour))
	require.NoError(t, err)
	require.False(t, again.Created)
	require.Equal(t, first.Cert.Certificate[0], again.Cert.Certificate[0])

	late, err := LoadOrCreate(dir, now.Add(810*24*time.Hour))
	require.NoError(t, err)
	require.True(t, late.Created, "renewed within 30 days of expiry")

	require.NoError(t, os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage"), 0o600))
	_, err = LoadOrCreate(dir, now)
	require.Error(t, err, "a damaged pair is reported, not silently replaced")
}

func TestPinnedClientTrustsServer(t *testing.T) {
	dir := t.TempDir()
	res, err := LoadOrCreate(dir, time.Now())
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{res.Cert}}
	srv.StartTLS()
	defer srv.Close()

	pool, err := Pool(res.CertPath)
	require.NoError(t, err)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(srv.URL)
	require.NoError(t, err)
	resp.Body.Close()

	other, err := LoadOrCreate(t.TempDir(), time.Now())
	require.NoError(t, err)
	pool2, err := Pool(other.CertPath)
	require.NoError(t, err)
	c2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool2}}}
	_, err = c2.Get(srv.URL)
	require.Error(t, err, "a different certificate is not trusted")
}
