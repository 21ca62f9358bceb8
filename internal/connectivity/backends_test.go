package connectivity

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	lr "layeh.com/radius"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/radius"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

const secret = "gateway-secret-1"

type pubs struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (p *pubs) Publish(_ context.Context, e *event.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.evs = append(p.evs, e)
	p.mu.Unlock()
	return nil
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	require.NoError(t, st.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Tenants().Create(context.Background(), store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(context.Background(), store.Device{Tenant: "acme", ID: "meter-0017", Model: "m", State: store.StateActive,
			IMSI: "214010000000017", ICCID: "89440000000000000017", IMEI: "490154203237518", CreatedAt: now, UpdatedAt: now})
	}))
	return st
}

// nas is an in-test gateway's RFC 5176 port answering with code (and
// Error-Cause cause when not 0).
func nas(t *testing.T, code lr.Code, cause uint32) (string, chan *lr.Packet) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	got := make(chan *lr.Packet, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p, err := lr.Parse(buf[:n], []byte(secret))
			if err != nil || !lr.IsAuthenticRequest(buf[:n], []byte(secret)) {
				continue
			}
			got <- p
			r := p.Response(code)
			if cause != 0 {
				r.Add(101, lr.Attribute(binary.BigEndian.AppendUint32(nil, cause)))
			}
			b, _ := r.Encode()
			pc.WriteTo(b, from)
		}
	}()
	return pc.LocalAddr().String(), got
}

func accountingStart(t *testing.T, s *radius.Server, session, ip string) {
	t.Helper()
	p := lr.New(lr.CodeAccountingRequest, []byte(secret))
	p.Add(40, lr.Attribute(binary.BigEndian.AppendUint32(nil, radius.StatusStart)))
	p.Add(44, lr.Attribute(session))
	a := netip.MustParseAddr(ip).As4()
	p.Add(8, lr.Attribute(a[:]))
	imsi := "214010000000017"
	p.Add(26, lr.Attribute(append([]byte{0, 0, 0x28, 0xaf, 1, byte(2 + len(imsi))}, imsi...)))
	b, err := p.Encode()
	require.NoError(t, err)
	resp := s.HandleAccounting(context.Background(), netip.MustParseAddrPort("127.0.0.1:40000"), b)
	require.NotNil(t, resp, "accounting record not answered")
}

func testRADIUS(t *testing.T, st store.Store) *radius.Server {
	t.Helper()
	s, err := radius.New(radius.Options{
		Clients:   []radius.Client{{Name: "lab", Tenant: "acme", Prefix: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte(secret)}},
		Publisher: &pubs{}, SIMs: StoreSIMs{Store: st},
	})
	require.NoError(t, err)
	return s
}

func TestDisconnector(t *testing.T) {
	st := openStore(t)
	addr, got := nas(t, lr.CodeDisconnectACK, 0)
	peers, err := ParsePeers([]byte(fmt.Sprintf("nas_clients:\n  - {name: lab, tenant: acme, prefix: 127.0.0.1, secret: %q, coa_addr: %q}\n", secret, addr)))
	require.NoError(t, err)
	s := testRADIUS(t, st)
	d := &Disconnector{Sessions: s, Gateways: peers, Sender: radius.CoAClient{Timeout: time.Second, Retries: 1}}
	ctx := context.Background()

	require.ErrorIs(t, d.Disconnect(ctx, "acme", "meter-0017"), ErrNoSession)
	accountingStart(t, s, "s-1", "10.9.8.7")
	require.ErrorIs(t, d.Disconnect(ctx, "globex", "meter-0017"), ErrNoSession, "sessions are per tenant")
	require.NoError(t, d.Disconnect(ctx, "acme", "meter-0017"))
	p := <-got
	require.Equal(t, lr.CodeDisconnectRequest, p.Code)
	sid, _ := p.Lookup(44)
	require.Equal(t, "s-1", string(sid))
	ip, _ := p.Lookup(8)
	require.Equal(t, []byte{10, 9, 8, 7}, []byte(ip))

	// A gateway that no longer has the session (Error-Cause 503) counts as
	// done; any other NAK is an error.
	addr503, _ := nas(t, lr.CodeDisconnectNAK, 503)
	peers503, _ := ParsePeers([]byte(fmt.Sprintf("nas_clients:\n  - {name: lab, tenant: acme, prefix: 127.0.0.1, secret: %q, coa_addr: %q}\n", secret, addr503)))
	d.Gateways = peers503
	require.NoError(t, d.Disconnect(ctx, "acme", "meter-0017"))
	addrNAK, _ := nas(t, lr.CodeDisconnectNAK, 502)
	peersNAK, _ := ParsePeers([]byte(fmt.Sprintf("nas_clients:\n  - {name: lab, tenant: acme, prefix: 127.0.0.1, secret: %q, coa_addr: %q}\n", secret, addrNAK)))
	d.Gateways = peersNAK
	require.ErrorIs(t, d.Disconnect(ctx, "acme", "meter-0017"), radius.ErrNAK)
	d.Gateways = Peers{}
	require.ErrorIs(t, d.Disconnect(ctx, "acme", "meter-0017"), ErrNoGateway)
}

type recProvider struct {
	mu    sync.Mutex
	calls []string
}

