package broker

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// Environment of the connect load generator child process.
const (
	envConnChild  = "GARRISON_CONNECT_CHILD"
	envConnAddr   = "GARRISON_CONNECT_ADDR"
	envConnDir    = "GARRISON_CONNECT_DIR"
	envConnN      = "GARRISON_CONNECT_N"
	envConnResume = "GARRISON_CONNECT_RESUME"
	connDevices   = 64
	connWorkers   = 8
)

// identityVerifier is the production verifier (identity.Service on the
// embedded store: chain, revocation record and tenant checks) behind the
// broker's interface, as internal/app wires it.
type identityVerifier struct{ id *identity.Service }

func (v identityVerifier) VerifyClient(ctx context.Context, chain []*x509.Certificate) (Identity, error) {
	d, err := v.id.VerifyClient(ctx, chain)
	bid := Identity{Tenant: d.Tenant, Device: d.Device, Serial: d.Serial}
	switch {
	case err == nil:
		return bid, nil
	case errors.Is(err, identity.ErrRevoked):
		return bid, fmt.Errorf("%w: %w", ErrRevoked, err)
	case errors.Is(err, identity.ErrExpired):
		return bid, fmt.Errorf("%w: %w", ErrExpired, err)
	}
	return bid, fmt.Errorf("%w: %w", ErrUnknown, err)
}

// connFixture is what BenchmarkConnectServer's targets share: device
// certificates issued by identity.Service (tenant acme) written to dir
// for the child, the server's PKI, and the identity service.
type connFixture struct {
	dir  string
	srv  *testPKI // server certificate's CA (the devices' RootCAs)
	id   *identity.Service
	devs []event.DeviceID
	tcs  []tls.Certificate
	pool *x509.CertPool // the tenant's trust anchors
}

