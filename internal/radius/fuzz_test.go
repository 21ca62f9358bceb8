package radius

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"testing"

	lr "layeh.com/radius"
)

// FuzzPacket feeds arbitrary datagrams to both servers. Accounting-Requests
// are re-signed with the client's secret so that the fuzzer reaches the
// attribute decoders behind the authenticator check.
func FuzzPacket(f *testing.F) {
	f.Add(acctPacketSeed(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub := &fakePub{}
		s, _ := newTestServer(t, pub, ModeEnforce)
		ctx := context.Background()
		if c, err := checkPacket(b); err == nil {
			_, _ = ParseRecord(c[20:])
		}
		s.HandleAccess(ctx, gwAddr, b)
		if len(b) >= 20 {
			c := append([]byte(nil), b...)
			c[0] = byte(lr.CodeAccountingRequest)
			if l := int(binary.BigEndian.Uint16(c[2:])); l >= 20 && l <= len(c) {
				c = c[:l]
				clear(c[4:20])
				h := md5.New()
				h.Write(c)
				h.Write(testSecret)
				copy(c[4:20], h.Sum(nil))
			}
			s.HandleAccounting(ctx, gwAddr, c)
		}
		for _, e := range pub.events() {
			if err := e.Validate(); err != nil {
				t.Fatalf("invalid event published: %v", err)
			}
		}
	})
}

func acctPacketSeed(f *testing.F) []byte {
	p := lr.New(lr.CodeAccountingRequest, testSecret)
	p.Add(attrAcctStatusType, u32a(StatusInterim))
	p.Add(attrAcctSessionID, lr.Attribute("s1"))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPIMSI, []byte(imsiMeter)))
	p.Add(attrVendorSpecific, vsa3gpp(Attr3GPPUserLocationInfo, taiECGI))
	b, err := p.Encode()
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// Fuzz3GPP feeds arbitrary Vendor-Specific attribute values to the 3GPP
// decoders; whatever they accept must format and look up without panic.
func Fuzz3GPP(f *testing.F) {
	f.Add(append([]byte{0, 0, 0x28, 0xaf, 22, 15}, taiECGI...))
	f.Add([]byte{0, 0, 0x28, 0xaf, 20, 18, '4', '9', '0', '1', '5', '4', '2', '0', '3', '2', '3', '7', '5', '1', '0', '1'})
	cells := NewCells()
	cells.Put("LTE", 214, 1, 0x1a2b, 0xabcdef, Cell{Lat: 1, Lon: 2, RangeM: 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		vs, err := ParseVSAs(b, nil)
		if err != nil {
			return
		}
		for _, v := range vs {
			var r Record
			if err := r.set3GPP(v); err != nil {
				continue
			}
			if r.HasULI {
				_ = r.ULI.String()
				cells.LookupULI(r.ULI)
			}
			if r.IMEI != "" && len(r.IMEI) != 15 {
				t.Fatalf("imei %q", r.IMEI)
			}
		}
	})
}
