package app_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

const campaignLease = "campaigns"

// campaignHolder waits until exactly one of two nodes runs the campaign
// engine and returns it first.
func campaignHolder(t *testing.T, nodeA, nodeB *app.App) (holder, other *app.App) {
	t.Helper()
	return leaseHolder(t, campaignLease, nodeA, nodeB)
}

// leaseHolder waits until exactly one of two nodes holds lease and
// returns it first.
func leaseHolder(t *testing.T, lease string, nodeA, nodeB *app.App) (holder, other *app.App) {
	t.Helper()
	require.Eventually(t, func() bool {
		a, b := nodeA.HoldsLease(lease), nodeB.HoldsLease(lease)
		require.False(t, a && b, "both nodes hold the lease "+lease)
		switch {
		case a:
			holder, other = nodeA, nodeB
		case b:
			holder, other = nodeB, nodeA
		}
		return a || b
	}, 30*time.Second, 20*time.Millisecond, "one node takes the lease "+lease)
	return holder, other
}

// otaFleet creates the tenant and n active m1 devices on firmware 1.1.0
// through node's store, each with a platform-issued certificate.
func otaFleet(t *testing.T, ctx context.Context, node *app.App, tenant event.TenantID, n int) []*otaDevice {
	t.Helper()
	now := time.Now().UTC()
	devs := make([]*otaDevice, n)
	require.NoError(t, node.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for i := range devs {
			devs[i] = &otaDevice{id: event.DeviceID(fmt.Sprintf("meter-%04d", i))}
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: devs[i].id, Model: "m1", State: store.StateActive,
				Firmware: "1.1.0", CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	for _, d := range devs {
		d.cert, d.leaf = issueDevice(t, ctx, node, tenant, d.id)
	}
	return devs
}

// otaRelease trusts a fresh root and release key for tenant through node
// and adds a signed 1.2.0 release for m1; it returns the digest.
func otaRelease(t *testing.T, ctx context.Context, node *app.App, tenant event.TenantID) string {
	t.Helper()
	return otaReleaseOf(t, ctx, node, tenant, []byte("garrison firmware 1.2.0 for several nodes"))
}

// otaReleaseOf is otaRelease with the artifact art.
func otaReleaseOf(t *testing.T, ctx context.Context, node *app.App, tenant event.TenantID, art []byte) string {
	t.Helper()
	return app.TrustFirmwareKeys(t, ctx, node, tenant).AddRelease(t, ctx, node, tenant, art, "1.2.0")
}

// nextJob waits for the next job any of devs receives whose job id is not
// in done (a job sent again after a takeover is the same job).
func nextJob(t *testing.T, ctx context.Context, devs []*otaDevice, done map[string]bool) (*otaDevice, ota.Job) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, d := range devs {
			select {
			case j := <-d.jobs:
				if !done[j.Job] {
					return d, j
				}
			default:
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no firmware job arrived")
	return nil, ota.Job{}
}

func succeed(t *testing.T, ctx context.Context, d *otaDevice, j ota.Job, digest string) {
	t.Helper()
	require.NoError(t, d.report(ctx, ota.Status{Job: j.Job, State: ota.TargetSucceeded, Version: "1.2.0", Digest: digest}))
}

// campaignView is the API's campaign as the tests read it.
type campaignView struct {
	ID     string              `json:"id"`
	State  string              `json:"state"`
	Reason string              `json:"reason"`
	Wave   int                 `json:"wave"`
	Counts []store.TargetCount `json:"counts"`
}

func (c campaignView) count(state string) int {
	n := 0
	for _, x := range c.Counts {
		if x.State == state {
			n += x.N
		}
	}
	return n
}

// TestCampaignAcrossNodes: two nodes on PostgreSQL and external NATS; one
// runs the campaign engine. A campaign created, paused and resumed through
// the other node's API takes effect; a device whose session is on the
// other node gets its job relayed there, and its ota/status report,
// received by that node's broker, reaches the engine over the bus and
// advances the campaign; a device on the engine's node is served locally.
// Every device gets its job once.
func TestCampaignAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, false)
	holder, other := campaignHolder(t, nodeA, nodeB)

	const tenant = event.TenantID("acme")
	devs := otaFleet(t, ctx, holder, tenant, 2)
	token := operatorToken(t, ctx, holder, tenant)
	connectDevice(t, ctx, other, devs[0])
	connectDevice(t, ctx, holder, devs[1])
	defer func() {
		for _, d := range devs {
			_ = d.mqtt.Disconnect(&paho.Disconnect{})
		}
	}()
	require.Eventually(t, func() bool {
		return other.Broker().Live(tenant, devs[0].id) && holder.Broker().Live(tenant, devs[1].id)
	}, 30*time.Second, 10*time.Millisecond)
	require.False(t, holder.Broker().Live(tenant, devs[0].id), "devs[0] only on the other node")
	digest := otaRelease(t, ctx, other, tenant)

	base := "/api/v1/tenants/" + string(tenant) + "/campaigns"
	cl := client(t, other)
	var c campaignView
	require.Equal(t, 201, doJSON(t, cl, other, "POST", base, token,
		`{"release":"`+digest+`","selector":{"model":"m1"},"waves":[50,100]}`, &c), "created through the node not running the engine")
	read := func(via *app.App) campaignView {
		t.Helper()
		var v campaignView
		require.Equal(t, 200, doJSON(t, client(t, via), via, "GET", base+"/"+c.ID, token, "", &v))
		return v
	}

	done := map[string]bool{}
	first, j1 := nextJob(t, ctx, devs, done)
	require.Equal(t, c.ID, j1.Campaign)
	// Paused through the other node before the report: the engine sees
	// the pause (its next step re-reads the campaign) before it could
	// start wave 2.
	require.Equal(t, 200, doJSON(t, cl, other, "POST", base+"/"+c.ID+"/pause", token, `{"reason":"look first"}`, &c))
	succeed(t, ctx, first, j1, digest)
	done[j1.Job] = true
	require.Eventually(t, func() bool { return read(other).count(ota.TargetSucceeded) == 1 }, 30*time.Second, 50*time.Millisecond,
		"the report reaches the engine and is written")
	v := read(holder)
	require.Equal(t, "paused", v.State)
	require.Equal(t, "look first", v.Reason)
	require.Equal(t, 1, v.Wave, "paused in wave 1")
	require.Equal(t, 1, v.count(ota.TargetPending), "wave 2 not started while paused")

	require.Equal(t, 200, doJSON(t, cl, other, "POST", base+"/"+c.ID+"/resume", token, "", &c))
	second, j2 := nextJob(t, ctx, devs, done)
	require.NotEqual(t, first.id, second.id)
	succeed(t, ctx, second, j2, digest)
	require.Eventually(t, func() bool { return read(other).State == "completed" }, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, 2, read(other).count(ota.TargetSucceeded))
	for _, d := range devs {
		require.Empty(t, d.jobs, "%s got its job once", d.id)
		var dev store.Device
		require.NoError(t, other.Store().View(ctx, func(tx store.Tx) (err error) { dev, err = tx.Devices().Get(ctx, tenant, d.id); return err }))
		require.Equal(t, "1.2.0", dev.Firmware, "the registry follows the update of %s", d.id)
	}
}

// TestCampaignFailover: the node running the campaign engine stops in the
// middle of a campaign whose devices are connected to the other node. The
// other node takes the campaigns lease over, resumes the campaign from the
// store, takes the report a device sent while no node ran the engine, and
// finishes the campaign.
func TestCampaignFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, false)
	holder, other := campaignHolder(t, nodeA, nodeB)

	const tenant = event.TenantID("acme")
	devs := otaFleet(t, ctx, other, tenant, 4)
	for _, d := range devs {
		connectDevice(t, ctx, other, d)
	}
	defer func() {
		for _, d := range devs {
			_ = d.mqtt.Disconnect(&paho.Disconnect{})
		}
	}()
	digest := otaRelease(t, ctx, holder, tenant)
	c, err := holder.Campaigns().Create(ctx, tenant, "test", ota.Spec{Release: digest, Selector: ota.Selector{Model: "m1"}, Waves: []float64{50, 100}})
	require.NoError(t, err)
	stored := func() (store.Campaign, map[string]int) {
		var cp store.Campaign
		counts := map[string]int{}
		require.NoError(t, other.Store().View(ctx, func(tx store.Tx) error {
			var err error
			if cp, err = tx.Campaigns().Get(ctx, tenant, c.ID); err != nil {
				return err
			}
			cs, err := tx.Campaigns().CountTargets(ctx, tenant, c.ID)
			for _, x := range cs {
				counts[x.State] += x.N
			}
			return err
		}))
		return cp, counts
	}

	done := map[string]bool{}
	d1, j1 := nextJob(t, ctx, devs, done)
	done[j1.Job] = true
	d2, j2 := nextJob(t, ctx, devs, done)
	done[j2.Job] = true
	succeed(t, ctx, d1, j1, digest)
	require.Eventually(t, func() bool { _, n := stored(); return n[ota.TargetSucceeded] == 1 }, 30*time.Second, 50*time.Millisecond)

	// The holder stops mid-campaign; the second report of wave 1 is sent
	// while no node runs the engine (or the other is taking over).
	require.NoError(t, holder.Stop(context.Background()))
	cp, n := stored()
	require.Equal(t, store.CampaignRunning, cp.State)
	require.Equal(t, 0, cp.Wave)
	require.Equal(t, 2, n[ota.TargetPending], "stopped mid-campaign")
	stopped := time.Now()
	succeed(t, ctx, d2, j2, digest)
	require.Eventually(t, func() bool { return other.HoldsLease(campaignLease) }, 30*time.Second, 50*time.Millisecond,
		"the other node takes the campaigns lease over")
	t.Logf("takeover %s after the holder stopped", time.Since(stopped).Round(10*time.Millisecond))

	// Wave 2 goes out from the new holder; its devices report.
	for range 2 {
		d, j := nextJob(t, ctx, devs, done)
		done[j.Job] = true
		succeed(t, ctx, d, j, digest)
	}
	require.Eventually(t, func() bool { cp, _ := stored(); return cp.State == store.CampaignCompleted }, 60*time.Second, 50*time.Millisecond,
		"the new holder finishes the campaign")
	_, n = stored()
	require.Equal(t, map[string]int{ota.TargetSucceeded: 4}, n)
}

