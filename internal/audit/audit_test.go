package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
	"github.com/garrisonhq/garrison/internal/store/sqlstore"
)

// rawExec runs SQL around the store, as an attacker with database access
// would; queries use ? placeholders.
type rawExec func(t *testing.T, q string, args ...any)

type backend struct {
	name string
	open func(t testing.TB) (store.Store, rawExec)
}

var backends = []backend{
	{"sqlite", func(t testing.TB) (store.Store, rawExec) {
		path := filepath.Join(t.TempDir(), "g.db")
		db, err := sqlite.Open(context.Background(), path)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		raw, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=5000")
		require.NoError(t, err)
		t.Cleanup(func() { _ = raw.Close() })
		return db, func(t *testing.T, q string, args ...any) {
			t.Helper()
			_, err := raw.Exec(q, args...)
			require.NoError(t, err, q)
		}
	}},
	{"postgres", func(t testing.TB) (store.Store, rawExec) {
		db := pgtest.Open(t)
		return db, func(t *testing.T, q string, args ...any) {
			t.Helper()
			_, err := db.Raw.Exec(context.Background(), sqlstore.Rebind(q), args...)
			require.NoError(t, err, q)
		}
	}},
}

var t0 = time.Date(2026, 5, 1, 10, 0, 0, 123456789, time.FixedZone("CEST", 2*3600))

// fill appends n records to tenant, two per Update, each beside a device
// change as real callers do.
func fill(t *testing.T, s store.Store, tenant event.TenantID, n int) []store.AuditRecord {
	t.Helper()
	ctx := context.Background()
	var out []store.AuditRecord
	for i := 0; i < n; i += 2 {
		require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
			out = out[:i]
			for j := i; j < min(i+2, n); j++ {
				id := event.DeviceID(event.NewID(t0))
				if err := tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: id, Model: "m", State: store.StateRegistered, CreatedAt: t0}); err != nil {
					return err
				}
				r, err := Append(ctx, tx, Entry{Tenant: tenant, Time: t0.Add(time.Duration(j) * time.Second),
					Actor: "op:ann", Action: "device.create", Target: "device/" + string(id),
					Details: json.RawMessage(fmt.Sprintf(`{"n":%d}`, j))})
				if err != nil {
					return err
				}
				out = append(out, r)
			}
			return nil
		}))
	}
	return out
}

func TestAppendChains(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s, _ := b.open(t)
			recs := fill(t, s, "acme", 5)
			fill(t, s, "other", 2)
			require.Equal(t, make([]byte, HashSize), recs[0].PrevHash)
			for i, r := range recs {
				require.Equal(t, int64(i+1), r.Seq)
				require.Equal(t, Hash(r), r.Hash)
				require.Equal(t, time.UTC, r.Time.Location())
				require.Zero(t, r.Time.Nanosecond()%1000, "time kept at microseconds")
				if i > 0 {
					require.Equal(t, recs[i-1].Hash, r.PrevHash)
				}
			}
			var stored []store.AuditRecord
			require.NoError(t, s.View(context.Background(), func(tx store.Tx) error {
				var err error
				stored, err = tx.Audit().Range(context.Background(), "acme", 0, 0)
				return err
			}))
			require.Equal(t, recs, stored, "what Append returns is what is stored")
			rep, err := Verify(context.Background(), s, "acme")
			require.NoError(t, err)
			require.True(t, rep.OK, rep.String())
			require.Equal(t, int64(5), rep.Checked)
			require.Equal(t, recs[4].Hash, rep.HeadHash)
		})
	}
}

func TestAppendRollsBackWithTheChange(t *testing.T) {
	s, _ := backends[0].open(t)
	ctx := context.Background()
	fill(t, s, "acme", 1)
	err := s.Update(ctx, func(tx store.Tx) error {
		if _, err := Append(ctx, tx, Entry{Tenant: "acme", Time: t0, Action: "device.delete"}); err != nil {
			return err
		}
		return store.ErrConflict // the change failed
	})
	require.ErrorIs(t, err, store.ErrConflict)
	rec := fill(t, s, "acme", 1)
	require.Equal(t, int64(2), rec[0].Seq, "the rolled-back record left no gap")
	rep, err := Verify(ctx, s, "acme")
	require.NoError(t, err)
	require.True(t, rep.OK, rep.String())
}

