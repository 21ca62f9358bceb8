package radius

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	lr "layeh.com/radius"
)

type fakePub struct {
	mu   sync.Mutex
	evs  []*event.Event
	fail error
	ch   chan *event.Event
}

func (p *fakePub) Publish(_ context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	if err := e.Validate(); err != nil {
		return err
	}
	p.evs = append(p.evs, e)
	if p.ch != nil {
		p.ch <- e
	}
	return nil
}

func (p *fakePub) events() []*event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*event.Event(nil), p.evs...)
}

type sim struct {
	dev   event.DeviceID
	imei  string
	state string
}

type fakeSIMs map[string]sim

func (f fakeSIMs) ByIMSI(_ context.Context, tenant event.TenantID, imsi string) (event.DeviceID, string, string, bool, error) {
	if tenant != "acme" {
		return "", "", "", false, nil
	}
	s, ok := f[imsi]
	return s.dev, s.imei, s.state, ok, nil
}

var (
	testSecret = []byte("s3cret-gw")
	gwAddr     = netip.MustParseAddrPort("192.0.2.10:40000")
)

const (
	imsiMeter   = "214010000000017"
	imeiMeter   = "490154203237518"
	imeisvMeter = "4901542032375101"
)

func testSIMs() fakeSIMs {
	return fakeSIMs{
		imsiMeter:         {dev: "meter-0017", imei: imeiMeter, state: "active"},
		"214010000000018": {dev: "meter-0018", imei: "", state: "suspended"},
	}
}

func newTestServer(t *testing.T, pub *fakePub, mode Mode) (*Server, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	cells := NewCells()
	cells.Put("LTE", 214, 1, 0x1a2b, 0xabcdef, Cell{Lat: 40.4, Lon: -3.7, RangeM: 800})
	s, err := New(Options{
		Clients: []Client{
			{Name: "pgw1", Tenant: "acme", Prefix: netip.MustParsePrefix("192.0.2.10/32"), Secret: testSecret},
			{Name: "lab", Tenant: "acme", Prefix: netip.MustParsePrefix("127.0.0.0/8"), Secret: testSecret},
		},
		Mode: mode, Publisher: pub, SIMs: testSIMs(), Cells: cells, Clock: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, clk
}

func vsa3gpp(typ byte, v []byte) lr.Attribute {
	return lr.Attribute(append([]byte{0, 0, 0x28, 0xaf, typ, byte(2 + len(v))}, v...))
}

func u32a(v uint32) lr.Attribute {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

type acct struct {
	status            uint32
	session           string
	in, out, gin, go_ uint32
	imsi, imeisv      string
	uli               []byte
}

func acctPacket(t *testing.T, a acct, secret []byte) []byte {
	t.Helper()
	p := lr.New(lr.CodeAccountingRequest, secret)
	p.Add(attrAcctStatusType, u32a(a.status))
	p.Add(attrAcctSessionID, lr.Attribute(a.session))
	p.Add(attrFramedIPAddress, lr.Attribute{10, 1, 2, 3})
	p.Add(attrCallingStationID, lr.Attribute("34600000017"))
	p.Add(attrCalledStationID, lr.Attribute("meters.acme"))
	p.Add(attrAcctInputOctets, u32a(a.in))
	p.Add(attrAcctOutputOctets, u32a(a.out))
	p.Add(attrAcctInputGiga, u32a(a.gin))
	p.Add(attrAcctOutputGiga, u32a(a.go_))
	if a.imsi != "" {
		p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(a.imsi)))
	}
	if a.imeisv != "" {
		p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMEISV, []byte(a.imeisv)))
	}
	if a.uli != nil {
		p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPUserLocationInfo, a.uli))
	}
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPRATType, []byte{6}))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPSGSNMCCMNC, []byte("21401")))
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var taiECGI = []byte{130, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x12, 0xf4, 0x10, 0x00, 0xab, 0xcd, 0xef}

