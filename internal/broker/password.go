package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/event"
)

// The legacy password listener.
//
// Off unless [Broker.EnablePasswords] is called. It serves MQTT over
// server-only TLS (no client certificate; TLS 1.3 unless AllowTLS12), or
// over plain TCP only when Plaintext is set explicitly. A device logs in
// with username "TENANT/DEVICE" and the per-device password the platform
// generated (package registry), verified against its stored argon2id hash.
// After that it is a session like any other: the client id must be the
// device id, the device must be active or quarantined, and ACLs,
// quarantine, limits, kicks and events are the mTLS listener's.
//
// Refusals are published as mqtt.auth_failed with reason
// default_credentials (a pair of the factory list, checked before
// anything else), missing_credentials, unknown_device (username not
// TENANT/DEVICE or no such device), no_password (the device has none),
// bad_password, client_id_mismatch, state_* (as on mTLS), rate_limited
// (too many failures from the source host), busy (verifications
// saturated) or connect_rate (as on mTLS: the source's connections or the
// device's CONNECTs over their rate, see limit.go). bad_password, no_password and rate_limited feed
// auth.bruteforce; default_credentials feeds auth.default_credentials.

// Errors a [Passwords] returns (wrapped) so refusals carry a reason.
var (
	// ErrNoPassword: the device exists but has no password.
	ErrNoPassword = errors.New("device has no password")
	// ErrUnknownDevice: no such device in the tenant.
	ErrUnknownDevice = errors.New("unknown device")
)

// Passwords reads device password hashes for the password listener.
type Passwords interface {
	// PasswordHash returns the device's password hash (an argon2id PHC
	// string, see package creds), or an error wrapping [ErrUnknownDevice]
	// or [ErrNoPassword].
	PasswordHash(ctx context.Context, t event.TenantID, d event.DeviceID) (string, error)
}

// PasswordOptions configure the password listener. Zero values get the
// defaults noted.
type PasswordOptions struct {
	Addr       string    // required, e.g. ":8884"
	Passwords  Passwords // required
	AllowTLS12 bool      // default TLS 1.3 only; 1.2 then with ECDHE+AEAD suites only
	// Plaintext serves MQTT over plain TCP: passwords cross the network in
	// clear. For a lab only; a warning is logged at start.
	Plaintext bool
	// MaxFailures is how many failed logins one source host may make per
	// FailureWindow before its further attempts are refused unverified
	// (reason rate_limited); default 10.
	MaxFailures   int
	FailureWindow time.Duration // default 1m
	// MaxVerifications caps concurrent password hash verifications
	// (argon2id takes 19 MiB and tens of milliseconds each); default 4.
	MaxVerifications int
}

// pwConn is a password-listener connection; id is set once its CONNECT
// was verified.
type pwConn struct {
	net.Conn
	id     atomic.Pointer[Identity]
	l      *pwListener
	broken atomic.Bool // a write failed: the connection is closed
}

// Write writes with a deadline, see [deadlineWrite].
func (c *pwConn) Write(p []byte) (int, error) {
	raw := c.Conn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	return deadlineWrite(c.Conn, raw, c.l.b.opts.WriteTimeout, &c.broken, p)
}

// connIdentity returns the identity the broker authenticated for a
// client's connection: from its certificate (mTLS listener) or, once its
// CONNECT was verified, from its password (password listener). ok is false
// for the inline client and for a password connection not yet
// authenticated.
func connIdentity(cl *mqtt.Client) (Identity, bool) {
	switch c := cl.Net.Conn.(type) {
	case *conn:
		return c.id, true
	case *pwConn:
		if id := c.id.Load(); id != nil {
			return *id, true
		}
	}
	return Identity{}, false
}

// EnablePasswords adds the legacy password listener. Call it after [New]
// and before [Broker.Start], at most once.
func (b *Broker) EnablePasswords(o PasswordOptions) error {
	if o.Addr == "" {
		return errors.New("broker: password listener: address missing")
	}
	if o.Passwords == nil {
		return errors.New("broker: password listener: password store missing")
	}
	if b.pw != nil {
		return errors.New("broker: password listener already enabled")
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 10
	}
	if o.FailureWindow <= 0 {
		o.FailureWindow = time.Minute
	}
	if o.MaxVerifications <= 0 {
		o.MaxVerifications = 4
	}
	l := &pwListener{id: "password", opts: o, b: b, verify: make(chan struct{}, o.MaxVerifications),
		fails: map[string]*failWindow{}}
	if !o.Plaintext {
		l.tlsConf = &tls.Config{Certificates: []tls.Certificate{b.opts.Certificate}, MinVersion: tls.VersionTLS13}
		if o.AllowTLS12 {
			l.tlsConf.MinVersion, l.tlsConf.CipherSuites = tls.VersionTLS12, tls12Suites()
		}
	}
	if err := b.srv.AddListener(l); err != nil {
		return fmt.Errorf("broker: password listener: %w", err)
	}
	b.pw = l
	return nil
}

