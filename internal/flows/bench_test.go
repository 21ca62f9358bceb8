package flows

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
)

type nopPub struct{}

func (nopPub) Publish(context.Context, *event.Event) error { return nil }

// benchMessage is an IPFIX message of 30 IPv4 records (1,4xx bytes, a
// typical full datagram) whose template was sent before.
func benchMessage() (tmplMsg, dataMsg []byte) {
	var data []byte
	for i := 0; i < 30; i++ {
		data = append(data, v4Record([4]byte{10, 1, 2, byte(i)}, [4]byte{192, 0, 2, 7}, 40000, 5683, 17, 384, 3, 1_790_000_000_000, 1_790_000_002_000)...)
	}
	return ipfixMsg(1, set(2, tmpl(256, v4Fields...))), ipfixMsg(1, set(256, data))
}

func BenchmarkDecodeIPFIX(b *testing.B) {
	d := &Decoder{}
	tm, dm := benchMessage()
	if err := d.Decode(exp, tm, func(*Record) {}); err != nil {
		b.Fatal(err)
	}
	n := 0
	b.ReportAllocs()
	b.SetBytes(int64(len(dm)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.Decode(exp, dm, func(*Record) { n++ }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkCollectorHandle measures records decoded, mapped to a device
// and published (to a no-op publisher) per second.
func BenchmarkCollectorHandle(b *testing.B) {
	devs := fakeDevices{}
	for i := 0; i < 30; i++ {
		devs[netip.AddrFrom4([4]byte{10, 1, 2, byte(i)})] = "meter"
	}
	c, err := New(Options{
		Exporters: []Exporter{{Tenant: "acme", Prefix: netip.MustParsePrefix("192.0.2.0/24")}},
		Publisher: nopPub{}, Devices: devs, Clock: clock.NewManual(time.Unix(1_790_000_000, 0)),
	})
	if err != nil {
		b.Fatal(err)
	}
	tm, dm := benchMessage()
	ctx := context.Background()
	if err := c.Handle(ctx, exp, tm); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Handle(ctx, exp, dm); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if got := c.Stats().Published; got != uint64(30*b.N) {
		b.Fatalf("published %d, want %d", got, 30*b.N)
	}
	b.ReportMetric(float64(30*b.N)/b.Elapsed().Seconds(), "records/s")
}
