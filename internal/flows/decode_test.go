package flows

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
)

var exp = netip.MustParseAddrPort("192.0.2.1:50000")

func collect(t *testing.T, d *Decoder, msg []byte) ([]Record, error) {
	t.Helper()
	var out []Record
	err := d.Decode(exp, msg, func(r *Record) { out = append(out, *r) })
	return out, err
}

func TestIPFIXDecode(t *testing.T) {
	d := &Decoder{}
	rec := v4Record([4]byte{10, 1, 2, 3}, [4]byte{192, 0, 2, 7}, 40000, 5683, 17, 384, 3, 1_790_000_000_000, 1_790_000_002_000)
	// Data before its template is dropped and counted.
	if got, err := collect(t, d, ipfixMsg(7, set(256, rec))); err != nil || len(got) != 0 {
		t.Fatalf("data without template: %v %v", got, err)
	}
	if d.Stats().NoTemplate != 1 {
		t.Fatalf("stats %+v", d.Stats())
	}
	// Template then two records and 3 bytes of padding in one message.
	data := append(append(append([]byte(nil), rec...), rec...), 0, 0, 0)
	got, err := collect(t, d, ipfixMsg(7, set(2, tmpl(256, v4Fields...)), set(256, data)))
	if err != nil || len(got) != 2 {
		t.Fatalf("got %v, %v", got, err)
	}
	want := Record{
		SrcIP: netip.MustParseAddr("10.1.2.3"), DstIP: netip.MustParseAddr("192.0.2.7"),
		SrcPort: 40000, DstPort: 5683, Proto: 17, Octets: 384, Packets: 3,
		Start: time.UnixMilli(1_790_000_000_000).UTC(), End: time.UnixMilli(1_790_000_002_000).UTC(),
	}
	if got[0] != want {
		t.Fatalf("got %+v\nwant %+v", got[0], want)
	}
	// The template belongs to domain 7 only.
	if got, _ := collect(t, d, ipfixMsg(8, set(256, rec))); len(got) != 0 {
		t.Fatal("template of another observation domain used")
	}
	// Withdrawal.
	if _, err := collect(t, d, ipfixMsg(7, set(2, tmpl(256)))); err != nil {
		t.Fatal(err)
	}
	if got, _ := collect(t, d, ipfixMsg(7, set(256, rec))); len(got) != 0 {
		t.Fatal("withdrawn template used")
	}
}

func TestIPFIXVariableLengthAndIPv6(t *testing.T) {
	d := &Decoder{}
	fields := []fspec{{27, 16}, {28, 16}, {82, 65535}, {4, 1}, {0x8000 | 5, 4}}
	tb := tmpl(300, fields...)
	// enterprise field: insert the enterprise number after its specifier
	tb = append(tb, 0, 0, 0x28, 0xaf)
	src := netip.MustParseAddr("2001:db8::17").As16()
	dst := netip.MustParseAddr("2001:db8:1::1").As16()
	rec := append(append(src[:], dst[:]...), 3, 'e', 't', 'h', 6, 1, 2, 3, 4)
	long := append(append(src[:], dst[:]...), 255, 0x01, 0x2c)
	long = append(long, make([]byte, 300)...)
	long = append(long, 17, 0, 0, 0, 0)
	got, err := collect(t, d, ipfixMsg(1, set(2, tb), set(300, append(rec, long...))))
	if err != nil || len(got) != 2 {
		t.Fatalf("got %v, %v", got, err)
	}
	if got[0].SrcIP.String() != "2001:db8::17" || got[0].Proto != 6 || got[1].Proto != 17 {
		t.Fatalf("got %+v", got)
	}
}

