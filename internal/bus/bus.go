// Package bus carries [event.Event] envelopes over NATS JetStream, embedded
// in the process (the default, no TCP listener) or on an external NATS
// server or cluster. After the connection is made the code is the same.
//
// Contract:
//   - Two streams are created or upgraded by [Open]: EVENTS for ordinary
//     events and SECURITY for kinds that change security state (see
//     [DefaultSecurityKinds]). Each event goes to exactly one of them.
//   - Subjects are PREFIX.TENANT.KIND.PARTITION as in [event.Subject]; the
//     EVENTS prefix is Options.SubjectPrefix (default "gev"), the SECURITY
//     prefix is Options.SecuritySubjectPrefix (default "gevsec").
//   - [Bus.Publish] returns only once the stream has stored the event.
//     [Bus.PublishAsync] keeps a window of unacknowledged publishes; every
//     failure is counted and returned by the next [Bus.Flush].
//     [Bus.PublishBatched] does the same but carries events of one subject
//     published close together in one message (format at [BatchHeader]);
//     consumers unpack it, so handlers still see one event at a time.
//   - A [Consumer] is durable and pull-based; it hands events to its handler
//     one at a time in stream order (so in order per subject), acknowledges
//     after the handler returns nil and retries the same event with backoff
//     when it returns an error, so a failing event never lets later events
//     of its consumer overtake it.
//   - Durability is described in docs/BUS.md: the embedded SECURITY store
//     is fsync'd before acknowledging; the embedded EVENTS store is written
//     to the OS before acknowledging and fsync'd every Options.SyncInterval.
//
// A Bus is safe for concurrent use.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

// Stream selects one of the bus's two streams.
type Stream int

const (
	// Events is the EVENTS stream: everything not in SecurityKinds.
	Events Stream = iota
	// Security is the SECURITY stream: kinds that change security state,
	// stored with sync-on-write when embedded.
	Security
	// Data is the DATA stream: device application data (kinds in
	// Options.DataKinds, default device.telemetry) for tenants' own
	// applications, kept apart so that it never crowds detection's events.
	Data
)

func (s Stream) String() string {
	switch s {
	case Security:
		return "security"
	case Data:
		return "data"
	}
	return "events"
}

// DefaultDataKinds returns the kinds routed to the DATA stream when
// Options.DataKinds is nil: device telemetry.
func DefaultDataKinds() []event.Kind {
	return []event.Kind{event.DeviceTelemetry}
}

// DefaultSecurityKinds returns the kinds routed to the SECURITY stream when
// Options.SecurityKinds is nil: certificates issued and revoked, registry
// state changes (quarantine, disable), device password changes and response
// actions.
func DefaultSecurityKinds() []event.Kind {
	return []event.Kind{event.CertIssued, event.CertRevoked, event.DeviceState, event.DevicePassword, event.ActionTaken}
}

