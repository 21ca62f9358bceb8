package radius

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	lr "layeh.com/radius"
)

// Publisher takes the events the servers produce (the bus).
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// SIMs maps an IMSI to the device its SIM is bound to (the registry).
// ok is false when the IMSI is unknown to the tenant; err is reserved for
// failures to answer.
type SIMs interface {
	ByIMSI(ctx context.Context, tenant event.TenantID, imsi string) (device event.DeviceID, boundIMEI string, state string, ok bool, err error)
}

// Locator finds the position of the cell a User-Location-Info names
// ([*Cells] in memory; the platform's store-backed table in serve). It is
// called for every accounting record that carries a location, so it must
// be fast and safe for concurrent use; ok is false when the cell is unknown.
type Locator interface {
	Locate(ctx context.Context, u ULI) (pos Cell, ok bool)
}

// Client is one RADIUS client (an APN gateway, GGSN/PGW/SMF) allowed to talk
// to the servers: packets from any address in Prefix are checked with
// Secret and belong to Tenant.
type Client struct {
	Name   string
	Tenant event.TenantID
	Prefix netip.Prefix
	Secret []byte
}

// Mode says what the authentication server does with an IMEI that does not
// match the SIM's binding.
type Mode string

// Binding modes.
const (
	// ModeMonitor accepts the request and reports the mismatch.
	ModeMonitor Mode = "monitor"
	// ModeEnforce rejects the request (and reports it).
	ModeEnforce Mode = "enforce"
)

// Options configures a [Server]. Publisher, SIMs and Clients are required.
type Options struct {
	// AcctAddr and AuthAddr are the UDP listen addresses used by
	// [Server.ListenAndServe]; defaults :1813 and :1812.
	AcctAddr, AuthAddr string
	Clients            []Client
	Mode               Mode // default ModeMonitor
	// RequireMessageAuthenticator drops Access-Requests without a valid
	// Message-Authenticator (RFC 3579; the Blast-RADIUS mitigation).
	RequireMessageAuthenticator bool
	// DuplicateWindow is how long a request's answer is kept to answer a
	// retransmission without counting it again; default 30s.
	DuplicateWindow time.Duration
	// Workers is the number of goroutines reading each socket; default
	// GOMAXPROCS. Records of one session arrive minutes apart, so handling
	// them in parallel does not reorder them in practice.
	Workers int
	// MaxDuplicates bounds the answers kept for duplicate detection; when
	// it is reached, new requests are answered but not remembered (counted
	// as dup_cache_full). Default 1<<20.
	MaxDuplicates int
	// SessionIdle forgets a session's counters (and its Framed-IP lease)
	// when no record arrived for this long; default 24h.
	SessionIdle time.Duration
	// RejectStates are the SIM states refused by the authentication server;
	// default suspended, revoked, decommissioned.
	RejectStates []string
	Publisher    Publisher
	SIMs         SIMs
	Cells        Locator // optional cell table for lat/lon/accuracy_m
	Leases       *Leases // optional; created if nil
	Clock        clock.Clock
	Logger       *slog.Logger
}

// Drop and outcome reasons counted in [Stats].
const (
	ReasonUnknownClient    = "unknown_client"
	ReasonMalformed        = "malformed"
	ReasonBadAuthenticator = "bad_authenticator"
	ReasonBadCode          = "bad_code"
	ReasonBadAttribute     = "bad_attribute"
	ReasonNoMsgAuth        = "no_message_authenticator"
	ReasonLookup           = "lookup_error"
	ReasonPublish          = "publish_error"
	// ReasonDupCacheFull counts requests handled without duplicate
	// protection because the cache was full (not dropped).
	ReasonDupCacheFull = "dup_cache_full"
)

// Stats are the server's counters.
type Stats struct {
	Accounting uint64            // accounting records accepted and published
	Duplicates uint64            // retransmissions answered from the cache
	Accepts    uint64            // Access-Accepts sent
	Rejects    uint64            // Access-Rejects sent
	Dropped    map[string]uint64 // by reason
}

// Server is the RADIUS accounting (RFC 2866) and authentication (RFC 2865)
// server of the private APN. Its methods are safe for concurrent use.
type Server struct {
	o       Options
	exact   map[netip.Addr]*Client
	nets    []*Client
	reject  map[string]bool
	leases  *Leases
	log     *slog.Logger
	clk     clock.Clock
	acctN   atomic.Uint64
	dupN    atomic.Uint64
	accN    atomic.Uint64
	rejN    atomic.Uint64
	dropMu  sync.Mutex
	dropped map[string]uint64

	mu        sync.Mutex // guards below
	dups      map[dupKey]dupEntry
	sessions  map[sessKey]*session
	lastSweep time.Time
}

