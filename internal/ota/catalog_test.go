package ota

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"github.com/garrisonhq/garrison/firmware"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

const tenant event.TenantID = "acme"

type fixture struct {
	ctx       context.Context
	st        store.Store
	clk       *clock.Manual
	cat       *Catalog
	dir       string
	root, rel ed25519.PrivateKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "g.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	clk := clock.NewManual(t0)
	cat, err := New(Options{Store: st, Clock: clk, DataDir: dir, MaxArtifactSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ctx: ctx, st: st, clk: clk, cat: cat, dir: dir, root: seededKey(1), rel: seededKey(2)}
	if err := cat.SetRoot(ctx, tenant, "op1", pubOf(f.root)); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.SetKeys(ctx, tenant, "op1", signedKeys(t, keySet(1, 1, f.rel), f.root)); err != nil {
		t.Fatal(err)
	}
	return f
}

// snapshot is every piece of state a refused call must leave unchanged.
type snapshot struct {
	files   []string
	head    int64
	entries int
	keys    string
}

func (f *fixture) snapshot(t *testing.T) snapshot {
	t.Helper()
	var s snapshot
	err := filepath.WalkDir(filepath.Join(f.dir, artifactsDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			s.files = append(s.files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = f.st.View(f.ctx, func(tx store.Tx) error {
		h, err := tx.Audit().Head(f.ctx, tenant)
		if err != nil {
			return err
		}
		s.head = h.Seq
		k, err := tx.Settings().Get(f.ctx, tenant, settingKeys)
		s.keys = string(k)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	all, err := f.cat.Releases(f.ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	s.entries = len(all)
	return s
}

func (s snapshot) equal(o snapshot) bool {
	return strings.Join(s.files, ",") == strings.Join(o.files, ",") && s.head == o.head && s.entries == o.entries && s.keys == o.keys
}

func TestAddRelease(t *testing.T) {
	f := newFixture(t)
	art := bytes.Repeat([]byte("firmware"), 1000)
	r := testRelease(art)
	e, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, r, f.rel), bytes.NewReader(art))
	if err != nil {
		t.Fatal(err)
	}
	if e.Version != "1.2.0" || e.Digest != r.SHA256 || len(e.KeyIDs) != 1 || e.KeyIDs[0] != firmware.KeyID(pubOf(f.rel)) {
		t.Fatalf("entry %+v", e)
	}
	path := filepath.Join(f.dir, "artifacts", "sha256", r.SHA256[:2], r.SHA256)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, art) {
		t.Fatalf("artifact at %s: %v", path, err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(f.dir, artifactsTmp)); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	for _, model := range r.Models {
		v, ok, err := f.cat.Release(f.ctx, tenant, model, r.SHA256)
		if err != nil || !ok || v != "1.2.0" {
			t.Fatalf("Release(%s) = %q %v %v", model, v, ok, err)
		}
	}
	if _, ok, _ := f.cat.Release(f.ctx, tenant, "camera", r.SHA256); ok {
		t.Fatal("release found for a model it does not target")
	}
	if _, ok, _ := f.cat.Release(f.ctx, "other", "meter-x1", r.SHA256); ok {
		t.Fatal("release visible to another tenant")
	}
	all, err := f.cat.Releases(f.ctx, tenant)
	if err != nil || len(all) != 1 || all[0].Digest != r.SHA256 {
		t.Fatalf("Releases = %+v %v", all, err)
	}
	// The stored manifest still verifies offline against the keys the
	// catalog serves.
	keys, err := f.cat.Keys(f.ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := firmware.Verify(all[0].Manifest, keys, pubOf(f.root), 1, t0); err != nil {
		t.Fatalf("stored manifest does not verify: %v", err)
	}
	// Audit: root, keys, release; chain intact.
	var recs []store.AuditRecord
	if err := f.st.View(f.ctx, func(tx store.Tx) error {
		recs, err = tx.Audit().Range(f.ctx, tenant, 0, 10)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, r := range recs {
		actions = append(actions, r.Action)
	}
	if strings.Join(actions, ",") != "ota.root.set,ota.keys.set,ota.release.add" || recs[2].Target != "release/"+r.SHA256 {
		t.Fatalf("audit records %v", actions)
	}
	if rep, err := audit.Verify(f.ctx, f.st, tenant); err != nil || !rep.OK {
		t.Fatalf("audit chain: %v %v", rep, err)
	}
}

func TestAddReleaseRefusals(t *testing.T) {
	art := bytes.Repeat([]byte("A"), 4096)
	stranger, relB := seededKey(7), seededKey(3)
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, f *fixture)
		manifest func(t *testing.T, f *fixture) []byte
		artifact io.Reader
		want     error
	}{
		{name: "tampered artifact", want: firmware.ErrDigest,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(append(bytes.Repeat([]byte("A"), 4095), 'B'))},
		{name: "oversized upload", want: firmware.ErrSize,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(append(bytes.Clone(art), 'A'))},
		{name: "truncated upload", want: firmware.ErrSize,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art[:4000])},
		{name: "upload fails midway", want: iotest.ErrTimeout,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: iotest.TimeoutReader(iotest.HalfReader(bytes.NewReader(art)))},
		{name: "above catalog size limit", want: firmware.ErrSize,
			manifest: func(t *testing.T, f *fixture) []byte {
				r := testRelease(art)
				r.Size = 2 << 20
				return signedManifest(t, r, f.rel)
			},
			artifact: bytes.NewReader(art)},
		{name: "missing signature", want: firmware.ErrSignature,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art)) },
			artifact: bytes.NewReader(art)},
		{name: "wrong signature", want: firmware.ErrSignature,
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), stranger) },
			artifact: bytes.NewReader(art)},
		{name: "signed manifest edited", want: firmware.ErrSignature,
			manifest: func(t *testing.T, f *fixture) []byte {
				return bytes.Replace(signedManifest(t, testRelease(art), f.rel), []byte(`"min_version":"1.0.0"`), []byte(`"min_version":"0.0.1"`), 1)
			},
			artifact: bytes.NewReader(art)},
		{name: "revoked release key", want: firmware.ErrSignature,
			setup: func(t *testing.T, f *fixture) {
				if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", signedKeys(t, keySet(2, 1, relB), f.root)); err != nil {
					t.Fatal(err)
				}
			},
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
		{name: "expired release key", want: firmware.ErrSignature,
			setup:    func(t *testing.T, f *fixture) { f.clk.Set(t0.Add(181 * 24 * time.Hour)) },
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
		{name: "expired keys document", want: firmware.ErrExpired,
			setup:    func(t *testing.T, f *fixture) { f.clk.Set(t0.Add(366 * 24 * time.Hour)) },
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
		{name: "expired manifest", want: firmware.ErrExpired,
			manifest: func(t *testing.T, f *fixture) []byte {
				r := testRelease(art)
				r.Expires = t0
				return signedManifest(t, r, f.rel)
			},
			artifact: bytes.NewReader(art)},
		{name: "below tenant minimum (downgrade)", want: firmware.ErrDowngrade,
			setup: func(t *testing.T, f *fixture) {
				if err := f.cat.SetMinVersion(f.ctx, tenant, "op1", "meter-x2", "1.3.0"); err != nil {
					t.Fatal(err)
				}
			},
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
		{name: "malformed manifest", want: firmware.ErrMalformed,
			manifest: func(t *testing.T, f *fixture) []byte { return []byte(`{"signed":{},"signatures":[],"x":1}`) },
			artifact: bytes.NewReader(art)},
		{name: "duplicate version for a model", want: store.ErrConflict,
			setup: func(t *testing.T, f *fixture) {
				other := []byte("other build")
				if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(other), f.rel), bytes.NewReader(other)); err != nil {
					t.Fatal(err)
				}
			},
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
		{name: "same release twice", want: store.ErrConflict,
			setup: func(t *testing.T, f *fixture) {
				if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(art), f.rel), bytes.NewReader(art)); err != nil {
					t.Fatal(err)
				}
			},
			manifest: func(t *testing.T, f *fixture) []byte { return signedManifest(t, testRelease(art), f.rel) },
			artifact: bytes.NewReader(art)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			before := f.snapshot(t)
			_, err := f.cat.AddRelease(f.ctx, tenant, "op1", tc.manifest(t, f), tc.artifact)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if after := f.snapshot(t); !before.equal(after) {
				t.Fatalf("state changed on refusal:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

func TestAddReleaseNoTrust(t *testing.T) {
	f := newFixture(t)
	art := []byte("fw")
	_, err := f.cat.AddRelease(f.ctx, "nobody", "op1", signedManifest(t, testRelease(art), f.rel), bytes.NewReader(art))
	if !errors.Is(err, firmware.ErrNoTrust) {
		t.Fatalf("got %v, want firmware.ErrNoTrust", err)
	}
}

func TestSetKeys(t *testing.T) {
	f := newFixture(t)
	relB := seededKey(3)
	v3 := signedKeys(t, keySet(3, 1, f.rel, relB), f.root)
	if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", v3); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", v3); err != nil {
		t.Fatalf("same document again: %v", err)
	}
	for _, tc := range []struct {
		name string
		doc  []byte
		want error
	}{
		{"rollback", signedKeys(t, keySet(2, 1, relB), f.root), firmware.ErrRollback},
		{"same version, other content", signedKeys(t, keySet(3, 1, relB), f.root), firmware.ErrRollback},
		{"signed by a release key", signedKeys(t, keySet(4, 1, relB), f.rel), firmware.ErrSignature},
		{"malformed", []byte(`{"signed":{"version":4}}`), firmware.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.snapshot(t)
			if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", tc.doc); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if after := f.snapshot(t); !before.equal(after) {
				t.Fatalf("state changed on refusal")
			}
		})
	}
	// Rotating the root: the old root can no longer sign keys documents.
	newRoot := seededKey(9)
	if err := f.cat.SetRoot(f.ctx, tenant, "op1", pubOf(newRoot)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", signedKeys(t, keySet(4, 1, relB), f.root)); !errors.Is(err, firmware.ErrSignature) {
		t.Fatalf("old root after rotation: %v", err)
	}
	if _, err := f.cat.SetKeys(f.ctx, tenant, "op1", signedKeys(t, keySet(4, 1, relB), newRoot)); err != nil {
		t.Fatalf("new root: %v", err)
	}
}

func TestMinVersion(t *testing.T) {
	f := newFixture(t)
	if _, ok, err := f.cat.MinVersion(f.ctx, tenant, "meter-x1"); err != nil || ok {
		t.Fatalf("unset min version: %v %v", ok, err)
	}
	if err := f.cat.SetMinVersion(f.ctx, tenant, "op1", "meter-x1", "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := f.cat.MinVersion(f.ctx, tenant, "meter-x1"); err != nil || !ok || v != "1.1.0" {
		t.Fatalf("MinVersion = %q %v %v", v, ok, err)
	}
	if _, ok, _ := f.cat.MinVersion(f.ctx, "other", "meter-x1"); ok {
		t.Fatal("min version visible to another tenant")
	}
	before := f.snapshot(t)
	if err := f.cat.SetMinVersion(f.ctx, tenant, "op1", "meter-x1", "1.1"); !errors.Is(err, firmware.ErrMalformed) {
		t.Fatalf("bad version: %v", err)
	}
	if !before.equal(f.snapshot(t)) {
		t.Fatal("state changed on refusal")
	}
	// A release at or above the floor is accepted and keeps the floor.
	art := []byte("fw")
	if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(art), f.rel), bytes.NewReader(art)); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := f.cat.MinVersion(f.ctx, tenant, "meter-x1"); v != "1.1.0" {
		t.Fatalf("adding a release changed the floor to %q", v)
	}
	if rep, err := audit.Verify(f.ctx, f.st, tenant); err != nil || !rep.OK || rep.HeadSeq != 4 {
		t.Fatalf("audit: %v %v", rep, err)
	}
}