// Options configure [Open]. The zero value plus a DataDir is a working
// embedded bus.
type Options struct {
	// URL of an external NATS server (nats://host:4222). Empty means embedded.
	URL string
	// DataDir holds the embedded JetStream stores (DataDir/bus/...).
	// Required when URL is empty, ignored otherwise.
	DataDir string
	Logger  *slog.Logger // nil: discard
	Clock   clock.Clock  // nil: clock.Real; stamps missing event ids
	// Registerer receives the bus's metrics; nil registers nothing.
	Registerer prometheus.Registerer

	// StreamPrefix is prepended to the stream names EVENTS and SECURITY, so
	// that several buses (test runs) can share one server.
	StreamPrefix string
	// SubjectPrefix replaces event.SubjectPrefix as the first subject token
	// of the EVENTS stream. Default event.SubjectPrefix ("gev").
	SubjectPrefix string
	// SecuritySubjectPrefix is the first subject token of the SECURITY
	// stream. Default SubjectPrefix + "sec". Must differ from SubjectPrefix.
	SecuritySubjectPrefix string
	// SecurityKinds are routed to SECURITY. Nil means DefaultSecurityKinds.
	SecurityKinds []event.Kind
	// DataSubjectPrefix is the first subject token of the DATA stream.
	// Default SubjectPrefix + "data". Must differ from the other two.
	DataSubjectPrefix string
	// DataKinds are routed to DATA. Nil means DefaultDataKinds.
	DataKinds []event.Kind
	// DataMaxAge and DataMaxBytes limit DATA (defaults 24 hours, no byte
	// limit); the oldest messages are discarded first.
	DataMaxAge   time.Duration
	DataMaxBytes int64

	// EventsMaxAge and EventsMaxBytes limit EVENTS (defaults 7 days, no
	// byte limit); the oldest events are discarded first.
	EventsMaxAge   time.Duration
	EventsMaxBytes int64
	// SecurityMaxAge limits SECURITY (default 0: kept forever).
	SecurityMaxAge time.Duration
	// Replicas of each stream on an external cluster (default 1).
	Replicas int
	// SyncInterval is how often the embedded EVENTS store is fsync'd
	// (default 1s). It bounds what a power cut can take.
	SyncInterval time.Duration
	// PublishWindow is the number of PublishAsync calls that may await their
	// acknowledgement at once (default 8192).
	PublishWindow int

	// BatchLinger is how long [Bus.PublishBatched] gathers events before it
	// sends what it has (default 2ms); a full batch goes at once.
	BatchLinger time.Duration
	// BatchMaxEvents bounds the events of one batch message (default 128,
	// at most MaxBatchEvents).
	BatchMaxEvents int
	// BatchMaxBytes bounds the body of one batch message (default 256 KiB,
	// lowered to the server's maximum payload less 4 KiB for headers; at
	// least event.MaxEncodedSize + 8).
	BatchMaxBytes int
}

// Errors returned by the bus.
var (
	// ErrClosed: the bus has been closed.
	ErrClosed = errors.New("bus: closed")
	// ErrConfig: Options or ConsumerOptions are unusable.
	ErrConfig = errors.New("bus: bad configuration")
)

// Bus publishes and consumes events. Create it with [Open]; release it with
// [Bus.Close].
type Bus struct {
	opts     Options
	log      *slog.Logger
	clk      clock.Clock
	m        *metrics
	secKind  map[event.Kind]bool
	dataKind map[event.Kind]bool

	// One connection per embedded server; in external mode both are the same.
	evSrv, secSrv *server.Server
	evNC, secNC   *nats.Conn
	evJS, secJS   jetstream.JetStream
	batchJS       jetstream.JetStream // EVENTS batches, own async window
	batch         *batcher

	mu        sync.Mutex
	closed    bool
	consumers map[*Consumer]struct{}
	asyncErrs []error
	asyncN    int

	// lastAck is when a consumer last acknowledged (UnixNano), see Close.
	lastAck atomic.Int64
}

// maxRecordedAsyncErrs bounds the errors kept between two Flush calls; the
// count is always exact.
const maxRecordedAsyncErrs = 16

// Open connects (starting the embedded servers when Options.URL is empty),
// creates or upgrades the two streams and returns a ready Bus.
func Open(ctx context.Context, o Options) (*Bus, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	b := &Bus{
		opts: o, log: o.Logger, clk: o.Clock, m: newMetrics(o.Registerer),
		secKind: map[event.Kind]bool{}, dataKind: map[event.Kind]bool{}, consumers: map[*Consumer]struct{}{},
	}
	for _, k := range o.SecurityKinds {
		b.secKind[k] = true
	}
	for _, k := range o.DataKinds {
		b.dataKind[k] = true
	}
	ok := false
	defer func() {
		if !ok {
			b.shutdown()
		}
	}()
	if o.URL == "" {
		if err := b.startEmbedded(); err != nil {
			return nil, err
		}
	} else {
		nc, err := nats.Connect(o.URL, b.connOpts("garrison")...)
		if err != nil {
			return nil, fmt.Errorf("bus: connect %s: %w", redact(o.URL), err)
		}
		b.evNC, b.secNC = nc, nc
	}
	var err error
	if b.evJS, err = b.newJS(b.evNC, Events); err != nil {
		return nil, err
	}
	if b.secNC == b.evNC {
		// One connection, one async-publish window per stream still.
		if b.secJS, err = b.newJS(b.evNC, Security); err != nil {
			return nil, err
		}
	} else if b.secJS, err = b.newJS(b.secNC, Security); err != nil {
		return nil, err
	}
	if err := b.ensureStreams(ctx); err != nil {
		return nil, err
	}
	if mp := int(b.evNC.MaxPayload()) - 4<<10; mp > 0 && b.opts.BatchMaxBytes > mp {
		b.opts.BatchMaxBytes = mp
	}
	if b.opts.BatchMaxBytes < minBatchBytes {
		return nil, fmt.Errorf("%w: server maximum payload %d is too small for a batch of one largest event", ErrConfig, b.evNC.MaxPayload())
	}
	// Batches get their own window, in messages: each carries up to
	// BatchMaxEvents events, so a smaller window bounds the memory awaiting
	// acknowledgement.
	w := b.opts.PublishWindow
	b.opts.PublishWindow = max(w/8, 64)
	b.batchJS, err = b.newJS(b.evNC, Events)
	b.opts.PublishWindow = w
	if err != nil {
		return nil, err
	}
	b.batch = newBatcher(b, b.batchJS)
	ok = true
	b.log.Info("bus ready", "mode", b.mode(), "events_stream", b.StreamName(Events), "security_stream", b.StreamName(Security))
	return b, nil
}

