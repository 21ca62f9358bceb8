package registry

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Manifest limits. A manifest beyond them is refused as a whole.
const (
	MaxManifestRows  = 500_000
	MaxManifestBytes = 128 << 20
	// MaxRowErrors is how many row errors an ImportError lists; Total counts
	// them all.
	MaxRowErrors = 1000
)

// ManifestColumns are the columns a manufacturing manifest must have, in any
// order, named in a header row (case-insensitive). An optional "id" column
// names the device; without it the device id is the serial.
var ManifestColumns = []string{"serial", "model", "imei", "iccid", "imsi"}

// RowError is a problem with one manifest row. Line is the 1-based line of
// the CSV input (the header is line 1).
type RowError struct {
	Line int    `json:"line"`
	Msg  string `json:"error"`
}

func (e RowError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ImportError reports why a manifest was refused; nothing was applied. It
// matches store.ErrInvalid (bad rows or a bad file) or store.ErrConflict
// (rows clash with devices already registered) via errors.Is.
type ImportError struct {
	Rows  []RowError // at most MaxRowErrors, in line order
	Total int        // number of bad rows
	File  string     // a problem with the file as a whole, if any
	kind  error
}

func (e *ImportError) Error() string {
	var b strings.Builder
	b.WriteString("manifest refused, nothing imported")
	if e.File != "" {
		b.WriteString(": " + e.File)
	}
	if e.Total > 0 {
		fmt.Fprintf(&b, ": %d bad row(s)", e.Total)
		for i, r := range e.Rows {
			if i == 5 {
				b.WriteString("; ...")
				break
			}
			b.WriteString("; " + r.Error())
		}
	}
	return b.String()
}

// Unwrap returns the class of error (store.ErrInvalid or store.ErrConflict).
func (e *ImportError) Unwrap() error { return e.kind }

func (e *ImportError) add(line int, format string, a ...any) {
	e.Total++
	if len(e.Rows) < MaxRowErrors {
		e.Rows = append(e.Rows, RowError{Line: line, Msg: fmt.Sprintf(format, a...)})
	}
}

// ImportResult reports an applied manifest.
type ImportResult struct {
	Imported int    `json:"imported"`
	SHA256   string `json:"sha256"` // digest of the manifest bytes, also in the audit record
}

type manifestRow struct {
	line                                 int
	id, serial, model, imei, iccid, imsi string
}

// ParseManifest reads a manifest (see [ManifestColumns]) as a stream and
// returns its rows' devices in the tenant, state registered, or an
// *[ImportError] listing every bad row (malformed fields, duplicates within
// the file). It never returns a partial result.
func ParseManifest(tenant event.TenantID, r io.Reader) ([]store.Device, string, error) {
	rows, sum, err := parseManifest(r)
	if err != nil {
		return nil, "", err
	}
	out := make([]store.Device, len(rows))
	for i, row := range rows {
		out[i] = row.device(tenant)
	}
	return out, sum, nil
}

func (m manifestRow) device(tenant event.TenantID) store.Device {
	return store.Device{Tenant: tenant, ID: event.DeviceID(m.id), Model: m.model, Serial: m.serial,
		IMEI: m.imei, ICCID: m.iccid, IMSI: m.imsi, State: store.StateRegistered}
}

func parseManifest(r io.Reader) ([]manifestRow, string, error) {
	h := sha256.New()
	lr := &io.LimitedReader{R: r, N: MaxManifestBytes + 1}
	cr := csv.NewReader(io.TeeReader(lr, h))
	cr.ReuseRecord = true
	cr.TrimLeadingSpace = true
	cr.Comment = '#'
	fileErr := func(format string, a ...any) error {
		return &ImportError{File: fmt.Sprintf(format, a...), kind: store.ErrInvalid}
	}
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, "", fileErr("empty manifest (want a header row: %s)", strings.Join(ManifestColumns, ","))
	}
	if err != nil {
		return nil, "", fileErr("header: %v", err)
	}
	col := map[string]int{}
	for i, name := range header {
		name = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(name, "\ufeff")))
		switch name {
		case "id", "serial", "model", "imei", "iccid", "imsi":
		default:
			return nil, "", fileErr("header: unknown column %q (want %s and optionally id)", name, strings.Join(ManifestColumns, ","))
		}
		if _, dup := col[name]; dup {
			return nil, "", fileErr("header: column %q given twice", name)
		}
		col[name] = i
	}
	for _, c := range ManifestColumns {
		if _, ok := col[c]; !ok {
			return nil, "", fileErr("header: missing column %q", c)
		}
	}
	idCol, hasID := col["id"]
	ie := &ImportError{kind: store.ErrInvalid}
	seen := map[string]map[string]int{"id": {}, "imei": {}, "iccid": {}, "imsi": {}}
	var rows []manifestRow
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && !errors.Is(pe.Err, csv.ErrFieldCount) {
				// The rest of the stream cannot be trusted to be aligned.
				ie.add(pe.Line, "%v", pe.Err)
				break
			}
			if errors.As(err, &pe) {
				ie.add(pe.Line, "want %d fields, got %d", len(header), len(rec))
				continue
			}
			return nil, "", fileErr("read: %v", err)
		}
		line, _ := cr.FieldPos(0)
		if lr.N <= 0 {
			return nil, "", fileErr("larger than %d bytes", MaxManifestBytes)
		}
		if len(rows)+ie.Total >= MaxManifestRows {
			return nil, "", fileErr("more than %d rows", MaxManifestRows)
		}
		m := manifestRow{
			line:   line,
			serial: strings.TrimSpace(rec[col["serial"]]),
			model:  strings.TrimSpace(rec[col["model"]]),
			imei:   strings.TrimSpace(rec[col["imei"]]),
			iccid:  strings.TrimSpace(rec[col["iccid"]]),
			imsi:   strings.TrimSpace(rec[col["imsi"]]),
		}
		m.id = m.serial
		if hasID && strings.TrimSpace(rec[idCol]) != "" {
			m.id = strings.TrimSpace(rec[idCol])
		}
		var msgs []string
		if !validName(m.serial) {
			msgs = append(msgs, "serial must be 1-64 characters of [A-Za-z0-9._:-]")
		}
		if hasID && !validName(m.id) {
			msgs = append(msgs, "id must be 1-64 characters of [A-Za-z0-9._:-]")
		}
		if !validName(m.model) {
			msgs = append(msgs, "model must be 1-64 characters of [A-Za-z0-9._:-]")
		}
		if !digits(m.imei, 14, 16) {
			msgs = append(msgs, "imei must be 14-16 digits")
		}
		if !digits(m.iccid, 18, 22) {
			msgs = append(msgs, "iccid must be 18-22 digits")
		}
		if !digits(m.imsi, 6, 15) {
			msgs = append(msgs, "imsi must be 6-15 digits")
		}
		for _, k := range [...]struct{ name, v string }{{"id", m.id}, {"imei", m.imei}, {"iccid", m.iccid}, {"imsi", m.imsi}} {
			if k.v == "" {
				continue
			}
			if prev, dup := seen[k.name][k.v]; dup {
				msgs = append(msgs, fmt.Sprintf("%s %s repeats line %d", k.name, k.v, prev))
			} else {
				seen[k.name][k.v] = line
			}
		}
		if len(msgs) > 0 {
			ie.add(line, "%s", strings.Join(msgs, "; "))
			continue
		}
		rows = append(rows, m)
	}
	if lr.N <= 0 {
		return nil, "", fileErr("larger than %d bytes", MaxManifestBytes)
	}
	if ie.Total > 0 {
		return nil, "", ie
	}
	if len(rows) == 0 {
		return nil, "", fileErr("no device rows")
	}
	return rows, hex.EncodeToString(h.Sum(nil)), nil
}

