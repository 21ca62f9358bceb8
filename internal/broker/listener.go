package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// conn is an authenticated device connection: the TLS connection and the
// identity verified for it after the handshake.
type conn struct {
	*tls.Conn
	id     Identity
	wt     time.Duration // write timeout
	broken atomic.Bool   // a write failed: the connection is closed
}

// Write writes with a deadline, see [deadlineWrite].
func (c *conn) Write(p []byte) (int, error) {
	return deadlineWrite(c.Conn, c.Conn.NetConn(), c.wt, &c.broken, p)
}

// deadlineWrite writes p to c with a write deadline of d from now. A write
// that fails (a device that did not drain its connection for d) closes
// raw, the connection under c, so that the session ends: mochi writes
// under the client's lock, which every publish to the device also takes,
// and logs write errors without closing anything.
//
// broken is set first: a publisher waiting for mochi's lock behind this
// write sees it as soon as it gets the lock, before the read loop has
// noticed the closed connection (see [Broker.publishTo]).
func deadlineWrite(c, raw net.Conn, d time.Duration, broken *atomic.Bool, p []byte) (int, error) {
	_ = c.SetWriteDeadline(time.Now().Add(d))
	n, err := c.Write(p)
	if err != nil {
		broken.Store(true)
		_ = raw.Close()
	}
	return n, err
}

// writeBroken reports whether a write to the client's connection failed.
func writeBroken(cl *mqtt.Client) bool {
	switch c := cl.Net.Conn.(type) {
	case *conn:
		return c.broken.Load()
	case *pwConn:
		return c.broken.Load()
	}
	return false
}

// mtlsListener accepts TCP connections, performs the TLS handshake with a
// cap on concurrent handshakes (a reconnect storm queues at the cap instead
// of starving established sessions of CPU), verifies the client certificate
// chain with the Verifier on every connection, resumed TLS sessions
// included, and hands only verified connections to the MQTT server.
type mtlsListener struct {
	id      string
	addr    string
	tlsConf *tls.Config
	b       *Broker

	mu     sync.Mutex
	ln     net.Listener
	closed atomic.Bool
	sem    chan struct{}
	wg     sync.WaitGroup
}

var _ listeners.Listener = (*mtlsListener)(nil)

func (l *mtlsListener) ID() string       { return l.id }
func (l *mtlsListener) Protocol() string { return "tcp+mtls" }

func (l *mtlsListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *mtlsListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	return nil
}

func (l *mtlsListener) Serve(establish listeners.EstablishFn) {
	acceptLoop(l.ln, &l.closed, &l.wg, l.b.log, "mqtt accept", func(c net.Conn) bool { return l.b.allowSource(c, "mtls") },
		func(c net.Conn) { l.handle(c, establish) })
}

// acceptLoop accepts connections until ln is closed (closed set, or
// net.ErrClosed), handling each that allow admits on its own goroutine
// counted in wg (allow closes those it refuses, on the accepting
// goroutine: no goroutine, no handshake). A transient accept error is
// logged as msg and retried after 10 ms.
func acceptLoop(ln net.Listener, closed *atomic.Bool, wg *sync.WaitGroup, log *slog.Logger, msg string, allow func(net.Conn) bool, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn(msg, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !allow(c) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(c)
		}()
	}
}

func (l *mtlsListener) handle(raw net.Conn, establish listeners.EstablishFn) {
	c := l.handshake(raw)
	if c == nil {
		return
	}
	// The session runs on this goroutine for its whole life: nothing of
	// the handshake (its context and timer) stays reachable from here.
	if err := establish(l.id, c); err != nil && !errors.Is(err, net.ErrClosed) {
		l.b.log.Debug("mqtt session ended", "device", c.id.Device, "err", err)
	}
}

// handshake runs the TLS handshake under the cap and verifies the client
// chain; it returns nil (raw closed, the refusal reported) on failure.
func (l *mtlsListener) handshake(raw net.Conn) *conn {
	remote := raw.RemoteAddr().String()
	// Fair queuing: connections wait their turn for a handshake slot in
	// arrival order (Go channels are FIFO for blocked senders), bounded by
	// the handshake timeout.
	ctx, cancel := context.WithTimeout(context.Background(), l.b.opts.HandshakeTimeout)
	defer cancel()
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		l.b.metrics.handshakeQueueTimeouts.Add(1)
		_ = raw.Close()
		return nil
	}
	l.b.metrics.handshakesInFlight.Add(1)
	tc := tls.Server(raw, l.tlsConf)
	err := tc.HandshakeContext(ctx)
	l.b.metrics.handshakesInFlight.Add(-1)
	<-l.sem
	if err != nil {
		l.b.metrics.handshakeFailures.Add(1)
		l.b.authFailed(context.Background(), Identity{}, remote, "tls_handshake", err, nil)
		_ = raw.Close()
		return nil
	}
	st := tc.ConnectionState()
	id, err := l.b.opts.Verifier.VerifyClient(ctx, st.PeerCertificates)
	if err != nil {
		l.b.metrics.handshakeFailures.Add(1)
		l.b.authFailed(context.Background(), id, remote, reasonOf(err), err, nil)
		_ = tc.Close()
		return nil
	}
	l.b.metrics.handshakes.Add(1)
	return &conn{Conn: tc, id: id, wt: l.b.opts.WriteTimeout}
}

func (l *mtlsListener) Close(closeClients listeners.CloseFn) {
	if l.closed.CompareAndSwap(false, true) {
		closeClients(l.id)
		l.mu.Lock()
		if l.ln != nil {
			_ = l.ln.Close()
		}
		l.mu.Unlock()
	}
}
