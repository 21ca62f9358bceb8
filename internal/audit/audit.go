// Package audit keeps each tenant's tamper-evident audit log: an append-only
// chain of [store.AuditRecord] in which every record carries the SHA-256 of
// the one before it.
//
// [Append] adds a record inside the caller's [store.Store.Update], so the
// change and its record commit together. It reads the chain's head in the
// same transaction (the store serializes appends per tenant), sets Seq to
// head+1 and PrevHash to the head's Hash, and computes Hash with [Hash].
//
// [Verify] walks a chain from the start, recomputes every hash and link, and
// reports the first record that was altered, removed or inserted. The hash is
// unkeyed: it proves that the log was not edited unless an attacker with
// write access to the database also recomputed every later hash, and it
// cannot see records removed from the end of the chain. Comparing the head
// ([Report.HeadSeq], [Report.HeadHash]) with a copy kept elsewhere closes
// both gaps.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// HashSize is the length of Hash and PrevHash.
const HashSize = sha256.Size

// Entry is what a caller records. Time comes from the caller's clock.
type Entry struct {
	Tenant  event.TenantID
	Time    time.Time
	Actor   string          // operator id, token id or "automation"
	Action  string          // e.g. device.quarantine
	Target  string          // e.g. device/meter-0017
	Details json.RawMessage // a JSON object, or empty
}

// ErrInvalid is returned (wrapped, and wrapping store.ErrInvalid) for an
// entry without tenant, time or action, or with details that are not a JSON
// object.
var ErrInvalid = fmt.Errorf("audit: %w", store.ErrInvalid)

// Append adds e to its tenant's chain inside tx and returns the record
// written. Time is stored in UTC at microsecond precision (what both stores
// keep), and hashed as stored.
func Append(ctx context.Context, tx store.Tx, e Entry) (store.AuditRecord, error) {
	if err := checkEntry(e); err != nil {
		return store.AuditRecord{}, err
	}
	r := record(e)
	head, err := tx.Audit().Head(ctx, e.Tenant)
	switch {
	case err == nil:
		r.Seq, r.PrevHash = head.Seq+1, head.Hash
	case !errors.Is(err, store.ErrNotFound):
		return store.AuditRecord{}, fmt.Errorf("audit append: %w", err)
	}
	r.Hash = Hash(r)
	if err := tx.Audit().Append(ctx, r); err != nil {
		return store.AuditRecord{}, fmt.Errorf("audit append: %w", err)
	}
	return r, nil
}

// checkEntry refuses an entry without tenant, time or action, or with
// details that are not a JSON object.
func checkEntry(e Entry) error {
	if e.Tenant == "" || e.Action == "" || e.Time.IsZero() {
		return fmt.Errorf("%w: tenant, time and action are required", ErrInvalid)
	}
	if len(e.Details) > 0 {
		// Valid JSON whose first token is '{' is an object; null (what
		// json.Marshal makes of a nil map) is accepted as no details, as
		// json.Unmarshal into a map accepts it.
		if b := bytes.TrimSpace(e.Details); !json.Valid(b) || b[0] != '{' && string(b) != "null" {
			return fmt.Errorf("%w: details must be a JSON object", ErrInvalid)
		}
	}
	return nil
}

// record is e as stored, first in an empty chain.
func record(e Entry) store.AuditRecord {
	return store.AuditRecord{
		Tenant:   e.Tenant,
		Seq:      1,
		Time:     e.Time.Truncate(time.Microsecond).UTC(),
		Actor:    e.Actor,
		Action:   e.Action,
		Target:   e.Target,
		Details:  bytes.Clone(e.Details),
		PrevHash: make([]byte, HashSize),
	}
}

// Chain appends many records to one tenant's chain in one transaction: it
// reads the head once (on PostgreSQL this takes the tenant's append lock,
// so open it before reading what the records describe), links and hashes
// each added record in memory, and writes them all at Flush, in as few
// statements as the store allows. Nothing else may append to the tenant's
// chain in tx between OpenChain and Flush.
type Chain struct {
	tx      store.Tx
	tenant  event.TenantID
	seq     int64
	prev    []byte
	pending []store.AuditRecord
}