func TestAccountingSession(t *testing.T) {
	pub := &fakePub{}
	s, clk := newTestServer(t, pub, ModeMonitor)
	ctx := context.Background()
	steps := []struct {
		a                acct
		wantUp, wantDown float64
		wantStatus       string
	}{
		{acct{status: StatusStart, session: "s1", imsi: imsiMeter, imeisv: imeisvMeter, uli: taiECGI}, 0, 0, "start"},
		{acct{status: StatusInterim, session: "s1", in: 1000, out: 5000, imsi: imsiMeter, imeisv: imeisvMeter, uli: taiECGI}, 1000, 5000, "interim"},
		// the input counter wraps into one gigaword
		{acct{status: StatusInterim, session: "s1", in: 500, gin: 1, out: 6000, imsi: imsiMeter, imeisv: imeisvMeter, uli: taiECGI}, 1<<32 + 500 - 1000, 1000, "interim"},
		{acct{status: StatusStop, session: "s1", in: 600, gin: 1, out: 6000, imsi: imsiMeter, imeisv: imeisvMeter, uli: taiECGI}, 100, 0, "stop"},
	}
	for i, st := range steps {
		resp := s.HandleAccounting(ctx, gwAddr, acctPacket(t, st.a, testSecret))
		if resp == nil || resp[0] != byte(lr.CodeAccountingResponse) {
			t.Fatalf("step %d: no Accounting-Response", i)
		}
		clk.Advance(time.Minute)
		evs := pub.events()
		var e *event.Event
		for _, x := range evs {
			if x.Kind == event.NetSession {
				e = x
			}
		}
		if e == nil || e.Str("status") != st.wantStatus {
			t.Fatalf("step %d: event %+v", i, e)
		}
		up, _ := e.Float("bytes_up")
		down, _ := e.Float("bytes_down")
		if up != st.wantUp || down != st.wantDown {
			t.Errorf("step %d: bytes up %v down %v, want %v %v", i, up, down, st.wantUp, st.wantDown)
		}
		if e.Device != "meter-0017" || e.Tenant != "acme" || e.Str("imei") != imeiMeter || e.Str("imeisv") != imeisvMeter ||
			e.Str("imsi") != imsiMeter || e.Str("cell") != "214-01-0x1a2b-0x00abcdef" || e.Str("ip") != "10.1.2.3" ||
			e.Str("msisdn") != "34600000017" || e.Str("apn") != "meters.acme" || e.Str("rat") != "eutran" || e.Str("plmn") != "214-01" {
			t.Errorf("step %d: attrs %+v device %q", i, e.Attrs, e.Device)
		}
		if lat, ok := e.Float("lat"); !ok || lat != 40.4 {
			t.Errorf("step %d: lat %v", i, e.Attrs["lat"])
		}
		if i < 3 {
			if d, ok := s.Leases().DeviceByIP(ctx, "acme", netip.MustParseAddr("10.1.2.3")); !ok || d != "meter-0017" {
				t.Errorf("step %d: lease %q %v", i, d, ok)
			}
		}
		pub.mu.Lock()
		pub.evs = nil
		pub.mu.Unlock()
	}
	if _, ok := s.Leases().DeviceByIP(ctx, "acme", netip.MustParseAddr("10.1.2.3")); ok {
		t.Error("lease kept after Stop")
	}
	if st := s.Stats(); st.Accounting != 4 {
		t.Errorf("stats %+v", st)
	}
}

func TestAccountingLocationEvent(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	s.HandleAccounting(context.Background(), gwAddr, acctPacket(t, acct{status: StatusStart, session: "s1", imsi: imsiMeter, uli: taiECGI}, testSecret))
	var loc *event.Event
	for _, e := range pub.events() {
		if e.Kind == event.Location {
			loc = e
		}
	}
	if loc == nil || loc.Str("source") != "network" || loc.Device != "meter-0017" {
		t.Fatalf("location event: %+v", loc)
	}
	if acc, _ := loc.Float("accuracy_m"); acc != 800 {
		t.Errorf("accuracy %v", acc)
	}
}