// TestJobResentAcrossNodes: a device offline when its job went out
// connects later to the node that does not run the engine. Its job
// subscription there reaches the engine over the bus, which sends the
// job again, relayed to that node; its report completes the campaign.
func TestJobResentAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, false)
	holder, other := campaignHolder(t, nodeA, nodeB)

	const tenant = event.TenantID("acme")
	devs := otaFleet(t, ctx, holder, tenant, 1)
	digest := otaRelease(t, ctx, holder, tenant)
	c, err := holder.Campaigns().Create(ctx, tenant, "test", ota.Spec{Release: digest, Selector: ota.Selector{Model: "m1"}, Waves: []float64{100}})
	require.NoError(t, err)
	sent := func() bool {
		var n int
		require.NoError(t, other.Store().View(ctx, func(tx store.Tx) error {
			cs, err := tx.Campaigns().CountTargets(ctx, tenant, c.ID)
			for _, x := range cs {
				if x.State == ota.TargetSent {
					n += x.N
				}
			}
			return err
		}))
		return n == 1
	}
	require.Eventually(t, sent, 30*time.Second, 50*time.Millisecond, "the job went out while the device was offline")

	connectDevice(t, ctx, other, devs[0]) // connects and subscribes to its ota/job on the other node
	defer devs[0].mqtt.Disconnect(&paho.Disconnect{})
	d, j := nextJob(t, ctx, devs, nil)
	require.Equal(t, c.ID, j.Campaign)
	succeed(t, ctx, d, j, digest)
	require.Eventually(t, func() bool {
		var cp store.Campaign
		require.NoError(t, other.Store().View(ctx, func(tx store.Tx) (err error) { cp, err = tx.Campaigns().Get(ctx, tenant, c.ID); return err }))
		return cp.State == store.CampaignCompleted
	}, 30*time.Second, 50*time.Millisecond)
}

