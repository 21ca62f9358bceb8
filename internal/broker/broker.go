// Package broker is Garrison's MQTT broker: mochi-mqtt wired through its
// hook API with mutual TLS, identity from the certificate, default-deny
// topic ACLs, quarantine, limits, instant kicks and session events.
//
// Contract:
//   - Every connection completes a TLS handshake with a client certificate,
//     and the chain is verified by [Verifier] after every handshake,
//     resumed TLS sessions included. Nothing is read from an unverified
//     connection.
//   - The device identity comes from the certificate; the MQTT client id
//     must equal the device id. Password login is refused; a CONNECT
//     carrying a well-known factory credential is refused and reported as
//     default_credentials, on every listener.
//   - The one exception, off by default: the legacy password listener
//     ([Broker.EnablePasswords], password.go), server-only TLS, where a
//     per-device password verified against its stored hash stands in for
//     the certificate. Everything after authentication is the same.
//   - A device is admitted only in state active or quarantined (asked of
//     [States] at connect). [Broker.SetState] re-authorises live sessions at
//     once: revoked, suspended and every other state closes the session;
//     quarantined narrows its ACL.
//   - Every connect, refusal (with reason and source address), disconnect,
//     ACL denial and publish (metadata only) is published as an event.
//   - Every accepted device publish is decoded by [DecodeDevicePayload]
//     and its events (metrics, firmware reports, positions, command
//     results, telemetry for the data stream) are published; a payload that
//     does not decode becomes a device.payload_rejected event.
//
// Device ids are globally unique (the registry enforces it), so the topic
// namespace devices/{id}/ is shared by all tenants; sessions are keyed
// internally by tenant and device so one tenant can never take over
// another's session.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/creds"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Identity is who a verified certificate says the client is.
type Identity struct {
	Tenant event.TenantID
	Device event.DeviceID
	Serial string // certificate serial, hex
}

// maxPendingWrites is the outbound queue of a session, see New.
const maxPendingWrites = 32

// Errors a [Verifier] returns (wrapped) so refusals carry a reason.
var (
	ErrRevoked = errors.New("certificate revoked")
	ErrUnknown = errors.New("certificate unknown")
	ErrExpired = errors.New("certificate expired")
)

// Verifier verifies a client certificate chain (leaf first) against the
// tenant's trusted CAs and revocation, and returns the identity it names.
// On failure it returns whatever identity it could read (possibly zero).
type Verifier interface {
	VerifyClient(ctx context.Context, chain []*x509.Certificate) (Identity, error)
}

// States tells a device's registry state.
type States interface {
	DeviceState(ctx context.Context, t event.TenantID, d event.DeviceID) (store.DeviceState, error)
}

// Publisher receives the broker's events. Publish must keep nothing of ev
// (the envelope, its Attrs map) after it returns: the broker reuses the
// envelopes of its most frequent event, mqtt.publish, and the attribute
// maps of the events it decodes from payloads. Encode it (as the bus does)
// or copy it.
type Publisher interface {
	Publish(ctx context.Context, ev *event.Event) error
}

// Options configure a [Broker]. Zero values get the defaults noted.
type Options struct {
	Addr             string          // default ":8883"
	Certificate      tls.Certificate // the broker's server certificate (required)
	AllowTLS12       bool            // default TLS 1.3 only; 1.2 then with ECDHE+AEAD suites only
	Verifier         Verifier        // required
	States           States          // required
	Publisher        Publisher       // required
	Credentials      *creds.List     // default: the built-in factory list
	Clock            clock.Clock
	Logger           *slog.Logger
	MaxHandshakes    int           // concurrent TLS handshakes, default 4×GOMAXPROCS... 64
	HandshakeTimeout time.Duration // default 10s
	// WriteTimeout bounds one write to a device: a device that does not
	// drain its connection for that long is disconnected (default 30s).
	// Without it, mochi's write under the client's lock would hold every
	// publisher to that device (commands, jobs) for as long as the device
	// stays silent.
	WriteTimeout  time.Duration
	MaxPayload    int     // bytes per PUBLISH, default 64 KiB
	PublishRate   float64 // per device, messages/s, default 20
	PublishBurst  int     // default 100
	MaxViolations int     // limit breaks before disconnect, default 50
	// SourceConnectRate limits new connections per source address (an
	// IPv4 host, an IPv6 /64), on both listeners together, refused before
	// the TLS handshake: connections/s, default 100; negative: no limit.
	// Generous because a whole fleet may share one address (carrier NAT,
	// a private APN): see docs/BROKER.md.
	SourceConnectRate  float64
	SourceConnectBurst int // default 1000
	// DeviceConnectRate limits CONNECTs per verified device (a device
	// reconnecting in a loop): connects/s, default 0.1 (6 a minute);
	// negative: no limit.
	DeviceConnectRate  float64
	DeviceConnectBurst int // default 10
}