type dupKey struct {
	src  netip.AddrPort
	code byte
	id   byte
	auth [16]byte
}

type dupEntry struct {
	at   time.Time
	resp []byte // nil while the first copy is being handled
}

type sessKey struct {
	tenant event.TenantID
	nas    netip.Addr
	id     string
	client string
}

type session struct {
	in, out uint64
	seen    time.Time
	ip, ip6 netip.Addr // leased addresses
	dev     event.DeviceID
	imsi    string
}

// Session is a live data session the accounting server knows of: enough to
// name it in a Disconnect-Request to the gateway that carries it.
type Session struct {
	NAS       netip.Addr // NAS-IP-Address, else the packet's source
	Client    string     // the Client's Name
	SessionID string     // Acct-Session-Id ("" if the gateway sent none)
	IMSI      string
	FramedIP  netip.Addr
	LastSeen  time.Time
}

// Sessions returns the live sessions of a device (started or updated and
// not stopped, nor idle longer than SessionIdle), most recent first.
func (s *Server) Sessions(tenant event.TenantID, dev event.DeviceID) []Session {
	var out []Session
	s.mu.Lock()
	for k, ss := range s.sessions {
		if k.tenant != tenant || ss.dev != dev || dev == "" {
			continue
		}
		x := Session{NAS: k.nas, Client: k.client, SessionID: k.id, IMSI: ss.imsi, FramedIP: ss.ip, LastSeen: ss.seen}
		if strings.HasPrefix(k.id, "imsi:") {
			x.SessionID = ""
		}
		out = append(out, x)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Session) int { return b.LastSeen.Compare(a.LastSeen) })
	return out
}

// Errors returned by [New].
var ErrConfig = errors.New("radius: invalid options")