func (o *Options) defaults() error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = event.SubjectPrefix
	}
	if o.SecuritySubjectPrefix == "" {
		o.SecuritySubjectPrefix = o.SubjectPrefix + "sec"
	}
	if o.SecurityKinds == nil {
		o.SecurityKinds = DefaultSecurityKinds()
	}
	if o.DataSubjectPrefix == "" {
		o.DataSubjectPrefix = o.SubjectPrefix + "data"
	}
	if o.DataKinds == nil {
		o.DataKinds = DefaultDataKinds()
	}
	if o.DataMaxAge == 0 {
		o.DataMaxAge = 24 * time.Hour
	}
	if o.DataMaxBytes == 0 {
		o.DataMaxBytes = -1
	}
	if o.EventsMaxAge == 0 {
		o.EventsMaxAge = 7 * 24 * time.Hour
	}
	if o.EventsMaxBytes == 0 {
		o.EventsMaxBytes = -1
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = time.Second
	}
	if o.PublishWindow == 0 {
		o.PublishWindow = 8192
	}
	if o.BatchLinger == 0 {
		o.BatchLinger = 2 * time.Millisecond
	}
	if o.BatchMaxEvents == 0 {
		o.BatchMaxEvents = 128
	}
	if o.BatchMaxBytes == 0 {
		o.BatchMaxBytes = 256 << 10
	}
	var errs []error
	if o.URL == "" && o.DataDir == "" {
		errs = append(errs, errors.New("data dir required for the embedded bus"))
	}
	for _, p := range []string{o.SubjectPrefix, o.SecuritySubjectPrefix, o.DataSubjectPrefix} {
		if !plainToken(p) {
			errs = append(errs, fmt.Errorf("subject prefix %q must be one token of letters, digits, '-' or '_'", p))
		}
	}
	if o.SubjectPrefix == o.SecuritySubjectPrefix || o.DataSubjectPrefix == o.SubjectPrefix || o.DataSubjectPrefix == o.SecuritySubjectPrefix {
		errs = append(errs, errors.New("subject prefixes of the three streams must differ"))
	}
	for _, k := range o.DataKinds {
		if slices.Contains(o.SecurityKinds, k) {
			errs = append(errs, fmt.Errorf("kind %s cannot go to both SECURITY and DATA", k))
		}
	}
	if o.StreamPrefix != "" && !plainToken(o.StreamPrefix) {
		errs = append(errs, fmt.Errorf("stream prefix %q must be letters, digits, '-' or '_'", o.StreamPrefix))
	}
	if o.EventsMaxAge < 0 || o.SecurityMaxAge < 0 || o.DataMaxAge < 0 || o.Replicas < 0 || o.SyncInterval < 0 || o.PublishWindow < 0 || o.BatchLinger < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	if o.BatchMaxEvents < 1 || o.BatchMaxEvents > MaxBatchEvents {
		errs = append(errs, fmt.Errorf("batch max events %d must be from 1 to %d", o.BatchMaxEvents, MaxBatchEvents))
	}
	if o.BatchMaxBytes < minBatchBytes {
		errs = append(errs, fmt.Errorf("batch max bytes %d must be at least %d (one largest event)", o.BatchMaxBytes, minBatchBytes))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return nil
}