func TestAppendRejectsBadEntries(t *testing.T) {
	s, _ := backends[0].open(t)
	ctx := context.Background()
	for name, e := range map[string]Entry{
		"no tenant":      {Time: t0, Action: "a"},
		"no time":        {Tenant: "acme", Action: "a"},
		"no action":      {Tenant: "acme", Time: t0},
		"details array":  {Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(`[1]`)},
		"details junk":   {Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(`{"a":`)},
		"details string": {Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(`"{}"`)},
		"details blank":  {Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(` `)},
		"details two":    {Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(`{} {}`)},
	} {
		err := s.Update(ctx, func(tx store.Tx) error { _, err := Append(ctx, tx, e); return err })
		require.ErrorIs(t, err, store.ErrInvalid, name)
	}
	rep, err := Verify(ctx, s, "acme")
	require.NoError(t, err)
	require.True(t, rep.OK)
	require.Zero(t, rep.Checked, "nothing was written")
	// An object with spaces around it, and null (json.Marshal of a nil
	// map), are accepted.
	for _, d := range []string{` {"a": 1} `, `null`} {
		err := s.Update(ctx, func(tx store.Tx) error {
			_, err := Append(ctx, tx, Entry{Tenant: "acme", Time: t0, Action: "a", Details: json.RawMessage(d)})
			return err
		})
		require.NoError(t, err, d)
	}
}

func TestVerifyEmptyAndPaged(t *testing.T) {
	s, _ := backends[0].open(t)
	ctx := context.Background()
	rep, err := Verify(ctx, s, "acme")
	require.NoError(t, err)
	require.True(t, rep.OK)
	require.Zero(t, rep.HeadSeq)
	fill(t, s, "acme", 10)
	for _, page := range []int{1, 3, 10, 11} {
		rep, err := verify(ctx, s, "acme", page)
		require.NoError(t, err)
		require.True(t, rep.OK, "page %d: %s", page, rep)
		require.Equal(t, int64(10), rep.Checked, "page %d", page)
	}
}