// OpenChain reads tenant's head in tx.
func OpenChain(ctx context.Context, tx store.Tx, tenant event.TenantID) (*Chain, error) {
	c := &Chain{tx: tx, tenant: tenant, prev: make([]byte, HashSize)}
	head, err := tx.Audit().Head(ctx, tenant)
	switch {
	case err == nil:
		c.seq, c.prev = head.Seq, head.Hash
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("audit append: %w", err)
	}
	return c, nil
}

// Add links e (of the chain's tenant) after the last record and queues it
// for Flush.
func (c *Chain) Add(e Entry) (store.AuditRecord, error) {
	if e.Tenant != c.tenant {
		return store.AuditRecord{}, fmt.Errorf("%w: entry of tenant %q in the chain of %q", ErrInvalid, e.Tenant, c.tenant)
	}
	if err := checkEntry(e); err != nil {
		return store.AuditRecord{}, err
	}
	r := record(e)
	r.Seq, r.PrevHash = c.seq+1, c.prev
	r.Hash = Hash(r)
	c.seq, c.prev = r.Seq, r.Hash
	c.pending = append(c.pending, r)
	return r, nil
}

// appendMany is the optional bulk form of store.AuditLog.Append (the SQL
// stores have it): one statement for many records, ErrConflict if any Seq
// is taken.
type appendMany interface {
	AppendMany(ctx context.Context, rs []store.AuditRecord) error
}

// Flush writes the queued records.
func (c *Chain) Flush(ctx context.Context) error {
	if len(c.pending) == 0 {
		return nil
	}
	log := c.tx.Audit()
	if m, ok := log.(appendMany); ok {
		if err := m.AppendMany(ctx, c.pending); err != nil {
			return fmt.Errorf("audit append: %w", err)
		}
	} else {
		for _, r := range c.pending {
			if err := log.Append(ctx, r); err != nil {
				return fmt.Errorf("audit append: %w", err)
			}
		}
	}
	c.pending = c.pending[:0]
	return nil
}

// Hash returns the SHA-256 of r's canonical encoding: the domain tag
// "garrison.audit.v1", then tenant, seq (int64), time (int64 Unix
// nanoseconds, UTC), actor, action, target, details and prev_hash, each
// variable-length field prefixed by its length as a big-endian uint64.
// r.Hash itself is not covered.
func Hash(r store.AuditRecord) []byte {
	// One buffer, on the stack for a typical record, hashed at once.
	var buf [512]byte
	b := appendField(buf[:0], domain)
	b = appendField(b, r.Tenant)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Seq))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UTC().UnixNano()))
	b = appendField(b, r.Actor)
	b = appendField(b, r.Action)
	b = appendField(b, r.Target)
	b = appendField(b, r.Details)
	b = appendField(b, r.PrevHash)
	sum := sha256.Sum256(b)
	return sum[:]
}

const domain = "garrison.audit.v1"

// appendField appends v prefixed by its length as a big-endian uint64.
func appendField[T ~string | ~[]byte](b []byte, v T) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(v)))
	return append(b, v...)
}

// Problem names what is wrong with the first bad record.
type Problem string

// Problems found by Verify.
const (
	// Altered: the record's content does not match its hash.
	Altered Problem = "altered"
	// Removed: records are missing before this sequence number (a gap, or
	// later records renumbered down to close one).
	Removed Problem = "removed"
	// Inserted: the record does not follow from the one before (its
	// prev_hash does not match), or records were renumbered up to make room
	// for it.
	Inserted Problem = "inserted"
)

// Report is the outcome of Verify.
type Report struct {
	Tenant   event.TenantID `json:"tenant"`
	Checked  int64          `json:"checked"`  // records verified good, from seq 1
	HeadSeq  int64          `json:"head_seq"` // last good record (0: none)
	HeadHash []byte         `json:"head_hash,omitempty"`
	OK       bool           `json:"ok"`
	// When !OK: the first bad sequence number, what is wrong and why.
	BadSeq  int64   `json:"bad_seq,omitempty"`
	Problem Problem `json:"problem,omitempty"`
	Detail  string  `json:"detail,omitempty"`
}