func TestHandler(t *testing.T) {
	f := newFixture(t)
	art := make([]byte, 10000)
	for i := range art {
		art[i] = byte(i * 7)
	}
	r := testRelease(art)
	if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, r, f.rel), bytes.NewReader(art)); err != nil {
		t.Fatal(err)
	}
	h := f.cat.Handler(func(r *http.Request) (event.TenantID, bool) {
		t := r.Header.Get("X-Test-Tenant")
		return event.TenantID(t), t != ""
	})
	get := func(tn, path string, hdr map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if tn != "" {
			req.Header.Set("X-Test-Tenant", tn)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	w := get(string(tenant), "/artifacts/"+r.SHA256, nil)
	if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), art) {
		t.Fatalf("full GET: %d, %d bytes", w.Code, w.Body.Len())
	}
	etag := w.Header().Get("ETag")
	if etag != `"sha256:`+r.SHA256+`"` {
		t.Fatalf("ETag %q", etag)
	}
	// Resume an interrupted download.
	w = get(string(tenant), "/"+r.SHA256, map[string]string{"Range": "bytes=4000-", "If-Range": etag})
	if w.Code != http.StatusPartialContent || !bytes.Equal(w.Body.Bytes(), art[4000:]) {
		t.Fatalf("range GET: %d, %d bytes", w.Code, w.Body.Len())
	}
	sum := sha256.Sum256(append(bytes.Clone(art[:4000]), w.Body.Bytes()...))
	if hex.EncodeToString(sum[:]) != r.SHA256 {
		t.Fatal("resumed download does not hash to the digest")
	}
	// A stale If-Range gets the whole artifact.
	if w = get(string(tenant), "/"+r.SHA256, map[string]string{"Range": "bytes=4000-", "If-Range": `"sha256:00"`}); w.Code != 200 {
		t.Fatalf("stale If-Range: %d", w.Code)
	}
	for _, tc := range []struct {
		name, tenant, path string
		want               int
	}{
		{"unauthenticated", "", "/" + r.SHA256, http.StatusUnauthorized},
		{"another tenant", "other", "/" + r.SHA256, http.StatusNotFound},
		{"unknown digest", string(tenant), "/" + strings.Repeat("0", 64), http.StatusNotFound},
		{"not a digest", string(tenant), "/../../g.db", http.StatusNotFound},
		{"uppercase digest", string(tenant), "/" + strings.ToUpper(r.SHA256), http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if w := get(tc.tenant, tc.path, nil); w.Code != tc.want {
				t.Fatalf("got %d, want %d", w.Code, tc.want)
			}
		})
	}
	req := httptest.NewRequest(http.MethodPost, "/"+r.SHA256, nil)
	req.Header.Set("X-Test-Tenant", string(tenant))
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", w.Code)
	}
}

// BenchmarkRelease is the detection engine's lookup (one store read).
func BenchmarkRelease(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "g.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cat, err := New(Options{Store: st, Clock: clock.NewManual(t0), DataDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	root, rel := seededKey(1), seededKey(2)
	if err := cat.SetRoot(ctx, tenant, "op1", pubOf(root)); err != nil {
		b.Fatal(err)
	}
	if _, err := cat.SetKeys(ctx, tenant, "op1", signedKeys(b, keySet(1, 1, rel), root)); err != nil {
		b.Fatal(err)
	}
	var digest string
	for i := range 50 { // a model with 50 releases
		art := []byte{byte(i), 1, 2, 3}
		r := testRelease(art)
		r.Version = "1.2." + strconv.Itoa(i+1)
		if _, err := cat.AddRelease(ctx, tenant, "op1", signedManifest(b, r, rel), bytes.NewReader(art)); err != nil {
			b.Fatal(err)
		}
		digest = r.SHA256
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := cat.Release(ctx, tenant, "meter-x1", digest); err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}
