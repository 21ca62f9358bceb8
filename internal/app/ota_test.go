package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// otaDevice is a device with a platform-issued certificate, an MQTT v5
// session (paho) and an HTTPS client presenting the same certificate.
type otaDevice struct {
	id     event.DeviceID
	cert   tls.Certificate
	leaf   *x509.Certificate
	mqtt   *paho.Client
	https  *http.Client
	jobs   chan ota.Job
	status []string
	mu     sync.Mutex
}

func issueDevice(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID, id event.DeviceID) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: string(id)}}, key)
	require.NoError(t, err)
	iss, err := a.Identity().Issue(ctx, tenant, id, csr, identity.IssueOptions{Actor: "test"})
	require.NoError(t, err)
	tc := tls.Certificate{Certificate: [][]byte{iss.Cert.Raw, iss.Chain[0].Raw}, PrivateKey: key, Leaf: iss.Cert}
	return tc, iss.Cert
}

func connectDevice(t *testing.T, ctx context.Context, a *app.App, d *otaDevice) {
	t.Helper()
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	conf := &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{d.cert}}
	nc, err := tls.Dial("tcp", a.MQTTAddr().String(), conf)
	require.NoError(t, err)
	d.jobs = make(chan ota.Job, 4)
	d.mqtt = paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc), PacketTimeout: 30 * time.Second, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			var j ota.Job
			if json.Unmarshal(pr.Packet.Payload, &j) == nil {
				d.jobs <- j
			}
			return true, nil
		},
	}})
	ca, err := d.mqtt.Connect(ctx, &paho.Connect{ClientID: string(d.id), KeepAlive: 30, CleanStart: true})
	require.NoError(t, err)
	require.EqualValues(t, 0, ca.ReasonCode)
	sa, err := d.mqtt.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/" + string(d.id) + "/ota/job", QoS: 1}}})
	require.NoError(t, err)
	require.Less(t, int(sa.Reasons[0]), 3)
	d.https = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
}

func (d *otaDevice) report(ctx context.Context, st ota.Status) error {
	b, _ := json.Marshal(st)
	d.mu.Lock()
	d.status = append(d.status, st.State)
	d.mu.Unlock()
	_, err := d.mqtt.Publish(ctx, &paho.Publish{Topic: "devices/" + string(d.id) + "/ota/status", QoS: 1, Payload: b})
	return err
}

// download fetches the artifact in two ranges, as a device resuming an
// interrupted download does.
func (d *otaDevice) download(url string, size int64) ([]byte, error) {
	var out []byte
	for _, rg := range []string{fmt.Sprintf("bytes=0-%d", size/2-1), fmt.Sprintf("bytes=%d-", size/2)} {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Range", rg)
		resp, err := d.https.Do(req)
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusPartialContent {
			return nil, fmt.Errorf("range %s: status %d: %s", rg, resp.StatusCode, b)
		}
		out = append(out, b...)
	}
	return out, nil
}

