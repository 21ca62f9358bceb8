package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Errors of publishing.
var (
	// ErrNotConnected: no MQTT session is up; telemetry and metrics are
	// not queued (events and firmware reports are, see [Agent.Publish]).
	ErrNotConnected = errors.New("agent: not connected")
	// ErrPayload: the payload is not one JSON object of at most 64 KiB.
	ErrPayload = errors.New("agent: payload must be one JSON object of at most 64 KiB")
)

// MaxPayload is the largest payload the protocol allows.
const MaxPayload = 64 << 10

// maxOutbox bounds the events and firmware reports kept while offline.
const maxOutbox = 256

const timeFormat = time.RFC3339Nano

// Agent is one device. Construct with [New], then [Agent.Run].
type Agent struct {
	cfg Config
	log *slog.Logger
	est *estClient

	idMu sync.Mutex
	id   *devIdentity

	stMu   sync.Mutex
	st     persisted
	bootAt time.Time

	// dial opens the TLS connection to the broker (replaced in tests).
	dial func(ctx context.Context) (net.Conn, error)

	pubMu  sync.Mutex
	sender sender // the live session, nil when disconnected
	outbox []outMsg

	reboot   chan struct{}
	commands chan []byte
	jobs     chan []byte
	results  resultCache

	connects atomic.Int64
	renewed  atomic.Int64
	running  atomic.Bool
}

// sender publishes on the live MQTT session.
type sender interface {
	send(ctx context.Context, topic string, payload []byte) error
}

type outMsg struct {
	topic   string
	payload []byte
}

// New validates cfg and returns an agent. It has no side effects: nothing
// is read, created or dialled until Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, est: newESTClient(&cfg),
		reboot: make(chan struct{}, 1), commands: make(chan []byte, 32), jobs: make(chan []byte, 4)}
	a.dial = a.dialTLS
	return a, nil
}

// Stats are counters for tests and status displays.
type Stats struct {
	Connects int64 // MQTT sessions established
	Renewals int64 // certificates renewed
}

// Stats returns the agent's counters.
func (a *Agent) Stats() Stats {
	return Stats{Connects: a.connects.Load(), Renewals: a.renewed.Load()}
}

// Certificate returns the current device certificate (nil before
// enrolment).
func (a *Agent) Certificate() *tls.Certificate {
	id := a.currentIdentity()
	if id == nil {
		return nil
	}
	c := id.cert
	return &c
}

// Firmware returns the running slot name and its version and digest.
func (a *Agent) Firmware() (slot string, running Slot) {
	st := a.snapshot()
	return st.Active, st.running()
}

func (a *Agent) currentIdentity() *devIdentity {
	a.idMu.Lock()
	defer a.idMu.Unlock()
	return a.id
}

func (a *Agent) setIdentity(id *devIdentity) {
	a.idMu.Lock()
	a.id = id
	a.idMu.Unlock()
}

func (a *Agent) snapshot() persisted {
	a.stMu.Lock()
	defer a.stMu.Unlock()
	return a.st.clone()
}

func (a *Agent) bootTime() time.Time {
	a.stMu.Lock()
	defer a.stMu.Unlock()
	return a.bootAt
}