// minBatchBytes fits one event of the largest size with its length prefix.
const minBatchBytes = event.MaxEncodedSize + 8

func plainToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (b *Bus) mode() string {
	if b.opts.URL == "" {
		return "embedded"
	}
	return "external"
}

// redact drops credentials from a URL for logs and errors.
func redact(u string) string {
	if i := strings.LastIndex(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "***" + u[i:]
		}
	}
	return u
}

func (b *Bus) connOpts(name string) []nats.Option {
	return []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			b.log.Error("bus: connection error", "subject", subj, "err", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn("bus: disconnected", "err", err)
			}
		}),
	}
}

// startEmbedded runs two in-process servers without listeners: one for
// EVENTS (writes reach the OS before the ack, fsync every SyncInterval) and
// one for SECURITY (SyncAlways: fsync before the ack). nats-server's sync
// policy is per server, not per stream, hence two.
func (b *Bus) startEmbedded() error {
	base := filepath.Join(b.opts.DataDir, "bus")
	var err error
	if b.evSrv, b.evNC, err = b.runServer(filepath.Join(base, "events"), "garrison-events", false); err != nil {
		return err
	}
	b.secSrv, b.secNC, err = b.runServer(filepath.Join(base, "security"), "garrison-security", true)
	return err
}

func (b *Bus) runServer(dir, name string, syncAlways bool) (*server.Server, *nats.Conn, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("bus: embedded store: %w", err)
	}
	s, err := server.NewServer(&server.Options{
		ServerName:   name,
		DontListen:   true,
		JetStream:    true,
		StoreDir:     dir,
		NoSigs:       true,
		SyncAlways:   syncAlways,
		SyncInterval: b.opts.SyncInterval,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("bus: embedded server %s: %w", name, err)
	}
	s.SetLoggerV2(serverLog{b.log.With("server", name)}, false, false, false)
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, nil, fmt.Errorf("bus: embedded server %s not ready", name)
	}
	nc, err := nats.Connect("", append(b.connOpts(name), nats.InProcessServer(s))...)
	if err != nil {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, nil, fmt.Errorf("bus: connect embedded %s: %w", name, err)
	}
	return s, nc, nil
}