// TestCampaignOverMQTT runs the whole app: ten devices with platform-issued
// certificates (one quarantined) hold MQTT v5 sessions with paho, receive
// jobs, verify them with the firmware package against their root key,
// download the artifact over mutual TLS with Range, and report. Two
// devices of wave 2 roll back: the gate pauses the campaign and wave 3
// gets nothing; an operator resumes and the campaign completes.
func TestCampaignOverMQTT(t *testing.T) {
	cfg := testConfig(t)
	cfg.OTA.Tick = 20 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())

	const tenant = event.TenantID("acme")
	now := time.Now().UTC()
	devs := make([]*otaDevice, 10)
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for i := range devs {
			st := store.StateActive
			if i == 0 {
				st = store.StateQuarantined
			}
			devs[i] = &otaDevice{id: event.DeviceID(fmt.Sprintf("meter-%04d", i))}
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: devs[i].id, Model: "m1", State: st,
				Firmware: "1.1.0", CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	for _, d := range devs {
		d.cert, d.leaf = issueDevice(t, ctx, a, tenant, d.id)
		connectDevice(t, ctx, a, d)
	}

	// The tenant's offline keys; the server gets the root's public half,
	// the keys document and a signed release.
	fw := app.TrustFirmwareKeys(t, ctx, a, tenant)
	rootPub := fw.Root()
	art := bytes.Repeat([]byte("garrison firmware 1.2.0 "), 4000)
	digest := fw.AddRelease(t, ctx, a, tenant, art, "1.2.0")

	// Without a device certificate, or for an unknown digest: no artifact.
	pool, err := tlsutil.Pool(filepath.Join(a.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	resp, err := anon.Get("https://" + a.APIAddr().String() + "/api/v1/firmware/artifacts/" + digest)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, err = devs[1].https.Get("https://" + a.APIAddr().String() + "/api/v1/firmware/artifacts/" + hex.EncodeToString(make([]byte, 32)))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// The devices: verify, download, check, report.
	var handled, rolled atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var j ota.Job
				select {
				case j = <-d.jobs:
				case <-ctx.Done():
					return
				}
				n := handled.Add(1)
				err := func() error {
					mf, _, err := firmware.Verify(j.Manifest, j.Keys, rootPub, 0, time.Now())
					if err != nil {
						return err
					}
					if err := firmware.VerifyForDevice(mf, "m1", "1.1.0", time.Now()); err != nil {
						return err
					}
					if err := d.report(ctx, ota.Status{Job: j.Job, State: ota.TargetDownloading}); err != nil {
						return err
					}
					b, err := d.download(j.URL, mf.Signed.Size)
					if err != nil {
						return err
					}
					if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != mf.Signed.SHA256 {
						return fmt.Errorf("%s: downloaded artifact digest mismatch", d.id)
					}
					// Two devices of wave 2 (jobs 3 to 6) roll back, never the
					// quarantined one, whose update is its way back.
					if n >= 3 && n <= 6 && d != devs[0] && rolled.Add(1) <= 2 {
						return d.report(ctx, ota.Status{Job: j.Job, State: ota.TargetRolledBack, Reason: "boot check failed"})
					}
					return d.report(ctx, ota.Status{Job: j.Job, State: ota.TargetSucceeded, Version: mf.Signed.Version, Digest: mf.Signed.SHA256})
				}()
				if err != nil {
					errs <- fmt.Errorf("%s: %w", d.id, err)
				}
			}
		}()
	}

	c, err := a.Campaigns().Create(ctx, tenant, "test", ota.Spec{Release: digest, Selector: ota.Selector{Model: "m1"},
		Waves: []float64{20, 60, 100}, Gate: ota.Gate{MaxFailure: ptr(0.25)}})
	require.NoError(t, err)
	get := func() (store.Campaign, map[string]int) {
		var cp store.Campaign
		counts := map[string]int{}
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			var err error
			if cp, err = tx.Campaigns().Get(ctx, tenant, c.ID); err != nil {
				return err
			}
			cs, err := tx.Campaigns().CountTargets(ctx, tenant, c.ID)
			for _, x := range cs {
				counts[fmt.Sprintf("%d/%s", x.Wave+1, x.State)] += x.N
			}
			return err
		}))
		return cp, counts
	}
	require.Eventually(t, func() bool { cp, _ := get(); return cp.State == store.CampaignPaused }, 30*time.Second, 20*time.Millisecond,
		"the failing gate of wave 2 pauses the campaign")
	cp, _ := get()
	require.Contains(t, cp.Reason, "gate of wave 2 failed: failure ratio 0.500 above 0.250")
	require.Eventually(t, func() bool {
		_, counts := get()
		return counts["2/succeeded"]+counts["2/rolled_back"] == 4
	}, 10*time.Second, 20*time.Millisecond, "jobs in progress finish while paused")
	_, counts := get()
	require.Equal(t, map[string]int{"1/succeeded": 2, "2/succeeded": 2, "2/rolled_back": 2, "3/pending": 4}, counts,
		"wave 3 got nothing")
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	_, err = a.Campaigns().Resume(ctx, tenant, "test", c.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { cp, _ := get(); return cp.State == store.CampaignCompleted }, 30*time.Second, 20*time.Millisecond)
	_, counts = get()
	require.Equal(t, map[string]int{"1/succeeded": 2, "2/succeeded": 2, "2/rolled_back": 2, "3/succeeded": 4}, counts)
	require.Equal(t, int32(10), handled.Load(), "one job per device")
	devs[0].mu.Lock()
	require.Contains(t, devs[0].status, ota.TargetSucceeded, "the quarantined device updated: its way back")
	devs[0].mu.Unlock()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	cancel()
	wg.Wait()
	for _, d := range devs {
		_ = d.mqtt.Disconnect(&paho.Disconnect{})
		d.https.CloseIdleConnections()
	}
	anon.CloseIdleConnections()
}

func ptr[T any](v T) *T { return &v }

// TestJobResentOnReconnect: a device offline when its wave was sent gets
// the job when it connects and subscribes later (jobs are not retained),
// and its registry firmware follows the successful update.
func TestJobResentOnReconnect(t *testing.T) {
	cfg := testConfig(t)
	cfg.OTA.Tick = 20 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	defer a.Stop(context.Background())

	const tenant = event.TenantID("acme")
	now := time.Now().UTC()
	d := &otaDevice{id: "meter-0100"}
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: d.id, Model: "m1", State: store.StateActive, Firmware: "1.1.0", CreatedAt: now, UpdatedAt: now})
	}))
	d.cert, d.leaf = issueDevice(t, ctx, a, tenant, d.id)

	digest := app.TrustFirmwareKeys(t, ctx, a, tenant).AddRelease(t, ctx, a, tenant, []byte("garrison firmware 1.2.0"), "1.2.0")

	c, err := a.Campaigns().Create(ctx, tenant, "test", ota.Spec{Release: digest, Selector: ota.Selector{Model: "m1"}})
	require.NoError(t, err)
	// The job goes out while the device is offline.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			cs, err := tx.Campaigns().CountTargets(ctx, tenant, c.ID)
			for _, x := range cs {
				if x.State == ota.TargetSent {
					n += x.N
				}
			}
			return err
		}))
		return n == 1
	}, 20*time.Second, 20*time.Millisecond, "the job was sent")
	time.Sleep(100 * time.Millisecond) // a few engine steps: nothing re-sends by itself

	connectDevice(t, ctx, a, d) // connects and subscribes to its ota/job
	defer d.mqtt.Disconnect(&paho.Disconnect{})
	var j ota.Job
	select {
	case j = <-d.jobs:
	case <-ctx.Done():
		t.Fatal("the job was not sent again when the device subscribed")
	}
	require.Equal(t, c.ID, j.Campaign)
	require.NoError(t, d.report(ctx, ota.Status{Job: j.Job, State: ota.TargetSucceeded, Version: "1.2.0", Digest: digest}))
	require.Eventually(t, func() bool {
		var dev store.Device
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) (err error) { dev, err = tx.Devices().Get(ctx, tenant, d.id); return err }))
		return dev.Firmware == "1.2.0"
	}, 20*time.Second, 20*time.Millisecond, "the registry records the new firmware")
}