// String summarizes the report in one line.
func (r Report) String() string {
	if r.OK {
		return fmt.Sprintf("tenant %s: %d records verified, head %d %x", r.Tenant, r.Checked, r.HeadSeq, r.HeadHash)
	}
	return fmt.Sprintf("tenant %s: record %d %s: %s (%d records before it verified)", r.Tenant, r.BadSeq, r.Problem, r.Detail, r.Checked)
}

// pageSize is how many records Verify reads per transaction.
const pageSize = 1000

// Verify recomputes tenant's chain in pages and reports the first bad
// record. The error is only for failures to read the store; a broken chain
// is a Report with OK false.
func Verify(ctx context.Context, s store.Store, tenant event.TenantID) (Report, error) {
	return verify(ctx, s, tenant, pageSize)
}

func verify(ctx context.Context, s store.Store, tenant event.TenantID, pageSize int) (Report, error) {
	rep := Report{Tenant: tenant}
	prev := make([]byte, HashSize)
	var next int64 = 1
	for {
		var page []store.AuditRecord
		err := s.View(ctx, func(tx store.Tx) error {
			var err error
			page, err = tx.Audit().Range(ctx, tenant, next-1, pageSize)
			return err
		})
		if err != nil {
			return rep, fmt.Errorf("audit verify %s: %w", tenant, err)
		}
		for _, r := range page {
			if problem, detail := check(r, tenant, next, prev); problem != "" {
				rep.BadSeq, rep.Problem, rep.Detail = next, problem, detail
				if problem != Removed {
					rep.BadSeq = r.Seq
				}
				return rep, nil
			}
			rep.Checked++
			rep.HeadSeq, rep.HeadHash = r.Seq, r.Hash
			prev, next = r.Hash, r.Seq+1
		}
		if len(page) < pageSize {
			rep.OK = true
			return rep, nil
		}
	}
}

// check compares r, expected at sequence number want after a record whose
// hash is prev, with what it should be.
func check(r store.AuditRecord, tenant event.TenantID, want int64, prev []byte) (Problem, string) {
	switch {
	case r.Tenant != tenant:
		return Inserted, fmt.Sprintf("record belongs to tenant %q", r.Tenant)
	case r.Seq > want:
		return Removed, fmt.Sprintf("records %d to %d are missing", want, r.Seq-1)
	case r.Seq < want:
		return Inserted, fmt.Sprintf("sequence %d out of order", r.Seq)
	}
	hashOK := bytes.Equal(Hash(r), r.Hash)
	if hashOK && !bytes.Equal(r.PrevHash, prev) {
		return Inserted, fmt.Sprintf("prev_hash %x does not match the hash of record %d (%x)", r.PrevHash, want-1, prev)
	}
	if hashOK {
		return "", ""
	}
	// Diagnose renumbering: the record is intact but moved.
	for _, d := range []int64{1, -1} {
		moved := r
		moved.Seq += d
		if bytes.Equal(Hash(moved), r.Hash) {
			if d > 0 {
				return Removed, fmt.Sprintf("record was written as %d: an earlier record was removed and later ones renumbered", moved.Seq)
			}
			return Inserted, fmt.Sprintf("record was written as %d: a record was inserted before it", moved.Seq)
		}
	}
	if !bytes.Equal(r.PrevHash, prev) {
		return Inserted, fmt.Sprintf("hash does not match its content and prev_hash %x does not match record %d", r.PrevHash, want-1)
	}
	return Altered, "hash does not match the record's content"
}

// Record appends one record whose details are details marshalled to a JSON
// object, in tx (the caller's Update, so the record commits with the change).
func Record(ctx context.Context, tx store.Tx, tenant event.TenantID, at time.Time, actor, action, target string, details map[string]any) error {
	b, err := json.Marshal(details)
	if err != nil {
		return fmt.Errorf("audit details: %w", err)
	}
	_, err = Append(ctx, tx, Entry{Tenant: tenant, Time: at, Actor: actor, Action: action, Target: target, Details: b})
	return err
}