// PasswordAddr returns the password listener's address, or nil if it is
// not enabled or not started.
func (b *Broker) PasswordAddr() net.Addr {
	if b.pw == nil {
		return nil
	}
	b.pw.mu.Lock()
	defer b.pw.mu.Unlock()
	if b.pw.ln == nil {
		return nil
	}
	return b.pw.ln.Addr()
}

// KickPasswordSession closes the device's live session if it logged in
// with a password (after the password was rotated or cleared); an mTLS
// session stays. It returns whether a session was closed.
func (b *Broker) KickPasswordSession(t event.TenantID, d event.DeviceID, reason string) bool {
	b.mu.Lock()
	sess := b.sessions[key(t, d)]
	b.mu.Unlock()
	if sess == nil {
		return false
	}
	if _, ok := sess.cl.Net.Conn.(*pwConn); !ok {
		return false
	}
	return b.Kick(t, d, reason)
}

// pwListener accepts TCP connections, completes a server-only TLS
// handshake (unless plaintext) under the broker's handshake cap, and hands
// the connection to the MQTT server, which authenticates its CONNECT
// through [hook.passwordConnect].
type pwListener struct {
	id      string
	opts    PasswordOptions
	tlsConf *tls.Config // nil: plaintext
	b       *Broker
	verify  chan struct{} // verification slots

	mu     sync.Mutex
	ln     net.Listener
	closed atomic.Bool
	wg     sync.WaitGroup

	fmu   sync.Mutex
	fails map[string]*failWindow // source host -> failures in the current window
}

type failWindow struct {
	start time.Time
	n     int
}

// maxFailHosts bounds the failure table; past it, stale windows are
// dropped and, if none is stale, new hosts are not tracked (verification
// stays capped by MaxVerifications).
const maxFailHosts = 10_000

var _ listeners.Listener = (*pwListener)(nil)

func (l *pwListener) ID() string { return l.id }

func (l *pwListener) Protocol() string {
	if l.tlsConf == nil {
		return "tcp+password+plaintext"
	}
	return "tcp+tls+password"
}

func (l *pwListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.opts.Addr
}

func (l *pwListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.opts.Addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	if l.tlsConf == nil {
		l.b.log.Warn("INSECURE: the MQTT password listener serves plain TCP; device passwords cross the network in clear",
			"addr", ln.Addr().String())
	}
	return nil
}

func (l *pwListener) Serve(establish listeners.EstablishFn) {
	acceptLoop(l.ln, &l.closed, &l.wg, l.b.log, "mqtt password accept", func(c net.Conn) bool { return l.b.allowSource(c, "password") },
		func(c net.Conn) { l.handle(c, establish) })
}

func (l *pwListener) handle(raw net.Conn, establish listeners.EstablishFn) {
	var c net.Conn = raw
	if l.tlsConf != nil {
		ctx, cancel := context.WithTimeout(context.Background(), l.b.opts.HandshakeTimeout)
		sem := l.b.ln.sem // one handshake cap for both listeners
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			cancel()
			l.b.metrics.handshakeQueueTimeouts.Add(1)
			_ = raw.Close()
			return
		}
		l.b.metrics.handshakesInFlight.Add(1)
		tc := tls.Server(raw, l.tlsConf)
		err := tc.HandshakeContext(ctx)
		l.b.metrics.handshakesInFlight.Add(-1)
		<-sem
		cancel()
		if err != nil {
			l.b.metrics.handshakeFailures.Add(1)
			l.b.authFailed(context.Background(), Identity{}, raw.RemoteAddr().String(), "tls_handshake", err, map[string]any{"listener": "password"})
			_ = raw.Close()
			return
		}
		l.b.metrics.handshakes.Add(1)
		c = tc
	}
	if err := establish(l.id, &pwConn{Conn: c, l: l}); err != nil && !errors.Is(err, net.ErrClosed) {
		l.b.log.Debug("mqtt password session ended", "remote", raw.RemoteAddr().String(), "err", err)
	}
}