func newConnFixture(b testing.TB, n int) *connFixture {
	b.Helper()
	ctx := context.Background()
	f := &connFixture{srv: newTestPKI(b, "server-ca")}
	f.dir = f.srv.dir
	db, err := sqlite.Open(ctx, filepath.Join(f.dir, "garrison.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	sl, err := identity.NewSealer([]byte("bench passphrase"), identity.WithScryptCost(10, 8, 1))
	if err != nil {
		b.Fatal(err)
	}
	if f.id, err = identity.New(identity.Options{Store: db, Sealer: sl}); err != nil {
		b.Fatal(err)
	}
	var chainPEM []byte
	for i := range n {
		d := event.DeviceID(fmt.Sprintf("dev-%04d", i))
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			b.Fatal(err)
		}
		iss, err := f.id.Issue(ctx, "acme", d, csr, identity.IssueOptions{})
		if err != nil {
			b.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		writePEM(b, filepath.Join(f.dir, string(d)+".pem"), "CERTIFICATE", iss.Cert.Raw)
		writePEM(b, filepath.Join(f.dir, string(d)+".key"), "EC PRIVATE KEY", kder)
		f.devs = append(f.devs, d)
		f.tcs = append(f.tcs, tls.Certificate{Certificate: [][]byte{iss.Cert.Raw}, PrivateKey: key, Leaf: iss.Cert})
		if i == 0 {
			for _, c := range iss.Chain {
				chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
			}
		}
	}
	// Mosquitto's cafile: the tenant's issuing CA and the platform root.
	if err := os.WriteFile(filepath.Join(f.dir, "device-ca.pem"), chainPEM, 0o600); err != nil {
		b.Fatal(err)
	}
	if f.pool, err = f.id.TrustPool(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkConnectServer measures what the broker spends per mutual-TLS
// connect with the load generator (TLS dial, CONNECT, CONNACK,
// DISCONNECT from 8 parallel workers over 64 devices) in a child
// process, so that the broker's CPU time is its own: this process's
// (Garrison) or mosquitto's. Garrison verifies with the production
// identity.Service on the embedded store.
//
// Reported: connects/s (wall, both processes sharing the machine),
// server-cpu-us/connect, and server-connects/s, what the server's CPU
// time allows on all of GOMAXPROCS' cores (GOMAXPROCS s / cpu per
// connect), to compare with crypto-bound (its connects/s on the same
// cores). "resumed" reconnects with TLS 1.3 session tickets (a fleet
// coming back after an outage), after one full handshake per device;
// resumed-% says how many did resume. Run with -benchtime 3000x; profile
// the server with -cpuprofile.
func BenchmarkConnectServer(b *testing.B) {
	f := newConnFixture(b, connDevices)
	b.Run("crypto-bound", func(b *testing.B) { cryptoBound(b, f.tcs[0], f.pool, false) })
	b.Run("handshake-crypto", func(b *testing.B) { cryptoBound(b, f.tcs[0], f.pool, true) })
	for _, target := range []string{"garrison", "mosquitto"} {
		for _, mode := range []string{"full", "resumed"} {
			b.Run(target+"/"+mode, func(b *testing.B) {
				var bt *benchTarget
				if target == "garrison" {
					bt = f.startGarrison(b)
				} else {
					bt = startMosquittoCA(b, f.srv, filepath.Join(f.dir, "device-ca.pem"))
				}
				f.runChild(b, bt, mode == "resumed")
			})
		}
	}
}

// cryptoBound is the crypto-bound connect rate: one ECDSA P-256
// signature plus the client chain verification per handshake, on all of
// GOMAXPROCS' cores. With all, it adds what else a server must compute
// for a full TLS 1.3 mutual handshake with the hybrid key exchange: the
// check of the client's CertificateVerify signature, an X25519 key pair
// and shared secret and an ML-KEM-768 encapsulation. Reported as wall
// connects/s and, less sensitive to other load, as cpu-us/op and
// cpu-connects/s (GOMAXPROCS s / cpu per op).
func cryptoBound(b *testing.B, tc tls.Certificate, roots *x509.CertPool, all bool) {
	key := tc.PrivateKey.(*ecdsa.PrivateKey)
	leaf, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("transcript"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		b.Fatal(err)
	}
	peer, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu0 := selfCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
				b.Error(err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				b.Error(err)
			}
			if !all {
				continue
			}
			if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
				b.Error("signature")
			}
			k, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				b.Error(err)
				continue
			}
			if _, err := k.ECDH(peer.PublicKey()); err != nil {
				b.Error(err)
			}
			dk.EncapsulationKey().Encapsulate()
		}
	})
	cpu := float64((selfCPU(b) - cpu0).Nanoseconds()) / 1e3 / float64(b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
	b.ReportMetric(cpu, "cpu-us/op")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0))*1e6/cpu, "cpu-connects/s")
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (f *connFixture) startGarrison(b testing.TB) *benchTarget {
	b.Helper()
	_, _, serverCert, _ := f.srv.issue(b, "", "", time.Now().Add(time.Hour))
	st := &memStates{m: map[event.DeviceID]store.DeviceState{}}
	for _, d := range f.devs {
		st.m[d] = store.StateActive
	}
	br, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: identityVerifier{f.id},
		States: st, Publisher: &marshalPublisher{}, SourceConnectRate: -1, DeviceConnectRate: -1})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	return &benchTarget{addr: br.Addr().String(), pki: f.srv}
}

// serverCPU is the broker's CPU time so far: this process's when the
// broker runs here, else the broker process's (10 ms resolution).
func (bt *benchTarget) serverCPU(b *testing.B) time.Duration {
	self := selfCPU(b)
	if bt.pid == 0 {
		return self
	}
	return bt.cpu(b) - self // cpu: this process plus the broker's
}