func (o *Options) defaults() error {
	if o.Addr == "" {
		o.Addr = ":8883"
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Credentials == nil {
		o.Credentials = creds.Factory()
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = 64
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = 64 << 10
	}
	if o.PublishRate <= 0 {
		o.PublishRate = 20
	}
	if o.PublishBurst <= 0 {
		o.PublishBurst = 100
	}
	if o.MaxViolations <= 0 {
		o.MaxViolations = 50
	}
	if o.SourceConnectRate == 0 {
		o.SourceConnectRate = 100
	}
	if o.SourceConnectBurst <= 0 {
		o.SourceConnectBurst = 1000
	}
	if o.DeviceConnectRate == 0 {
		o.DeviceConnectRate = 0.1
	}
	if o.DeviceConnectBurst <= 0 {
		o.DeviceConnectBurst = 10
	}
	var errs []error
	if o.Certificate.Certificate == nil {
		errs = append(errs, errors.New("broker: server certificate missing"))
	}
	if o.Verifier == nil {
		errs = append(errs, errors.New("broker: verifier missing"))
	}
	if o.States == nil {
		errs = append(errs, errors.New("broker: device states missing"))
	}
	if o.Publisher == nil {
		errs = append(errs, errors.New("broker: event publisher missing"))
	}
	return errors.Join(errs...)
}

type counters struct {
	handshakes, handshakeFailures, handshakeQueueTimeouts  atomic.Int64
	handshakesInFlight                                     atomic.Int64
	refused, denied, dropped, published, violations, kicks atomic.Int64
	rejected                                               atomic.Int64 // payloads that did not decode
	sourceConnectsRefused, deviceConnectsRefused           atomic.Int64 // over a connect rate
	deliveriesDropped                                      atomic.Int64 // outbound queue full
}

// Stats is a snapshot of the broker's counters.
type Stats struct {
	Handshakes, HandshakeFailures, HandshakeQueueTimeouts, HandshakesInFlight int64
	Refused, Denied, Dropped, Published, Violations, Kicks                    int64
	Rejected                                                                  int64 // payloads DecodeDevicePayload refused
	// Connections refused before the handshake (source over its connect
	// rate), CONNECTs refused (device over its connect rate; also in Refused).
	SourceConnectsRefused, DeviceConnectsRefused int64
	// Deliveries to a device dropped on a full outbound queue (its session
	// is then closed; commands and jobs are sent again on resubscription).
	DeliveriesDropped int64
	Sessions          int
}

// session is what the broker keeps per live device session.
type session struct {
	id          Identity
	remote      string
	sessionID   string
	quarantined atomic.Bool
	kicked      atomic.Value // string: why the platform closed the session
	rate        *bucket
	violations  atomic.Int64
	dropped     atomic.Int64 // deliveries dropped on a full outbound queue
	cl          *mqtt.Client
}

// Broker is the MQTT broker. Construct with [New], then [Broker.Start].
type Broker struct {
	opts    Options
	log     *slog.Logger
	srv     *mqtt.Server
	ln      *mtlsListener
	pw      *pwListener // nil unless EnablePasswords
	metrics counters

	mu       sync.Mutex
	sessions map[string]*session // key: tenant/device

	observers atomic.Int64 // inline subscription ids

	onCommands atomic.Pointer[func(Identity)] // OnCommandsSubscribed
	onOTA      atomic.Pointer[func(Identity)] // OnJobsSubscribed

	sources *rateTable[netip.Addr] // connect rate per source; nil: off
	devices *rateTable[string]     // connect rate per device (tenant/device); nil: off

	pubEvents sync.Pool // *event.Event: mqtt.publish envelopes, see [Publisher]
	attrMaps  sync.Pool // map[string]any: attributes of decoded device events
}

// New validates opts and builds a broker; it opens nothing.
func New(opts Options) (*Broker, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	b := &Broker{opts: opts, log: opts.Logger, sessions: map[string]*session{},
		sources: newRateTable[netip.Addr](opts.SourceConnectRate, opts.SourceConnectBurst, maxSources),
		devices: newRateTable[string](opts.DeviceConnectRate, opts.DeviceConnectBurst, maxDevices)}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPayload + 1024)
	// Deliveries to a device (commands, firmware jobs) queued per session.
	// They are rare and the queue drains as fast as TLS writes: it fills
	// only when a burst outruns the writes or the device stops reading,
	// and then the session is closed and what was dropped is sent again on
	// its next subscription (OnPublishDropped). 32 pointers fit a 352-byte allocation where
	// 256 took 2,304 bytes per idle session (docs/BENCHMARKS.md).
	caps.MaximumClientWritesPending = maxPendingWrites
	caps.ReceiveMaximum = 64
	caps.MaximumInflight = 256
	caps.MaximumSessionExpiryInterval = 3600
	caps.RetainAvailable = 0
	caps.SharedSubAvailable = 0
	caps.MaximumQos = 1
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       opts.Logger.With("component", "mqtt"),
		InlineClient: true,
		// Per session, held while idle. Device packets are small, tls.Conn
		// buffers a whole record below it, and larger payloads are read
		// past the buffer: 1 KiB cost no CPU per message against 2 KiB
		// and saves 1 KiB per session (docs/BENCHMARKS.md).
		ClientNetReadBufferSize:  1024,
		ClientNetWriteBufferSize: 2048,
		SysTopicResendInterval:   3600,
	})
	if err := b.srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: hook: %w", err)
	}
	b.ln = &mtlsListener{id: "mtls", addr: opts.Addr, b: b, tlsConf: b.tlsConfig(), sem: make(chan struct{}, opts.MaxHandshakes)}
	if err := b.srv.AddListener(b.ln); err != nil {
		return nil, fmt.Errorf("broker: listener: %w", err)
	}
	return b, nil
}