// New validates o and returns a server. It does not listen.
func New(o Options) (*Server, error) {
	var errs []error
	if o.Publisher == nil {
		errs = append(errs, errors.New("publisher missing"))
	}
	if o.SIMs == nil {
		errs = append(errs, errors.New("sims missing"))
	}
	if o.Mode == "" {
		o.Mode = ModeMonitor
	}
	if o.Mode != ModeMonitor && o.Mode != ModeEnforce {
		errs = append(errs, fmt.Errorf("mode %q not monitor or enforce", o.Mode))
	}
	if o.AcctAddr == "" {
		o.AcctAddr = ":1813"
	}
	if o.AuthAddr == "" {
		o.AuthAddr = ":1812"
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 30 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.MaxDuplicates <= 0 {
		o.MaxDuplicates = 1 << 20
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = 24 * time.Hour
	}
	if o.RejectStates == nil {
		o.RejectStates = []string{"suspended", "revoked", "decommissioned"}
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Leases == nil {
		o.Leases = NewLeases()
	}
	s := &Server{
		o: o, exact: map[netip.Addr]*Client{}, reject: map[string]bool{},
		leases: o.Leases, log: o.Logger, clk: o.Clock, dropped: map[string]uint64{},
		dups: map[dupKey]dupEntry{}, sessions: map[sessKey]*session{},
	}
	for _, st := range o.RejectStates {
		s.reject[st] = true
	}
	for i := range o.Clients {
		c := &o.Clients[i]
		switch {
		case c.Tenant == "":
			errs = append(errs, fmt.Errorf("client %d (%s): tenant missing", i, c.Name))
		case !c.Prefix.IsValid():
			errs = append(errs, fmt.Errorf("client %d (%s): prefix missing", i, c.Name))
		case len(c.Secret) == 0:
			errs = append(errs, fmt.Errorf("client %d (%s): secret missing", i, c.Name))
		case c.Prefix.IsSingleIP():
			if _, dup := s.exact[c.Prefix.Addr()]; dup {
				errs = append(errs, fmt.Errorf("client %d (%s): address %s listed twice", i, c.Name, c.Prefix.Addr()))
			}
			s.exact[c.Prefix.Addr()] = c
		default:
			s.nets = append(s.nets, c)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return s, nil
}

// Leases returns the Framed-IP map the accounting server keeps.
func (s *Server) Leases() *Leases { return s.leases }

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	st := Stats{Accounting: s.acctN.Load(), Duplicates: s.dupN.Load(), Accepts: s.accN.Load(), Rejects: s.rejN.Load(), Dropped: map[string]uint64{}}
	s.dropMu.Lock()
	for k, v := range s.dropped {
		st.Dropped[k] = v
	}
	s.dropMu.Unlock()
	return st
}

func (s *Server) drop(reason string, src netip.AddrPort, err error) {
	s.dropMu.Lock()
	s.dropped[reason]++
	s.dropMu.Unlock()
	s.log.Debug("radius: dropped", "reason", reason, "remote", src.String(), "err", err)
}

func (s *Server) client(a netip.Addr) *Client {
	a = a.Unmap()
	if c, ok := s.exact[a]; ok {
		return c
	}
	for _, c := range s.nets {
		if c.Prefix.Contains(a) {
			return c
		}
	}
	return nil
}

// ListenAndServe listens on AcctAddr and AuthAddr and serves both until ctx
// is done.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	acct, err := lc.ListenPacket(ctx, "udp", s.o.AcctAddr)
	if err != nil {
		return fmt.Errorf("radius: listen accounting: %w", err)
	}
	auth, err := lc.ListenPacket(ctx, "udp", s.o.AuthAddr)
	if err != nil {
		acct.Close()
		return fmt.Errorf("radius: listen auth: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- s.ServeAccounting(ctx, acct) }()
	go func() { errc <- s.ServeAuth(ctx, auth) }()
	return errors.Join(<-errc, <-errc)
}

// ServeAccounting answers Accounting-Requests on conn until ctx is done,
// then closes conn and returns nil.
func (s *Server) ServeAccounting(ctx context.Context, conn net.PacketConn) error {
	return serve(ctx, conn, s.o.Workers, s.HandleAccounting)
}

// ServeAuth answers Access-Requests on conn until ctx is done, then closes
// conn and returns nil.
func (s *Server) ServeAuth(ctx context.Context, conn net.PacketConn) error {
	return serve(ctx, conn, s.o.Workers, s.HandleAccess)
}

func serve(ctx context.Context, conn net.PacketConn, workers int, h func(context.Context, netip.AddrPort, []byte) []byte) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	errc := make(chan error, workers)
	for range workers {
		go func() { errc <- readLoop(ctx, conn, h) }()
	}
	var errs []error
	for range workers {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			conn.Close() // stop the other readers too
		}
	}
	return errors.Join(errs...)
}

// readLoop is one reader of conn; several run on one socket so that
// decoding and publishing use every core.
func readLoop(ctx context.Context, conn net.PacketConn, h func(context.Context, netip.AddrPort, []byte) []byte) error {
	uc, _ := conn.(*net.UDPConn)
	buf := make([]byte, lr.MaxPacketLength+1)
	for {
		var n int
		var src netip.AddrPort
		var err error
		if uc != nil {
			n, src, err = uc.ReadFromUDPAddrPort(buf)
		} else {
			var a net.Addr
			n, a, err = conn.ReadFrom(buf)
			if ua, ok := a.(*net.UDPAddr); ok {
				src = ua.AddrPort()
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("radius: read: %w", err)
		}
		resp := h(ctx, src, buf[:n])
		if resp == nil {
			continue
		}
		if uc != nil {
			_, err = uc.WriteToUDPAddrPort(resp, src)
		} else {
			_, err = conn.WriteTo(resp, net.UDPAddrFromAddrPort(src))
		}
		if err != nil && ctx.Err() != nil {
			return nil
		}
	}
}

// begin checks for a retransmission. It returns a cached answer (dup true)
// or registers the request as in flight.
func (s *Server) begin(k dupKey, now time.Time) (resp []byte, dup bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	if e, ok := s.dups[k]; ok && now.Sub(e.at) < s.o.DuplicateWindow {
		return e.resp, true
	}
	if len(s.dups) >= s.o.MaxDuplicates {
		s.dropMu.Lock()
		s.dropped[ReasonDupCacheFull]++
		s.dropMu.Unlock()
		return nil, false
	}
	s.dups[k] = dupEntry{at: now}
	return nil, false
}

func (s *Server) finish(k dupKey, resp []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if resp == nil {
		delete(s.dups, k)
		return
	}
	if e, ok := s.dups[k]; ok {
		e.resp = resp
		s.dups[k] = e
	}
}

func (s *Server) sweepLocked(now time.Time) {
	if now.Sub(s.lastSweep) < s.o.DuplicateWindow/2 {
		return
	}
	s.lastSweep = now
	for k, e := range s.dups {
		if now.Sub(e.at) >= s.o.DuplicateWindow {
			delete(s.dups, k)
		}
	}
	for k, ss := range s.sessions {
		if now.Sub(ss.seen) >= s.o.SessionIdle {
			delete(s.sessions, k)
			s.leases.release(k.tenant, ss.ip, k)
			s.leases.release(k.tenant, ss.ip6, k)
		}
	}
}

// parse authenticates the source, checks the header and cuts b to its
// length.
func (s *Server) parse(src netip.AddrPort, b []byte, code lr.Code) (*Client, []byte, bool) {
	c := s.client(src.Addr())
	if c == nil {
		s.drop(ReasonUnknownClient, src, nil)
		return nil, nil, false
	}
	if len(b) < 20 || b[0] != byte(code) {
		s.drop(ReasonBadCode, src, nil)
		return nil, nil, false
	}
	b, err := checkPacket(b)
	if err != nil {
		s.drop(ReasonMalformed, src, err)
		return nil, nil, false
	}
	if code == lr.CodeAccountingRequest && !lr.IsAuthenticRequest(b, c.Secret) {
		s.drop(ReasonBadAuthenticator, src, nil)
		return nil, nil, false
	}
	return c, b, true
}

func reqKey(src netip.AddrPort, b []byte) dupKey {
	k := dupKey{src: src, code: b[0], id: b[1]}
	copy(k.auth[:], b[4:20])
	return k
}

// HandleAccounting handles one datagram received on the accounting port
// from src and returns the Accounting-Response to send, or nil to stay
// silent (the NAS retransmits). b is not retained.
func (s *Server) HandleAccounting(ctx context.Context, src netip.AddrPort, b []byte) []byte {
	c, b, ok := s.parse(src, b, lr.CodeAccountingRequest)
	if !ok {
		return nil
	}
	now := s.clk.Now()
	k := reqKey(src, b)
	if resp, dup := s.begin(k, now); dup {
		s.dupN.Add(1)
		return resp // nil while the first copy is still in flight
	}
	resp := s.accounting(ctx, c, src, b, now)
	s.finish(k, resp)
	return resp
}

func (s *Server) accounting(ctx context.Context, c *Client, src netip.AddrPort, p []byte, now time.Time) []byte {
	r, err := ParseRecord(p[20:])
	if err != nil {
		s.drop(attrReason(err), src, err)
		return nil
	}
	var status string
	switch r.Status {
	case StatusStart:
		status = "start"
	case StatusInterim:
		status = "interim"
	case StatusStop:
		status = "stop"
	default:
		// Accounting-On/Off and others: acknowledged, nothing to record.
		return respond(p, lr.CodeAccountingResponse, c.Secret, false)
	}
	var dev event.DeviceID
	if r.IMSI != "" {
		d, _, _, found, err := s.o.SIMs.ByIMSI(ctx, c.Tenant, r.IMSI)
		if err != nil {
			s.drop(ReasonLookup, src, err)
			return nil
		}
		if found {
			dev = d
		}
	}
	nas := r.NASIP
	if !nas.IsValid() {
		nas = src.Addr().Unmap()
	}
	sk := sessKey{tenant: c.Tenant, nas: nas, id: r.SessionID, client: c.Name}
	if r.SessionID == "" {
		sk.id = "imsi:" + r.IMSI
	}

	s.mu.Lock()
	ss := s.sessions[sk]
	var prev session
	if ss == nil {
		ss = &session{}
		s.sessions[sk] = ss
	} else {
		prev = *ss
	}
	up, down := delta(prev.in, r.InOctets), delta(prev.out, r.OutOctets)
	ss.in, ss.out, ss.seen = r.InOctets, r.OutOctets, now
	if dev != "" {
		ss.dev, ss.imsi = dev, r.IMSI
	}
	if r.FramedIP.IsValid() {
		ss.ip = r.FramedIP
	}
	if r.FramedIPv6.IsValid() {
		ss.ip6 = r.FramedIPv6
	}
	ips := [2]netip.Addr{ss.ip, ss.ip6}
	if status == "stop" {
		delete(s.sessions, sk)
	}
	s.mu.Unlock()

	for _, ip := range ips {
		switch {
		case !ip.IsValid():
		case status == "stop":
			s.leases.release(c.Tenant, ip, sk)
		case dev != "":
			s.leases.set(c.Tenant, ip, dev, sk)
		}
	}

	e := &event.Event{
		ID: event.NewID(now), Tenant: c.Tenant, Device: dev, Kind: event.NetSession,
		Time: now, Source: "radius",
		Attrs: make(map[string]any, 20),
	}
	e.Attrs["status"], e.Attrs["session_id"], e.Attrs["nas"] = status, r.SessionID, nas.String()
	e.Attrs["bytes_up"], e.Attrs["bytes_down"] = float64(up), float64(down)
	r.fill(e.Attrs)
	var loc *event.Event
	if r.HasULI && s.o.Cells != nil {
		if pos, ok := s.o.Cells.Locate(ctx, r.ULI); ok {
			e.Attrs["lat"], e.Attrs["lon"], e.Attrs["accuracy_m"] = pos.Lat, pos.Lon, pos.RangeM
			if dev != "" {
				loc = &event.Event{
					ID: event.NewID(now), Tenant: c.Tenant, Device: dev, Kind: event.Location,
					Time: now, Source: "radius",
					Attrs: map[string]any{"lat": pos.Lat, "lon": pos.Lon, "accuracy_m": pos.RangeM, "source": "network", "cell": r.ULI.String()},
				}
			}
		}
	}
	if err := s.o.Publisher.Publish(ctx, e); err != nil {
		// Undo the counters so the NAS's retransmission is counted once.
		s.mu.Lock()
		if cur := s.sessions[sk]; cur == ss || (status == "stop" && cur == nil) {
			if prev == (session{}) {
				delete(s.sessions, sk)
			} else {
				*ss = prev
				s.sessions[sk] = ss
			}
		}
		s.mu.Unlock()
		s.drop(ReasonPublish, src, err)
		return nil
	}
	if loc != nil {
		if err := s.o.Publisher.Publish(ctx, loc); err != nil {
			s.log.Warn("radius: location not published", "tenant", string(c.Tenant), "device", string(dev), "err", err)
		}
	}
	s.acctN.Add(1)
	return respond(p, lr.CodeAccountingResponse, c.Secret, false)
}

func attrReason(err error) string {
	if errors.Is(err, ErrPacket) {
		return ReasonMalformed
	}
	return ReasonBadAttribute
}

// delta is the growth of a counter; a counter that went backwards was reset
// and its whole value is new.
func delta(prev, cur uint64) uint64 {
	if cur >= prev {
		return cur - prev
	}
	return cur
}

func (r *Record) fill(a map[string]any) {
	set := func(k, v string) {
		if v != "" {
			a[k] = v
		}
	}
	set("imsi", r.IMSI)
	set("imei", r.IMEI)
	set("imeisv", r.IMEISV)
	set("msisdn", strings.TrimPrefix(r.MSISDN, "+"))
	set("apn", r.APN)
	set("rat", r.RAT)
	set("plmn", r.PLMN)
	if r.FramedIP.IsValid() {
		a["ip"] = r.FramedIP.String()
	} else if r.FramedIPv6.IsValid() {
		a["ip"] = r.FramedIPv6.String()
	}
	if r.HasULI {
		a["cell"] = r.ULI.String()
	}
}

// respond encodes the answer to request req (RFC 2865 3: the Response
// Authenticator is MD5(Code+ID+Length+RequestAuth+Attributes+Secret)).
// Proxy-State attributes are copied in order (RFC 2865 5.33); withMA adds
// a Message-Authenticator (RFC 3579 3.2). req's attributes were validated.
func respond(req []byte, code lr.Code, secret []byte, withMA bool) []byte {
	b := make([]byte, 20, 64)
	b[0], b[1] = byte(code), req[1]
	copy(b[4:20], req[4:20])
	for a := req[20:]; len(a) >= 2 && int(a[1]) >= 2 && int(a[1]) <= len(a); a = a[a[1]:] {
		if a[0] == attrProxyState {
			b = append(b, a[:a[1]]...)
		}
	}
	ma := 0
	if withMA {
		ma = len(b)
		b = append(b, attrMessageAuth, 18)
		b = append(b, make([]byte, 16)...)
	}
	if len(b) > lr.MaxPacketLength {
		return nil
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	if withMA {
		copy(b[ma+2:], hmacMD5(secret, b))
	}
	h := md5.New()
	h.Write(b)
	h.Write(secret)
	h.Sum(b[4:4:20])
	return b
}

// validMessageAuthenticator checks the Message-Authenticator of a request
// (RFC 3579 3.2): HMAC-MD5 over the packet with the attribute zeroed.
func validMessageAuthenticator(b, secret []byte) bool {
	if len(b) < 20 {
		return false
	}
	cp := append([]byte(nil), b...)
	var got []byte
	for i := 20; i+2 <= len(cp); {
		l := int(cp[i+1])
		if l < 2 || i+l > len(cp) {
			return false
		}
		if cp[i] == attrMessageAuth && l == 18 {
			got = append([]byte(nil), cp[i+2:i+18]...)
			clear(cp[i+2 : i+18])
		}
		i += l
	}
	if got == nil {
		return false
	}
	mac := hmac.New(md5.New, secret)
	mac.Write(cp)
	return hmac.Equal(mac.Sum(nil), got)
}

// HandleAccess handles one datagram received on the authentication port
// and returns the Access-Accept or Access-Reject to send, or nil to stay
// silent.
func (s *Server) HandleAccess(ctx context.Context, src netip.AddrPort, b []byte) []byte {
	c, b, ok := s.parse(src, b, lr.CodeAccessRequest)
	if !ok {
		return nil
	}
	r, err := ParseRecord(b[20:])
	if err != nil {
		s.drop(attrReason(err), src, err)
		return nil
	}
	if r.HasMsgAuth && !validMessageAuthenticator(b, c.Secret) {
		s.drop(ReasonBadAuthenticator, src, nil)
		return nil
	}
	if !r.HasMsgAuth && s.o.RequireMessageAuthenticator {
		s.drop(ReasonNoMsgAuth, src, nil)
		return nil
	}
	now := s.clk.Now()
	k := reqKey(src, b)
	if resp, dup := s.begin(k, now); dup {
		s.dupN.Add(1)
		return resp
	}
	resp := s.access(ctx, c, src, b, r, now)
	s.finish(k, resp)
	return resp
}

func (s *Server) access(ctx context.Context, c *Client, src netip.AddrPort, p []byte, r Record, now time.Time) []byte {
	var (
		dev       event.DeviceID
		bound     string
		state     string
		found     bool
		err       error
		decision  = "accept"
		reason    string
		rejectNow bool
	)
	if r.IMSI == "" {
		reason, rejectNow = "no_imsi", true
	} else {
		dev, bound, state, found, err = s.o.SIMs.ByIMSI(ctx, c.Tenant, r.IMSI)
		switch {
		case err != nil:
			s.drop(ReasonLookup, src, err)
			return nil
		case !found:
			reason, rejectNow = "unknown_sim", true
		case s.reject[state]:
			reason, rejectNow = "sim_"+state, true
		case bound != "" && r.IMEI != "" && bound != r.IMEI:
			reason = "imei_mismatch"
			rejectNow = s.o.Mode == ModeEnforce
		}
	}
	if rejectNow {
		decision = "reject"
	}
	e := &event.Event{
		ID: event.NewID(now), Tenant: c.Tenant, Device: dev, Kind: event.NetSession,
		Time: now, Source: "radius",
		Attrs: map[string]any{"status": "auth", "decision": decision, "nas": src.Addr().Unmap().String()},
	}
	if reason != "" {
		e.Attrs["reason"] = reason
	}
	if bound != "" {
		e.Attrs["bound_imei"] = bound
	}
	r.fill(e.Attrs)
	if err := s.o.Publisher.Publish(ctx, e); err != nil {
		// The decision stands without the report: enforcement must not
		// depend on the bus.
		s.log.Warn("radius: access decision not published", "tenant", string(c.Tenant), "device", string(dev), "err", err)
		s.dropMu.Lock()
		s.dropped[ReasonPublish]++
		s.dropMu.Unlock()
	}
	if rejectNow {
		s.rejN.Add(1)
		return respond(p, lr.CodeAccessReject, c.Secret, true)
	}
	s.accN.Add(1)
	return respond(p, lr.CodeAccessAccept, c.Secret, true)
}

func hmacMD5(key, b []byte) []byte {
	m := hmac.New(md5.New, key)
	m.Write(b)
	return m.Sum(nil)
}