// Run enrols if needed, then keeps the device online until ctx is done.
// It returns nil on cancellation and an error only when the device cannot
// go on (no identity and enrolment refused, an unusable state directory).
// Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	if err := a.prepare(); err != nil {
		return err
	}
	if err := a.ensureIdentity(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var wg sync.WaitGroup
	goroutine := func(fn func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	goroutine(a.renewLoop)
	goroutine(a.commandLoop)
	goroutine(a.jobLoop)
	goroutine(a.metricsLoop)
	if a.cfg.Telemetry != nil {
		goroutine(a.telemetryLoop)
	}
	for ctx.Err() == nil {
		a.boot(ctx)
		a.connectLoop(ctx)
	}
	wg.Wait()
	return nil
}

// prepare creates the state directory and loads the firmware state.
func (a *Agent) prepare() error {
	dir := a.cfg.StateDir
	for _, d := range []string{dir, filepath.Join(dir, "slots"), filepath.Join(dir, "download")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("agent: state dir: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("agent: state dir: %w", err)
	}
	factory := Slot{Version: a.cfg.FirmwareVersion, Digest: a.cfg.FirmwareDigest}
	if factory.Digest == "" {
		if exe, err := os.Executable(); err == nil {
			factory.Digest, _, _ = fileDigest(exe)
		}
	}
	st, err := loadState(dir, factory)
	if err != nil {
		return err
	}
	a.stMu.Lock()
	a.st = st
	a.stMu.Unlock()
	return saveState(dir, st)
}

// ensureIdentity loads the stored identity or enrols, retrying with
// back-off while the platform cannot be reached; a refusal is final.
func (a *Agent) ensureIdentity(ctx context.Context) error {
	id, err := loadIdentity(a.cfg.StateDir)
	if err != nil {
		return err
	}
	if id != nil {
		a.setIdentity(id)
		return nil
	}
	for attempt := 0; ; attempt++ {
		id, err = a.enrol(ctx)
		if err == nil {
			a.log.Info("agent: enrolled", "tenant", a.cfg.Tenant, "device", a.cfg.Device, "not_after", id.leaf.NotAfter)
			return nil
		}
		if errors.Is(err, ErrNoIdentity) || errors.Is(err, ErrEnrolRefused) || errors.Is(err, ErrBadResponse) {
			return err
		}
		a.log.Warn("agent: enrolment failed; retrying", "device", a.cfg.Device, "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.cfg.Clock.After(a.cfg.Backoff.Delay(attempt, a.cfg.Rand())):
		}
	}
}

// boot is a (simulated) start: it finishes an update booted into, resets
// the uptime and queues the boot event.
func (a *Agent) boot(ctx context.Context) {
	a.stMu.Lock()
	a.bootAt = a.cfg.Clock.Now()
	a.stMu.Unlock()
	a.finishTrial(ctx)
	slot, run := a.Firmware()
	a.enqueue(a.topic("events"), map[string]any{"type": "boot", "ts": a.now(), "fw_version": run.Version,
		"fw_digest": run.Digest, "slot": slot})
}

func (a *Agent) now() string { return a.cfg.Clock.Now().UTC().Format(timeFormat) }

func (a *Agent) topic(sub string) string { return "devices/" + a.cfg.Device + "/" + sub }

// Reboot asks the agent to simulate a reboot: the MQTT session is closed,
// the uptime restarts, a pending update is boot-checked, and a boot event
// follows the reconnection.
func (a *Agent) Reboot() {
	select {
	case a.reboot <- struct{}{}:
	default:
	}
}

// connectLoop keeps a session up until ctx is done or a reboot is asked,
// with full-jitter exponential back-off between failed attempts.
func (a *Agent) connectLoop(ctx context.Context) {
	attempt := 0
	for {
		connected, err := a.session(ctx)
		if ctx.Err() != nil {
			return
		}
		select {
		case <-a.reboot:
			a.log.Info("agent: rebooting", "device", a.cfg.Device)
			return
		default:
		}
		if connected {
			attempt = 0
		}
		d := a.cfg.Backoff.Delay(attempt, a.cfg.Rand())
		a.log.Info("agent: MQTT session ended; reconnecting", "device", a.cfg.Device, "err", err, "attempt", attempt+1, "wait", d)
		attempt++
		select {
		case <-ctx.Done():
			return
		case <-a.reboot:
			return
		case <-a.cfg.Clock.After(d):
		}
	}
}

// dialTLS opens the mutual-TLS connection to the broker with the current
// device certificate.
func (a *Agent) dialTLS(ctx context.Context) (net.Conn, error) {
	host, _, err := net.SplitHostPort(a.cfg.MQTTAddr)
	if err != nil {
		return nil, err
	}
	name := a.cfg.ServerName
	if name == "" {
		name = host
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 15 * time.Second}, Config: &tls.Config{
		RootCAs: a.cfg.ServerCA, ServerName: name, MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := a.currentIdentity().cert
			return &c, nil
		},
	}}
	return d.DialContext(ctx, "tcp", a.cfg.MQTTAddr)
}