func (r *recProvider) rec(op string, s SIM) {
	r.mu.Lock()
	r.calls = append(r.calls, op+" "+s.ICCID+" "+s.IMSI)
	r.mu.Unlock()
}
func (r *recProvider) SuspendSIM(_ context.Context, s SIM) error { r.rec("suspend", s); return nil }
func (r *recProvider) ReactivateSIM(_ context.Context, s SIM) error {
	r.rec("reactivate", s)
	return nil
}
func (r *recProvider) IMEI(_ context.Context, s SIM) (string, error) {
	r.rec("imei", s)
	return "356938035643809", nil
}
func (r *recProvider) Usage(_ context.Context, s SIM) (Usage, error) {
	r.rec("usage", s)
	return Usage{}, nil
}

func TestSIMControl(t *testing.T) {
	st := openStore(t)
	rp := &recProvider{}
	c := &SIMControl{Store: st, Providers: map[event.TenantID]Provider{"acme": rp}}
	ctx := context.Background()
	require.NoError(t, c.SuspendSIM(ctx, "acme", "meter-0017"))
	require.NoError(t, c.ReactivateSIM(ctx, "acme", "meter-0017"))
	imei, err := c.IMEI(ctx, "acme", "meter-0017")
	require.NoError(t, err)
	require.Equal(t, "356938035643809", imei)
	require.Equal(t, []string{"suspend 89440000000000000017 214010000000017", "reactivate 89440000000000000017 214010000000017",
		"imei 89440000000000000017 214010000000017"}, rp.calls)
	require.ErrorIs(t, c.SuspendSIM(ctx, "acme", "nope"), store.ErrNotFound)
	require.ErrorIs(t, c.SuspendSIM(ctx, "globex", "meter-0017"), ErrNoProvider)
}

func TestCellTable(t *testing.T) {
	st := openStore(t)
	clk := clock.NewManual(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	ct := NewCellTable(st, clk, nil, time.Minute, 0)
	ctx := context.Background()
	uli := radius.ULI{Type: radius.LocTAIECGI, MCC: "214", MNC: "01", Area: 0x1a2b, HasArea: true, Cell: 0xabcdef, HasCell: true}
	_, ok := ct.Locate(ctx, uli)
	require.False(t, ok)
	put := func(c store.Cell) {
		require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Cells().Put(ctx, []store.Cell{c}) }))
	}
	put(store.Cell{Radio: "LTE", MCC: 214, MNC: 1, Area: 0x1a2b, Cell: 0xabcdef, Lat: 40.4, Lon: -3.7, RangeM: 800, UpdatedAt: clk.Now()})
	_, ok = ct.Locate(ctx, uli)
	require.False(t, ok, "a miss is cached for the TTL")
	clk.Advance(2 * time.Minute)
	pos, ok := ct.Locate(ctx, uli)
	require.True(t, ok)
	require.Equal(t, radius.Cell{Lat: 40.4, Lon: -3.7, RangeM: 800}, pos)
	// A lone ECGI is found by its identity; a lone TAI names no cell.
	pos, ok = ct.Locate(ctx, radius.ULI{Type: radius.LocECGI, MCC: "214", MNC: "01", Cell: 0xabcdef, HasCell: true})
	require.True(t, ok)
	require.Equal(t, 40.4, pos.Lat)
	_, ok = ct.Locate(ctx, radius.ULI{Type: radius.LocTAI, MCC: "214", MNC: "01", Area: 0x1a2b, HasArea: true})
	require.False(t, ok)
	// Invalidate drops cached answers at once.
	put(store.Cell{Radio: "LTE", MCC: 214, MNC: 1, Area: 0x1a2b, Cell: 0xabcdef, Lat: 41, Lon: -3.7, RangeM: 800, UpdatedAt: clk.Now()})
	pos, _ = ct.Locate(ctx, uli)
	require.Equal(t, 40.4, pos.Lat)
	ct.Invalidate()
	pos, _ = ct.Locate(ctx, uli)
	require.Equal(t, 41.0, pos.Lat)
}

func TestIngestLeases(t *testing.T) {
	st := openStore(t)
	leases := radius.NewLeases()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	in := &Ingester{SIMs: StoreSIMs{Store: st}, Publisher: &pubs{}, Leases: leases, Clock: clock.NewManual(now)}
	ip := netip.MustParseAddr("10.1.2.3")
	rec := Record{Type: "session", Time: now.Format(time.RFC3339), IMSI: "214010000000017", Status: "start", IP: ip.String()}
	_, err := in.Ingest(context.Background(), "acme", EventsRequest{Records: []Record{rec}})
	require.NoError(t, err)
	dev, ok := leases.DeviceByIP(context.Background(), "acme", ip)
	require.True(t, ok, "a pushed session leases its address, so flows map to the device")
	require.Equal(t, event.DeviceID("meter-0017"), dev)
	rec.Status = "stop"
	_, err = in.Ingest(context.Background(), "acme", EventsRequest{Records: []Record{rec}})
	require.NoError(t, err)
	_, ok = leases.DeviceByIP(context.Background(), "acme", ip)
	require.False(t, ok)
	// Too many records, or times far from the clock, are refused whole.
	_, err = in.Ingest(context.Background(), "acme", EventsRequest{Records: make([]Record, MaxRecords+1)})
	require.ErrorIs(t, err, ErrInvalidRecords)
	rec.Time = now.Add(time.Hour).Format(time.RFC3339)
	_, err = in.Ingest(context.Background(), "acme", EventsRequest{Records: []Record{rec}})
	require.ErrorIs(t, err, ErrInvalidRecords)
}
