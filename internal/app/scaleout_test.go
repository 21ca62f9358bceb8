package app_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// twoNodes starts two apps of one deployment: one PostgreSQL schema, one
// namespace of the external NATS server (its streams deleted afterwards),
// each with its own data directory and listeners. It skips when the
// services are not configured.
func twoNodes(t *testing.T, ctx context.Context, detection bool) (a, b *app.App) {
	t.Helper()
	cfgA := pgNATSConfig(t)
	var tok [6]byte
	_, err := rand.Read(tok[:])
	require.NoError(t, err)
	ns := "so" + hex.EncodeToString(tok[:])
	t.Cleanup(func() {
		bb, err := bus.Open(context.Background(), bus.Options{URL: cfgA.Bus.URL, StreamPrefix: ns + "_", SubjectPrefix: ns})
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if err := bb.DeleteStreams(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		_ = bb.Close()
	})
	cfgB := cfgA
	cfgB.DataDir = filepath.Join(t.TempDir(), "data-b")
	start := func(cfg config.Config, node string) *app.App {
		n, err := app.New(cfg, nil, app.Options{KeyPassphrase: testPass, NoDetection: !detection, Node: node, BusNamespace: ns})
		require.NoError(t, err)
		require.NoError(t, n.Start(ctx), "start %s", node)
		t.Cleanup(func() { _ = n.Stop(context.Background()) })
		return n
	}
	// One after the other: the first migrates and bootstraps the store.
	return start(cfgA, "node-a"), start(cfgB, "node-b")
}

// cmdDevice is a device answering platform commands over its own MQTT v5
// session (paho): it records every command id it receives and reports
// pong for each.
type cmdDevice struct {
	mu   sync.Mutex
	got  map[string]int
	todo chan string
}

func (d *cmdDevice) count(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[id]
}

// TestCommandsAcrossNodes: a device holds its session on node B; a
// command POSTed to node A reaches it through B, its answer (arriving on
// B) completes the command in the shared store and node A's API shows the
// outcome. A command POSTed to B, where the session is, goes out at once
// and only once.
func TestCommandsAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, false)

	const tenant, dev = event.TenantID("acme"), event.DeviceID("trk-0007")
	token, cert := activeDeviceOn(t, ctx, nodeA, tenant, dev)

	// The device connects to node B.
	nc := dialMQTT(t, nodeB, cert)
	d := &cmdDevice{got: map[string]int{}, todo: make(chan string, 16)}
	cl := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc), PacketTimeout: 30 * time.Second, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			var p struct{ ID string }
			if json.Unmarshal(pr.Packet.Payload, &p) == nil && p.ID != "" {
				d.mu.Lock()
				d.got[p.ID]++
				d.mu.Unlock()
				d.todo <- p.ID
			}
			return true, nil
		},
	}})
	ca, err := cl.Connect(ctx, &paho.Connect{ClientID: string(dev), KeepAlive: 30, CleanStart: true})
	require.NoError(t, err)
	require.EqualValues(t, 0, ca.ReasonCode)
	defer cl.Disconnect(&paho.Disconnect{})
	sa, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/" + string(dev) + "/commands", QoS: 1}}})
	require.NoError(t, err)
	require.Less(t, int(sa.Reasons[0]), 3)
	// The device answers from its own goroutine, not paho's callback.
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for {
			select {
			case <-ctx.Done():
				return
			case id := <-d.todo:
				b, _ := json.Marshal(map[string]any{"type": "command.result", "id": id, "ok": true, "output": "pong from b"})
				if _, err := cl.Publish(ctx, &paho.Publish{Topic: "devices/" + string(dev) + "/events", QoS: 1, Payload: b}); err != nil {
					return
				}
			}
		}
	}()
	defer func() { cancel(); <-answered }()
	require.Eventually(t, func() bool { return nodeB.Broker().Live(tenant, dev) }, 30*time.Second, 10*time.Millisecond, "the session is on node B")
	require.False(t, nodeA.Broker().Live(tenant, dev), "and not on node A")

	base := "/api/v1/tenants/" + string(tenant) + "/devices/" + string(dev) + "/commands"
	post := func(n *app.App) store.Command {
		t.Helper()
		var cmd store.Command
		require.Equal(t, 202, doJSON(t, client(t, n), n, "POST", base, token, `{"name":"ping"}`, &cmd))
		return cmd
	}
	outcome := func(n *app.App, id string) store.Command {
		t.Helper()
		var cmd store.Command
		c := client(t, n)
		require.Eventually(t, func() bool {
			require.Equal(t, 200, doJSON(t, c, n, "GET", base+"/"+id, token, "", &cmd))
			return cmd.Status == store.CommandSucceeded || cmd.Status == store.CommandFailed
		}, 30*time.Second, 20*time.Millisecond, "command %s completed", id)
		return cmd
	}

	// POSTed to A: A holds no session, so the command is stored offline
	// and relayed; B delivers it.
	posted := time.Now()
	viaA := post(nodeA)
	require.Equal(t, store.CommandOffline, viaA.Status, "node A has no session of the device")
	got := outcome(nodeA, viaA.ID)
	t.Logf("relayed command answered and read on node A %s after the POST", time.Since(posted).Round(time.Millisecond))
	require.Equal(t, store.CommandSucceeded, got.Status)
	require.Equal(t, "pong from b", got.Output)

	// POSTed to B: delivered locally at once, not relayed.
	viaB := post(nodeB)
	require.NotEqual(t, store.CommandOffline, viaB.Status, "node B holds the session")
	require.Equal(t, store.CommandSucceeded, outcome(nodeA, viaB.ID).Status)

	// Once more through A, then every command arrived exactly once.
	again := post(nodeA)
	require.Equal(t, store.CommandSucceeded, outcome(nodeB, again.ID).Status)
	for _, id := range []string{viaA.ID, viaB.ID, again.ID} {
		require.Equal(t, 1, d.count(id), "command %s delivered once", id)
	}
}

