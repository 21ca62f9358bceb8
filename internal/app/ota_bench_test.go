package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// BenchmarkArtifactDownload: GARRISON_BENCH_CLIENTS (default 1000)
// devices, each with its own platform-issued certificate and its own TLS
// connection (a full mutual-TLS handshake, the chain verified by identity
// against the tenant's CA and the certificate record), download a 1 MiB
// artifact at the same time from the API listener of a running app.
// Clients and server share the process and its CPUs.
func BenchmarkArtifactDownload(b *testing.B) {
	clients := 1000
	if v, err := strconv.Atoi(os.Getenv("GARRISON_BENCH_CLIENTS")); err == nil && v > 0 {
		clients = v
	}
	ctx := context.Background()
	cfg := benchConfig(b)
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer a.Stop(context.Background())
	const tenant = event.TenantID("acme")
	now := time.Now().UTC()
	reqs := make([]identity.BatchRequest, clients)
	keys := make([]*ecdsa.PrivateKey, clients)
	if err := a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for i := range clients {
			id := event.DeviceID(fmt.Sprintf("meter-%05d", i))
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: id, Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
			keys[i], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: string(id)}}, keys[i])
			if err != nil {
				return err
			}
			reqs[i] = identity.BatchRequest{Device: id, CSR: csr}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	res, err := a.Identity().IssueBatch(ctx, tenant, reqs, identity.IssueOptions{Actor: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	art := make([]byte, 1<<20)
	_, _ = rand.Read(art)
	digest := app.TrustFirmwareKeys(b, ctx, a, tenant).AddRelease(b, ctx, a, tenant, art, "1.2.0")
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	if err != nil {
		b.Fatal(err)
	}
	url := "https://" + a.APIAddr().String() + "/api/v1/firmware/artifacts/" + digest
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		start := time.Now()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cert := tls.Certificate{Certificate: [][]byte{res[i].Issued.Cert.Raw, res[i].Issued.Chain[0].Raw}, PrivateKey: keys[i]}
				tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}},
					DisableKeepAlives: true}
				defer tr.CloseIdleConnections()
				c := &http.Client{Timeout: 10 * time.Minute, Transport: tr}
				resp, err := c.Get(url)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil || resp.StatusCode != 200 || n != int64(len(art)) {
					errs <- fmt.Errorf("status %d, %d bytes, %v", resp.StatusCode, n, err)
				}
			}()
		}
		wg.Wait()
		total += time.Since(start)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	secs := total.Seconds() / float64(b.N)
	b.ReportMetric(float64(clients), "clients")
	b.ReportMetric(float64(clients)*float64(len(art))/secs/1e6, "MB/s")
	b.ReportMetric(float64(clients)/secs, "downloads/s")
}

func benchConfig(b *testing.B) config.Config {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(b.TempDir(), "data")
	cfg.API.Addr = "127.0.0.1:0"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Broker.Addr = "127.0.0.1:0"
	cfg.Log.Level = "error"
	return cfg
}
