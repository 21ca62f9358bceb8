package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
)

// Record is one decoded flow.
type Record struct {
	SrcIP, DstIP     netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
	Octets, Packets  uint64
	Start, End       time.Time // zero when the exporter sent no times
}

// Errors returned by [Decoder.Decode]. Every one means the rest of the
// message was dropped; records already handed to the callback stand.
var (
	ErrShort    = errors.New("flows: message truncated")
	ErrVersion  = errors.New("flows: unsupported version")
	ErrLength   = errors.New("flows: length field lies")
	ErrTemplate = errors.New("flows: invalid template")
	ErrTooMany  = errors.New("flows: template limit reached")
)

// Limits of the decoder.
const (
	// MaxFields is the most fields a template may have.
	MaxFields = 128
	// DefaultMaxTemplates bounds the templates kept for all exporters.
	DefaultMaxTemplates = 4096
	// DefaultTemplateIdle is the default [Decoder.TemplateIdle].
	DefaultTemplateIdle = time.Hour
)

type tmplKey struct {
	exporter netip.AddrPort
	version  uint16
	domain   uint32
	id       uint16
}

type domainKey struct {
	exporter netip.AddrPort
	version  uint16
	domain   uint32
}

type field struct {
	id     uint16 // information element; 0 for enterprise-specific ones
	length uint16 // 65535: variable length (IPFIX)
}

type template struct {
	seen    time.Time // last defined or used, by the decoder's clock
	fields  []field
	minLen  int  // bytes of a record at least (a variable field counts 1)
	options bool // options template: records are metadata, not flows
}

// Stats are the decoder's counters.
type Stats struct {
	Messages         uint64
	Records          uint64 // flow records decoded
	Templates        uint64 // template records accepted
	OptionsRecords   uint64 // options data records read (not flows)
	NoTemplate       uint64 // data sets dropped: template not (yet) known
	Malformed        uint64 // messages with an error
	TemplateRefused  uint64 // templates refused (invalid or over the limit)
	TemplatesEvicted uint64 // idle templates evicted to make room
}

// Decoder decodes IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) messages,
// keeping templates per exporter (address and port: the transport
// session), version and observation domain (source id). It is safe for
// concurrent use.
type Decoder struct {
	// MaxTemplates bounds the template cache (DefaultMaxTemplates if 0).
	MaxTemplates int
	// TemplateIdle: when the cache is full, templates neither defined nor
	// used for this long (an exporter that restarted on a new port) are
	// evicted to make room. Default DefaultTemplateIdle.
	TemplateIdle time.Duration
	// Clock tells the time for TemplateIdle; the wall clock if nil.
	Clock clock.Clock

	mu        sync.Mutex
	templates map[tmplKey]*template
	initMs    map[domainKey]uint64 // IPFIX systemInitTimeMilliseconds per domain
	st        Stats
	now       time.Time // of the message being decoded
}

