package connectivity

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/radius"
	"github.com/garrisonhq/garrison/internal/store"
)

// CellTable finds cell positions in the store's cell table, with a bounded
// cache in front of it: the RADIUS server asks for every record that
// carries a location, and a fleet sees few distinct cells. Answers (found
// or not) are cached for TTL; a store error is logged, answered as not
// found and not cached. Safe for concurrent use.
type CellTable struct {
	st  store.Store
	clk clock.Clock
	log *slog.Logger
	ttl time.Duration
	max int

	mu sync.RWMutex
	m  map[CellRef]cached
}

type cached struct {
	pos radius.Cell
	ok  bool
	at  time.Time
}

// CellRef names a cell. HasArea is false when only the cell identity is
// known (a lone ECGI); such a cell is looked up among LTE and NR cells.
type CellRef struct {
	MCC, MNC int
	Area     int64
	HasArea  bool
	Cell     int64
	// ECI says the identity is an E-UTRAN or NR one, so that a miss by area
	// falls back to the identity alone.
	ECI bool
}

var _ radius.Locator = (*CellTable)(nil)

// NewCellTable returns a table over st; ttl is how long an answer is kept
// (10 minutes when 0) and max bounds the cache (262,144 entries when 0;
// the cache is emptied when full).
func NewCellTable(st store.Store, clk clock.Clock, log *slog.Logger, ttl time.Duration, max int) *CellTable {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if max <= 0 {
		max = 1 << 18
	}
	if clk == nil {
		clk = clock.Real{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CellTable{st: st, clk: clk, log: log, ttl: ttl, max: max, m: map[CellRef]cached{}}
}

// Locate implements [radius.Locator].
func (t *CellTable) Locate(ctx context.Context, u radius.ULI) (radius.Cell, bool) {
	if !u.HasCell {
		return radius.Cell{}, false
	}
	mcc, err1 := strconv.Atoi(u.MCC)
	mnc, err2 := strconv.Atoi(u.MNC)
	if err1 != nil || err2 != nil {
		return radius.Cell{}, false
	}
	return t.Find(ctx, CellRef{MCC: mcc, MNC: mnc, Area: int64(u.Area), HasArea: u.HasArea, Cell: int64(u.Cell),
		ECI: u.Type == radius.LocECGI || u.Type == radius.LocTAIECGI})
}

// Find returns the position of a cell.
func (t *CellTable) Find(ctx context.Context, r CellRef) (radius.Cell, bool) {
	now := t.clk.Now()
	t.mu.RLock()
	c, hit := t.m[r]
	t.mu.RUnlock()
	if hit && now.Sub(c.at) < t.ttl {
		return c.pos, c.ok
	}
	var sc store.Cell
	err := t.st.View(ctx, func(tx store.Tx) error {
		var err error
		if r.HasArea {
			sc, err = tx.Cells().Get(ctx, r.MCC, r.MNC, r.Area, r.Cell)
			if err == nil || !r.ECI || !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		sc, err = tx.Cells().ByECI(ctx, r.MCC, r.MNC, r.Cell)
		return err
	})
	c = cached{at: now}
	switch {
	case err == nil:
		c.pos, c.ok = radius.Cell{Lat: sc.Lat, Lon: sc.Lon, RangeM: sc.RangeM}, true
	case errors.Is(err, store.ErrNotFound):
	default:
		t.log.Warn("cell lookup failed", "err", err)
		return radius.Cell{}, false
	}
	t.mu.Lock()
	if len(t.m) >= t.max {
		clear(t.m)
	}
	t.m[r] = c
	t.mu.Unlock()
	return c.pos, c.ok
}

// Invalidate empties the cache (after an import on this node; other nodes
// see new cells within TTL).
func (t *CellTable) Invalidate() {
	t.mu.Lock()
	clear(t.m)
	t.mu.Unlock()
}

// RowError is a row of a cell file that was not imported.
type RowError struct {
	Line  int    `json:"line"`
	Error string `json:"error"`
}

// ImportResult sums up a cell import.
type ImportResult struct {
	Rows     int `json:"rows"`     // data rows read (the header is not counted)
	Imported int `json:"imported"` // rows written to the store
	Rejected int `json:"rejected"` // rows with an error
	// Errors lists the first MaxRowErrors rejected rows.
	Errors []RowError `json:"errors"`
}

// MaxRowErrors bounds ImportResult.Errors.
const MaxRowErrors = 100

// ErrCellFile reports a cell file that cannot be read at all.
var ErrCellFile = errors.New("connectivity: unreadable cell file")

var radios = map[string]bool{"GSM": true, "UMTS": true, "LTE": true, "NR": true, "CDMA": true}

// ImportCSV streams a cell table in the OpenCellID CSV layout from r and
// hands valid rows to commit in batches of batch (1000 when <= 0) as they
// come, so a file of any size is imported with bounded memory. Columns are
// found by the header line when there is one (radio, mcc, net or mnc, area,
// cell, lon, lat, range; others ignored); without one, rows of 9 or more
// columns are read in OpenCellID's order (radio,mcc,net,area,cell,unit,lon,
// lat,range,...) and rows of 8 as radio,mcc,net,area,cell,lon,lat,range.
//
// A row that does not parse or is out of range is rejected with its line
// number and the rest goes on. An error from commit stops the import:
// earlier batches stay committed and are counted in Imported.
func ImportCSV(ctx context.Context, r io.Reader, now time.Time, batch int, commit func(context.Context, []store.Cell) error) (ImportResult, error) {
	if batch <= 0 {
		batch = 1000
	}
	res := ImportResult{Errors: []RowError{}}
	reject := func(line int, format string, a ...any) {
		res.Rejected++
		if len(res.Errors) < MaxRowErrors {
			res.Errors = append(res.Errors, RowError{Line: line, Error: fmt.Sprintf(format, a...)})
		}
	}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	cr.LazyQuotes = true
	var cols map[string]int // from the header
	buf := make([]store.Cell, 0, batch)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		if err := commit(ctx, buf); err != nil {
			return err
		}
		res.Imported += len(buf)
		buf = buf[:0]
		return nil
	}
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if !errors.As(err, &pe) {
				return res, fmt.Errorf("%w: %w", ErrCellFile, err)
			}
			res.Rows++
			reject(pe.Line, "%v", pe.Err)
			continue
		}
		if first && isHeader(rec) {
			cols = map[string]int{}
			for i, name := range rec {
				name = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(name, "\ufeff")))
				switch name {
				case "mnc":
					name = "net"
				case "lac", "tac":
					name = "area"
				case "cid", "ci":
					name = "cell"
				}
				cols[name] = i
			}
			for _, need := range []string{"radio", "mcc", "net", "area", "cell", "lon", "lat", "range"} {
				if _, ok := cols[need]; !ok {
					return res, fmt.Errorf("%w: header has no %q column", ErrCellFile, need)
				}
			}
			continue
		}
		res.Rows++
		c, err := parseCellRow(rec, cols, now)
		if err != nil {
			reject(line, "%v", err)
			continue
		}
		buf = append(buf, c)
		if len(buf) == batch {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	return res, flush()
}

