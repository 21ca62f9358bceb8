package radius

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	lr "layeh.com/radius"
)

// RFC 2865/2866/2869/3579 attribute types read or written here.
const (
	attrUserName         = 1
	attrNASIPAddress     = 4
	attrFramedIPAddress  = 8
	attrReplyMessage     = 18
	attrVendorSpecific   = 26
	attrCalledStationID  = 30
	attrCallingStationID = 31
	attrNASIdentifier    = 32
	attrAcctStatusType   = 40
	attrAcctInputOctets  = 42
	attrAcctOutputOctets = 43
	attrAcctSessionID    = 44
	attrAcctInputGiga    = 52
	attrAcctOutputGiga   = 53
	attrMessageAuth      = 80
	attrErrorCause       = 101
	attrFramedIPv6Addr   = 168 // RFC 6911
	attrProxyState       = 33
)

// Acct-Status-Type values.
const (
	StatusStart   = 1
	StatusStop    = 2
	StatusInterim = 3
)

// Record is what the server reads from one Accounting-Request or
// Access-Request. Absent attributes leave their zero value.
type Record struct {
	Status     uint32 // Acct-Status-Type (accounting only)
	SessionID  string
	UserName   string
	IMSI       string
	IMEI       string     // 15 digits, check digit computed
	IMEISV     string     // digits as received
	MSISDN     string     // Calling-Station-Id
	APN        string     // Called-Station-Id
	FramedIP   netip.Addr // Framed-IP-Address
	FramedIPv6 netip.Addr // Framed-IPv6-Address (RFC 6911)
	NASIP      netip.Addr
	NASID      string
	InOctets   uint64 // with gigawords, from the device (uplink)
	OutOctets  uint64 // with gigawords, to the device (downlink)
	ULI        ULI
	HasULI     bool
	PLMN       string // 3GPP-SGSN-MCC-MNC as MCC-MNC
	IMSIPLMN   string // 3GPP-IMSI-MCC-MNC as MCC-MNC
	RAT        string
	HasMsgAuth bool
}

func u32(a []byte, name string) (uint32, error) {
	if len(a) != 4 {
		return 0, fmt.Errorf("%s: %d bytes: %w", name, len(a), ErrAttrLength)
	}
	return binary.BigEndian.Uint32(a), nil
}

// ErrPacket reports a RADIUS packet whose header or attribute list is
// malformed.
var ErrPacket = errors.New("radius: malformed packet")

// checkPacket validates a packet's header and returns it cut to its
// length field (RFC 2865 3: octets beyond it are padding).
func checkPacket(b []byte) ([]byte, error) {
	if len(b) < 20 {
		return nil, fmt.Errorf("%w: %d bytes", ErrPacket, len(b))
	}
	l := int(binary.BigEndian.Uint16(b[2:]))
	if l < 20 || l > lr.MaxPacketLength || l > len(b) {
		return nil, fmt.Errorf("%w: length field %d of %d bytes", ErrPacket, l, len(b))
	}
	return b[:l], nil
}

// ParseRecord reads the attributes the server understands from a packet's
// attribute list (the bytes after the 20-byte header), in place. Every
// attribute is length-checked: a list whose lengths lie is ErrPacket; a
// malformed attribute the server reads is an error; attributes it does not
// read and unknown vendors are ignored. The record does not alias attrs.
func ParseRecord(attrs []byte) (Record, error) {
	var r Record
	var inGiga, outGiga, inOct, outOct uint32
	var vsas [8]VSA
	for len(attrs) > 0 {
		if len(attrs) < 2 || attrs[1] < 2 || int(attrs[1]) > len(attrs) {
			return r, fmt.Errorf("%w: attribute length", ErrPacket)
		}
		typ, a := attrs[0], attrs[2:attrs[1]]
		attrs = attrs[attrs[1]:]
		var err error
		switch typ {
		case attrUserName:
			r.UserName = string(a)
		case attrNASIPAddress:
			ip, ok := netip.AddrFromSlice(a)
			if !ok || len(a) != 4 {
				return r, fmt.Errorf("nas-ip-address: %w", ErrAttrLength)
			}
			r.NASIP = ip
		case attrFramedIPAddress:
			ip, ok := netip.AddrFromSlice(a)
			if !ok || len(a) != 4 {
				return r, fmt.Errorf("framed-ip-address: %w", ErrAttrLength)
			}
			r.FramedIP = ip
		case attrFramedIPv6Addr:
			if len(a) != 16 {
				return r, fmt.Errorf("framed-ipv6-address: %w", ErrAttrLength)
			}
			r.FramedIPv6 = netip.AddrFrom16([16]byte(a))
		case attrCalledStationID:
			r.APN = string(a)
		case attrCallingStationID:
			r.MSISDN = string(a)
		case attrNASIdentifier:
			r.NASID = string(a)
		case attrAcctStatusType:
			r.Status, err = u32(a, "acct-status-type")
		case attrAcctInputOctets:
			inOct, err = u32(a, "acct-input-octets")
		case attrAcctOutputOctets:
			outOct, err = u32(a, "acct-output-octets")
		case attrAcctInputGiga:
			inGiga, err = u32(a, "acct-input-gigawords")
		case attrAcctOutputGiga:
			outGiga, err = u32(a, "acct-output-gigawords")
		case attrAcctSessionID:
			r.SessionID = string(a)
		case attrMessageAuth:
			if len(a) != 16 {
				return r, fmt.Errorf("message-authenticator: %w", ErrAttrLength)
			}
			r.HasMsgAuth = true
		case attrVendorSpecific:
			if len(a) < 4 || binary.BigEndian.Uint32(a) != Vendor3GPP {
				break // other vendors may not follow the recommended format
			}
			vs, verr := ParseVSAs(a, vsas[:0])
			if verr != nil {
				return r, verr
			}
			for _, v := range vs {
				if v.Vendor != Vendor3GPP {
					continue
				}
				if err = r.set3GPP(v); err != nil {
					return r, err
				}
			}
		}
		if err != nil {
			return r, err
		}
	}
	r.InOctets = uint64(inGiga)<<32 | uint64(inOct)
	r.OutOctets = uint64(outGiga)<<32 | uint64(outOct)
	if r.IMSI == "" && len(r.UserName) >= 6 && len(r.UserName) <= 15 && allDigits([]byte(r.UserName)) {
		r.IMSI = r.UserName
	}
	return r, nil
}

func (r *Record) set3GPP(v VSA) error {
	var err error
	switch v.Type {
	case Attr3GPPIMSI:
		r.IMSI, err = ParseIMSI(v.Value)
	case Attr3GPPIMEISV:
		r.IMEI, r.IMEISV, err = ParseIMEISV(v.Value)
	case Attr3GPPUserLocationInfo:
		r.ULI, err = ParseULI(v.Value)
		r.HasULI = err == nil
	case Attr3GPPSGSNMCCMNC:
		r.PLMN, err = ParseMCCMNC(v.Value)
	case Attr3GPPIMSIMCCMNC:
		r.IMSIPLMN, err = ParseMCCMNC(v.Value)
	case Attr3GPPRATType:
		r.RAT, err = ParseRATType(v.Value)
	}
	return err
}