func TestAccountingDuplicate(t *testing.T) {
	pub := &fakePub{}
	s, clk := newTestServer(t, pub, ModeMonitor)
	ctx := context.Background()
	b := acctPacket(t, acct{status: StatusInterim, session: "s1", in: 100, imsi: imsiMeter}, testSecret)
	r1 := s.HandleAccounting(ctx, gwAddr, b)
	r2 := s.HandleAccounting(ctx, gwAddr, b)
	if r1 == nil || string(r1) != string(r2) {
		t.Fatal("duplicate not answered with the first answer")
	}
	if n := len(pub.events()); n != 1 {
		t.Fatalf("duplicate published: %d events", n)
	}
	// From another source port it is another request.
	other := netip.AddrPortFrom(gwAddr.Addr(), 40001)
	s.HandleAccounting(ctx, other, b)
	if n := len(pub.events()); n != 2 {
		t.Fatalf("same packet from another port: %d events", n)
	}
	// After the window, the same bytes count again (a new request).
	clk.Advance(time.Minute)
	s.HandleAccounting(ctx, gwAddr, b)
	if st := s.Stats(); st.Duplicates != 1 || st.Accounting != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAccountingPublishFailureRollsBack(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	ctx := context.Background()
	s.HandleAccounting(ctx, gwAddr, acctPacket(t, acct{status: StatusStart, session: "s1", imsi: imsiMeter}, testSecret))
	pub.fail = errors.New("bus down")
	b := acctPacket(t, acct{status: StatusInterim, session: "s1", in: 700, imsi: imsiMeter}, testSecret)
	if r := s.HandleAccounting(ctx, gwAddr, b); r != nil {
		t.Fatal("answered although the event was not published")
	}
	pub.fail = nil
	if r := s.HandleAccounting(ctx, gwAddr, b); r == nil {
		t.Fatal("retransmission not answered after recovery")
	}
	evs := pub.events()
	if up, _ := evs[len(evs)-1].Float("bytes_up"); up != 700 {
		t.Fatalf("bytes_up after retry = %v, want 700", up)
	}
	if s.Stats().Dropped[ReasonPublish] != 1 {
		t.Fatalf("stats %+v", s.Stats())
	}
}

func TestAccountingDrops(t *testing.T) {
	good := func(t *testing.T) []byte {
		return acctPacket(t, acct{status: StatusStart, session: "s1", imsi: imsiMeter}, testSecret)
	}
	tests := []struct {
		name   string
		src    netip.AddrPort
		packet func(t *testing.T) []byte
		reason string
	}{
		{"unknown client", netip.MustParseAddrPort("198.51.100.1:1"), good, ReasonUnknownClient},
		{"wrong secret", gwAddr, func(t *testing.T) []byte {
			return acctPacket(t, acct{status: StatusStart, session: "s1", imsi: imsiMeter}, []byte("wrong"))
		}, ReasonBadAuthenticator},
		{"tampered", gwAddr, func(t *testing.T) []byte { b := good(t); b[len(b)-1] ^= 1; return b }, ReasonBadAuthenticator},
		{"short", gwAddr, func(t *testing.T) []byte { return good(t)[:19] }, ReasonBadCode},
		{"length lies", gwAddr, func(t *testing.T) []byte { b := good(t); b[3] += 10; return b }, ReasonMalformed},
		{"attribute length lies", gwAddr, func(t *testing.T) []byte {
			b := good(t)
			b[21] = 250
			return resign(b, testSecret)
		}, ReasonMalformed},
		{"attribute length zero", gwAddr, func(t *testing.T) []byte {
			b := good(t)
			b[21] = 0
			return resign(b, testSecret)
		}, ReasonMalformed},
		{"access-request on accounting port", gwAddr, func(t *testing.T) []byte { b := good(t); b[0] = 1; return b }, ReasonBadCode},
		{"3gpp sub-attribute length lies", gwAddr, func(t *testing.T) []byte {
			p := lr.New(lr.CodeAccountingRequest, testSecret)
			p.Add(attrAcctStatusType, u32a(StatusStart))
			p.Add(attrVendorSpecific, lr.Attribute{0, 0, 0x28, 0xaf, 1, 40, '2'})
			b, _ := p.Encode()
			return b
		}, ReasonBadAttribute},
		{"bad 3gpp attribute", gwAddr, func(t *testing.T) []byte {
			return acctPacket(t, acct{status: StatusStart, session: "s1", imsi: imsiMeter, uli: []byte{130, 1}}, testSecret)
		}, ReasonBadAttribute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &fakePub{}
			s, _ := newTestServer(t, pub, ModeMonitor)
			if r := s.HandleAccounting(context.Background(), tt.src, tt.packet(t)); r != nil {
				t.Fatal("answered")
			}
			if len(pub.events()) != 0 {
				t.Fatal("published")
			}
			if d := s.Stats().Dropped; d[tt.reason] != 1 {
				t.Fatalf("dropped %v, want one %s", d, tt.reason)
			}
		})
	}
}