// Import registers every device of a manufacturing manifest (see
// [ManifestColumns]) in one transaction, all or nothing. The input is read
// as a stream; bad rows (malformed fields, duplicates within the file, or
// clashes with devices already in the tenant) are all reported in an
// *[ImportError] and nothing is applied. One audit record "device.import"
// records the count, the first and last device id and the SHA-256 of the
// manifest, in the same transaction.
func (r *Registry) Import(ctx context.Context, tenant event.TenantID, in io.Reader, actor string) (ImportResult, error) {
	rows, sum, err := parseManifest(in)
	if err != nil {
		return ImportResult{}, fmt.Errorf("registry import %s: %w", tenant, err)
	}
	now := r.clk.Now().UTC()
	err = r.st.Update(ctx, func(tx store.Tx) error {
		ie := &ImportError{kind: store.ErrConflict}
		devs := tx.Devices()
		for _, row := range rows {
			d := row.device(tenant)
			d.CreatedAt, d.UpdatedAt = now, now
			if err := devs.Create(ctx, d); err != nil {
				if errors.Is(err, store.ErrConflict) {
					ie.add(row.line, "device %s, imsi %s or iccid %s is already registered", d.ID, d.IMSI, d.ICCID)
					continue
				}
				return err
			}
		}
		if ie.Total > 0 {
			return ie
		}
		return audit.Record(ctx, tx, tenant, now, actor, "device.import", "manifest:"+sum, map[string]any{
			"count": len(rows), "first": rows[0].id, "last": rows[len(rows)-1].id, "sha256": sum,
		})
	})
	if err != nil {
		return ImportResult{}, fmt.Errorf("registry import %s: %w", tenant, err)
	}
	return ImportResult{Imported: len(rows), SHA256: sum}, nil
}