// TestArtifactAcrossNodes: two nodes on PostgreSQL and external NATS, each
// with its own data directory. A release uploaded through node A's API
// reaches the bus's object store; a device with its certificate
// downloads the artifact from node B, whole and by ranges, and gets the
// exact bytes, which node B then keeps in its own artifacts directory.
func TestArtifactAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, false)

	const tenant = event.TenantID("acme")
	devs := otaFleet(t, ctx, nodeA, tenant, 1)
	art := make([]byte, 1<<20+123) // several object store chunks
	_, err := rand.Read(art)
	require.NoError(t, err)
	digest := otaReleaseUploaded(t, ctx, nodeA, tenant, art)
	_, err = os.Stat(filepath.Join(nodeA.DataDir(), "artifacts", "sha256", digest[:2], digest))
	require.NoError(t, err, "node A stored the upload")
	kept := filepath.Join(nodeB.DataDir(), "artifacts", "sha256", digest[:2], digest)
	_, err = os.Stat(kept)
	require.ErrorIs(t, err, fs.ErrNotExist, "node B never saw the upload")

	pool, err := tlsutil.Pool(filepath.Join(nodeB.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	dev := &otaDevice{https: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{devs[0].cert}}}}}
	url := "https://" + nodeB.APIAddr().String() + "/api/v1/firmware/artifacts/" + digest
	got, err := dev.download(url, int64(len(art)))
	require.NoError(t, err)
	require.True(t, bytes.Equal(art, got), "ranges from node B are the uploaded bytes")
	resp, err := dev.https.Get(url)
	require.NoError(t, err)
	full, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode, "%s", full)
	require.True(t, bytes.Equal(art, full), "whole download from node B is the uploaded bytes")
	onDisk, err := os.ReadFile(kept)
	require.NoError(t, err)
	require.True(t, bytes.Equal(art, onDisk), "node B keeps the artifact")
}

