package sqlstore

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/garrisonhq/garrison/internal/store"
)

type cells struct{ *tx }

func (t *tx) Cells() store.Cells { return cells{t} }

const cellCols = `mcc, mnc, area, cell, radio, lat, lon, range_m, updated_at`

// maxCellID is the largest cell identity kept: a 36-bit NR cell identity.
const maxCellID = 1<<36 - 1

func checkCell(c store.Cell) error {
	switch {
	case c.MCC < 0 || c.MCC > 999 || c.MNC < 0 || c.MNC > 999:
		return fmt.Errorf("mcc and mnc must be 0-999, got %d-%d", c.MCC, c.MNC)
	case c.Area < 0 || c.Area > 65535:
		return fmt.Errorf("area must be 0-65535, got %d", c.Area)
	case c.Cell < 0 || c.Cell > maxCellID:
		return fmt.Errorf("cell must be 0-%d, got %d", int64(maxCellID), c.Cell)
	case !(c.Lat >= -90 && c.Lat <= 90) || !(c.Lon >= -180 && c.Lon <= 180):
		return fmt.Errorf("position %v,%v out of range", c.Lat, c.Lon)
	case !(c.RangeM >= 0) || math.IsInf(c.RangeM, 0):
		return fmt.Errorf("range %v must be a finite non-negative number", c.RangeM)
	case len(c.Radio) > 16:
		return fmt.Errorf("radio %q longer than 16 bytes", c.Radio)
	}
	return nil
}

func (s cells) Put(ctx context.Context, cs []store.Cell) error {
	for i, c := range cs {
		if err := checkCell(c); err != nil {
			return fmt.Errorf("cells put: cell %d: %w: %v", i, store.ErrInvalid, err)
		}
	}
	// Multi-row upserts in chunks: one round trip per 200 cells.
	const chunk = 200
	for len(cs) > 0 {
		n := min(len(cs), chunk)
		var q strings.Builder
		q.WriteString(`INSERT INTO cells (` + cellCols + `) VALUES `)
		args := make([]any, 0, n*9)
		for i, c := range cs[:n] {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, c.MCC, c.MNC, c.Area, c.Cell, strings.ToUpper(c.Radio), c.Lat, c.Lon, c.RangeM, Micros(c.UpdatedAt))
		}
		q.WriteString(` ON CONFLICT (mcc, mnc, area, cell) DO UPDATE SET radio = excluded.radio, lat = excluded.lat,
			lon = excluded.lon, range_m = excluded.range_m, updated_at = excluded.updated_at`)
		if _, err := s.c.Exec(ctx, q.String(), args...); err != nil {
			return fmt.Errorf("cells put: %w", err)
		}
		cs = cs[n:]
	}
	return nil
}

func scanCell(r Row) (store.Cell, error) {
	var c store.Cell
	var updated int64
	err := r.Scan(&c.MCC, &c.MNC, &c.Area, &c.Cell, &c.Radio, &c.Lat, &c.Lon, &c.RangeM, &updated)
	c.UpdatedAt = FromMicros(updated)
	return c, err
}

func (s cells) Get(ctx context.Context, mcc, mnc int, area, cell int64) (store.Cell, error) {
	c, err := scanCell(s.c.QueryRow(ctx, `SELECT `+cellCols+` FROM cells WHERE mcc = ? AND mnc = ? AND area = ? AND cell = ?`, mcc, mnc, area, cell))
	if err != nil {
		return store.Cell{}, fmt.Errorf("cells get %d-%d-%d-%d: %w", mcc, mnc, area, cell, err)
	}
	return c, nil
}

func (s cells) ByECI(ctx context.Context, mcc, mnc int, cell int64) (store.Cell, error) {
	c, err := scanCell(s.c.QueryRow(ctx, `SELECT `+cellCols+` FROM cells WHERE mcc = ? AND mnc = ? AND cell = ? AND radio IN ('LTE', 'NR')
		ORDER BY updated_at DESC, area LIMIT 1`, mcc, mnc, cell))
	if err != nil {
		return store.Cell{}, fmt.Errorf("cells by eci %d-%d-%d: %w", mcc, mnc, cell, err)
	}
	return c, nil
}

func (s cells) Count(ctx context.Context) (int, error) {
	var n int
	if err := s.c.QueryRow(ctx, `SELECT COUNT(*) FROM cells`).Scan(&n); err != nil {
		return 0, fmt.Errorf("cells count: %w", err)
	}
	return n, nil
}