func accessPacket(t *testing.T, imsi, imeisv string, withMA bool) []byte {
	t.Helper()
	p := lr.New(lr.CodeAccessRequest, testSecret)
	p.Add(attrUserName, lr.Attribute(imsi))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsi)))
	if imeisv != "" {
		p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMEISV, []byte(imeisv)))
	}
	if withMA {
		p.Add(attrMessageAuth, make(lr.Attribute, 16))
		raw, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return signMA(raw, testSecret)
	}
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAccess(t *testing.T) {
	tests := []struct {
		name     string
		mode     Mode
		imsi     string
		imeisv   string
		want     lr.Code
		decision string
		reason   string
	}{
		{"bound device", ModeEnforce, imsiMeter, imeisvMeter, lr.CodeAccessAccept, "accept", ""},
		{"unknown sim", ModeEnforce, "214019999999999", "", lr.CodeAccessReject, "reject", "unknown_sim"},
		{"suspended sim", ModeMonitor, "214010000000018", "", lr.CodeAccessReject, "reject", "sim_suspended"},
		{"foreign imei enforced", ModeEnforce, imsiMeter, "3569380356438091", lr.CodeAccessReject, "reject", "imei_mismatch"},
		{"foreign imei monitored", ModeMonitor, imsiMeter, "3569380356438091", lr.CodeAccessAccept, "accept", "imei_mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &fakePub{}
			s, _ := newTestServer(t, pub, tt.mode)
			resp := s.HandleAccess(context.Background(), gwAddr, accessPacket(t, tt.imsi, tt.imeisv, true))
			if resp == nil || lr.Code(resp[0]) != tt.want {
				t.Fatalf("response %v, want %v", resp, tt.want)
			}
			evs := pub.events()
			if len(evs) != 1 || evs[0].Str("status") != "auth" || evs[0].Str("decision") != tt.decision || evs[0].Str("reason") != tt.reason {
				t.Fatalf("events %+v", evs)
			}
			if !validMessageAuthenticatorResp(resp) {
				t.Fatal("response has no Message-Authenticator")
			}
		})
	}
}

// validMessageAuthenticatorResp only checks the attribute's presence; its
// value is checked end to end by radclient in radclient_test.go.
func validMessageAuthenticatorResp(b []byte) bool {
	p, err := lr.Parse(b, testSecret)
	if err != nil {
		return false
	}
	_, ok := p.Lookup(attrMessageAuth)
	return ok
}