// runChild runs b.N connects from the load generator child and reports.
func (f *connFixture) runChild(b *testing.B, bt *benchTarget, resume bool) {
	child := startChild(b, "TestConnectLoadChild", envConnChild+"=1", envConnAddr+"="+bt.addr, envConnDir+"="+f.dir,
		envConnN+"="+strconv.Itoa(b.N), envConnResume+"="+strconv.FormatBool(resume))
	stdin := child.stdin
	wait := func(prefix string) string { return child.wait(b, "connect load", prefix) }
	wait("ready")
	b.ResetTimer()
	cpu0 := bt.serverCPU(b)
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	var n, resumed int
	var ns int64
	if _, err := fmt.Sscanf(wait("done "), "done %d %d %d", &n, &resumed, &ns); err != nil {
		b.Fatal(err)
	}
	cpu := bt.serverCPU(b) - cpu0
	b.StopTimer()
	per := float64(cpu.Nanoseconds()) / 1e3 / float64(n)
	b.ReportMetric(float64(n)/(float64(ns)/1e9), "connects/s")
	b.ReportMetric(per, "server-cpu-us/connect")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0))*1e6/per, "server-connects/s")
	b.ReportMetric(100*float64(resumed)/float64(n), "resumed-%")
}

// TestConnectLoadChild is the load generator of BenchmarkConnectServer,
// run in its own process; it is skipped otherwise. It loads the device
// certificates, connects each device once if resuming (to get a session
// ticket), prints "ready", waits for a line on stdin, makes N connects
// from 8 workers and prints "done N RESUMED NANOSECONDS".
func TestConnectLoadChild(t *testing.T) {
	if os.Getenv(envConnChild) != "1" {
		t.Skip("the load generator of BenchmarkConnectServer")
	}
	dir, addr := os.Getenv(envConnDir), os.Getenv(envConnAddr)
	n, _ := strconv.Atoi(os.Getenv(envConnN))
	resume := os.Getenv(envConnResume) == "true"
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("server CA: %v", err)
	}
	confs := make([]*tls.Config, connDevices)
	ids := make([]event.DeviceID, connDevices)
	for i := range confs {
		ids[i] = event.DeviceID(fmt.Sprintf("dev-%04d", i))
		tc, err := tls.LoadX509KeyPair(filepath.Join(dir, string(ids[i])+".pem"), filepath.Join(dir, string(ids[i])+".key"))
		if err != nil {
			t.Fatal(err)
		}
		confs[i] = &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tc}, ServerName: "localhost"}
		if resume {
			// One cache per device: a session belongs to its certificate.
			confs[i].ClientSessionCache = tls.NewLRUClientSessionCache(4)
			if _, err := loadConnect(addr, confs[i], ids[i]); err != nil {
				fmt.Printf("failed warm-up: %v\n", err)
				t.Fatal(err)
			}
		}
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var next, resumed, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range connWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				r, err := loadConnect(addr, confs[i%connDevices], ids[i%connDevices])
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				if r {
					resumed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if f := failed.Load(); f > 0 {
		fmt.Printf("failed %d: %v\n", f, firstErr.Load())
		t.Fatalf("%d connects failed: %v", f, firstErr.Load())
	}
	fmt.Printf("done %d %d %d\n", n, resumed.Load(), el.Nanoseconds())
}

// loadConnect is the lightest possible device: TLS, an MQTT 3.1.1
// CONNECT, the CONNACK, a DISCONNECT. It tells whether the TLS session
// was resumed, also when the broker refused the connection after the
// handshake.
func loadConnect(addr string, conf *tls.Config, id event.DeviceID) (bool, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return false, err
	}
	defer c.Close()
	resumed := c.ConnectionState().DidResume
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, byte(len(id) >> 8), byte(len(id))}, id...)
	pkt := append([]byte{0x10, byte(len(body))}, body...) // len(body) < 128
	if _, err := c.Write(pkt); err != nil {
		return resumed, err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return resumed, fmt.Errorf("connack: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return resumed, fmt.Errorf("connack % x", ack)
	}
	_, err = c.Write([]byte{0xe0, 0})
	return resumed, err
}
