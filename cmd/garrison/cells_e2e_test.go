package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/connectivity"
)

// TestCellsImportCLI drives `garrison cells import` against a real serve:
// good rows are imported, bad ones reported by line, and a tenant admin
// may not touch the platform's table.
func TestCellsImportCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin)
	file := filepath.Join(t.TempDir(), "cells.csv")
	require.NoError(t, os.WriteFile(file, []byte("radio,mcc,net,area,cell,unit,lon,lat,range,samples,changeable,created,updated,averageSignal\n"+
		"LTE,214,1,6699,11259375,0,-3.70379,40.41678,1000,12,1,1459692840,1482162374,0\n"+
		"GSM,214,7,100,2001,0,2.17,41.38,2500,3,1,1459692840,1482162374,0\n"+
		"LTE,214,1,6699,11259376,0,-3.7,95,1000,1,1,1459692840,1482162374,0\n"), 0o600))

	o, e, code := garrison(t, s, admin, "cells", "import", file)
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "imported 2 cells from 3 rows (1 rejected)")
	require.Contains(t, e, "line 4: lat")

	o, e, code = garrison(t, s, admin, "cells", "import", file, "-o", "json")
	require.Equal(t, 0, code, e)
	var res connectivity.ImportResult
	require.NoError(t, json.Unmarshal([]byte(o), &res))
	require.Equal(t, 2, res.Imported)
	require.Equal(t, 4, res.Errors[0].Line)

	_, e, code = garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	o, e, code = garrison(t, s, admin, "token", "create", "acme-admin", "--tenant", "acme", "--role", "admin", "-o", "json")
	require.Equal(t, 0, code, e)
	var ct struct{ Secret string }
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	_, e, code = garrison(t, s, ct.Secret, "cells", "import", file)
	require.NotEqual(t, 0, code)
	require.Contains(t, e, "forbidden")
}