// TestMassRunnerFailover: of two nodes, exactly one holds the
// mass-actions lease and runs the mass-action runner. A job submitted
// through the other node runs on the holder; when the holder stops
// mid-job, the other node takes the lease over and finishes the job from
// its cursor.
func TestMassRunnerFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, true)
	const lease = "mass-actions"
	holder, other := leaseHolder(t, lease, nodeA, nodeB)

	// Slow enough (one device a second) that the holder's stop, even on a
	// loaded machine, comes well before the job's end.
	const tenant, n = event.TenantID("acme"), 30
	now := time.Now().UTC()
	require.NoError(t, nodeA.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for i := range n {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: event.DeviceID(fmt.Sprintf("meter-%04d", i)), Model: "m1",
				State: store.StateActive, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	token := operatorToken(t, ctx, nodeA, tenant)

	// Submitted through the node that does not run the runner.
	base := "/api/v1/tenants/" + string(tenant) + "/mass"
	var job store.MassJob
	require.Equal(t, 202, doJSON(t, client(t, other), other, "POST", base, token,
		`{"kind":"quarantine","selector":"*","rate":1,"reason":"failover test"}`, &job))
	require.Equal(t, n, job.Total)
	read := func(via *app.App) store.MassJob {
		t.Helper()
		var j store.MassJob
		require.Equal(t, 200, doJSON(t, client(t, via), via, "GET", base+"/"+job.ID, token, "", &j))
		return j
	}
	require.Eventually(t, func() bool {
		require.False(t, other.HoldsLease(lease), "the standby node does not run the runner")
		return read(other).Processed > 0
	}, 30*time.Second, 50*time.Millisecond, "the holder runs the job submitted elsewhere")

	// The holder stops mid-job; the other node takes over and finishes.
	require.NoError(t, holder.Stop(context.Background()))
	var mid store.MassJob
	require.NoError(t, other.Store().View(ctx, func(tx store.Tx) (err error) {
		mid, err = tx.Mass().Job(ctx, tenant, job.ID)
		return err
	}))
	require.Equal(t, "running", mid.State)
	require.Less(t, mid.Processed, n, "stopped mid-job")
	stopped := time.Now()
	require.Eventually(t, func() bool { return other.HoldsLease(lease) }, 30*time.Second, 50*time.Millisecond,
		"the other node takes the lease over")
	t.Logf("takeover %s after the holder stopped, %d of %d devices processed then", time.Since(stopped).Round(10*time.Millisecond), mid.Processed, n)
	var done store.MassJob
	require.Eventually(t, func() bool {
		done = read(other)
		return done.State != "running"
	}, 120*time.Second, 100*time.Millisecond, "the job finishes on the new holder")
	require.Equal(t, "done", done.State, done.Error)
	require.Equal(t, n, done.Processed)
	require.Equal(t, n, done.Changed+done.Unchanged, "every device quarantined once")
	require.NoError(t, other.Store().View(ctx, func(tx store.Tx) error {
		for i := range n {
			d, err := tx.Devices().Get(ctx, tenant, event.DeviceID(fmt.Sprintf("meter-%04d", i)))
			require.NoError(t, err)
			require.Equal(t, store.StateQuarantined, d.State, d.ID)
		}
		return nil
	}))
}

// TestKickAcrossNodes: a mass kick job runs on the node holding the
// runner's lease; the device's session is on the other node, which closes
// it on the job's device.session_kick.
func TestKickAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeA, nodeB := twoNodes(t, ctx, true)
	const lease = "mass-actions"
	var holder, other *app.App
	require.Eventually(t, func() bool {
		switch {
		case nodeA.HoldsLease(lease):
			holder, other = nodeA, nodeB
		case nodeB.HoldsLease(lease):
			holder, other = nodeB, nodeA
		}
		return holder != nil
	}, 30*time.Second, 20*time.Millisecond, "one node takes the lease")

	const tenant, dev = event.TenantID("acme"), event.DeviceID("trk-0009")
	token, cert := activeDeviceOn(t, ctx, nodeA, tenant, dev)
	nc := dialMQTT(t, other, cert)
	gone := make(chan *paho.Disconnect, 1)
	cl := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc), PacketTimeout: 30 * time.Second,
		OnServerDisconnect: func(d *paho.Disconnect) { gone <- d }})
	ca, err := cl.Connect(ctx, &paho.Connect{ClientID: string(dev), KeepAlive: 30, CleanStart: true})
	require.NoError(t, err)
	require.EqualValues(t, 0, ca.ReasonCode)
	defer cl.Disconnect(&paho.Disconnect{})
	require.Eventually(t, func() bool { return other.Broker().Live(tenant, dev) }, 30*time.Second, 10*time.Millisecond, "the session is on the other node")
	require.False(t, holder.Broker().Live(tenant, dev))

	var job store.MassJob
	require.Equal(t, 202, doJSON(t, client(t, holder), holder, "POST", "/api/v1/tenants/"+string(tenant)+"/mass", token,
		`{"kind":"kick","selector":"*","reason":"across nodes"}`, &job))
	select {
	case d := <-gone:
		require.NotNil(t, d)
	case <-time.After(30 * time.Second):
		t.Fatal("the session on the other node was not closed")
	}
	require.Eventually(t, func() bool { return !other.Broker().Live(tenant, dev) }, 30*time.Second, 20*time.Millisecond)
}

// activeDeviceOn creates tenant and an active device through
// node's store, and returns an operator token and the device's certificate.
func activeDeviceOn(t *testing.T, ctx context.Context, node *app.App, tenant event.TenantID, dev event.DeviceID) (string, tls.Certificate) {
	t.Helper()
	now := time.Now().UTC()
	require.NoError(t, node.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: dev, Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now})
	}))
	token := operatorToken(t, ctx, node, tenant)
	cert, _ := issueDevice(t, ctx, node, tenant, dev)
	return token, cert
}

// dialMQTT opens a mutual-TLS connection to node's broker as cert.
func dialMQTT(t *testing.T, node *app.App, cert tls.Certificate) net.Conn {
	t.Helper()
	pool, err := tlsutil.Pool(filepath.Join(node.DataDir(), "tls", tlsutil.CertFile))
	require.NoError(t, err)
	nc, err := tls.Dial("tcp", node.MQTTAddr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	require.NoError(t, err)
	return nc
}