// otaReleaseUploaded trusts keys through node and uploads a signed 1.2.0
// release of art for m1 through node's API (as garrison firmware upload
// does); it returns the digest.
func otaReleaseUploaded(t *testing.T, ctx context.Context, node *app.App, tenant event.TenantID, art []byte) string {
	t.Helper()
	now := time.Now().UTC()
	mb, digest := app.TrustFirmwareKeys(t, ctx, node, tenant).Manifest(t, art, "1.2.0")
	sec, err := auth.NewSecret(nil)
	require.NoError(t, err)
	require.NoError(t, node.Store().Update(ctx, func(tx store.Tx) error {
		op := store.Operator{ID: "op-firmware", Tenant: tenant, Name: "firmware", Role: store.RoleAdmin, CreatedAt: now}
		if err := tx.Operators().Create(ctx, op); err != nil {
			return err
		}
		return tx.Tokens().Create(ctx, store.Token{ID: sec.ID, Tenant: tenant, Operator: op.ID, Role: op.Role,
			Name: "firmware", Hash: sec.Hash, CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	}))
	req, err := http.NewRequestWithContext(ctx, "POST", "https://"+node.APIAddr().String()+"/api/v1/tenants/"+string(tenant)+"/firmware/releases",
		io.MultiReader(bytes.NewReader(mb), strings.NewReader("\n"), bytes.NewReader(art)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+sec.Plaintext)
	req.Header.Set("Content-Type", "application/vnd.garrison.release")
	resp, err := client(t, node).Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 201, resp.StatusCode, "upload: %s", body)
	return digest
}
