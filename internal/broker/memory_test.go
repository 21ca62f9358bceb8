package broker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Environment of the idle-clients child process.
const (
	envIdleChild  = "GARRISON_IDLE_CLIENTS_CHILD"
	envIdleAddr   = "GARRISON_IDLE_ADDR"
	envIdleCADir  = "GARRISON_IDLE_CA_DIR"
	envIdleN      = "GARRISON_IDLE_N"
	envIdleSource = "GARRISON_IDLE_SOURCES"
	// envSessions sets the session count of BenchmarkIdleSessionMemory.
	envSessions = "GARRISON_BENCH_SESSIONS"
)

// BenchmarkIdleSessionMemory measures the broker's memory per idle
// connected device: N devices (GARRISON_BENCH_SESSIONS, default 2000)
// connect over mutual TLS from a separate process (so the load
// generator's memory is not counted), from several 127.0.0.x source
// addresses, and stay idle. Reported: live heap plus goroutine stacks
// after a GC, and resident set size, each as the difference with the
// broker before the connections, divided by N. Run with -benchtime 1x.
func BenchmarkIdleSessionMemory(b *testing.B) {
	n := 2000
	if v := os.Getenv(envSessions); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive count", envSessions, v)
		}
	}
	p := newTestPKI(b, "mem-ca")
	kder, err := x509.MarshalECPrivateKey(p.key)
	if err != nil {
		b.Fatal(err)
	}
	writePEM(b, filepath.Join(p.dir, "ca.key"), "EC PRIVATE KEY", kder)
	_, _, serverCert, _ := p.issue(b, "", "", time.Now().Add(time.Hour))
	st := &memStates{m: map[event.DeviceID]store.DeviceState{}}
	for i := range n {
		st.m[idleDevice(i)] = store.StateActive
	}
	br, err := New(Options{Addr: "127.0.0.1:0", Certificate: serverCert, Verifier: &poolVerifier{pool: p.pool, revoked: map[string]bool{}},
		States: st, Publisher: &marshalPublisher{}})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer br.Close()

	heap0, rss0 := memNow()
	g0, stack0 := runtime.NumGoroutine(), stackInuse()
	start := time.Now()
	startChild(b, "TestIdleClientsChild", envIdleChild+"=1", envIdleAddr+"="+br.Addr().String(), envIdleCADir+"="+p.dir,
		envIdleN+"="+strconv.Itoa(n), envIdleSource+"=16").wait(b, "idle clients", "ready ")
	elapsed := time.Since(start)
	if s := br.Stats().Sessions; s != n {
		b.Fatalf("%d sessions, want %d", s, n)
	}
	time.Sleep(time.Second) // let connect-time buffers settle
	heap1, rss1 := memNow()
	if s := br.Stats().Sessions; s != n {
		b.Fatalf("%d sessions after idling, want %d", s, n)
	}
	if f := os.Getenv("GARRISON_BENCH_HEAPPROFILE"); f != "" {
		if out, err := os.Create(f); err == nil {
			_ = pprof.WriteHeapProfile(out)
			out.Close()
		}
	}
	b.ReportMetric(float64(heap1-heap0)/float64(n), "heap+stack-B/session")
	b.ReportMetric(float64(stackInuse()-stack0)/float64(n), "stack-B/session")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/float64(n), "goroutines/session")
	b.ReportMetric(float64(rss1-rss0)/float64(n), "rss-B/session")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "connects/s")
	b.ReportMetric(float64(n), "sessions")
}

func idleDevice(i int) event.DeviceID { return event.DeviceID(fmt.Sprintf("idle-%06d", i)) }

// memNow returns the live heap plus stacks after a GC, and the resident
// set size, in bytes.
func memNow() (heapStack, rss int64) {
	// Each GC shrinks an idle goroutine's stack by half at most: several
	// cycles show what a long-idle session holds.
	for range 6 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	heapStack = int64(m.HeapInuse + m.StackInuse)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				rss = kb << 10
			}
		}
	}
	return heapStack, rss
}

func stackInuse() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.StackInuse)
}

// TestIdleClientsChild is the load generator of
// BenchmarkIdleSessionMemory, run in its own process; it is skipped
// otherwise. It connects N devices (MQTT 3.1.1 CONNECT written by hand,
// keep-alive off), prints "ready N" and holds them until stdin closes.
func TestIdleClientsChild(t *testing.T) {
	if os.Getenv(envIdleChild) != "1" {
		t.Skip("the load generator of BenchmarkIdleSessionMemory")
	}
	n, _ := strconv.Atoi(os.Getenv(envIdleN))
	sources, _ := strconv.Atoi(os.Getenv(envIdleSource))
	dir, addr := os.Getenv(envIdleCADir), os.Getenv(envIdleAddr)
	caCert, caKey := loadCA(t, dir)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	// One client key for every device: only the certificates differ, and
	// the cost measured is the broker's.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := idleConnect(addr, pool, caCert, caKey, key, idleDevice(i), i%max(sources, 1))
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Printf("failed %d: %v\n", f, firstErr.Load())
		t.Fatalf("%d connects failed: %v", f, firstErr.Load())
	}
	fmt.Printf("ready %d\n", n)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
}

func loadCA(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: no PEM", name)
		}
		return blk.Bytes
	}
	cert, err := x509.ParseCertificate(read("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(read("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func idleConnect(addr string, pool *x509.CertPool, ca *x509.Certificate, caKey, key *ecdsa.PrivateKey, d event.DeviceID, source int) (net.Conn, error) {
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: sn, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{{Scheme: "garrison", Host: "acme", Path: "/devices/" + string(d)}}}
	tmpl.Subject.CommonName = string(d)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+source))}}
	c, err := tls.DialWithDialer(dialer, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		return nil, err
	}
	id := []byte(d)
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, byte(len(id) >> 8), byte(len(id))}, id...)
	pkt := append([]byte{0x10, byte(len(body))}, body...) // len(body) < 128
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		c.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		c.Close()
		return nil, fmt.Errorf("connack: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("connack % x", ack)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// child is a load generator: the test binary re-run as one test in its
// own process, so the benchmark's process holds only the broker. It talks
// in lines: it prints "ready ...", "done ..." or "failed ..." and reads
// its go-ahead on stdin; it is stopped (stdin closed, waited for) when
// the benchmark ends.
type child struct {
	stdin io.WriteCloser
	lines chan string
}

// startChild runs test (a Test function that skips unless env says it is
// the child) with env added to this process's environment.
func startChild(b *testing.B, test string, env ...string) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^"+test+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	c := &child{stdin: stdin, lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "ready") || strings.HasPrefix(l, "done ") || strings.HasPrefix(l, "failed ") {
				c.lines <- l
			}
		}
		close(c.lines)
	}()
	return c
}

// wait returns the child's next line, which must start with prefix; what
// names the child in failures.
func (c *child) wait(b *testing.B, what, prefix string) string {
	b.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok || !strings.HasPrefix(l, prefix) {
			b.Fatalf("%s: %q", what, l)
		}
		return l
	case <-time.After(10 * time.Minute):
		b.Fatalf("%s: no answer in 10 minutes", what)
	}
	return ""
}