func (l *pwListener) Close(closeClients listeners.CloseFn) {
	if l.closed.CompareAndSwap(false, true) {
		closeClients(l.id)
		l.mu.Lock()
		if l.ln != nil {
			_ = l.ln.Close()
		}
		l.mu.Unlock()
	}
}

// limited reports whether host used up its failures in the current window.
func (l *pwListener) limited(host string, now time.Time) bool {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	w := l.fails[host]
	return w != nil && now.Sub(w.start) < l.opts.FailureWindow && w.n >= l.opts.MaxFailures
}

// failed counts one failed login of host.
func (l *pwListener) failed(host string, now time.Time) {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	w := l.fails[host]
	if w == nil {
		if len(l.fails) >= maxFailHosts {
			for h, x := range l.fails {
				if now.Sub(x.start) >= l.opts.FailureWindow {
					delete(l.fails, h)
				}
			}
			if len(l.fails) >= maxFailHosts {
				return
			}
		}
		w = &failWindow{start: now}
		l.fails[host] = w
	}
	if now.Sub(w.start) >= l.opts.FailureWindow {
		w.start, w.n = now, 0
	}
	w.n++
}

// passwordConnect authenticates a CONNECT on the password listener, then
// admits it like any session.
func (h *hook) passwordConnect(cl *mqtt.Client, pk packets.Packet, pc *pwConn) bool {
	l, b := pc.l, h.b
	remote := cl.Net.Remote
	host := remote
	if hst, _, err := net.SplitHostPort(remote); err == nil {
		host = hst
	}
	user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
	var id Identity // the claimed identity, once the device is known to exist
	refuse := func(reason string, attrs map[string]any) bool {
		if attrs == nil {
			attrs = map[string]any{}
		}
		attrs["client_id"] = truncate(pk.Connect.ClientIdentifier, 128)
		attrs["username"] = truncate(user, 128)
		attrs["listener"] = "password"
		switch reason {
		case "default_credentials", "missing_credentials", "unknown_device", "no_password", "bad_password":
			l.failed(host, b.opts.Clock.Now()) // guesses; not state refusals
		}
		b.authFailed(context.Background(), id, remote, reason, nil, attrs)
		return false
	}
	if (pk.Connect.UsernameFlag || pk.Connect.PasswordFlag) && b.opts.Credentials.Pair(user, pass) {
		return refuse("default_credentials", nil)
	}
	if !pk.Connect.UsernameFlag || !pk.Connect.PasswordFlag {
		return refuse("missing_credentials", nil)
	}
	tenant, device, ok := strings.Cut(user, "/")
	if !ok || tenant == "" || device == "" || strings.Contains(device, "/") {
		return refuse("unknown_device", nil)
	}
	claimed := Identity{Tenant: event.TenantID(tenant), Device: event.DeviceID(device)}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.HandshakeTimeout)
	defer cancel()
	hash, err := l.opts.Passwords.PasswordHash(ctx, claimed.Tenant, claimed.Device)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		return refuse("unknown_device", nil)
	case errors.Is(err, ErrNoPassword):
		id = claimed
		return refuse("no_password", nil)
	case err != nil:
		b.log.Warn("mqtt password lookup", "tenant", claimed.Tenant, "device", claimed.Device, "err", err)
		id = claimed
		return refuse("state_unavailable", nil)
	}
	id = claimed
	// Limited sources are refused before the costly hash, with the device
	// named so that the refusals still count against it.
	if l.limited(host, b.opts.Clock.Now()) {
		return refuse("rate_limited", nil)
	}
	if pk.Connect.ClientIdentifier != string(id.Device) {
		return refuse("client_id_mismatch", nil) // before paying for a hash
	}
	select {
	case l.verify <- struct{}{}:
	case <-ctx.Done():
		return refuse("busy", nil)
	}
	match, err := creds.VerifyPassword(hash, pass)
	<-l.verify
	if err != nil {
		b.log.Warn("mqtt password hash unusable", "tenant", id.Tenant, "device", id.Device, "err", err)
	}
	if !match {
		return refuse("bad_password", nil)
	}
	pc.id.Store(&id)
	return h.admit(cl, pk, id, remote, refuse)
}
