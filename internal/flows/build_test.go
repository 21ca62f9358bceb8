package flows

import "encoding/binary"

// Test helpers that build IPFIX and NetFlow v9 messages by hand.

type fspec struct{ id, length uint16 }

func be16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

func set(id uint16, body []byte) []byte {
	b := be16(nil, id)
	b = be16(b, uint16(4+len(body)))
	return append(b, body...)
}

func tmpl(id uint16, fields ...fspec) []byte {
	b := be16(nil, id)
	b = be16(b, uint16(len(fields)))
	for _, f := range fields {
		b = be16(b, f.id)
		b = be16(b, f.length)
	}
	return b
}

func ipfixMsg(domain uint32, sets ...[]byte) []byte {
	var body []byte
	for _, s := range sets {
		body = append(body, s...)
	}
	b := be16(nil, 10)
	b = be16(b, uint16(16+len(body)))
	b = be32(b, 1_790_000_000)
	b = be32(b, 1)
	b = be32(b, domain)
	return append(b, body...)
}

func v9Msg(source uint32, uptime uint32, sets ...[]byte) []byte {
	var body []byte
	for _, s := range sets {
		body = append(body, s...)
	}
	b := be16(nil, 9)
	b = be16(b, uint16(len(sets)))
	b = be32(b, uptime)
	b = be32(b, 1_790_000_000)
	b = be32(b, 1)
	b = be32(b, source)
	return append(b, body...)
}

// v4Fields is a typical IPv4 template: src, dst, sport, dport, proto,
// octets, packets, flowStartMilliseconds, flowEndMilliseconds.
var v4Fields = []fspec{{8, 4}, {12, 4}, {7, 2}, {11, 2}, {4, 1}, {1, 8}, {2, 4}, {152, 8}, {153, 8}}

func v4Record(src, dst [4]byte, sport, dport uint16, proto uint8, octets uint64, packets uint32, startMs, endMs uint64) []byte {
	b := append([]byte(nil), src[:]...)
	b = append(b, dst[:]...)
	b = be16(b, sport)
	b = be16(b, dport)
	b = append(b, proto)
	b = binary.BigEndian.AppendUint64(b, octets)
	b = be32(b, packets)
	b = binary.BigEndian.AppendUint64(b, startMs)
	b = binary.BigEndian.AppendUint64(b, endMs)
	return b
}