func TestNetFlowV9Decode(t *testing.T) {
	d := &Decoder{}
	fields := []fspec{{8, 4}, {12, 4}, {7, 2}, {11, 2}, {4, 1}, {1, 4}, {2, 4}, {22, 4}, {21, 4}}
	rec := []byte{10, 1, 2, 3, 8, 8, 8, 8, 0x9c, 0x40, 0, 53, 17, 0, 0, 0, 100, 0, 0, 0, 1}
	rec = be32(rec, 9_000) // first switched: 1 s before uptime 10 s
	rec = be32(rec, 9_500)
	// options template flowset (id 1) and its data must not become flows
	opt := be16(nil, 257)
	opt = be16(opt, 4)
	opt = be16(opt, 4)
	opt = append(opt, 0, 1, 0, 4, 0, 34, 0, 4)
	optData := []byte{0, 0, 0, 1, 0, 0, 0, 10}
	got, err := collect(t, d, v9Msg(3, 10_000, set(0, tmpl(256, fields...)), set(1, opt), set(257, optData), set(256, rec)))
	if err != nil || len(got) != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
	r := got[0]
	if r.SrcIP.String() != "10.1.2.3" || r.DstPort != 53 || r.Octets != 100 || r.Packets != 1 {
		t.Fatalf("got %+v", r)
	}
	if want := time.UnixMilli(1_790_000_000_000 - 1_000).UTC(); !r.Start.Equal(want) {
		t.Fatalf("start %v, want %v", r.Start, want)
	}
	if st := d.Stats(); st.OptionsRecords != 1 || st.Records != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMalformed(t *testing.T) {
	many := make([]fspec, MaxFields+1)
	for i := range many {
		many[i] = fspec{1, 4}
	}
	lyingSet := ipfixMsg(1, set(2, tmpl(256, v4Fields...)))
	lyingSet[19] = 200 // set length beyond the message
	lyingMsg := ipfixMsg(1, set(2, tmpl(256, v4Fields...)))
	lyingMsg[3] = 255
	tests := []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"version 5", []byte{0, 5, 0, 0}, ErrVersion},
		{"ipfix header short", ipfixMsg(1)[:15], ErrShort},
		{"message length lies", lyingMsg, ErrLength},
		{"set length lies", lyingSet, ErrLength},
		{"set length zero", ipfixMsg(1, []byte{1, 0, 0, 0}), ErrLength},
		{"zero-length template", ipfixMsg(1, set(2, tmpl(256, fspec{1, 0}, fspec{2, 0}))), ErrTemplate},
		{"too many fields", ipfixMsg(1, set(2, tmpl(256, many...))), ErrTemplate},
		{"template id below 256", ipfixMsg(1, set(2, tmpl(255, v4Fields...))), ErrTemplate},
		{"template truncated", ipfixMsg(1, set(2, tmpl(256, v4Fields...)[:10])), ErrShort},
		{"v9 variable length", v9Msg(1, 0, set(0, tmpl(256, fspec{1, 65535}))), ErrTemplate},
		{"v9 options lie", v9Msg(1, 0, set(1, []byte{1, 0, 0, 8, 0, 8, 0, 1})), ErrTemplate},
		{"variable length lies", ipfixMsg(1, set(2, tmpl(256, fspec{82, 65535})), set(256, []byte{200, 1, 2})), ErrLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Decoder{}
			_, err := collect(t, d, tt.msg)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if d.Stats().Malformed != 1 {
				t.Fatalf("stats %+v", d.Stats())
			}
		})
	}
}

func TestTemplateLimit(t *testing.T) {
	d := &Decoder{MaxTemplates: 2}
	_, err := collect(t, d, ipfixMsg(1, set(2, append(append(tmpl(256, v4Fields...), tmpl(257, v4Fields...)...), tmpl(258, v4Fields...)...))))
	if !errors.Is(err, ErrTooMany) || d.Stats().TemplateRefused != 1 {
		t.Fatalf("err %v stats %+v", err, d.Stats())
	}
	// Replacing a known template is still allowed.
	if _, err := collect(t, d, ipfixMsg(1, set(2, tmpl(256, v4Fields...)))); err != nil {
		t.Fatal(err)
	}
}

func TestTemplateEviction(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_790_000_000, 0))
	d := &Decoder{MaxTemplates: 1, TemplateIdle: time.Minute, Clock: clk}
	old := netip.MustParseAddrPort("192.0.2.1:1000")
	if err := d.Decode(old, ipfixMsg(1, set(2, tmpl(256, v4Fields...))), func(*Record) {}); err != nil {
		t.Fatal(err)
	}
	// Still fresh: the restarted exporter's template is refused.
	clk.Advance(30 * time.Second)
	if _, err := collect(t, d, ipfixMsg(1, set(2, tmpl(256, v4Fields...)))); !errors.Is(err, ErrTooMany) {
		t.Fatalf("err %v", err)
	}
	clk.Advance(time.Minute)
	got, err := collect(t, d, ipfixMsg(1, set(2, tmpl(256, v4Fields...)), set(256, v4Record([4]byte{10, 1, 2, 3}, [4]byte{1, 1, 1, 1}, 1, 2, 17, 1, 1, 0, 0))))
	if err != nil || len(got) != 1 || d.Stats().TemplatesEvicted != 1 {
		t.Fatalf("got %v err %v stats %+v", got, err, d.Stats())
	}
}

func TestNearExport(t *testing.T) {
	const wrap = int64(1) << 32
	exportMs := int64(1_790_000_000_000)
	for _, tt := range []struct{ in, want int64 }{
		{exportMs - 5_000, exportMs - 5_000},
		{exportMs - 5_000 + wrap, exportMs - 5_000},
		{exportMs - 5_000 + 3*wrap, exportMs - 5_000},
		{exportMs - 5_000 - 2*wrap, exportMs - 5_000},
		{exportMs + 1_000, exportMs + 1_000},
	} {
		if got := nearExport(tt.in, exportMs).UnixMilli(); got != tt.want {
			t.Errorf("nearExport(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