func parseCellRow(rec []string, cols map[string]int, now time.Time) (store.Cell, error) {
	idx := cols
	if idx == nil {
		switch {
		case len(rec) >= 9:
			idx = map[string]int{"radio": 0, "mcc": 1, "net": 2, "area": 3, "cell": 4, "lon": 6, "lat": 7, "range": 8}
		case len(rec) == 8:
			idx = map[string]int{"radio": 0, "mcc": 1, "net": 2, "area": 3, "cell": 4, "lon": 5, "lat": 6, "range": 7}
		default:
			return store.Cell{}, fmt.Errorf("%d columns; want 8 (radio,mcc,net,area,cell,lon,lat,range) or OpenCellID's 14", len(rec))
		}
	}
	get := func(name string) (string, error) {
		i := idx[name]
		if i >= len(rec) {
			return "", fmt.Errorf("no %s column", name)
		}
		return strings.TrimSpace(rec[i]), nil
	}
	var errs []string
	integer := func(name string, max int64) int64 {
		s, err := get(name)
		if err != nil {
			errs = append(errs, err.Error())
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 || n > max {
			errs = append(errs, fmt.Sprintf("%s %q is not an integer in 0-%d", name, s, max))
		}
		return n
	}
	float := func(name string, lo, hi float64) float64 {
		s, err := get(name)
		if err != nil {
			errs = append(errs, err.Error())
			return 0
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || f < lo || f > hi {
			errs = append(errs, fmt.Sprintf("%s %q is not a number in %g..%g", name, s, lo, hi))
		}
		return f
	}
	c := store.Cell{UpdatedAt: now}
	radio, err := get("radio")
	if err != nil {
		errs = append(errs, err.Error())
	}
	c.Radio = strings.ToUpper(radio)
	if !radios[c.Radio] {
		errs = append(errs, fmt.Sprintf("radio %q is not GSM, UMTS, LTE, NR or CDMA", radio))
	}
	c.MCC = int(integer("mcc", 999))
	c.MNC = int(integer("net", 999))
	c.Area = integer("area", 65535)
	c.Cell = integer("cell", 1<<36-1)
	c.Lon = float("lon", -180, 180)
	c.Lat = float("lat", -90, 90)
	c.RangeM = float("range", 0, 1e7)
	if len(errs) > 0 {
		return store.Cell{}, errors.New(strings.Join(errs, "; "))
	}
	return c, nil
}

// isHeader reports whether a first row names columns (it has a "radio"
// or "mcc" field) rather than holding a cell.
func isHeader(rec []string) bool {
	for _, f := range rec {
		f = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(f, "\ufeff")))
		if f == "radio" || f == "mcc" {
			return true
		}
	}
	return false
}
