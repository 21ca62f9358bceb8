package broker

import (
	"bytes"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// BenchmarkHookPublish measures Garrison's own work per device publish,
// without the network, TLS or the MQTT server: the two hook calls mochi
// makes for every PUBLISH (the write ACL check, then OnPublish with
// quarantine, limits, the mqtt.publish event, payload decoding and the
// device.telemetry event), each event encoded as the bus encodes it. Run
// with -benchmem: allocs/op does not depend on the machine's load.
func BenchmarkHookPublish(b *testing.B) {
	payload := []byte(`{"temp":21.5,"hum":40,"seq":1,"pad":"`)
	payload = append(payload, bytes.Repeat([]byte("x"), 256-len(payload)-2)...)
	payload = append(payload, '"', '}')
	for _, tc := range []struct {
		name, sub string
		payload   []byte
		events    int64 // per publish
	}{
		{"telemetry", "telemetry", payload, 2},
		{"metrics", "metrics", []byte(`{"ts":"2026-11-24T23:00:00Z","fw_version":"1.4.2","fw_digest":"sha256:0f3a","listening_ports":[22,443,8883],"connections":12,"processes":48,"uptime_s":86400}`), 2},
		{"ota", "ota/status", []byte(`{"state":"downloading","progress":42}`), 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, cl, pub := hookBench(b, "dev-0001")
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 0},
				TopicName: "devices/dev-0001/" + tc.sub, Payload: tc.payload}
			b.SetBytes(int64(len(tc.payload)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if !h.OnACLCheck(cl, pk.TopicName, true) {
					b.Fatal("publish denied")
				}
				if _, err := h.OnPublish(cl, pk); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got, want := pub.n.Load(), tc.events*int64(b.N); got != want {
				b.Fatalf("%d events published, want %d", got, want)
			}
		})
	}
}

// hookBench builds a broker (not started) and one authenticated session
// for device, as the mTLS listener and OnConnectAuthenticate would.
func hookBench(b *testing.B, device event.DeviceID) (*hook, *mqtt.Client, *marshalPublisher) {
	b.Helper()
	p := newTestPKI(b, "bench-ca")
	_, _, serverCert, _ := p.issue(b, "", "", time.Now().Add(time.Hour))
	pub := &marshalPublisher{}
	br, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		States: &memStates{m: map[event.DeviceID]store.DeviceState{device: store.StateActive}}, Publisher: pub,
		PublishRate: 1e9, PublishBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	h := &hook{b: br}
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Conn: &conn{id: Identity{Tenant: "acme", Device: device, Serial: "01ab"}}, Remote: "127.0.0.1:50000"}}
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{ClientIdentifier: string(device)}}
	if !h.OnConnectAuthenticate(cl, connect) {
		b.Fatal("connect refused")
	}
	if pub.n.Load() != 0 {
		b.Fatalf("%d events at connect", pub.n.Load())
	}
	return h, cl, pub
}
