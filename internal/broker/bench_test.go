package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/mqttconn"
	"github.com/garrisonhq/garrison/internal/store"
)

// marshalPublisher stands in for the bus in broker benchmarks: it encodes
// every event as the bus does before sending it (event.Marshal, the binary
// form) and counts them, keeping nothing.
type marshalPublisher struct{ n atomic.Int64 }

func (p *marshalPublisher) Publish(_ context.Context, ev *event.Event) error {
	if _, err := event.Marshal(ev); err != nil {
		return err
	}
	p.n.Add(1)
	return nil
}

// benchTarget is a broker under benchmark: its address and how a device
// connects to it.
type benchTarget struct {
	addr  string
	pki   *testPKI
	certs map[event.DeviceID]tls.Certificate
	pid   int // the broker's process when it is not this one
}

// cpu returns the CPU time used so far by this process (the load
// generator, and Garrison when it runs in-process) plus the broker's own
// process if it has one.
func (bt *benchTarget) cpu(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	d := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if bt.pid == 0 {
		return d
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", bt.pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command: utime and stime are the
	// 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	return d + time.Duration(ut+stt)*10*time.Millisecond
}

func startGarrison(b *testing.B, p *testPKI, devices []event.DeviceID) *benchTarget {
	b.Helper()
	_, _, serverCert, _ := p.issue(b, "", "", time.Now().Add(time.Hour))
	st := &memStates{m: map[event.DeviceID]store.DeviceState{}}
	for _, d := range devices {
		st.m[d] = store.StateActive
	}
	br, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		States: st, Publisher: &marshalPublisher{}, PublishRate: 1e9, PublishBurst: 1 << 30,
		// The connect benchmark reconnects 64 devices from one address as
		// fast as it can; Mosquitto has no such limits either.
		SourceConnectRate: -1, DeviceConnectRate: -1})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	return &benchTarget{addr: br.Addr().String(), pki: p}
}

// startMosquitto runs Debian's mosquitto with the same CA, require_certificate
// and a per-device ACL equivalent to Garrison's.
func startMosquitto(b *testing.B, p *testPKI) *benchTarget {
	b.Helper()
	return startMosquittoCA(b, p, filepath.Join(p.dir, "ca.pem"))
}

// startMosquittoCA is startMosquitto trusting the client CAs of cafile
// (PEM) instead of p's.
func startMosquittoCA(b *testing.B, p *testPKI, cafile string) *benchTarget {
	b.Helper()
	if _, err := exec.LookPath("mosquitto"); err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			b.Skip("mosquitto not installed (Debian package mosquitto)")
		}
	}
	certFile, keyFile, _, _ := p.issue(b, "", "", time.Now().Add(time.Hour))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	acl := filepath.Join(p.dir, "acl")
	os.WriteFile(acl, []byte("pattern write devices/%u/telemetry\npattern write devices/%u/metrics\npattern read devices/%u/commands\n"), 0o600)
	conf := filepath.Join(p.dir, "mosquitto.conf")
	// As root, mosquitto drops to user mosquitto unless told otherwise, and
	// could then not read the test's key files.
	os.WriteFile(conf, []byte(fmt.Sprintf(`user root
per_listener_settings false
persistence false
log_dest none
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
acl_file %s
max_queued_messages 10000
`, port, cafile, certFile, keyFile, acl)), 0o600)
	bin := "/usr/sbin/mosquitto"
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 200 {
			b.Fatal("mosquitto did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &benchTarget{addr: addr, pki: p, pid: cmd.Process.Pid}
}

func (bt *benchTarget) connect(ctx context.Context, tc tls.Certificate, id event.DeviceID) (*paho.Client, error) {
	nc, err := tls.Dial("tcp", bt.addr, &tls.Config{RootCAs: bt.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: mqttconn.Locked(nc)})
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: string(id), KeepAlive: 60, CleanStart: true})
	if err != nil {
		return nil, err
	}
	if ca.ReasonCode != 0 {
		return nil, fmt.Errorf("connack %d", ca.ReasonCode)
	}
	return c, nil
}