func (b *Broker) tlsConfig() *tls.Config {
	c := &tls.Config{
		Certificates: []tls.Certificate{b.opts.Certificate},
		// The chain is verified by the Verifier after every handshake,
		// resumed sessions included, against the tenant's trusted CAs.
		ClientAuth: tls.RequireAnyClientCert,
		MinVersion: tls.VersionTLS13,
	}
	if b.opts.AllowTLS12 {
		c.MinVersion = tls.VersionTLS12
		c.CipherSuites = tls12Suites()
	}
	return c
}

// tls12Suites are the only TLS 1.2 suites allowed when 1.2 is: ECDHE with
// AEAD.
func tls12Suites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// Start opens the listener and serves in the background.
func (b *Broker) Start(context.Context) error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	return nil
}

// Addr returns the listening address (useful with port 0).
func (b *Broker) Addr() net.Addr {
	b.ln.mu.Lock()
	defer b.ln.mu.Unlock()
	if b.ln.ln == nil {
		return nil
	}
	return b.ln.ln.Addr()
}

// Close disconnects every client and stops the listener.
func (b *Broker) Close() error {
	// mochi disconnects each client in turn; one stuck in a write (see
	// disconnect) would hold up the shutdown.
	b.mu.Lock()
	for _, s := range b.sessions {
		cl := s.cl
		time.AfterFunc(closeGrace, func() { cl.Stop(packets.ErrServerShuttingDown) })
	}
	b.mu.Unlock()
	err := b.srv.Close()
	b.ln.wg.Wait()
	if b.pw != nil {
		b.pw.wg.Wait()
	}
	return err
}

func key(t event.TenantID, d event.DeviceID) string { return string(t) + "/" + string(d) }

// SetState re-authorises a device's live session after a registry change:
// quarantined narrows the ACL at once, active widens it again, and any other
// state closes the session. It returns whether a session was closed.
func (b *Broker) SetState(t event.TenantID, d event.DeviceID, s store.DeviceState) bool {
	b.mu.Lock()
	sess := b.sessions[key(t, d)]
	b.mu.Unlock()
	if sess == nil {
		return false
	}
	switch s {
	case store.StateActive:
		sess.quarantined.Store(false)
		return false
	case store.StateQuarantined:
		sess.quarantined.Store(true)
		return false
	}
	return b.Kick(t, d, "state "+string(s))
}

