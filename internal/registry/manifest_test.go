package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// manifest returns a valid manifest of n rows, streamed.
func manifest(n int, prefix string) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		var b bytes.Buffer
		b.WriteString("serial,model,imei,iccid,imsi\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "%s%07d,acme-meter-2,35693803%07d,893401%013d,21401%010d\n", prefix, i, i, i, i)
			if b.Len() > 64<<10 {
				if _, err := pw.Write(b.Bytes()); err != nil {
					return
				}
				b.Reset()
			}
		}
		_, _ = pw.Write(b.Bytes())
		_ = pw.Close()
	}()
	return pr
}

func TestImportApplies(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	res, err := f.reg.Import(ctx, "acme", manifest(250, "SN"), "op-1")
	require.NoError(t, err)
	require.Equal(t, 250, res.Imported)
	require.Len(t, res.SHA256, 64)
	d, err := f.reg.Get(ctx, "acme", "SN0000042")
	require.NoError(t, err)
	require.Equal(t, store.StateRegistered, d.State)
	require.Equal(t, "356938030000042", d.IMEI)
	require.Equal(t, "8934010000000000042", d.ICCID)
	require.Equal(t, "214010000000042", d.IMSI)
	require.Equal(t, "SN0000042", d.Serial)
	recs := auditRecords(t, f.st, "acme")
	require.Len(t, recs, 1)
	require.Equal(t, "device.import", recs[0].Action)
	require.Contains(t, string(recs[0].Details), `"count":250`)
	require.Contains(t, string(recs[0].Details), res.SHA256)
}

func TestImportIDColumnAndHeaderOrder(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	in := "IMSI,ICCID,IMEI,Model,Serial,Id\n" +
		"214010000000001,8934010000000000001,356938035643809,acme-cam-1,CAM-1,cam-0001\n" +
		"214010000000002,8934010000000000002,356938035643810,acme-cam-1,CAM-2,\n"
	res, err := f.reg.Import(ctx, "acme", strings.NewReader(in), "op")
	require.NoError(t, err)
	require.Equal(t, 2, res.Imported)
	d, err := f.reg.Get(ctx, "acme", "cam-0001")
	require.NoError(t, err)
	require.Equal(t, "CAM-1", d.Serial)
	_, err = f.reg.Get(ctx, "acme", "CAM-2") // no id: the serial
	require.NoError(t, err)
}

func TestImportRefusesBadRowsAndAppliesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	in := "serial,model,imei,iccid,imsi\n" +
		"SN1,acme-meter-2,356938035643809,8934010000000000001,214010000000001\n" + // line 2 ok
		"SN2,acme-meter-2,3569,8934010000000000002,214010000000002\n" + // line 3 short imei
		"SN3,,356938035643811,8934010000000000003,214010000000003\n" + // line 4 no model
		"SN4,acme-meter-2,356938035643812,8934010000000000004,214010000000001\n" + // line 5 dup imsi
		"SN5,acme-meter-2,356938035643813,8934010000000000005\n" + // line 6 field count
		"SN1,acme-meter-2,356938035643814,8934010000000000006,214010000000006\n" // line 7 dup serial
	_, err := f.reg.Import(ctx, "acme", strings.NewReader(in), "op")
	require.ErrorIs(t, err, store.ErrInvalid)
	var ie *registry.ImportError
	require.True(t, errors.As(err, &ie))
	require.Equal(t, 5, ie.Total)
	lines := map[int]string{}
	for _, r := range ie.Rows {
		lines[r.Line] = r.Msg
	}
	require.Contains(t, lines[3], "imei must be 14-16 digits")
	require.Contains(t, lines[4], "model must be")
	require.Contains(t, lines[5], "imsi 214010000000001 repeats line 2")
	require.Contains(t, lines[6], "want 5 fields, got 4")
	require.Contains(t, lines[7], "id SN1 repeats line 2")
	n, err := f.reg.Count(ctx, "acme", registry.Selector{})
	require.NoError(t, err)
	require.Zero(t, n)
	require.Empty(t, auditRecords(t, f.st, "acme"))
}

func TestImportConflictWithRegistryAppliesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	existing := dev("acme", "SN0000007")
	_, err := f.reg.Register(ctx, existing, "op")
	require.NoError(t, err)
	taken := dev("acme", "other")
	taken.IMSI = "214010000000011"
	_, err = f.reg.Register(ctx, taken, "op")
	require.NoError(t, err)

	_, err = f.reg.Import(ctx, "acme", manifest(20, "SN"), "op")
	require.ErrorIs(t, err, store.ErrConflict)
	var ie *registry.ImportError
	require.True(t, errors.As(err, &ie))
	require.Equal(t, 2, ie.Total)
	require.Equal(t, 9, ie.Rows[0].Line)  // SN0000007
	require.Equal(t, 13, ie.Rows[1].Line) // imsi ...11
	n, err := f.reg.Count(ctx, "acme", registry.Selector{})
	require.NoError(t, err)
	require.Equal(t, 2, n)

	// Another tenant may hold the same serials and SIMs.
	res, err := f.reg.Import(ctx, "other", manifest(20, "SN"), "op")
	require.NoError(t, err)
	require.Equal(t, 20, res.Imported)
}

func TestImportFileErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, tc := range []struct{ in, want string }{
		{"", "empty manifest"},
		{"serial,model,imei,iccid\n", `missing column "imsi"`},
		{"serial,model,imei,iccid,imsi,colour\n", `unknown column "colour"`},
		{"serial,serial,model,imei,iccid,imsi\n", `column "serial" given twice`},
		{"serial,model,imei,iccid,imsi\n", "no device rows"},
		{"serial,model,imei,iccid,imsi\n\"SN1,acme,1,2,3\n", "line 2"},
	} {
		_, err := f.reg.Import(ctx, "acme", strings.NewReader(tc.in), "op")
		require.ErrorIs(t, err, store.ErrInvalid, tc.in)
		require.Contains(t, err.Error(), tc.want, tc.in)
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte("serial,model,imei,iccid,imsi\nSN1,acme-meter-2,356938035643809,8934010000000000001,214010000000001\n"))
	f.Add([]byte("id,serial,model,imei,iccid,imsi\n,SN1,m,356938035643809,8934010000000000001,214010000000001\n"))
	f.Add([]byte("serial,model,imei,iccid,imsi\n\"SN1\",m,1,2\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		devs, sum, err := registry.ParseManifest("acme", bytes.NewReader(in))
		if err != nil {
			require.ErrorIs(t, err, store.ErrInvalid)
			require.Nil(t, devs)
			return
		}
		require.NotEmpty(t, devs)
		require.Len(t, sum, 64)
		ids, imsis := map[string]bool{}, map[string]bool{}
		for _, d := range devs {
			require.NoError(t, registry.ValidateDevice(d))
			require.False(t, ids[string(d.ID)], "duplicate id %s", d.ID)
			require.False(t, imsis[d.IMSI], "duplicate imsi %s", d.IMSI)
			ids[string(d.ID)], imsis[d.IMSI] = true, true
		}
	})
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"", "*", "model=acme-meter-2,state=active,tag=site:north,imsi^=21401", "tag=a", "group=g,firmware=1.0", "imsi^=", "x=y", "model=a,model=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := registry.ParseSelector(s)
		if err != nil {
			require.ErrorIs(t, err, registry.ErrSelector)
			return
		}
		again, err := registry.ParseSelector(sel.String())
		require.NoError(t, err, "canonical form %q of %q", sel.String(), s)
		require.Equal(t, sel, again)
	})
}

// BenchmarkImport imports a manifest of 10,000 and 100,000 rows in one
// call on SQLite (one transaction, one audit record).
func BenchmarkImport(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				f := newFixture(b)
				b.StartTimer()
				res, err := f.reg.Import(ctx, "acme", manifest(n, "SN"), "op")
				if err != nil || res.Imported != n {
					b.Fatalf("import: %v (%d)", err, res.Imported)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkParseManifest100k measures parsing and validation alone.
func BenchmarkParseManifest100k(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		devs, _, err := registry.ParseManifest("acme", manifest(100_000, "SN"))
		if err != nil || len(devs) != 100_000 {
			b.Fatal(err)
		}
	}
}
