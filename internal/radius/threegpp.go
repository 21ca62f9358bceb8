package radius

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Vendor3GPP is the IANA enterprise number of 3GPP (TS 29.061).
const Vendor3GPP = 10415

// 3GPP vendor attribute types read by the server (TS 29.061 section 16.4.7).
const (
	Attr3GPPIMSI             = 1
	Attr3GPPIMSIMCCMNC       = 8
	Attr3GPPSGSNMCCMNC       = 18
	Attr3GPPIMEISV           = 20
	Attr3GPPRATType          = 21
	Attr3GPPUserLocationInfo = 22
)

// Errors returned by the 3GPP attribute decoders.
var (
	// ErrAttrLength reports an attribute whose length does not fit its type.
	ErrAttrLength = errors.New("radius: attribute length invalid")
	// ErrAttrValue reports an attribute whose content is not valid.
	ErrAttrValue = errors.New("radius: attribute value invalid")
)

// VSA is one vendor sub-attribute.
type VSA struct {
	Vendor uint32
	Type   byte
	Value  []byte
}

// ParseVSAs decodes the value of a Vendor-Specific attribute (type 26)
// holding one or more sub-attributes in the RFC 2865 recommended format.
// The returned values alias b. Any length that lies is an error.
func ParseVSAs(b []byte, dst []VSA) ([]VSA, error) {
	if len(b) < 4 {
		return dst, fmt.Errorf("vendor-specific: %w", ErrAttrLength)
	}
	vendor := binary.BigEndian.Uint32(b)
	b = b[4:]
	if len(b) == 0 {
		return dst, fmt.Errorf("vendor-specific: empty: %w", ErrAttrLength)
	}
	for len(b) > 0 {
		if len(b) < 2 {
			return dst, fmt.Errorf("vendor-specific: truncated: %w", ErrAttrLength)
		}
		l := int(b[1])
		if l < 2 || l > len(b) {
			return dst, fmt.Errorf("vendor-specific: sub-attribute length %d: %w", l, ErrAttrLength)
		}
		dst = append(dst, VSA{Vendor: vendor, Type: b[0], Value: b[2:l]})
		b = b[l:]
	}
	return dst, nil
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// ParseIMSI decodes 3GPP-IMSI: 6 to 15 decimal digits as text.
func ParseIMSI(b []byte) (string, error) {
	if len(b) < 6 || len(b) > 15 {
		return "", fmt.Errorf("3gpp-imsi: %d bytes: %w", len(b), ErrAttrLength)
	}
	if !allDigits(b) {
		return "", fmt.Errorf("3gpp-imsi: %w", ErrAttrValue)
	}
	return string(b), nil
}

// ParseIMEISV decodes 3GPP-IMEISV. TS 29.061 sends the digits as text (14
// to 16 digits); some gateways send the 8-octet TBCD form of TS 29.274,
// which is accepted too. It returns the IMEI (the first 14 digits and the
// Luhn check digit computed over them) and the digits as received.
func ParseIMEISV(b []byte) (imei, imeisv string, err error) {
	var digits string
	switch {
	case len(b) >= 14 && len(b) <= 16 && allDigits(b):
		digits = string(b)
	case len(b) == 8:
		var buf [16]byte
		n := 0
		for i, c := range b {
			lo, hi := c&0x0f, c>>4
			if lo > 9 {
				return "", "", fmt.Errorf("3gpp-imeisv: tbcd digit: %w", ErrAttrValue)
			}
			buf[n] = '0' + lo
			n++
			if hi == 0x0f && i == len(b)-1 {
				break
			}
			if hi > 9 {
				return "", "", fmt.Errorf("3gpp-imeisv: tbcd digit: %w", ErrAttrValue)
			}
			buf[n] = '0' + hi
			n++
		}
		digits = string(buf[:n])
	default:
		return "", "", fmt.Errorf("3gpp-imeisv: %d bytes: %w", len(b), ErrAttrLength)
	}
	return digits[:14] + string('0'+LuhnDigit(digits[:14])), digits, nil
}

// LuhnDigit returns the Luhn check digit of a string of decimal digits (the
// IMEI check digit of 3GPP TS 23.003 annex B).
func LuhnDigit(digits string) byte {
	sum := 0
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if (len(digits)-1-i)%2 == 0 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return byte((10 - sum%10) % 10)
}

// ParseMCCMNC decodes 3GPP-IMSI-MCC-MNC or 3GPP-SGSN-MCC-MNC: 5 or 6 digits
// as text. It returns "MCC-MNC".
func ParseMCCMNC(b []byte) (string, error) {
	if len(b) != 5 && len(b) != 6 {
		return "", fmt.Errorf("3gpp-mcc-mnc: %d bytes: %w", len(b), ErrAttrLength)
	}
	if !allDigits(b) {
		return "", fmt.Errorf("3gpp-mcc-mnc: %w", ErrAttrValue)
	}
	return string(b[:3]) + "-" + string(b[3:]), nil
}

// RAT types of 3GPP-RAT-Type (TS 29.274 8.17 values as used by TS 29.061).
var ratNames = map[byte]string{
	1: "utran", 2: "geran", 3: "wlan", 4: "gan", 5: "hspa-evolution",
	6: "eutran", 7: "virtual", 8: "eutran-nb-iot", 9: "lte-m", 10: "nr",
	101: "ieee-802.16e", 102: "3gpp2-ehrpd", 103: "3gpp2-hrpd", 104: "3gpp2-1xrtt",
}

// ParseRATType decodes 3GPP-RAT-Type (one octet) into a lower-case name;
// unknown values become "rat-N".
func ParseRATType(b []byte) (string, error) {
	if len(b) != 1 {
		return "", fmt.Errorf("3gpp-rat-type: %d bytes: %w", len(b), ErrAttrLength)
	}
	if n, ok := ratNames[b[0]]; ok {
		return n, nil
	}
	return "rat-" + strconv.Itoa(int(b[0])), nil
}

// Location types of 3GPP-User-Location-Info.
const (
	LocCGI     = 0
	LocSAI     = 1
	LocRAI     = 2
	LocTAI     = 128
	LocECGI    = 129
	LocTAIECGI = 130
)

// ULI is a decoded 3GPP-User-Location-Info.
type ULI struct {
	Type uint8
	MCC  string // 3 digits
	MNC  string // 2 or 3 digits
	// Area is the LAC (CGI, SAI, RAI) or the TAC (TAI, TAI+ECGI); HasArea is
	// false for a lone ECGI.
	Area    uint16
	HasArea bool
	// Cell is the CI (CGI), SAC (SAI), RAC (RAI) or the 28-bit ECI (ECGI,
	// TAI+ECGI); HasCell is false for a lone TAI.
	Cell    uint32
	HasCell bool
}

// String formats the location as MCC-MNC-0xAREA-0xCELL, for example
// 214-01-0x1a2b-0x00abcdef (E-UTRAN cells have 8 hex digits, others 4).
// A missing part is left empty: 214-01--0x00abcdef for a lone ECGI,
// 214-01-0x1a2b- for a lone TAI.
func (u ULI) String() string {
	b := make([]byte, 0, 32)
	b = append(append(append(append(b, u.MCC...), '-'), u.MNC...), '-')
	if u.HasArea {
		b = appendHex(b, uint32(u.Area), 4)
	}
	b = append(b, '-')
	if u.HasCell {
		if u.Type == LocECGI || u.Type == LocTAIECGI {
			b = appendHex(b, u.Cell, 8)
		} else {
			b = appendHex(b, u.Cell, 4)
		}
	}
	return string(b)
}

// appendHex appends 0x and v in at least width lower-case hex digits.
func appendHex(b []byte, v uint32, width int) []byte {
	const digits = "0123456789abcdef"
	var buf [8]byte
	n := 0
	for v > 0 || n < width {
		buf[7-n] = digits[v&0xf]
		v >>= 4
		n++
	}
	return append(append(b, '0', 'x'), buf[8-n:]...)
}

// decodePLMN decodes the 3-octet MCC/MNC of TS 24.008 figure 10.5.13.
func decodePLMN(b []byte) (mcc, mnc string, err error) {
	d := [6]byte{b[0] & 0x0f, b[0] >> 4, b[1] & 0x0f, b[2] & 0x0f, b[2] >> 4, b[1] >> 4}
	for i := 0; i < 5; i++ {
		if d[i] > 9 {
			return "", "", fmt.Errorf("plmn digit: %w", ErrAttrValue)
		}
	}
	mccB := []byte{'0' + d[0], '0' + d[1], '0' + d[2]}
	mncB := []byte{'0' + d[3], '0' + d[4]}
	switch {
	case d[5] == 0x0f:
	case d[5] <= 9:
		mncB = append(mncB, '0'+d[5])
	default:
		return "", "", fmt.Errorf("plmn digit: %w", ErrAttrValue)
	}
	return string(mccB), string(mncB), nil
}

// ParseULI decodes 3GPP-User-Location-Info (TS 29.061 16.4.7.2, field
// layouts of TS 29.274 8.21): CGI, SAI, RAI, TAI, ECGI and TAI+ECGI, each
// with its exact length.
func ParseULI(b []byte) (ULI, error) {
	if len(b) < 1 {
		return ULI{}, fmt.Errorf("3gpp-uli: empty: %w", ErrAttrLength)
	}
	u := ULI{Type: b[0]}
	var n int
	switch b[0] {
	case LocCGI, LocSAI, LocRAI, LocECGI:
		n = 8
	case LocTAI:
		n = 6
	case LocTAIECGI:
		n = 13
	default:
		return ULI{}, fmt.Errorf("3gpp-uli: location type %d: %w", b[0], ErrAttrValue)
	}
	if len(b) != n {
		return ULI{}, fmt.Errorf("3gpp-uli: type %d with %d bytes: %w", b[0], len(b), ErrAttrLength)
	}
	var err error
	if u.MCC, u.MNC, err = decodePLMN(b[1:4]); err != nil {
		return ULI{}, fmt.Errorf("3gpp-uli: %w", err)
	}
	switch b[0] {
	case LocCGI, LocSAI:
		u.Area, u.HasArea = binary.BigEndian.Uint16(b[4:]), true
		u.Cell, u.HasCell = uint32(binary.BigEndian.Uint16(b[6:])), true
	case LocRAI:
		u.Area, u.HasArea = binary.BigEndian.Uint16(b[4:]), true
		u.Cell, u.HasCell = uint32(b[6]), true
	case LocTAI:
		u.Area, u.HasArea = binary.BigEndian.Uint16(b[4:]), true
	case LocECGI:
		u.Cell, u.HasCell = binary.BigEndian.Uint32(b[4:])&0x0fffffff, true
	case LocTAIECGI:
		u.Area, u.HasArea = binary.BigEndian.Uint16(b[4:]), true
		mcc, mnc, err := decodePLMN(b[6:9])
		if err != nil {
			return ULI{}, fmt.Errorf("3gpp-uli: ecgi: %w", err)
		}
		if mcc != u.MCC || mnc != u.MNC {
			return ULI{}, fmt.Errorf("3gpp-uli: tai and ecgi plmn differ: %w", ErrAttrValue)
		}
		u.Cell, u.HasCell = binary.BigEndian.Uint32(b[9:])&0x0fffffff, true
	}
	return u, nil
}
