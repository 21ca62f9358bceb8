package radius

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

type nopPub struct{}

func (nopPub) Publish(context.Context, *event.Event) error { return nil }

func benchServer(b *testing.B) (*Server, *clock.Manual) {
	b.Helper()
	clk := clock.NewManual(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC))
	cells := NewCells()
	cells.Put("LTE", 214, 1, 0x1a2b, 0xabcdef, Cell{Lat: 40.4, Lon: -3.7, RangeM: 800})
	s, err := New(Options{
		Clients:   []Client{{Name: "lab", Tenant: "acme", Prefix: netip.MustParsePrefix("127.0.0.0/8"), Secret: testSecret}},
		Publisher: nopPub{}, SIMs: testSIMs(), Cells: cells, Clock: clk,
		DuplicateWindow: time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	return s, clk
}

func benchPackets(b *testing.B, n int) [][]byte {
	pk := make([][]byte, n)
	for i := range pk {
		pk[i] = acctPacket(&testing.T{}, acct{status: StatusInterim, session: fmt.Sprintf("s%d", i%512), in: uint32(i) * 100, out: uint32(i) * 300,
			imsi: imsiMeter, imeisv: imeisvMeter, uli: taiECGI}, testSecret)
	}
	return pk
}

// BenchmarkAccountingHandler measures the handler path: authenticator
// check, duplicate detection, attribute and 3GPP decoding, session deltas,
// cell lookup, event construction (publisher is a no-op).
func BenchmarkAccountingHandler(b *testing.B) {
	s, clk := benchServer(b)
	pk := benchPackets(b, 4096)
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		clk.Advance(time.Millisecond)
		if s.HandleAccounting(ctx, src, pk[i%len(pk)]) == nil {
			b.Fatal("not answered")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkAccountingUDP measures requests answered per second over
// loopback UDP: 8 clients, each with 16 requests in flight.
func BenchmarkAccountingUDP(b *testing.B) {
	s, _ := benchServer(b)
	s.clk = clock.Real{}
	s.o.Clock = clock.Real{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		uc.SetReadBuffer(4 << 20)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeAccounting(ctx, pc) }()
	defer func() { cancel(); <-done }()
	const clients, window = 8, 16
	pk := benchPackets(b, 8192)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/clients + 1
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			conn, err := net.Dial("udp", pc.LocalAddr().String())
			if err != nil {
				b.Error(err)
				return
			}
			defer conn.Close()
			buf := make([]byte, 4096)
			sent, got := 0, 0
			for got < per {
				for sent < per && sent-got < window {
					conn.Write(pk[(c*per+sent)%len(pk)])
					sent++
				}
				conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := conn.Read(buf); err != nil {
					// lost in a full socket buffer: count it as lost and move on
					sent--
					continue
				}
				got++
			}
		}(c)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(clients*per)/b.Elapsed().Seconds(), "answered/s")
}