// Kick closes the device's live session: mochi sends a DISCONNECT and the
// connection is closed, within closeGrace even if the device stopped
// reading. It returns at once, whether there was a session.
func (b *Broker) Kick(t event.TenantID, d event.DeviceID, reason string) bool {
	b.mu.Lock()
	sess := b.sessions[key(t, d)]
	b.mu.Unlock()
	if sess == nil {
		return false
	}
	b.metrics.kicks.Add(1)
	// Recorded first: the client may close its end on our DISCONNECT before
	// the server records its own cause.
	sess.kicked.Store(reason)
	b.log.Info("mqtt kick", "tenant", t, "device", d, "reason", reason)
	b.disconnect(sess.cl, packets.ErrAdministrativeAction)
	return true
}

// closeGrace is how long a DISCONNECT may take to be written before the
// connection is closed under it.
const closeGrace = 500 * time.Millisecond

// disconnect tells the client why its session ends (mochi writes a
// DISCONNECT) and closes it, without making the caller wait: mochi writes
// under the client's lock, with no deadline when keep-alive is off, so a
// device that stopped reading would hold a DISCONNECT (and a kick after
// a revocation) behind its stuck write forever. After closeGrace the
// connection is closed regardless, which fails the stuck write.
func (b *Broker) disconnect(cl *mqtt.Client, code packets.Code) {
	t := time.AfterFunc(closeGrace, func() { cl.Stop(code) })
	go func() {
		_ = b.srv.DisconnectClient(cl, code)
		t.Stop()
	}()
}

// Command publishes a command payload to the device's command topic. It
// reports whether the device has a live session.
//
// A command that found the session's outbound queue full was dropped
// (the session is then closed, see [hook.OnPublishDropped]): it reports
// false, so that the command stays offline and is sent again on the
// device's next subscription.
func (b *Broker) Command(t event.TenantID, d event.DeviceID, payload []byte) (bool, error) {
	return b.publishTo(t, d, "commands", payload, false)
}

// publishTo publishes payload at QoS 1 on devices/{d}/<subtopic> and
// reports whether a live session took it: false when there is none, when
// the delivery was dropped on its full outbound queue (the publish runs on
// this goroutine, the drop hook included), or when the session was closed
// meanwhile (a write timeout). liveOnly publishes nothing without a live
// session.
func (b *Broker) publishTo(t event.TenantID, d event.DeviceID, subtopic string, payload []byte, liveOnly bool) (bool, error) {
	b.mu.Lock()
	sess := b.sessions[key(t, d)]
	b.mu.Unlock()
	if sess == nil && liveOnly {
		return false, nil
	}
	var dropped int64
	if sess != nil {
		dropped = sess.dropped.Load()
	}
	if err := b.srv.Publish("devices/"+string(d)+"/"+subtopic, payload, false, 1); err != nil {
		return sess != nil, fmt.Errorf("broker: publish %s: %w", subtopic, err)
	}
	return sess != nil && sess.dropped.Load() == dropped && !sess.cl.Closed() && !writeBroken(sess.cl), nil
}

// OnCommandsSubscribed calls fn each time a device's subscription to its
// own devices/{id}/commands is granted (after every connect of an agent
// that subscribes), so that commands published while it was offline can be
// sent again. fn runs on the device's read loop: it must return quickly.
// A later call replaces fn.
func (b *Broker) OnCommandsSubscribed(fn func(id Identity)) {
	b.onCommands.Store(&fn)
}

// OnJobsSubscribed calls fn each time a device's subscription covering its
// own devices/{id}/ota/job (the topic itself, ota/+ or ota/#) is granted,
// so that a firmware job published while it was offline can be sent
// again. fn runs on the device's read loop: it must return quickly. A
// later call replaces fn.
func (b *Broker) OnJobsSubscribed(fn func(id Identity)) {
	b.onOTA.Store(&fn)
}

// observerIDBase keeps Observe's inline subscription ids apart from
// OnDevicePublish's.
const observerIDBase = 1 << 20