// pahoSender is a live paho session.
type pahoSender struct{ c *paho.Client }

func (p pahoSender) send(ctx context.Context, topic string, payload []byte) error {
	_, err := p.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
	return err
}

// session runs one MQTT session: connect, subscribe to commands and
// firmware jobs, flush the outbox, publish metrics, then wait until the
// connection drops, ctx is done or a reboot is asked. connected reports
// whether the session was established.
func (a *Agent) session(ctx context.Context) (connected bool, err error) {
	conn, err := a.dial(ctx)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	lost := make(chan error, 1)
	c := paho.NewClient(paho.ClientConfig{
		ClientID: a.cfg.Device,
		Conn:     &lockedConn{Conn: conn}, // paho writes packets from several goroutines
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			a.route(pr.Packet.Topic, pr.Packet.Payload)
			return true, nil
		}},
		OnClientError: func(err error) {
			select {
			case lost <- err:
			default:
			}
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case lost <- fmt.Errorf("server disconnect: reason %d", d.ReasonCode):
			default:
			}
		},
		PacketTimeout: 15 * time.Second,
	})
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ca, err := c.Connect(cctx, &paho.Connect{ClientID: a.cfg.Device, KeepAlive: uint16(a.cfg.KeepAlive / time.Second), CleanStart: true})
	if err != nil {
		conn.Close()
		if ca != nil {
			return false, fmt.Errorf("connect refused: reason %d: %w", ca.ReasonCode, err)
		}
		return false, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		a.pubMu.Lock()
		a.sender = nil
		a.pubMu.Unlock()
		dctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		select {
		case <-c.Done():
		case <-dctx.Done():
		}
	}()
	sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: a.topic("commands"), QoS: 1}, {Topic: a.topic("ota/job"), QoS: 1}}})
	if err != nil {
		return false, fmt.Errorf("subscribe: %w", err)
	}
	for _, r := range sa.Reasons {
		if r >= 0x80 {
			return false, fmt.Errorf("subscribe refused: reason %d", r)
		}
	}
	a.connects.Add(1)
	a.log.Info("agent: connected", "device", a.cfg.Device, "broker", a.cfg.MQTTAddr)
	a.pubMu.Lock()
	a.sender = pahoSender{c}
	a.flushLocked(ctx)
	a.pubMu.Unlock()
	a.publishMetrics(ctx)
	select {
	case <-ctx.Done():
		return true, nil
	case <-a.reboot:
		// Put the request back for connectLoop to see.
		a.Reboot()
		return true, nil
	case err := <-lost:
		return true, err
	case <-c.Done():
		return true, errors.New("connection closed")
	}
}

// route hands an incoming message to its worker without blocking the
// MQTT client.
func (a *Agent) route(topic string, payload []byte) {
	var ch chan []byte
	switch topic {
	case a.topic("commands"):
		ch = a.commands
	case a.topic("ota/job"):
		ch = a.jobs
	default:
		return
	}
	select {
	case ch <- append([]byte(nil), payload...):
	default:
		a.log.Warn("agent: busy; message dropped", "device", a.cfg.Device, "topic", topic)
	}
}

func encodeObject(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if len(b) > MaxPayload || len(b) == 0 || b[0] != '{' {
		return nil, ErrPayload
	}
	return b, nil
}