func TestAccessMessageAuthenticator(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeEnforce)
	ctx := context.Background()
	b := accessPacket(t, imsiMeter, imeisvMeter, true)
	b[len(b)-1] ^= 0xff // corrupt the MAC
	if r := s.HandleAccess(ctx, gwAddr, b); r != nil {
		t.Fatal("forged Message-Authenticator answered")
	}
	if s.Stats().Dropped[ReasonBadAuthenticator] != 1 {
		t.Fatalf("stats %+v", s.Stats())
	}
	s.o.RequireMessageAuthenticator = true
	if r := s.HandleAccess(ctx, gwAddr, accessPacket(t, imsiMeter, imeisvMeter, false)); r != nil {
		t.Fatal("request without Message-Authenticator answered when required")
	}
	if s.Stats().Dropped[ReasonNoMsgAuth] != 1 {
		t.Fatalf("stats %+v", s.Stats())
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Options{Mode: "strict", Clients: []Client{{Name: "x"}}})
	if !errors.Is(err, ErrConfig) {
		t.Fatal(err)
	}
	for _, want := range []string{"publisher", "sims", "mode", "tenant missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// signMA fills the Message-Authenticator of an Access-Request.
func signMA(raw, secret []byte) []byte {
	for i := 20; i+2 <= len(raw); i += int(raw[i+1]) {
		if raw[i] == attrMessageAuth {
			clear(raw[i+2 : i+18])
			m := hmacMD5(secret, raw)
			copy(raw[i+2:i+18], m)
			break
		}
	}
	return raw
}

func TestServeUDP(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	ctx, cancel := context.WithCancel(context.Background())
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeAccounting(ctx, pc) }()
	p := lr.New(lr.CodeAccountingRequest, testSecret)
	p.Add(attrAcctStatusType, u32a(StatusStart))
	p.Add(attrAcctSessionID, lr.Attribute("u1"))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsiMeter)))
	resp, err := lr.Exchange(ctx, p, pc.LocalAddr().String())
	if err != nil || resp.Code != lr.CodeAccountingResponse {
		t.Fatalf("exchange: %v %v", resp, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// resign recomputes an Accounting-Request authenticator (RFC 2866 3) so
// that a tampered packet reaches the attribute decoder.
func resign(b, secret []byte) []byte {
	clear(b[4:20])
	h := md5.New()
	h.Write(b)
	h.Write(secret)
	h.Sum(b[4:4:20])
	return b
}

func TestDuplicateCacheBound(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	s.o.MaxDuplicates = 1
	ctx := context.Background()
	a := acctPacket(t, acct{status: StatusInterim, session: "a", in: 1, imsi: imsiMeter}, testSecret)
	b := acctPacket(t, acct{status: StatusInterim, session: "b", in: 1, imsi: imsiMeter}, testSecret)
	s.HandleAccounting(ctx, gwAddr, a)
	if s.HandleAccounting(ctx, gwAddr, b) == nil {
		t.Fatal("request not answered when the duplicate cache is full")
	}
	s.HandleAccounting(ctx, gwAddr, a)
	if st := s.Stats(); st.Duplicates != 1 || st.Dropped[ReasonDupCacheFull] != 1 || st.Accounting != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestListenAndServe(t *testing.T) {
	pub := &fakePub{}
	s, err := New(Options{
		AcctAddr: "127.0.0.1:0", AuthAddr: "127.0.0.1:0",
		Clients:   []Client{{Tenant: "acme", Prefix: netip.MustParsePrefix("127.0.0.1/32"), Secret: testSecret}},
		Publisher: pub, SIMs: testSIMs(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe(ctx) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ListenAndServe did not return after cancel")
	}
}

func TestOtherVendorIgnored(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	p := lr.New(lr.CodeAccountingRequest, testSecret)
	p.Add(attrAcctStatusType, u32a(StatusStart))
	p.Add(attrVendorSpecific, lr.Attribute{0, 0, 0x01, 0x37, 0xff}) // vendor 311, not in the recommended format
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsiMeter)))
	b, _ := p.Encode()
	if s.HandleAccounting(context.Background(), gwAddr, b) == nil || len(pub.events()) != 1 {
		t.Fatalf("packet with another vendor's attribute not accepted: %+v", s.Stats())
	}
}

func TestProxyStateAndIPv6(t *testing.T) {
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	ctx := context.Background()
	p := lr.New(lr.CodeAccountingRequest, testSecret)
	p.Add(attrAcctStatusType, u32a(StatusStart))
	p.Add(attrAcctSessionID, lr.Attribute("v6"))
	p.Add(attrProxyState, lr.Attribute("hop-1"))
	p.Add(attrFramedIPv6Addr, lr.Attribute(netip.MustParseAddr("2001:db8::17").AsSlice()))
	p.Add(attrProxyState, lr.Attribute("hop-2"))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsiMeter)))
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	resp := s.HandleAccounting(ctx, gwAddr, b)
	if !lr.IsAuthenticResponse(resp, b, testSecret) {
		t.Fatal("response authenticator invalid")
	}
	q, err := lr.Parse(resp, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, a := range q.Attributes {
		if a.Type == attrProxyState {
			states = append(states, string(a.Attribute))
		}
	}
	if len(states) != 2 || states[0] != "hop-1" || states[1] != "hop-2" {
		t.Fatalf("proxy-state %q", states)
	}
	ip := netip.MustParseAddr("2001:db8::17")
	if d, ok := s.Leases().DeviceByIP(ctx, "acme", ip); !ok || d != "meter-0017" {
		t.Fatalf("ipv6 lease %q %v", d, ok)
	}
	// A Stop without addresses still releases the session's leases.
	p.Attributes = nil
	p.Add(attrAcctStatusType, u32a(StatusStop))
	p.Add(attrAcctSessionID, lr.Attribute("v6"))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsiMeter)))
	b, _ = p.Encode()
	s.HandleAccounting(ctx, gwAddr, b)
	if _, ok := s.Leases().DeviceByIP(ctx, "acme", ip); ok {
		t.Fatal("lease kept after Stop")
	}
}