// BenchmarkPublish measures publish throughput of 32 devices over mutual
// TLS, Garrison (ACLs and event encoding on) against Mosquitto (with an
// equivalent ACL), in one run, and the CPU time per message of the broker
// and the in-process clients together (cpu-us/msg). QoS 0 ends each client's burst with a QoS 1
// barrier so that every message counted was processed by the broker.
func BenchmarkPublish(b *testing.B) {
	const nDev = 32
	// A 256-byte telemetry object: Garrison decodes it (a device.telemetry
	// event for the data stream besides the publish metadata).
	payload := []byte(`{"temp":21.5,"hum":40,"seq":1,"pad":"`)
	payload = append(payload, bytes.Repeat([]byte("x"), 256-len(payload)-2)...)
	payload = append(payload, '"', '}')
	for _, target := range []string{"garrison", "mosquitto"} {
		for _, qos := range []byte{0, 1} {
			b.Run(fmt.Sprintf("%s/qos%d", target, qos), func(b *testing.B) {
				p := newTestPKI(b, "bench-ca")
				devs := make([]event.DeviceID, nDev)
				certs := make([]tls.Certificate, nDev)
				for i := range devs {
					devs[i] = event.DeviceID(fmt.Sprintf("dev-%04d", i))
					_, _, certs[i], _ = p.issue(b, "acme", devs[i], time.Now().Add(time.Hour))
				}
				var bt *benchTarget
				if target == "garrison" {
					bt = startGarrison(b, p, devs)
				} else {
					bt = startMosquitto(b, p)
				}
				ctx := context.Background()
				clients := make([]*paho.Client, nDev)
				for i := range clients {
					c, err := bt.connect(ctx, certs[i], devs[i])
					if err != nil {
						b.Fatal(err)
					}
					clients[i] = c
					defer c.Disconnect(&paho.Disconnect{})
				}
				b.SetBytes(int64(len(payload)))
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := bt.cpu(b)
				var wg sync.WaitGroup
				per := (b.N + nDev - 1) / nDev
				for i, c := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						topic := "devices/" + string(devs[i]) + "/telemetry"
						for range per {
							if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload}); err != nil {
								b.Error(err)
								return
							}
						}
						if qos == 0 {
							if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
								b.Error(err)
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(per*nDev)/b.Elapsed().Seconds(), "msgs/s")
				// CPU per message of broker and clients together: what
				// bounds throughput on a saturated machine, and far less
				// sensitive to other load than msgs/s (10 ms resolution
				// for Mosquitto's process: use -benchtime 40000x or more).
				b.ReportMetric(float64((bt.cpu(b)-cpu0).Microseconds())/float64(per*nDev), "cpu-us/msg")
			})
		}
	}
}

// BenchmarkConnect measures mutual-TLS connects per second (TLS 1.3
// handshake, chain verification, CONNECT/CONNACK) from 8 parallel clients,
// next to the crypto-bound rate on the same machine: one ECDSA P-256
// signature plus the client chain verification, per handshake.
func BenchmarkConnect(b *testing.B) {
	p := newTestPKI(b, "bench-ca")
	const nDev = 64
	devs := make([]event.DeviceID, nDev)
	certs := make([]tls.Certificate, nDev)
	for i := range devs {
		devs[i] = event.DeviceID(fmt.Sprintf("dev-%04d", i))
		_, _, certs[i], _ = p.issue(b, "acme", devs[i], time.Now().Add(time.Hour))
	}
	b.Run("crypto-bound", func(b *testing.B) {
		key := certs[0].PrivateKey.(*ecdsa.PrivateKey)
		leaf, _ := x509.ParseCertificate(certs[0].Certificate[0])
		digest := sha256.Sum256([]byte("transcript"))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
					b.Error(err)
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					b.Error(err)
				}
			}
		})
	})
	for _, target := range []string{"garrison", "mosquitto"} {
		b.Run(target, func(b *testing.B) {
			var bt *benchTarget
			if target == "garrison" {
				bt = startGarrison(b, p, devs)
			} else {
				bt = startMosquitto(b, p)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := int(next.Add(1)) % nDev
					if err := bt.rawConnect(certs[i], devs[i]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
		})
	}
}

// rawConnect is the lightest possible device: TLS, an MQTT 3.1.1 CONNECT,
// the CONNACK, a DISCONNECT. Client libraries allocate far more per
// connection than the broker does (paho: ~500 KB), which would measure the
// load generator instead of the broker.
func (bt *benchTarget) rawConnect(tc tls.Certificate, id event.DeviceID) error {
	c, err := tls.Dial("tcp", bt.addr, &tls.Config{RootCAs: bt.pki.pool, Certificates: []tls.Certificate{tc}, ServerName: "localhost"})
	if err != nil {
		return err
	}
	defer c.Close()
	var pk []byte
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60} // protocol, level 4, clean session, keepalive 60
	body := append(vh, byte(len(id)>>8), byte(len(id)))
	body = append(body, id...)
	pk = append(pk, 0x10, byte(len(body)))
	pk = append(pk, body...)
	if _, err := c.Write(pk); err != nil {
		return err
	}
	ack := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, ack); err != nil {
		return err
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return fmt.Errorf("connack % x", ack)
	}
	_, err = c.Write([]byte{0xe0, 0})
	return err
}
