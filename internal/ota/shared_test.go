package ota

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
)

// sharedNodes is two catalogs on one store, each with its own artifacts
// directory, sharing an object store bucket of an embedded bus: node a
// takes the upload, node b serves downloads.
type sharedNodes struct {
	*fixture
	objs *bus.Objects
	a, b *Catalog
	bDir string
	art  []byte
	rel  firmware.Release
	e    Entry
}

func newSharedNodes(t *testing.T, wrap func(Shared) Shared) *sharedNodes {
	t.Helper()
	f := newFixture(t)
	bb, err := bus.Open(f.ctx, bus.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bb.Close() })
	objs, err := bb.Objects(f.ctx, bus.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	var shared Shared = objs
	if wrap != nil {
		shared = wrap(objs)
	}
	n := &sharedNodes{fixture: f, objs: objs, bDir: t.TempDir()}
	if n.a, err = New(Options{Store: f.st, Clock: f.clk, DataDir: f.dir, MaxArtifactSize: 1 << 20, Shared: shared}); err != nil {
		t.Fatal(err)
	}
	if n.b, err = New(Options{Store: f.st, Clock: f.clk, DataDir: n.bDir, MaxArtifactSize: 1 << 20, Shared: shared}); err != nil {
		t.Fatal(err)
	}
	// Above two 128 KiB chunks of the object store.
	n.art = make([]byte, 300<<10+17)
	for i := range n.art {
		n.art[i] = byte(i*31 + i>>9)
	}
	n.rel = testRelease(n.art)
	if n.e, err = n.a.AddRelease(f.ctx, tenant, "op1", signedManifest(t, n.rel, f.rel), bytes.NewReader(n.art)); err != nil {
		t.Fatal(err)
	}
	return n
}

