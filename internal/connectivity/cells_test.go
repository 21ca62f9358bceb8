package connectivity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
)

func TestImportCSV(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	var batches [][]store.Cell
	commit := func(_ context.Context, cs []store.Cell) error {
		batches = append(batches, append([]store.Cell(nil), cs...))
		return nil
	}
	in := "radio,mcc,net,area,cell,unit,lon,lat,range,samples\n" +
		"LTE,214,1,6699,11259375,0,-3.70379,40.41678,1000,5\n" +
		"GSM,214,7,100,2001,0,2.17,41.38,2500,1\n" +
		"\"LTE\",214,1,6699,1,0,-3.7,40.4,1000,1\n" +
		"LTE,214,1\n" + // line 5: short
		"WIFI,214,1,1,1,0,1,1,1,1\n" + // line 6: radio
		"UMTS,214,1,1,1,0,1,1,1,1\n"
	res, err := ImportCSV(context.Background(), strings.NewReader(in), now, 2, commit)
	require.NoError(t, err)
	require.Equal(t, 6, res.Rows)
	require.Equal(t, 4, res.Imported)
	require.Equal(t, 2, res.Rejected)
	require.Len(t, batches, 2, "batches of 2")
	require.Equal(t, 5, res.Errors[0].Line)
	require.Equal(t, 6, res.Errors[1].Line)
	require.Contains(t, res.Errors[1].Error, "radio")
	require.Equal(t, store.Cell{Radio: "LTE", MCC: 214, MNC: 1, Area: 6699, Cell: 11259375, Lat: 40.41678, Lon: -3.70379, RangeM: 1000, UpdatedAt: now}, batches[0][0])

	// Columns by header name, in another order.
	batches = nil
	res, err = ImportCSV(context.Background(), strings.NewReader("mcc,mnc,lac,cid,radio,lat,lon,range\n214,1,10,20,gsm,40,-3,500\n"), now, 0, commit)
	require.NoError(t, err)
	require.Equal(t, 1, res.Imported)
	require.Equal(t, int64(10), batches[0][0].Area)
	require.Equal(t, 40.0, batches[0][0].Lat)

	// A header without a needed column, or a failing commit, stops it.
	_, err = ImportCSV(context.Background(), strings.NewReader("radio,mcc,net\n"), now, 0, commit)
	require.ErrorIs(t, err, ErrCellFile)
	boom := errors.New("store down")
	res, err = ImportCSV(context.Background(), strings.NewReader(in), now, 1, func(context.Context, []store.Cell) error { return boom })
	require.ErrorIs(t, err, boom)
	require.Zero(t, res.Imported)

	// At most MaxRowErrors are listed; all are counted.
	bad := strings.Repeat("LTE,x\n", MaxRowErrors+20)
	res, err = ImportCSV(context.Background(), strings.NewReader(bad), now, 0, commit)
	require.NoError(t, err)
	require.Equal(t, MaxRowErrors+20, res.Rejected)
	require.Len(t, res.Errors, MaxRowErrors)
}