// Stats returns a copy of the counters.
func (d *Decoder) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// Decode decodes one message from exporter and calls fn for each flow
// record; r is reused after fn returns. Data sets whose template is not
// known are dropped and counted; a length that lies or an invalid template
// ends the message with an error.
func (d *Decoder) Decode(exporter netip.AddrPort, b []byte, fn func(r *Record)) error {
	if len(b) < 2 {
		return d.fail(ErrShort)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.templates == nil {
		d.templates = map[tmplKey]*template{}
		d.initMs = map[domainKey]uint64{}
	}
	d.st.Messages++
	clk := d.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	d.now = clk.Now()
	var err error
	switch v := binary.BigEndian.Uint16(b); v {
	case 10:
		err = d.ipfix(exporter, b, fn)
	case 9:
		err = d.v9(exporter, b, fn)
	default:
		err = fmt.Errorf("%w: %d", ErrVersion, v)
	}
	if err != nil {
		d.st.Malformed++
	}
	return err
}

func (d *Decoder) fail(err error) error {
	d.mu.Lock()
	d.st.Malformed++
	d.mu.Unlock()
	return err
}

type msgCtx struct {
	dk       domainKey
	exportMs uint64 // export time, ms since the epoch
	uptimeMs uint32 // v9 sysUptime
}

func (d *Decoder) ipfix(exp netip.AddrPort, b []byte, fn func(*Record)) error {
	if len(b) < 16 {
		return ErrShort
	}
	l := int(binary.BigEndian.Uint16(b[2:]))
	if l < 16 || l > len(b) {
		return fmt.Errorf("%w: message length %d of %d", ErrLength, l, len(b))
	}
	mc := msgCtx{
		dk:       domainKey{exp, 10, binary.BigEndian.Uint32(b[12:])},
		exportMs: uint64(binary.BigEndian.Uint32(b[4:])) * 1000,
	}
	b = b[16:l]
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("%w: set header", ErrShort)
		}
		id := binary.BigEndian.Uint16(b)
		sl := int(binary.BigEndian.Uint16(b[2:]))
		if sl < 4 || sl > len(b) {
			return fmt.Errorf("%w: set length %d of %d", ErrLength, sl, len(b))
		}
		body := b[4:sl]
		b = b[sl:]
		var err error
		switch {
		case id == 2:
			err = d.templateSet(mc.dk, body, false, true)
		case id == 3:
			err = d.templateSet(mc.dk, body, true, true)
		case id >= 256:
			err = d.dataSet(&mc, id, body, fn)
		default: // reserved set ids: skipped
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Decoder) v9(exp netip.AddrPort, b []byte, fn func(*Record)) error {
	if len(b) < 20 {
		return ErrShort
	}
	mc := msgCtx{
		dk:       domainKey{exp, 9, binary.BigEndian.Uint32(b[16:])},
		uptimeMs: binary.BigEndian.Uint32(b[4:]),
		exportMs: uint64(binary.BigEndian.Uint32(b[8:])) * 1000,
	}
	b = b[20:]
	for len(b) > 0 {
		if len(b) < 4 {
			// Trailing padding shorter than a flowset header is tolerated.
			return nil
		}
		id := binary.BigEndian.Uint16(b)
		sl := int(binary.BigEndian.Uint16(b[2:]))
		if sl < 4 || sl > len(b) {
			return fmt.Errorf("%w: flowset length %d of %d", ErrLength, sl, len(b))
		}
		body := b[4:sl]
		b = b[sl:]
		var err error
		switch {
		case id == 0:
			err = d.templateSet(mc.dk, body, false, false)
		case id == 1:
			err = d.v9OptionsSet(mc.dk, body)
		case id >= 256:
			err = d.dataSet(&mc, id, body, fn)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Decoder) store(k tmplKey, t *template) error {
	t.seen = d.now
	if _, ok := d.templates[k]; !ok && len(d.templates) >= d.maxTemplates() {
		idle := d.TemplateIdle
		if idle <= 0 {
			idle = DefaultTemplateIdle
		}
		for ok, x := range d.templates {
			if d.now.Sub(x.seen) >= idle {
				delete(d.templates, ok)
				d.st.TemplatesEvicted++
			}
		}
		if len(d.templates) >= d.maxTemplates() {
			d.st.TemplateRefused++
			return ErrTooMany
		}
	}
	d.templates[k] = t
	d.st.Templates++
	return nil
}

// templateSet reads an IPFIX template (2) or options template (3) set, or
// a NetFlow v9 template flowset (0).
func (d *Decoder) templateSet(dk domainKey, b []byte, options, ipfix bool) error {
	for len(b) >= 4 {
		id := binary.BigEndian.Uint16(b)
		n := int(binary.BigEndian.Uint16(b[2:]))
		b = b[4:]
		scope := 0
		if options {
			if n == 0 { // withdrawal of an options template
				delete(d.templates, tmplKey{dk.exporter, dk.version, dk.domain, id})
				continue
			}
			if len(b) < 2 {
				return fmt.Errorf("%w: options template header", ErrShort)
			}
			scope = int(binary.BigEndian.Uint16(b))
			b = b[2:]
			if scope == 0 || scope > n {
				d.st.TemplateRefused++
				return fmt.Errorf("%w: scope count %d of %d", ErrTemplate, scope, n)
			}
		}
		if id < 256 {
			d.st.TemplateRefused++
			return fmt.Errorf("%w: template id %d", ErrTemplate, id)
		}
		k := tmplKey{dk.exporter, dk.version, dk.domain, id}
		if n == 0 {
			if !ipfix {
				d.st.TemplateRefused++
				return fmt.Errorf("%w: no fields", ErrTemplate)
			}
			delete(d.templates, k) // RFC 7011 8.1 withdrawal
			continue
		}
		if n > MaxFields {
			d.st.TemplateRefused++
			return fmt.Errorf("%w: %d fields", ErrTemplate, n)
		}
		t := &template{fields: make([]field, 0, n), options: options}
		for i := 0; i < n; i++ {
			if len(b) < 4 {
				return fmt.Errorf("%w: field specifier", ErrShort)
			}
			f := field{id: binary.BigEndian.Uint16(b), length: binary.BigEndian.Uint16(b[2:])}
			b = b[4:]
			if ipfix && f.id&0x8000 != 0 {
				if len(b) < 4 {
					return fmt.Errorf("%w: enterprise number", ErrShort)
				}
				b = b[4:]
				f.id = 0 // enterprise-specific: skipped
			}
			switch {
			case f.length == 65535 && ipfix:
				t.minLen++
			case f.length == 65535:
				d.st.TemplateRefused++
				return fmt.Errorf("%w: variable length in netflow v9", ErrTemplate)
			default:
				t.minLen += int(f.length)
			}
			t.fields = append(t.fields, f)
		}
		if t.minLen == 0 {
			d.st.TemplateRefused++
			return fmt.Errorf("%w: zero-length record", ErrTemplate)
		}
		if err := d.store(k, t); err != nil {
			return err
		}
	}
	return nil // up to 3 bytes of padding
}

// v9OptionsSet reads a NetFlow v9 options template flowset (RFC 3954 6.1).
func (d *Decoder) v9OptionsSet(dk domainKey, b []byte) error {
	for len(b) >= 6 {
		id := binary.BigEndian.Uint16(b)
		sl := int(binary.BigEndian.Uint16(b[2:]))
		ol := int(binary.BigEndian.Uint16(b[4:]))
		b = b[6:]
		if id < 256 || sl%4 != 0 || ol%4 != 0 || sl+ol == 0 || sl+ol > len(b) || (sl+ol)/4 > MaxFields {
			d.st.TemplateRefused++
			return fmt.Errorf("%w: options template %d (scope %d, options %d, %d left)", ErrTemplate, id, sl, ol, len(b))
		}
		t := &template{options: true}
		for i := 0; i < sl+ol; i += 4 {
			f := field{id: binary.BigEndian.Uint16(b[i:]), length: binary.BigEndian.Uint16(b[i+2:])}
			if f.length == 65535 {
				d.st.TemplateRefused++
				return fmt.Errorf("%w: variable length in netflow v9", ErrTemplate)
			}
			t.fields = append(t.fields, f)
			t.minLen += int(f.length)
		}
		b = b[sl+ol:]
		if t.minLen == 0 {
			d.st.TemplateRefused++
			return fmt.Errorf("%w: zero-length record", ErrTemplate)
		}
		if err := d.store(tmplKey{dk.exporter, dk.version, dk.domain, id}, t); err != nil {
			return err
		}
	}
	return nil
}

func uintN(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

func (d *Decoder) dataSet(mc *msgCtx, id uint16, b []byte, fn func(*Record)) error {
	t := d.templates[tmplKey{mc.dk.exporter, mc.dk.version, mc.dk.domain, id}]
	if t == nil {
		d.st.NoTemplate++
		return nil
	}
	t.seen = d.now
	var r Record
	for len(b) >= t.minLen {
		r = Record{}
		var startUp, endUp uint32
		var hasUp bool
		var initMs uint64
		for _, f := range t.fields {
			n := int(f.length)
			if f.length == 65535 { // RFC 7011 7: variable length
				if len(b) < 1 {
					return fmt.Errorf("%w: variable-length field", ErrShort)
				}
				n = int(b[0])
				b = b[1:]
				if n == 255 {
					if len(b) < 2 {
						return fmt.Errorf("%w: variable-length field", ErrShort)
					}
					n = int(binary.BigEndian.Uint16(b))
					b = b[2:]
				}
			}
			if n > len(b) {
				return fmt.Errorf("%w: field %d needs %d bytes, %d left", ErrLength, f.id, n, len(b))
			}
			v := b[:n]
			b = b[n:]
			switch f.id {
			case 1, 85: // octetDeltaCount, octetTotalCount
				if n <= 8 {
					r.Octets = uintN(v)
				}
			case 2, 86: // packetDeltaCount, packetTotalCount
				if n <= 8 {
					r.Packets = uintN(v)
				}
			case 4:
				if n == 1 {
					r.Proto = v[0]
				}
			case 7:
				if n == 2 {
					r.SrcPort = binary.BigEndian.Uint16(v)
				}
			case 11:
				if n == 2 {
					r.DstPort = binary.BigEndian.Uint16(v)
				}
			case 8, 27:
				if a, ok := netip.AddrFromSlice(v); ok && (n == 4 || n == 16) {
					r.SrcIP = a
				}
			case 12, 28:
				if a, ok := netip.AddrFromSlice(v); ok && (n == 4 || n == 16) {
					r.DstIP = a
				}
			case 22: // flowStartSysUpTime / FIRST_SWITCHED
				if n == 4 {
					startUp, hasUp = binary.BigEndian.Uint32(v), true
				}
			case 21:
				if n == 4 {
					endUp, hasUp = binary.BigEndian.Uint32(v), true
				}
			case 150:
				if n == 4 {
					r.Start = time.Unix(int64(binary.BigEndian.Uint32(v)), 0).UTC()
				}
			case 151:
				if n == 4 {
					r.End = time.Unix(int64(binary.BigEndian.Uint32(v)), 0).UTC()
				}
			case 152:
				if n == 8 {
					r.Start = time.UnixMilli(int64(binary.BigEndian.Uint64(v))).UTC()
				}
			case 153:
				if n == 8 {
					r.End = time.UnixMilli(int64(binary.BigEndian.Uint64(v))).UTC()
				}
			case 160: // systemInitTimeMilliseconds
				if n == 8 {
					initMs = binary.BigEndian.Uint64(v)
				}
			}
		}
		if t.options {
			d.st.OptionsRecords++
			if initMs != 0 && mc.dk.version == 10 {
				if _, known := d.initMs[mc.dk]; !known && len(d.initMs) >= d.maxTemplates() {
					continue
				}
				d.initMs[mc.dk] = initMs
			}
			continue
		}
		if hasUp {
			r.Start, r.End = d.upTimes(mc, initMs, startUp, endUp)
		}
		d.st.Records++
		fn(&r)
	}
	return nil // the rest is padding
}

func (d *Decoder) maxTemplates() int {
	if d.MaxTemplates > 0 {
		return d.MaxTemplates
	}
	return DefaultMaxTemplates
}

// upTimes converts sysUpTime-relative times: NetFlow v9 against the
// header's sysUptime and export time (RFC 3954 5.1, modulo 2^32); IPFIX
// against systemInitTimeMilliseconds from the record or the domain's
// options data, the 32-bit wrap resolved towards the export time.
func (d *Decoder) upTimes(mc *msgCtx, initMs uint64, start, end uint32) (time.Time, time.Time) {
	if mc.dk.version == 9 {
		base := int64(mc.exportMs)
		s := base - int64(mc.uptimeMs-start)
		e := base - int64(mc.uptimeMs-end)
		return time.UnixMilli(s).UTC(), time.UnixMilli(e).UTC()
	}
	if initMs == 0 {
		initMs = d.initMs[mc.dk]
	}
	if initMs == 0 || initMs > 1<<53 {
		return time.Time{}, time.Time{}
	}
	return nearExport(int64(initMs)+int64(start), int64(mc.exportMs)), nearExport(int64(initMs)+int64(end), int64(mc.exportMs))
}

// nearExport resolves the wrap of a 32-bit millisecond uptime counter (every
// 49.7 days): of t + k*2^32 ms it returns the one closest to the export
// time, since flows are exported soon after they end.
func nearExport(t, exportMs int64) time.Time {
	const wrap = int64(1) << 32
	if d := exportMs - t; d > wrap/2 || d < -wrap/2 {
		t += (d + wrap/2) / wrap * wrap
		if exportMs-t > wrap/2 {
			t += wrap
		} else if exportMs-t < -wrap/2 {
			t -= wrap
		}
	}
	return time.UnixMilli(t).UTC()
}