// bFiles lists the files under node b's artifacts directory.
func (n *sharedNodes) bFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(n.bDir, artifactsDir), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func serve(c *Catalog, digest string, hdr map[string]string) *httptest.ResponseRecorder {
	h := c.Handler(func(*http.Request) (event.TenantID, bool) { return tenant, true })
	req := httptest.NewRequest(http.MethodGet, "/"+digest, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestSharedArtifact: a release uploaded through node a is put into the
// object store; node b, which never saw the upload, serves the exact
// bytes (whole and by range) after fetching and keeping them.
func TestSharedArtifact(t *testing.T) {
	n := newSharedNodes(t, nil)
	sum, size, err := n.objs.Digest(n.ctx, n.rel.SHA256)
	if err != nil || size != int64(len(n.art)) || !bytes.Equal(sum, mustHex(t, n.rel.SHA256)) {
		t.Fatalf("object: %x, %d bytes, %v", sum, size, err)
	}
	if files := n.bFiles(t); len(files) != 0 {
		t.Fatalf("node b holds %v before any download", files)
	}
	w := serve(n.b, n.rel.SHA256, map[string]string{"Range": "bytes=1000-"})
	if w.Code != http.StatusPartialContent || !bytes.Equal(w.Body.Bytes(), n.art[1000:]) {
		t.Fatalf("range GET on node b: %d, %d bytes", w.Code, w.Body.Len())
	}
	got, err := os.ReadFile(n.b.ArtifactPath(n.rel.SHA256))
	if err != nil || !bytes.Equal(got, n.art) {
		t.Fatalf("node b kept the artifact: %v", err)
	}
	if tmp, _ := os.ReadDir(filepath.Join(n.bDir, artifactsTmp)); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	// Served from node b's own copy now, even without the object.
	if err := n.objs.Delete(n.ctx, n.rel.SHA256); err != nil {
		t.Fatal(err)
	}
	if w := serve(n.b, n.rel.SHA256, nil); w.Code != 200 || !bytes.Equal(w.Body.Bytes(), n.art) {
		t.Fatalf("full GET on node b: %d, %d bytes", w.Code, w.Body.Len())
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSharedArtifactRefused: an object whose bytes differ from the
// release (same length, another length) or a missing object is refused
// with ErrUnavailable and leaves nothing in node b's artifacts directory;
// the download is a 500.
func TestSharedArtifactRefused(t *testing.T) {
	n := newSharedNodes(t, nil)
	tampered := bytes.Clone(n.art)
	tampered[len(tampered)/2] ^= 0x01
	for _, tc := range []struct {
		name string
		put  []byte // nil: delete the object
		want error
	}{
		{"bytes changed", tampered, firmware.ErrDigest},
		{"longer", append(bytes.Clone(n.art), 0), firmware.ErrSize},
		{"truncated", n.art[:len(n.art)-1], firmware.ErrSize},
		{"missing", nil, fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.put == nil {
				if err := n.objs.Delete(n.ctx, n.rel.SHA256); err != nil {
					t.Fatal(err)
				}
			} else if err := n.objs.Put(n.ctx, n.rel.SHA256, bytes.NewReader(tc.put)); err != nil {
				t.Fatal(err)
			}
			f, err := n.b.OpenArtifact(n.ctx, n.e)
			if err == nil {
				f.Close()
				t.Fatal("served")
			}
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want ErrUnavailable and %v", err, tc.want)
			}
			if w := serve(n.b, n.rel.SHA256, nil); w.Code != http.StatusInternalServerError {
				t.Fatalf("download: %d", w.Code)
			}
			if files := n.bFiles(t); len(files) != 0 {
				t.Fatalf("node b stored %v", files)
			}
		})
	}
}

// gatedShared counts Opens and holds each until released.
type gatedShared struct {
	Shared
	opens   atomic.Int32
	release chan struct{}
}

func (g *gatedShared) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	g.opens.Add(1)
	<-g.release
	return g.Shared.Open(ctx, name)
}

// TestSharedFetchOnce: two downloads of the same missing artifact wait
// for one fetch from the object store.
func TestSharedFetchOnce(t *testing.T) {
	g := &gatedShared{release: make(chan struct{})}
	n := newSharedNodes(t, func(s Shared) Shared { g.Shared = s; return g })
	var wg sync.WaitGroup
	got := make([][]byte, 2)
	for i := range got {
		wg.Go(func() {
			if w := serve(n.b, n.rel.SHA256, nil); w.Code == 200 {
				got[i] = w.Body.Bytes()
			}
		})
	}
	waiters := func() int {
		n.b.fetchMu.Lock()
		defer n.b.fetchMu.Unlock()
		if c := n.b.fetching[n.rel.SHA256]; c != nil {
			return c.waiters
		}
		return 0
	}
	deadline := time.Now().Add(10 * time.Second)
	for waiters() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if w := waiters(); w != 2 {
		t.Fatalf("%d downloads waiting on the fetch", w)
	}
	close(g.release)
	wg.Wait()
	if o := g.opens.Load(); o != 1 {
		t.Fatalf("%d fetches from the object store, want 1", o)
	}
	for i, b := range got {
		if !bytes.Equal(b, n.art) {
			t.Fatalf("download %d: %d bytes", i, len(b))
		}
	}
}

// TestShareStored: artifacts stored before the catalog had shared storage
// are put there at start, except a file that no longer hashes to its
// name; a second pass puts nothing.
func TestShareStored(t *testing.T) {
	f := newFixture(t) // f.cat has no shared storage
	bb, err := bus.Open(f.ctx, bus.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bb.Close() })
	objs, err := bb.Objects(f.ctx, bus.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	good := bytes.Repeat([]byte("old firmware "), 5000)
	if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(good), f.rel), bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Repeat([]byte("rotten firmware "), 100)
	r := testRelease(bad)
	r.Version = "1.3.0"
	if _, err := f.cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, r, f.rel), bytes.NewReader(bad)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.cat.ArtifactPath(r.SHA256), append(bad, '!'), 0o644); err != nil {
		t.Fatal(err)
	}
	cat, err := New(Options{Store: f.st, Clock: f.clk, DataDir: f.dir, Shared: objs})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := cat.ShareStored(f.ctx); err != nil || n != 1 {
		t.Fatalf("shared %d, %v; want 1", n, err)
	}
	goodRel := testRelease(good)
	if sum, size, err := objs.Digest(f.ctx, goodRel.SHA256); err != nil || size != int64(len(good)) || hex.EncodeToString(sum) != goodRel.SHA256 {
		t.Fatalf("good artifact in the object store: %d bytes, %v", size, err)
	}
	if _, _, err := objs.Digest(f.ctx, r.SHA256); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("corrupted file shared: %v", err)
	}
	if n, err := cat.ShareStored(f.ctx); err != nil || n != 0 {
		t.Fatalf("second pass shared %d, %v", n, err)
	}
}

// failingShared refuses every Put.
type failingShared struct{ Shared }

func (failingShared) Digest(context.Context, string) ([]byte, int64, error) {
	return nil, 0, fs.ErrNotExist
}

func (failingShared) Put(context.Context, string, io.Reader) error {
	return errors.New("object store unreachable")
}

// TestAddReleaseNotShared: an upload whose artifact cannot be put into
// the shared storage is refused and leaves nothing behind, so no node
// records a release the others cannot serve.
func TestAddReleaseNotShared(t *testing.T) {
	f := newFixture(t)
	cat, err := New(Options{Store: f.st, Clock: f.clk, DataDir: f.dir, Shared: failingShared{}})
	if err != nil {
		t.Fatal(err)
	}
	before := f.snapshot(t)
	art := []byte("firmware nobody else could serve")
	if _, err := cat.AddRelease(f.ctx, tenant, "op1", signedManifest(t, testRelease(art), f.rel), bytes.NewReader(art)); err == nil {
		t.Fatal("release added")
	}
	if after := f.snapshot(t); !after.equal(before) {
		t.Fatalf("state changed: %+v -> %+v", before, after)
	}
}
