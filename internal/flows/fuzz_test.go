package flows

import (
	"testing"
)

func fuzzDecode(t *testing.T, b []byte) {
	d := &Decoder{MaxTemplates: 64}
	// Twice: the second pass sees the templates of the first.
	for range 2 {
		_ = d.Decode(exp, b, func(r *Record) {
			if r.SrcIP.IsValid() && !r.SrcIP.Is4() && !r.SrcIP.Is6() {
				t.Fatalf("bad address %v", r.SrcIP)
			}
		})
	}
	if st := d.Stats(); st.Records > uint64(len(b)) {
		t.Fatalf("%d records from %d bytes", st.Records, len(b))
	}
}

func FuzzIPFIX(f *testing.F) {
	rec := v4Record([4]byte{10, 1, 2, 3}, [4]byte{192, 0, 2, 7}, 40000, 5683, 17, 384, 3, 1, 2)
	f.Add(ipfixMsg(7, set(2, tmpl(256, v4Fields...)), set(256, rec)))
	f.Fuzz(fuzzDecode)
}

func FuzzNetFlowV9(f *testing.F) {
	fields := []fspec{{8, 4}, {12, 4}, {7, 2}, {11, 2}, {4, 1}, {1, 4}, {2, 4}, {22, 4}, {21, 4}}
	rec := []byte{10, 1, 2, 3, 8, 8, 8, 8, 0x9c, 0x40, 0, 53, 17, 0, 0, 0, 100, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2}
	f.Add(v9Msg(3, 10_000, set(0, tmpl(256, fields...)), set(256, rec)))
	f.Fuzz(fuzzDecode)
}
