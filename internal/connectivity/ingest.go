package connectivity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/radius"
)

// EventsRequest is the body of POST /api/v1/tenants/{tenant}/connectivity/
// events: session and location records pushed by a provider's webhook.
type EventsRequest struct {
	Records []Record `json:"records"`
}

// Record is one session or location record. Type "session" takes the
// fields of a RADIUS accounting record (status required); type "location"
// takes lat, lon and accuracy_m (or a cell to look up). The SIM is named by
// its IMSI.
type Record struct {
	Type      string   `json:"type"`                 // session | location
	Time      string   `json:"time"`                 // RFC 3339
	IMSI      string   `json:"imsi"`                 // 6-15 digits
	ICCID     string   `json:"iccid,omitempty"`      // 18-22 digits
	IMEI      string   `json:"imei,omitempty"`       // 14-16 digits (IMEI or IMEISV)
	MSISDN    string   `json:"msisdn,omitempty"`     // up to 15 digits, optional +
	Status    string   `json:"status,omitempty"`     // session: start | interim | stop
	SessionID string   `json:"session_id,omitempty"` // up to 128 bytes
	IP        string   `json:"ip,omitempty"`         // the session's address
	APN       string   `json:"apn,omitempty"`
	RAT       string   `json:"rat,omitempty"`
	PLMN      string   `json:"plmn,omitempty"` // MCC-MNC
	Cell      *Cell    `json:"cell,omitempty"`
	BytesUp   *uint64  `json:"bytes_up,omitempty"`   // since the previous record of the session
	BytesDown *uint64  `json:"bytes_down,omitempty"` // idem
	Lat       *float64 `json:"lat,omitempty"`
	Lon       *float64 `json:"lon,omitempty"`
	AccuracyM *float64 `json:"accuracy_m,omitempty"`
}

// Cell names the serving cell of a record; area may be omitted for LTE and
// NR cells (found by their identity alone).
type Cell struct {
	Radio string `json:"radio,omitempty"` // GSM, UMTS, LTE, NR
	MCC   int    `json:"mcc"`
	MNC   int    `json:"mnc"`
	Area  *int64 `json:"area,omitempty"`
	ID    int64  `json:"id"`
}

// IngestResult says what became of a request's records.
type IngestResult struct {
	Sessions  int `json:"sessions"`  // net.session events published
	Locations int `json:"locations"` // location events published
	// UnknownSIMs counts records whose IMSI no device of the tenant is
	// bound to: their sessions are published without a device (detectors
	// can flag them); their locations are dropped.
	UnknownSIMs int `json:"unknown_sims"`
}

// MaxRecords bounds the records of one request.
const MaxRecords = 1000

// ErrInvalidRecords is wrapped by a [*ValidationError].
var ErrInvalidRecords = errors.New("connectivity: invalid records")

// ValidationError lists every problem of a request, each naming its
// record ("records[3].imsi: ...").
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string { return strings.Join(e.Problems, "; ") }

// Unwrap returns ErrInvalidRecords.
func (e *ValidationError) Unwrap() error { return ErrInvalidRecords }

// Publisher takes the events (the bus).
type Publisher interface {
	Publish(ctx context.Context, e *event.Event) error
}

// CellFinder finds a cell's position ([*CellTable]).
type CellFinder interface {
	Find(ctx context.Context, r CellRef) (radius.Cell, bool)
}

// Ingester turns webhook records into events. A request is validated whole
// first: one bad record refuses the request and nothing is published.
// Sessions with an ip lease it to the device (so flows map to it) until a
// stop record; a session whose cell is known carries lat, lon and
// accuracy_m and is followed by a location event (source network), as with
// RADIUS.
type Ingester struct {
	SIMs      radius.SIMs
	Publisher Publisher
	Leases    *radius.Leases // optional
	Cells     CellFinder     // optional
	Clock     clock.Clock
	// MaxAge and MaxAhead bound record times around the clock (7 days and
	// 5 minutes when 0).
	MaxAge, MaxAhead time.Duration
}

