package radius

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Cell is a cell's position: where it is and how far it reaches.
type Cell struct {
	Lat, Lon float64
	RangeM   float64
}

type cellKey struct {
	mcc, mnc uint16
	area     uint32
	cell     uint64
}

type eciKey struct {
	mcc, mnc uint16
	cell     uint64
}

// Cells is an in-memory cell table, looked up for every session record. It
// is safe for concurrent use. The zero value is not usable; call [NewCells].
type Cells struct {
	mu     sync.RWMutex
	byArea map[cellKey]Cell
	byECI  map[eciKey]Cell // LTE and NR cells without their area, for lone ECGIs
}

// NewCells returns an empty table.
func NewCells() *Cells {
	return &Cells{byArea: make(map[cellKey]Cell), byECI: make(map[eciKey]Cell)}
}

// ErrCellCSV reports a cell table that cannot be read.
var ErrCellCSV = errors.New("cells: bad csv")

// Put adds or replaces one cell.
func (c *Cells) Put(radio string, mcc, mnc uint16, area uint32, cell uint64, pos Cell) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byArea[cellKey{mcc, mnc, area, cell}] = pos
	switch strings.ToUpper(radio) {
	case "LTE", "NR":
		c.byECI[eciKey{mcc, mnc, cell}] = pos
	}
}

// Len returns the number of cells in the table.
func (c *Cells) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.byArea)
}

// ImportOpenCellID reads a cell table in the OpenCellID CSV layout
// (radio,mcc,net,area,cell,unit,lon,lat,range,samples,changeable,created,
// updated,averageSignal), with or without its header line, and adds every
// row. Rows that do not parse are skipped and counted in skipped; an error
// is returned only when the input is not CSV at all.
func (c *Cells) ImportOpenCellID(r io.Reader) (added, skipped int, err error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return added, skipped, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && pe.Err == csv.ErrFieldCount {
				skipped++
				continue
			}
			return added, skipped, fmt.Errorf("%w: line %d: %w", ErrCellCSV, line, err)
		}
		if line == 1 && len(rec) > 0 && strings.EqualFold(rec[0], "radio") {
			continue
		}
		if len(rec) < 9 {
			skipped++
			continue
		}
		mcc, e1 := strconv.ParseUint(rec[1], 10, 16)
		mnc, e2 := strconv.ParseUint(rec[2], 10, 16)
		area, e3 := strconv.ParseUint(rec[3], 10, 32)
		cell, e4 := strconv.ParseUint(rec[4], 10, 64)
		lon, e5 := strconv.ParseFloat(rec[6], 64)
		lat, e6 := strconv.ParseFloat(rec[7], 64)
		rng, e7 := strconv.ParseFloat(rec[8], 64)
		if errors.Join(e1, e2, e3, e4, e5, e6, e7) != nil || lat < -90 || lat > 90 || lon < -180 || lon > 180 || rng < 0 {
			skipped++
			continue
		}
		c.Put(rec[0], uint16(mcc), uint16(mnc), uint32(area), cell, Cell{Lat: lat, Lon: lon, RangeM: rng})
		added++
	}
}

var _ Locator = (*Cells)(nil)

// Locate implements [Locator] with [Cells.LookupULI].
func (c *Cells) Locate(_ context.Context, u ULI) (Cell, bool) { return c.LookupULI(u) }

// LookupULI returns the position of the cell a User-Location-Info names.
// A lone TAI names no cell and is never found.
func (c *Cells) LookupULI(u ULI) (Cell, bool) {
	if c == nil || !u.HasCell {
		return Cell{}, false
	}
	mcc, _ := strconv.ParseUint(u.MCC, 10, 16)
	mnc, _ := strconv.ParseUint(u.MNC, 10, 16)
	c.mu.RLock()
	defer c.mu.RUnlock()
	if u.HasArea {
		pos, ok := c.byArea[cellKey{uint16(mcc), uint16(mnc), uint32(u.Area), uint64(u.Cell)}]
		if ok || (u.Type != LocECGI && u.Type != LocTAIECGI) {
			return pos, ok
		}
	}
	pos, ok := c.byECI[eciKey{uint16(mcc), uint16(mnc), uint64(u.Cell)}]
	return pos, ok
}