// Observe calls fn with every publish matching filter that the broker
// accepted (past the ACL, quarantine and limits), on the broker's
// goroutine: fn must not block. stop removes the observer. It is how the
// platform reads device reports (events, ota/status) without a network
// client.
func (b *Broker) Observe(filter string, fn func(topic string, payload []byte)) (stop func(), err error) {
	id := observerIDBase + int(b.observers.Add(1)) // apart from OnDevicePublish's ids
	err = b.srv.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return nil, fmt.Errorf("broker: observe: %w", err)
	}
	return func() { _ = b.srv.Unsubscribe(filter, id) }, nil
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.Lock()
	n := len(b.sessions)
	b.mu.Unlock()
	m := &b.metrics
	return Stats{
		Handshakes: m.handshakes.Load(), HandshakeFailures: m.handshakeFailures.Load(),
		HandshakeQueueTimeouts: m.handshakeQueueTimeouts.Load(), HandshakesInFlight: m.handshakesInFlight.Load(),
		Refused: m.refused.Load(), Denied: m.denied.Load(), Dropped: m.dropped.Load(),
		Published: m.published.Load(), Violations: m.violations.Load(), Kicks: m.kicks.Load(),
		Rejected:              m.rejected.Load(),
		SourceConnectsRefused: m.sourceConnectsRefused.Load(), DeviceConnectsRefused: m.deviceConnectsRefused.Load(),
		DeliveriesDropped: m.deliveriesDropped.Load(),
		Sessions:          n,
	}
}

func (b *Broker) emit(id Identity, kind event.Kind, attrs map[string]any) {
	b.emitAt(id, kind, b.opts.Clock.Now(), attrs)
}

// emitAt is emit at a time the caller already read from the clock.
func (b *Broker) emitAt(id Identity, kind event.Kind, now time.Time, attrs map[string]any) {
	b.publish(&event.Event{ID: event.NewID(now), Tenant: id.Tenant, Device: id.Device, Kind: kind, Time: now, Source: "broker", Attrs: attrs})
}

// emitPublish publishes the mqtt.publish event of one accepted PUBLISH in
// a recycled envelope: one per message is the broker's most frequent
// allocation otherwise.
func (b *Broker) emitPublish(id Identity, now time.Time, class TopicClass, bytes int, qos byte) {
	ev, _ := b.pubEvents.Get().(*event.Event)
	if ev == nil {
		ev = &event.Event{Attrs: make(map[string]any, 3)}
	}
	attrs := ev.Attrs
	clear(attrs)
	attrs["topic_class"], attrs["bytes"], attrs["qos"] = class.attr(), float64(bytes), qosAttr(qos)
	*ev = event.Event{ID: event.NewID(now), Tenant: id.Tenant, Device: id.Device, Kind: event.MQTTPublish, Time: now, Source: "broker", Attrs: attrs}
	b.publish(ev)
	b.pubEvents.Put(ev)
}

func (b *Broker) publish(ev *event.Event) {
	if ev.Tenant == "" {
		ev.Tenant = "unknown"
	}
	if err := b.opts.Publisher.Publish(context.Background(), ev); err != nil {
		b.log.Warn("mqtt event publish failed", "kind", ev.Kind, "err", err)
	}
}

func (b *Broker) authFailed(_ context.Context, id Identity, remote, reason string, err error, extra map[string]any) {
	b.metrics.refused.Add(1)
	attrs := map[string]any{"reason": reason, "remote": remote}
	for k, v := range extra {
		attrs[k] = v
	}
	if id.Serial != "" {
		attrs["cert_serial"] = id.Serial
	}
	if err != nil {
		attrs["error"] = err.Error()
	}
	b.log.Info("mqtt connect refused", "tenant", id.Tenant, "device", id.Device, "remote", remote, "reason", reason)
	b.emit(id, event.MQTTAuthFailed, attrs)
}

// allowSource takes a connect token of c's source address. Over the
// rate, c is reset at once (no TLS handshake, no TIME_WAIT kept), counted,
// and reported as mqtt.auth_failed reason connect_rate (limit source) at
// most once a minute per source, with the number refused since.
func (b *Broker) allowSource(c net.Conn, listener string) bool {
	k, ok := sourceKey(c.RemoteAddr())
	if !ok {
		return true
	}
	allowed, report := b.sources.take(k, b.opts.Clock.Now())
	if allowed {
		return true
	}
	b.metrics.sourceConnectsRefused.Add(1)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	if report > 0 {
		remote := c.RemoteAddr().String()
		b.log.Info("mqtt connections refused", "remote", remote, "reason", "connect_rate", "limit", "source", "refused", report)
		b.emit(Identity{}, event.MQTTAuthFailed, map[string]any{"reason": "connect_rate", "limit": "source", "remote": remote,
			"source": k.String(), "refused": float64(report), "listener": listener})
	}
	return false
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrRevoked):
		return "revoked_cert"
	case errors.Is(err, ErrExpired):
		return "expired_cert"
	default:
		return "unknown_cert"
	}
}