var (
	imsiRE   = regexp.MustCompile(`^[0-9]{6,15}$`)
	iccidRE  = regexp.MustCompile(`^[0-9]{18,22}$`)
	imeiRE   = regexp.MustCompile(`^[0-9]{14,16}$`)
	msisdnRE = regexp.MustCompile(`^\+?[0-9]{1,15}$`)
	plmnRE   = regexp.MustCompile(`^[0-9]{3}-[0-9]{2,3}$`)
	textRE   = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`) // printable ASCII, no spaces
)

type checked struct {
	r    Record
	at   time.Time
	ip   netip.Addr
	cell CellRef
}

func (in *Ingester) validate(req EventsRequest, now time.Time) ([]checked, error) {
	maxAge, maxAhead := in.MaxAge, in.MaxAhead
	if maxAge <= 0 {
		maxAge = 7 * 24 * time.Hour
	}
	if maxAhead <= 0 {
		maxAhead = 5 * time.Minute
	}
	var probs []string
	if len(req.Records) == 0 {
		probs = append(probs, "records: at least one record is required")
	}
	if len(req.Records) > MaxRecords {
		probs = append(probs, fmt.Sprintf("records: at most %d per request, got %d", MaxRecords, len(req.Records)))
		return nil, &ValidationError{probs}
	}
	out := make([]checked, 0, len(req.Records))
	for i, r := range req.Records {
		bad := func(field, format string, a ...any) {
			probs = append(probs, fmt.Sprintf("records[%d].%s: %s", i, field, fmt.Sprintf(format, a...)))
		}
		c := checked{r: r}
		t, err := time.Parse(time.RFC3339Nano, r.Time)
		switch {
		case err != nil:
			bad("time", "want an RFC 3339 time, got %q", clip(r.Time))
		case t.Before(now.Add(-maxAge)) || t.After(now.Add(maxAhead)):
			bad("time", "%s is more than %s old or %s ahead", r.Time, maxAge, maxAhead)
		}
		c.at = t.UTC()
		if !imsiRE.MatchString(r.IMSI) {
			bad("imsi", "want 6-15 digits")
		}
		if r.ICCID != "" && !iccidRE.MatchString(r.ICCID) {
			bad("iccid", "want 18-22 digits")
		}
		if r.IMEI != "" && !imeiRE.MatchString(r.IMEI) {
			bad("imei", "want 14-16 digits")
		}
		if r.MSISDN != "" && !msisdnRE.MatchString(r.MSISDN) {
			bad("msisdn", "want up to 15 digits")
		}
		if r.PLMN != "" && !plmnRE.MatchString(r.PLMN) {
			bad("plmn", "want MCC-MNC such as 214-01")
		}
		for name, v := range map[string]string{"session_id": r.SessionID, "apn": r.APN, "rat": r.RAT} {
			if v != "" && !textRE.MatchString(v) {
				bad(name, "want 1-128 printable ASCII characters without spaces")
			}
		}
		if r.IP != "" {
			if c.ip, err = netip.ParseAddr(r.IP); err != nil || c.ip.Zone() != "" {
				bad("ip", "want an IPv4 or IPv6 address, got %q", clip(r.IP))
			}
			c.ip = c.ip.Unmap()
		}
		if r.Cell != nil {
			x := r.Cell
			radio := strings.ToUpper(x.Radio)
			switch {
			case x.Radio != "" && !radios[radio]:
				bad("cell.radio", "want GSM, UMTS, LTE, NR or CDMA")
			case x.MCC < 0 || x.MCC > 999 || x.MNC < 0 || x.MNC > 999:
				bad("cell", "mcc and mnc must be 0-999")
			case x.Area != nil && (*x.Area < 0 || *x.Area > 65535):
				bad("cell.area", "must be 0-65535")
			case x.ID < 0 || x.ID > 1<<36-1:
				bad("cell.id", "must be 0-%d", int64(1<<36-1))
			case x.Area == nil && radio != "LTE" && radio != "NR":
				bad("cell.area", "required unless radio is LTE or NR")
			}
			c.cell = CellRef{MCC: x.MCC, MNC: x.MNC, Cell: x.ID, ECI: radio == "LTE" || radio == "NR" || x.Area == nil}
			if x.Area != nil {
				c.cell.Area, c.cell.HasArea = *x.Area, true
			}
		}
		switch r.Type {
		case "session":
			switch r.Status {
			case "start", "interim", "stop":
			default:
				bad("status", "a session needs status start, interim or stop")
			}
			if r.Lat != nil || r.Lon != nil || r.AccuracyM != nil {
				bad("lat", "a session's position comes from its cell; send a location record")
			}
		case "location":
			if r.Status != "" || r.SessionID != "" || r.BytesUp != nil || r.BytesDown != nil || r.IP != "" {
				bad("type", "a location record takes no status, session_id, ip or byte counters")
			}
			switch {
			case r.Lat == nil && r.Lon == nil && r.Cell == nil:
				bad("lat", "a location needs lat and lon, or a cell")
			case (r.Lat == nil) != (r.Lon == nil):
				bad("lat", "lat and lon go together")
			case r.Lat != nil && !(*r.Lat >= -90 && *r.Lat <= 90 && *r.Lon >= -180 && *r.Lon <= 180):
				bad("lat", "position out of range")
			}
			if r.AccuracyM != nil && !(*r.AccuracyM >= 0 && *r.AccuracyM <= 1e6) {
				bad("accuracy_m", "want 0-1000000")
			}
		default:
			bad("type", "want session or location, got %q", clip(r.Type))
		}
		out = append(out, c)
	}
	if len(probs) > 0 {
		return nil, &ValidationError{probs}
	}
	return out, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// Ingest validates req and publishes its records for tenant, in order. An
// error from the SIM lookup or the publisher stops it (records before it
// were published; the provider retries the whole request, so records may
// be seen twice, as with RADIUS retransmissions after a lost answer).
func (in *Ingester) Ingest(ctx context.Context, tenant event.TenantID, req EventsRequest) (IngestResult, error) {
	clk := in.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	now := clk.Now()
	recs, err := in.validate(req, now)
	if err != nil {
		return IngestResult{}, err
	}
	var res IngestResult
	for _, c := range recs {
		r := c.r
		dev, _, _, found, err := in.SIMs.ByIMSI(ctx, tenant, r.IMSI)
		if err != nil {
			return res, fmt.Errorf("connectivity: sim lookup: %w", err)
		}
		if !found {
			res.UnknownSIMs++
			dev = ""
		}
		var pos radius.Cell
		var havePos bool
		if r.Cell != nil && in.Cells != nil {
			pos, havePos = in.Cells.Find(ctx, c.cell)
		}
		attrs := map[string]any{"imsi": r.IMSI}
		for k, v := range map[string]string{"iccid": r.ICCID, "msisdn": strings.TrimPrefix(r.MSISDN, "+"), "apn": r.APN, "rat": r.RAT, "plmn": r.PLMN} {
			if v != "" {
				attrs[k] = v
			}
		}
		if r.IMEI != "" {
			attrs["imei"] = imei15(r.IMEI)
			if len(r.IMEI) == 16 {
				attrs["imeisv"] = r.IMEI
			}
		}
		if r.Cell != nil {
			attrs["cell"] = cellString(c.cell)
		}
		switch r.Type {
		case "session":
			attrs["status"] = r.Status
			if r.SessionID != "" {
				attrs["session_id"] = r.SessionID
			}
			if c.ip.IsValid() {
				attrs["ip"] = c.ip.String()
			}
			if r.BytesUp != nil {
				attrs["bytes_up"] = float64(*r.BytesUp)
			}
			if r.BytesDown != nil {
				attrs["bytes_down"] = float64(*r.BytesDown)
			}
			if havePos {
				attrs["lat"], attrs["lon"], attrs["accuracy_m"] = pos.Lat, pos.Lon, pos.RangeM
			}
			if err := in.Publisher.Publish(ctx, &event.Event{ID: event.NewID(now), Tenant: tenant, Device: dev,
				Kind: event.NetSession, Time: c.at, Source: "webhook", Attrs: attrs}); err != nil {
				return res, fmt.Errorf("connectivity: publish session: %w", err)
			}
			res.Sessions++
			if in.Leases != nil && c.ip.IsValid() && dev != "" {
				if r.Status == "stop" {
					in.Leases.Release(tenant, c.ip, dev)
				} else {
					in.Leases.Set(tenant, c.ip, dev)
				}
			}
			if !havePos || dev == "" {
				continue
			}
		case "location":
			if dev == "" {
				continue
			}
			if r.Lat != nil {
				// Given coordinates win over the cell's; accuracy only if given.
				pos, havePos = radius.Cell{Lat: *r.Lat, Lon: *r.Lon, RangeM: -1}, true
				if r.AccuracyM != nil {
					pos.RangeM = *r.AccuracyM
				}
			}
			if !havePos {
				continue // a cell not in the table: nothing to place
			}
		}
		loc := map[string]any{"lat": pos.Lat, "lon": pos.Lon, "source": "network"}
		if pos.RangeM >= 0 {
			loc["accuracy_m"] = pos.RangeM
		}
		if r.Cell != nil {
			loc["cell"] = cellString(c.cell)
		}
		if err := in.Publisher.Publish(ctx, &event.Event{ID: event.NewID(now), Tenant: tenant, Device: dev,
			Kind: event.Location, Time: c.at, Source: "webhook", Attrs: loc}); err != nil {
			return res, fmt.Errorf("connectivity: publish location: %w", err)
		}
		res.Locations++
	}
	return res, nil
}

// cellString formats a cell like the RADIUS server does
// (MCC-MNC-0xAREA-0xCELL).
func cellString(c CellRef) string {
	area := ""
	if c.HasArea {
		area = fmt.Sprintf("0x%04x", c.Area)
	}
	width := 4
	if c.ECI {
		width = 8
	}
	return fmt.Sprintf("%03d-%02d-%s-0x%0*x", c.MCC, c.MNC, area, width, c.Cell)
}

// imei15 returns the 15-digit IMEI (14 digits and the Luhn check digit) of
// an IMEI or IMEISV, as the RADIUS server reports it.
func imei15(s string) string {
	d := s[:14]
	sum := 0
	for i := 0; i < 14; i++ {
		n := int(d[i] - '0')
		if i%2 == 1 {
			n *= 2
			if n > 9 {
				n -= 9
			}
		}
		sum += n
	}
	return d + string(rune('0'+(10-sum%10)%10))
}