// TestVerifyFindsTampering edits the chain with plain SQL, bypassing the
// store, and checks that Verify names the first bad record and the problem.
func TestVerifyFindsTampering(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, exec rawExec, recs []store.AuditRecord)
		bad     int64
		problem Problem
	}{
		{"details altered", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `UPDATE audit SET details = ? WHERE tenant = 'acme' AND seq = 4`, []byte(`{"n":999}`))
		}, 4, Altered},
		{"actor altered", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `UPDATE audit SET actor = 'op:mallory' WHERE tenant = 'acme' AND seq = 2`)
		}, 2, Altered},
		{"time altered", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `UPDATE audit SET time = time + 1 WHERE tenant = 'acme' AND seq = 6`)
		}, 6, Altered},
		{"row deleted", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `DELETE FROM audit WHERE tenant = 'acme' AND seq = 3`)
		}, 3, Removed},
		{"row deleted and later rows renumbered", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `DELETE FROM audit WHERE tenant = 'acme' AND seq = 3`)
			exec(t, `UPDATE audit SET seq = seq + 1000 WHERE tenant = 'acme' AND seq > 3`)
			exec(t, `UPDATE audit SET seq = seq - 1001 WHERE tenant = 'acme' AND seq > 1000`)
		}, 3, Removed},
		{"forged row appended", func(t *testing.T, exec rawExec, recs []store.AuditRecord) {
			exec(t, `INSERT INTO audit (tenant, seq, time, actor, action, target, details, prev_hash, hash) VALUES ('acme', 9, 0, 'op:ann', 'token.create', 'token/x', NULL, ?, ?)`,
				make([]byte, HashSize), bytes.Repeat([]byte{7}, HashSize))
		}, 9, Inserted},
		{"forged row with a valid hash but a broken link", func(t *testing.T, exec rawExec, recs []store.AuditRecord) {
			forged := store.AuditRecord{Tenant: "acme", Seq: 9, Time: t0.UTC().Truncate(time.Microsecond), Actor: "op:ann", Action: "x",
				PrevHash: recs[2].Hash}
			forged.Hash = Hash(forged)
			exec(t, `INSERT INTO audit (tenant, seq, time, actor, action, target, details, prev_hash, hash) VALUES ('acme', 9, ?, 'op:ann', 'x', '', NULL, ?, ?)`,
				forged.Time.UnixMicro(), forged.PrevHash, forged.Hash)
		}, 9, Inserted},
		{"forged row inserted in the middle", func(t *testing.T, exec rawExec, recs []store.AuditRecord) {
			exec(t, `UPDATE audit SET seq = seq + 1000 WHERE tenant = 'acme' AND seq > 5`)
			exec(t, `UPDATE audit SET seq = seq - 999 WHERE tenant = 'acme' AND seq > 1000`)
			// A careful forger links the new record 6 to record 5 and hashes it
			// correctly; the renumbered record after it gives it away.
			forged := store.AuditRecord{Tenant: "acme", Seq: 6, Time: t0.UTC().Truncate(time.Microsecond), Actor: "op:ann", Action: "x",
				PrevHash: recs[4].Hash}
			forged.Hash = Hash(forged)
			exec(t, `INSERT INTO audit (tenant, seq, time, actor, action, target, details, prev_hash, hash) VALUES ('acme', 6, ?, 'op:ann', 'x', '', NULL, ?, ?)`,
				forged.Time.UnixMicro(), forged.PrevHash, forged.Hash)
		}, 7, Inserted},
		{"record moved from another tenant", func(t *testing.T, exec rawExec, _ []store.AuditRecord) {
			exec(t, `DELETE FROM audit WHERE tenant = 'acme' AND seq = 8`)
			exec(t, `UPDATE audit SET tenant = 'acme', seq = 8 WHERE tenant = 'other' AND seq = 2`)
		}, 8, Inserted},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					s, exec := b.open(t)
					recs := fill(t, s, "acme", 8)
					fill(t, s, "other", 2)
					ctx := context.Background()
					rep, err := Verify(ctx, s, "acme")
					require.NoError(t, err)
					require.True(t, rep.OK, "clean chain: %s", rep)
					tc.tamper(t, exec, recs)
					rep, err = verify(ctx, s, "acme", 3)
					require.NoError(t, err)
					require.False(t, rep.OK, "tampering went unnoticed")
					require.Equal(t, tc.bad, rep.BadSeq, rep.String())
					require.Equal(t, tc.problem, rep.Problem, rep.String())
					require.Equal(t, tc.bad-1, rep.Checked, rep.String())
					other, err := Verify(ctx, s, "other")
					require.NoError(t, err)
					if tc.name != "record moved from another tenant" {
						require.True(t, other.OK, "the other tenant's chain is untouched: %s", other)
					}
				})
			}
		})
	}
}

// TestHashIsUnambiguous: moving bytes between fields, or changing any field,
// changes the hash.
func TestHashIsUnambiguous(t *testing.T) {
	base := store.AuditRecord{Tenant: "acme", Seq: 7, Time: t0, Actor: "ab", Action: "c", Target: "d",
		Details: []byte(`{}`), PrevHash: make([]byte, HashSize)}
	variants := map[string]func(r *store.AuditRecord){
		"actor/action boundary":  func(r *store.AuditRecord) { r.Actor, r.Action = "a", "bc" },
		"action/target boundary": func(r *store.AuditRecord) { r.Action, r.Target = "cd", "" },
		"tenant":                 func(r *store.AuditRecord) { r.Tenant = "acme2" },
		"seq":                    func(r *store.AuditRecord) { r.Seq = 8 },
		"time":                   func(r *store.AuditRecord) { r.Time = r.Time.Add(time.Microsecond) },
		"details":                func(r *store.AuditRecord) { r.Details = []byte(`{ }`) },
		"details empty":          func(r *store.AuditRecord) { r.Details = nil },
		"prev":                   func(r *store.AuditRecord) { r.PrevHash = bytes.Repeat([]byte{1}, HashSize) },
	}
	want := Hash(base)
	require.Len(t, want, HashSize)
	seen := map[string]string{string(want): "base"}
	for name, mutate := range variants {
		r := base
		mutate(&r)
		h := string(Hash(r))
		require.NotContains(t, seen, h, "%s collides with %s", name, seen[h])
		seen[h] = name
	}
	// The zone does not matter, only the instant.
	r := base
	r.Time = t0.UTC()
	require.Equal(t, want, Hash(r))
}