// Publish sends payload (a JSON object) to devices/{id}/SUB. Telemetry
// and metrics are sent only while connected (else [ErrNotConnected]);
// events and ota/status are queued while offline (up to 256, the oldest
// dropped first) and sent in order after the next connection.
func (a *Agent) Publish(ctx context.Context, sub string, payload any) error {
	b, err := encodeObject(payload)
	if err != nil {
		return err
	}
	topic := a.topic(sub)
	if sub == "events" || sub == "ota/status" {
		a.pubMu.Lock()
		defer a.pubMu.Unlock()
		a.outbox = append(a.outbox, outMsg{topic, b})
		a.trimOutboxLocked()
		a.flushLocked(ctx)
		return nil
	}
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	if a.sender == nil {
		return ErrNotConnected
	}
	a.flushLocked(ctx)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := a.sender.send(pctx, topic, b); err != nil {
		return fmt.Errorf("agent: publish %s: %w", sub, err)
	}
	return nil
}

// PublishTelemetry sends application data to devices/{id}/telemetry.
func (a *Agent) PublishTelemetry(ctx context.Context, v any) error {
	return a.Publish(ctx, "telemetry", v)
}

// enqueue queues an event or report for in-order delivery.
func (a *Agent) enqueue(topic string, v any) {
	b, err := encodeObject(v)
	if err != nil {
		a.log.Error("agent: unencodable report", "topic", topic, "err", err)
		return
	}
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	a.outbox = append(a.outbox, outMsg{topic, b})
	a.trimOutboxLocked()
	a.flushLocked(context.Background())
}

func (a *Agent) trimOutboxLocked() {
	if n := len(a.outbox) - maxOutbox; n > 0 {
		a.log.Warn("agent: offline queue full; oldest reports dropped", "device", a.cfg.Device, "dropped", n)
		a.outbox = append(a.outbox[:0:0], a.outbox[n:]...)
	}
}

// flushLocked sends the outbox in order while a session is up, stopping
// at the first failure (the rest waits for the next session).
func (a *Agent) flushLocked(ctx context.Context) {
	for a.sender != nil && len(a.outbox) > 0 {
		m := a.outbox[0]
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		err := a.sender.send(pctx, m.topic, m.payload)
		cancel()
		if err != nil {
			a.log.Warn("agent: publish failed; kept for the next session", "device", a.cfg.Device, "topic", m.topic, "err", err)
			return
		}
		a.outbox = a.outbox[1:]
	}
}

func (a *Agent) publishMetrics(ctx context.Context) {
	m, err := a.metrics()
	if err != nil {
		a.log.Debug("agent: metrics incomplete", "err", err)
	}
	if err := a.Publish(ctx, "metrics", m); err != nil && !errors.Is(err, ErrNotConnected) {
		a.log.Warn("agent: metrics not published", "device", a.cfg.Device, "err", err)
	}
}

func (a *Agent) metricsLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.cfg.Clock.After(a.cfg.MetricsInterval):
			a.publishMetrics(ctx)
		}
	}
}

func (a *Agent) telemetryLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.cfg.Clock.After(a.cfg.TelemetryInterval):
		}
		v, err := a.cfg.Telemetry(ctx)
		if err != nil {
			a.log.Warn("agent: telemetry source failed", "device", a.cfg.Device, "err", err)
			continue
		}
		if err := a.PublishTelemetry(ctx, v); err != nil && !errors.Is(err, ErrNotConnected) {
			a.log.Warn("agent: telemetry not published", "device", a.cfg.Device, "err", err)
		}
	}
}

// lockedConn makes paho write each control packet whole. paho writes a
// packet as several Writes and from several goroutines (the caller, the
// pinger, the reader's acknowledgements); on TLS each Write is its own
// record, so a PINGREQ could land inside a PUBLISH and the broker would
// close the connection for a malformed packet. paho holds the lock for a
// packet when its writer is a sync.Locker.
var _ sync.Locker = (*lockedConn)(nil)

type lockedConn struct {
	net.Conn
	sync.Mutex
}