func (b *Bus) newJS(nc *nats.Conn, st Stream) (jetstream.JetStream, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(b.opts.PublishWindow),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
			b.m.stream[b.streamOf(st, m.Subject)].acked.Add(float64(msgEvents(m)))
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			b.asyncFailed(b.streamOf(st, m.Subject), m.Subject, msgEvents(m), err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	return js, nil
}

// streamOf tells which stream a message published through the context of
// stream st went to: the EVENTS context also carries DATA (same server).
func (b *Bus) streamOf(st Stream, subj string) Stream {
	if st == Events && strings.HasPrefix(subj, b.opts.DataSubjectPrefix+".") {
		return Data
	}
	return st
}

// StreamName returns the JetStream name of stream st.
func (b *Bus) StreamName(st Stream) string {
	switch st {
	case Security:
		return b.opts.StreamPrefix + "SECURITY"
	case Data:
		return b.opts.StreamPrefix + "DATA"
	}
	return b.opts.StreamPrefix + "EVENTS"
}

func (b *Bus) prefix(st Stream) string {
	switch st {
	case Security:
		return b.opts.SecuritySubjectPrefix
	case Data:
		return b.opts.DataSubjectPrefix
	}
	return b.opts.SubjectPrefix
}

func (b *Bus) js(st Stream) jetstream.JetStream {
	if st == Security {
		return b.secJS
	}
	return b.evJS
}

func (b *Bus) streamConfig(st Stream) jetstream.StreamConfig {
	c := jetstream.StreamConfig{
		Name:      b.StreamName(st),
		Subjects:  []string{b.prefix(st) + ".>"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		Discard:   jetstream.DiscardOld,
		Replicas:  b.opts.Replicas,
		MaxMsgs:   -1,
		MaxBytes:  -1,
	}
	switch st {
	case Security:
		c.Description = "Garrison records that change security state"
		c.MaxAge = b.opts.SecurityMaxAge
		c.Duplicates = 2 * time.Minute // Publish sets the event id as Nats-Msg-Id
	case Data:
		c.Description = "Garrison device data for tenants' applications"
		c.MaxAge = b.opts.DataMaxAge
		c.MaxBytes = b.opts.DataMaxBytes
		c.Duplicates = 10 * time.Second
	default:
		c.Description = "Garrison events"
		c.MaxAge = b.opts.EventsMaxAge
		c.MaxBytes = b.opts.EventsMaxBytes
		c.Duplicates = 10 * time.Second
	}
	return c
}

// ensureStreams creates the streams or updates them to the current config.
func (b *Bus) ensureStreams(ctx context.Context) error {
	for _, st := range []Stream{Events, Security, Data} {
		cfg := b.streamConfig(st)
		if _, err := b.js(st).CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("bus: create or update stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// StreamFor returns the stream an event of kind k is published to.
func (b *Bus) StreamFor(k event.Kind) Stream {
	if b.secKind[k] {
		return Security
	}
	if b.dataKind[k] {
		return Data
	}
	return Events
}

// Subject returns the subject e is published on: event.Subject(e) with its
// first token replaced by the prefix of e's stream.
func (b *Bus) Subject(e *event.Event) string {
	s := event.Subject(e)
	return b.prefix(b.StreamFor(e.Kind)) + s[len(event.SubjectPrefix):]
}

// PartitionFilter is a consumer filter for one device partition of every
// tenant and kind (gev.*.*.P), in the default subject space that
// ConsumerOptions.Filters uses.
func PartitionFilter(p int) string {
	return fmt.Sprintf("%s.*.*.%d", event.SubjectPrefix, p)
}

// KindFilter is a consumer filter for one kind of every tenant and partition.
func KindFilter(k event.Kind) string {
	return event.SubjectPrefix + ".*." + strings.ReplaceAll(string(k), ".", "_") + ".*"
}

// TenantFilter is a consumer filter for everything of one tenant.
func TenantFilter(t event.TenantID) string {
	return event.SubjectPrefix + "." + string(t) + ".>"
}

// TelemetryFilter is the consumer filter of one tenant's device telemetry
// (gev.TENANT.device_telemetry.*); consume it from the [Data] stream, where
// it arrives as gevdata.TENANT.device_telemetry.PARTITION.
func TelemetryFilter(t event.TenantID) string {
	return event.SubjectPrefix + "." + string(t) + "." + strings.ReplaceAll(string(event.DeviceTelemetry), ".", "_") + ".*"
}

// mapFilter rewrites a filter from the default subject space to stream st's.
func (b *Bus) mapFilter(st Stream, f string) (string, error) {
	rest, ok := strings.CutPrefix(f, event.SubjectPrefix+".")
	if !ok || rest == "" {
		return "", fmt.Errorf("%w: filter %q must start with %q", ErrConfig, f, event.SubjectPrefix+".")
	}
	return b.prefix(st) + "." + rest, nil
}

func (b *Bus) encode(e *event.Event) (string, Stream, []byte, error) {
	if e != nil && e.ID == "" {
		e.ID = event.NewID(b.clk.Now())
	}
	data, err := event.Marshal(e)
	if err != nil {
		return "", 0, nil, fmt.Errorf("bus: publish: %w", err)
	}
	st := b.StreamFor(e.Kind)
	return b.Subject(e), st, data, nil
}

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Publish stores e and returns once its stream has acknowledged it. An
// empty e.ID is filled in (from the clock) before publishing; SECURITY
// publishes carry the id as Nats-Msg-Id so a retried Publish is stored once
// within two minutes.
func (b *Bus) Publish(ctx context.Context, e *event.Event) error {
	if b.isClosed() {
		return ErrClosed
	}
	subj, st, data, err := b.encode(e)
	if err != nil {
		b.m.stream[Events].failed.Inc()
		return err
	}
	var opts []jetstream.PublishOpt
	if st == Security {
		opts = append(opts, jetstream.WithMsgID(e.ID))
	}
	b.m.stream[st].published.Inc()
	if _, err := b.js(st).Publish(ctx, subj, data, opts...); err != nil {
		b.m.stream[st].failed.Inc()
		return fmt.Errorf("bus: publish %s: %w", subj, err)
	}
	b.m.stream[st].acked.Inc()
	return nil
}

// PublishAsync sends e without waiting for its acknowledgement. It blocks
// (until ctx ends) while PublishWindow publishes are outstanding. An error
// returned here means e was not sent; a failure after sending is reported by
// the next [Bus.Flush]. Call Flush before treating a batch as stored.
func (b *Bus) PublishAsync(ctx context.Context, e *event.Event) error {
	if b.isClosed() {
		return ErrClosed
	}
	subj, st, data, err := b.encode(e)
	if err != nil {
		b.m.stream[Events].failed.Inc()
		return err
	}
	return b.publishAsync(ctx, e, subj, st, data)
}

// PublishBatched is PublishAsync for high-volume events: events of the same
// subject (tenant, kind, partition) published within Options.BatchLinger
// of each other travel as one JetStream message (one stored message, one
// acknowledgement; see [BatchHeader]), up to BatchMaxEvents events or
// BatchMaxBytes. Publish order is kept per tenant and partition across
// kinds (an event of another kind closes the open batch of its partition),
// so partition consumers see what they saw without batching; it is not
// kept relative to PublishAsync or Publish calls. As with
// PublishAsync, an error returned here means e was not accepted; a failure
// after that is counted per event and reported by the next [Bus.Flush],
// which also sends what is still gathering. Consumers see each event on its
// own. SECURITY kinds are not batched (they keep their Nats-Msg-Id
// deduplication) and go through PublishAsync.
func (b *Bus) PublishBatched(ctx context.Context, e *event.Event) error {
	if b.isClosed() {
		return ErrClosed
	}
	subj, st, data, err := b.encode(e)
	if err != nil {
		b.m.stream[Events].failed.Inc()
		return err
	}
	if st == Security {
		return b.publishAsync(ctx, e, subj, st, data)
	}
	if err := b.batch.add(ctx, st, subj, data); err != nil {
		b.m.stream[st].failed.Inc()
		return err
	}
	return nil
}

func (b *Bus) publishAsync(ctx context.Context, e *event.Event, subj string, st Stream, data []byte) error {
	var opts []jetstream.PublishOpt
	if st == Security {
		opts = append(opts, jetstream.WithMsgID(e.ID))
	}
	for {
		_, err := b.js(st).PublishAsync(subj, data, opts...)
		if err == nil {
			b.m.stream[st].published.Inc()
			return nil
		}
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			b.m.stream[st].failed.Inc()
			return fmt.Errorf("bus: publish %s: %w", subj, err)
		}
		if ctx.Err() != nil {
			b.m.stream[st].failed.Inc()
			return fmt.Errorf("bus: publish %s: window full: %w", subj, ctx.Err())
		}
	}
}

// asyncFailed records that n events published to subj were not stored.
func (b *Bus) asyncFailed(st Stream, subj string, n int, err error) {
	b.m.stream[st].failed.Add(float64(n))
	b.mu.Lock()
	b.asyncN += n
	if len(b.asyncErrs) < maxRecordedAsyncErrs {
		if n > 1 {
			err = fmt.Errorf("batch of %d events: %w", n, err)
		}
		b.asyncErrs = append(b.asyncErrs, fmt.Errorf("%s: %w", subj, err))
	}
	b.mu.Unlock()
}

// Flush sends the events PublishBatched is still gathering, waits until
// every PublishAsync and PublishBatched so far has been acknowledged or has
// failed, and returns the failures since the previous Flush (nil if none;
// the count is in events). With several publishing goroutines, a Flush
// reports everyone's failures.
func (b *Bus) Flush(ctx context.Context) error {
	if b.batch != nil {
		if err := b.batch.send(ctx, false); err != nil {
			return err
		}
	}
	for _, js := range b.distinctJS() {
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return fmt.Errorf("bus: flush: %d publishes outstanding: %w", js.PublishAsyncPending(), ctx.Err())
		}
	}
	b.mu.Lock()
	n, errs := b.asyncN, b.asyncErrs
	b.asyncN, b.asyncErrs = 0, nil
	b.mu.Unlock()
	if n == 0 {
		return nil
	}
	return fmt.Errorf("bus: %d async publishes failed: %w", n, errors.Join(errs...))
}

func (b *Bus) distinctJS() []jetstream.JetStream {
	var out []jetstream.JetStream
	for _, js := range []jetstream.JetStream{b.evJS, b.secJS, b.batchJS} {
		if js != nil && !slices.Contains(out, js) {
			out = append(out, js)
		}
	}
	return out
}

// StreamInfo returns the server's view of stream st (config and state).
func (b *Bus) StreamInfo(ctx context.Context, st Stream) (*jetstream.StreamInfo, error) {
	s, err := b.js(st).Stream(ctx, b.StreamName(st))
	if err != nil {
		return nil, fmt.Errorf("bus: stream %s: %w", b.StreamName(st), err)
	}
	return s.Info(ctx)
}

// DeleteStreams removes the streams and the ArtifactsBucket object store,
// with their data. It exists for tests against a shared external server
// and for a factory reset.
func (b *Bus) DeleteStreams(ctx context.Context) error {
	var errs []error
	for _, st := range []Stream{Events, Security, Data} {
		if err := b.js(st).DeleteStream(ctx, b.StreamName(st)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, fmt.Errorf("bus: delete stream %s: %w", b.StreamName(st), err))
		}
	}
	if err := b.evJS.DeleteObjectStore(ctx, b.opts.StreamPrefix+ArtifactsBucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		errs = append(errs, fmt.Errorf("bus: delete object store %s: %w", b.opts.StreamPrefix+ArtifactsBucket, err))
	}
	return errors.Join(errs...)
}

// Close stops every consumer (letting each finish the events it holds),
// waits for outstanding async publishes (up to 10 s), drains the
// connections and shuts the embedded servers down, in that order. It returns
// async publish failures not yet reported by Flush.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	cons := make([]*Consumer, 0, len(b.consumers))
	for c := range b.consumers {
		cons = append(cons, c)
	}
	b.mu.Unlock()
	for _, c := range cons {
		c.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var berr error
	if b.batch != nil {
		berr = b.batch.close(ctx)
	}
	err := errors.Join(berr, b.Flush(ctx))
	if b.evSrv != nil {
		// nats-server 2.15 writes a consumer's state at most every 100 ms
		// and can lose the last acknowledgements when the server stops
		// within that window (its flusher clears the dirty mark after
		// encoding older state). Let one more write happen so a restart
		// resumes exactly where the consumers stopped. Real time on purpose:
		// this waits for the server's own timer.
		if since := time.Since(time.Unix(0, b.lastAck.Load())); since < consumerStateSettle {
			time.Sleep(consumerStateSettle - since)
		}
	}
	b.shutdown()
	return err
}

// consumerStateSettle is how long Close waits after the last acknowledgement
// before stopping the embedded servers.
const consumerStateSettle = 250 * time.Millisecond

// shutdown drains connections and stops servers; safe on a partial Open.
func (b *Bus) shutdown() {
	for _, nc := range []*nats.Conn{b.evNC, b.secNC} {
		if nc == nil || nc.IsClosed() {
			continue
		}
		done := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(done) })
		if err := nc.Drain(); err != nil {
			nc.Close()
		} else {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				nc.Close()
			}
		}
	}
	for _, s := range []*server.Server{b.evSrv, b.secSrv} {
		if s != nil {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
}

// serverLog sends nats-server's log lines to slog.
type serverLog struct{ l *slog.Logger }

func (s serverLog) Noticef(f string, a ...any) { s.l.Debug(fmt.Sprintf(f, a...)) }
func (s serverLog) Warnf(f string, a ...any)   { s.l.Warn(fmt.Sprintf(f, a...)) }
func (s serverLog) Fatalf(f string, a ...any)  { s.l.Error(fmt.Sprintf(f, a...)) }
func (s serverLog) Errorf(f string, a ...any)  { s.l.Error(fmt.Sprintf(f, a...)) }
func (s serverLog) Debugf(f string, a ...any)  { s.l.Debug(fmt.Sprintf(f, a...)) }
func (s serverLog) Tracef(f string, a ...any)  { s.l.Debug(fmt.Sprintf(f, a...)) }
