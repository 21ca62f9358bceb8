package radius

import (
	"errors"
	"strings"
	"testing"
)

func TestParseULI(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    string
		wantErr error
	}{
		// MCC 214 MNC 01: 0x12 0xf4 0x10
		{"cgi", []byte{0, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x00, 0x3c}, "214-01-0x1a2b-0x003c", nil},
		{"sai", []byte{1, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x12, 0x34}, "214-01-0x1a2b-0x1234", nil},
		{"tai", []byte{128, 0x12, 0xf4, 0x10, 0x1a, 0x2b}, "214-01-0x1a2b-", nil},
		{"ecgi", []byte{129, 0x12, 0xf4, 0x10, 0xf0, 0xab, 0xcd, 0xef}, "214-01--0x00abcdef", nil},
		{"tai+ecgi", []byte{130, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x12, 0xf4, 0x10, 0x00, 0xab, 0xcd, 0xef}, "214-01-0x1a2b-0x00abcdef", nil},
		// MCC 310 MNC 410 (3 digits): 0x13 0x00 0x14
		{"3-digit mnc", []byte{129, 0x13, 0x00, 0x14, 0x01, 0x02, 0x03, 0x04}, "310-410--0x01020304", nil},
		{"empty", nil, "", ErrAttrLength},
		{"cgi short", []byte{0, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x00}, "", ErrAttrLength},
		{"tai long", []byte{128, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0}, "", ErrAttrLength},
		{"tai+ecgi short", []byte{130, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x12, 0xf4, 0x10, 0x00, 0xab, 0xcd}, "", ErrAttrLength},
		{"unknown type", []byte{7, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x00, 0x3c}, "", ErrAttrValue},
		{"bad digit", []byte{0, 0x1a, 0xf4, 0x10, 0x1a, 0x2b, 0x00, 0x3c}, "", ErrAttrValue},
		{"plmn mismatch", []byte{130, 0x12, 0xf4, 0x10, 0x1a, 0x2b, 0x12, 0xf4, 0x20, 0x00, 0xab, 0xcd, 0xef}, "", ErrAttrValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseULI(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && u.String() != tt.want {
				t.Fatalf("got %q, want %q", u.String(), tt.want)
			}
		})
	}
}

func TestParseIMEISV(t *testing.T) {
	tests := []struct {
		in, imei, sv string
		wantErr      error
	}{
		// 49015420323751 has check digit 8 (the GSMA example IMEI 490154203237518).
		{"4901542032375101", "490154203237518", "4901542032375101", nil},
		{"49015420323751", "490154203237518", "49015420323751", nil},
		{"\x94\x10\x45\x02\x23\x73\x15\x10", "490154203237518", "4901542032375101", nil},
		{"4901542032375", "", "", ErrAttrLength},
		{"49015420323751x", "", "", ErrAttrLength},
		{"\x9a\x10\x45\x02\x23\x73\x15\x10", "", "", ErrAttrValue},
	}
	for _, tt := range tests {
		imei, sv, err := ParseIMEISV([]byte(tt.in))
		if !errors.Is(err, tt.wantErr) || imei != tt.imei || sv != tt.sv {
			t.Errorf("ParseIMEISV(%q) = %q, %q, %v; want %q, %q, %v", tt.in, imei, sv, err, tt.imei, tt.sv, tt.wantErr)
		}
	}
}

func TestSmallDecoders(t *testing.T) {
	if s, err := ParseIMSI([]byte("214011234567890")); err != nil || s != "214011234567890" {
		t.Errorf("imsi: %q %v", s, err)
	}
	for _, bad := range []string{"12345", "2140112345678901", "21401a"} {
		if _, err := ParseIMSI([]byte(bad)); err == nil {
			t.Errorf("imsi %q accepted", bad)
		}
	}
	if s, err := ParseMCCMNC([]byte("310410")); err != nil || s != "310-410" {
		t.Errorf("mcc-mnc: %q %v", s, err)
	}
	if _, err := ParseMCCMNC([]byte("2140")); !errors.Is(err, ErrAttrLength) {
		t.Errorf("short mcc-mnc: %v", err)
	}
	if s, err := ParseRATType([]byte{6}); err != nil || s != "eutran" {
		t.Errorf("rat: %q %v", s, err)
	}
	if s, _ := ParseRATType([]byte{77}); s != "rat-77" {
		t.Errorf("rat 77: %q", s)
	}
	if _, err := ParseRATType([]byte{6, 0}); !errors.Is(err, ErrAttrLength) {
		t.Errorf("rat long: %v", err)
	}
	if _, err := ParseVSAs([]byte{0, 0, 0x28, 0xaf, 1, 9, '1'}, nil); !errors.Is(err, ErrAttrLength) {
		t.Errorf("vsa that lies: %v", err)
	}
	vs, err := ParseVSAs([]byte{0, 0, 0x28, 0xaf, 21, 3, 6, 1, 8, '2', '1', '4', '0', '1', '1'}, nil)
	if err != nil || len(vs) != 2 || vs[0].Type != 21 || vs[1].Type != 1 {
		t.Errorf("two vsas: %v %v", vs, err)
	}
}

func TestCellsImport(t *testing.T) {
	csv := `radio,mcc,net,area,cell,unit,lon,lat,range,samples,changeable,created,updated,averageSignal
LTE,214,1,6699,11259375,0,-3.70379,40.41678,1000,5,1,1,1,0
GSM,214,1,6699,60,0,-3.7,40.4,500,5,1,1,1,0
UMTS,214,1,bad,60,0,-3.7,40.4,500,5,1,1,1,0
GSM,214,1,6699,61,0,-3.7,95,500,5,1,1,1,0
`
	c := NewCells()
	added, skipped, err := c.ImportOpenCellID(strings.NewReader(csv))
	if err != nil || added != 2 || skipped != 2 {
		t.Fatalf("import: added %d skipped %d err %v", added, skipped, err)
	}
	tai := ULI{Type: LocTAIECGI, MCC: "214", MNC: "01", Area: 6699, HasArea: true, Cell: 11259375, HasCell: true}
	if pos, ok := c.LookupULI(tai); !ok || pos.Lat != 40.41678 || pos.RangeM != 1000 {
		t.Fatalf("tai+ecgi lookup: %v %v", pos, ok)
	}
	ecgi := ULI{Type: LocECGI, MCC: "214", MNC: "01", Cell: 11259375, HasCell: true}
	if _, ok := c.LookupULI(ecgi); !ok {
		t.Fatal("lone ecgi not found")
	}
	cgi := ULI{Type: LocCGI, MCC: "214", MNC: "01", Area: 6699, HasArea: true, Cell: 60, HasCell: true}
	if _, ok := c.LookupULI(cgi); !ok {
		t.Fatal("cgi not found")
	}
	cgi.Cell = 61
	if _, ok := c.LookupULI(cgi); ok {
		t.Fatal("row with latitude 95 was imported")
	}
}
