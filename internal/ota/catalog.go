package ota

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/garrisonhq/garrison/firmware"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Settings keys, per tenant. Values are JSON.
const (
	settingRoot       = "ota.root"            // rootRecord
	settingKeys       = "ota.keys"            // the keys document (Keys.Marshal)
	settingIndex      = "ota.releases"        // []string digests, sorted
	settingRelease    = "ota.release/"        // + digest: Entry
	settingModel      = "ota.model/"          // + model: modelRecord
	defaultMaxArtSize = int64(1 << 30)        // 1 GiB
	artifactsDir      = "artifacts"           // under DataDir
	artifactsSHA256   = "artifacts/sha256"    // content-addressed files
	artifactsTmp      = "artifacts/tmp"       // uploads in progress
	auditSetRoot      = "ota.root.set"        // audit actions
	auditSetKeys      = "ota.keys.set"        //
	auditAddRelease   = "ota.release.add"     //
	auditSetMin       = "ota.min_version.set" //
	artifactFilePerm  = os.FileMode(0o644)    //
	artifactDirPerm   = os.FileMode(0o755)    //
	maxStoredReleases = 100_000               // per tenant index
)

// Options configure a Catalog.
type Options struct {
	Store   store.Store
	Clock   clock.Clock
	Logger  *slog.Logger
	DataDir string // artifacts live under DataDir/artifacts/sha256/ab/abcdef...
	// MaxArtifactSize bounds a manifest's size field and every upload;
	// 0 means 1 GiB.
	MaxArtifactSize int64
	// Observer, optional, is told of every release added and minimum
	// version set, after the change is committed (serve's detection keeps
	// its view of the catalog with it).
	Observer Observer
	// Shared, optional, is storage every node of the deployment reaches
	// (the bus's object store). AddRelease puts each verified artifact
	// there before it records the release; a node asked for an artifact
	// it does not hold fetches it from there, checks its size and SHA-256
	// against the release and keeps it in DataDir.
	Shared Shared
}

// Shared is artifact storage common to the nodes of a deployment, keyed
// by the artifact's hex SHA-256. *bus.Objects implements it.
type Shared interface {
	// Put stores r under name, replacing an object of that name.
	Put(ctx context.Context, name string, r io.Reader) error
	// Open streams the object; a missing one is an error wrapping
	// fs.ErrNotExist.
	Open(ctx context.Context, name string) (io.ReadCloser, error)
	// Digest returns the SHA-256 and size recorded with the object; a
	// missing one is an error wrapping fs.ErrNotExist.
	Digest(ctx context.Context, name string) (sha256 []byte, size int64, err error)
}

// ErrUnavailable: the artifact of a release is neither in this node's
// artifacts directory nor, intact, in the shared storage.
var ErrUnavailable = errors.New("ota: artifact unavailable")

// fetchTimeout bounds one fetch of an artifact from the shared storage
// (it outlives the request that started it: others may wait on it).
const fetchTimeout = 30 * time.Minute

// Observer follows catalog changes. Its methods must be quick and must
// not call back into the Catalog.
type Observer interface {
	ReleaseAdded(tenant event.TenantID, e Entry)
	MinVersionSet(tenant event.TenantID, model, version string)
}

// Catalog is a tenant-scoped firmware catalog. It is safe for concurrent
// use; all state is in the store and the artifact directory.
type Catalog struct {
	st      store.Store
	clk     clock.Clock
	log     *slog.Logger
	dir     string
	maxSize int64
	obs     Observer
	shared  Shared
	// stripes serialize adds and fetches of the same digest within this
	// process, so a failed add never removes a file a concurrent add of
	// the same content (another tenant) relies on.
	stripes [64]sync.Mutex
	// fetching holds the fetch in progress of each digest from the
	// shared storage: a second download of the same missing artifact
	// waits for the first fetch instead of starting its own.
	fetchMu  sync.Mutex
	fetching map[string]*fetchCall
}

type fetchCall struct {
	done    chan struct{}
	err     error
	waiters int // requests waiting on it (tests observe it)
}

// New validates o and returns a Catalog. It creates the artifact
// directories.
func New(o Options) (*Catalog, error) {
	if o.Store == nil || o.Clock == nil || o.DataDir == "" {
		return nil, errors.New("ota: Store, Clock and DataDir are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxArtifactSize <= 0 {
		o.MaxArtifactSize = defaultMaxArtSize
	}
	for _, d := range []string{artifactsSHA256, artifactsTmp} {
		if err := os.MkdirAll(filepath.Join(o.DataDir, d), artifactDirPerm); err != nil {
			return nil, fmt.Errorf("ota: %w", err)
		}
	}
	return &Catalog{st: o.Store, clk: o.Clock, log: o.Logger, dir: o.DataDir, maxSize: o.MaxArtifactSize, obs: o.Observer,
		shared: o.Shared, fetching: map[string]*fetchCall{}}, nil
}

type rootRecord struct {
	KeyID  string `json:"keyid"`
	Public string `json:"public"` // hex
}

type modelRecord struct {
	MinVersion string            `json:"min_version,omitempty"`
	Releases   map[string]string `json:"releases"` // digest -> version
}

// Entry is a release in the catalog.
type Entry struct {
	Manifest json.RawMessage `json:"manifest"` // as re-encoded by Manifest.Marshal
	Digest   string          `json:"sha256"`
	Version  string          `json:"version"`
	Models   []string        `json:"models"`
	Size     int64           `json:"size"`
	Expires  time.Time       `json:"expires"`
	KeyIDs   []string        `json:"keyids"` // release keys whose signatures were valid
	AddedAt  time.Time       `json:"added_at"`
	AddedBy  string          `json:"added_by"`
}

// SetRoot makes pub the tenant's root key (first setup or rotation by an
// administrator), with its audit record. A stored keys document stays in
// place but is only used again once it verifies against the new root.
func (c *Catalog) SetRoot(ctx context.Context, tenant event.TenantID, actor string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("ota set root: %w: not an Ed25519 public key", firmware.ErrMalformed)
	}
	rec := rootRecord{KeyID: firmware.KeyID(pub), Public: hex.EncodeToString(pub)}
	b, _ := json.Marshal(rec)
	err := c.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().Put(ctx, tenant, settingRoot, b); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, c.entry(tenant, actor, auditSetRoot, "ota/root", map[string]any{"keyid": rec.KeyID}))
		return err
	})
	if err != nil {
		return fmt.Errorf("ota set root: %w", err)
	}
	c.log.InfoContext(ctx, "ota root key set", "tenant", tenant, "keyid", rec.KeyID)
	return nil
}

// SetKeys verifies a keys document against the tenant's root key (signed,
// unexpired, version not below the stored one) and stores it with its
// audit record. The same version is accepted again only with identical
// content; a different document must carry a higher version.
func (c *Catalog) SetKeys(ctx context.Context, tenant event.TenantID, actor string, doc []byte) (*firmware.Keys, error) {
	var k *firmware.Keys
	err := c.st.Update(ctx, func(tx store.Tx) error {
		root, err := loadRoot(ctx, tx, tenant)
		if err != nil {
			return err
		}
		var last uint64
		var prev *firmware.Keys
		if old, err := tx.Settings().Get(ctx, tenant, settingKeys); err == nil {
			if prev, err = firmware.ParseKeys(old); err != nil {
				return fmt.Errorf("stored keys document: %w", err)
			}
			last = prev.Signed.Version
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		k, err = firmware.VerifyKeys(doc, root, c.clk.Now(), last)
		if err != nil {
			return err
		}
		enc, err := k.Marshal()
		if err != nil {
			return err
		}
		if prev != nil && k.Signed.Version == last {
			if old, _ := prev.Marshal(); !bytes.Equal(old, enc) {
				return fmt.Errorf("%w: version %d is already stored with different content; raise the version", firmware.ErrRollback, last)
			}
		}
		if err := tx.Settings().Put(ctx, tenant, settingKeys, enc); err != nil {
			return err
		}
		ids := make([]string, len(k.Signed.Keys))
		for i, tk := range k.Signed.Keys {
			ids[i] = tk.KeyID
		}
		_, err = audit.Append(ctx, tx, c.entry(tenant, actor, auditSetKeys, "ota/keys", map[string]any{
			"version": k.Signed.Version, "threshold": k.Signed.Required(), "keyids": ids,
			"expires": k.Signed.Expires.UTC().Format(time.RFC3339),
		}))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ota set keys: %w", err)
	}
	c.log.InfoContext(ctx, "ota keys document set", "tenant", tenant, "version", k.Signed.Version)
	return k, nil
}

func loadRoot(ctx context.Context, tx store.Tx, tenant event.TenantID) (ed25519.PublicKey, error) {
	b, err := tx.Settings().Get(ctx, tenant, settingRoot)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: tenant has no root key", firmware.ErrNoTrust)
	}
	if err != nil {
		return nil, err
	}
	var r rootRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("stored root key: %w", err)
	}
	pub, err := hex.DecodeString(r.Public)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("stored root key: %w", firmware.ErrMalformed)
	}
	return pub, nil
}

// trust loads the tenant's keys document and re-verifies it against the
// root at now (so an expired keys document stops every verification).
func (c *Catalog) trust(ctx context.Context, tx store.Tx, tenant event.TenantID, now time.Time) (*firmware.Keys, error) {
	root, err := loadRoot(ctx, tx, tenant)
	if err != nil {
		return nil, err
	}
	doc, err := tx.Settings().Get(ctx, tenant, settingKeys)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: tenant has no keys document", firmware.ErrNoTrust)
	}
	if err != nil {
		return nil, err
	}
	return firmware.VerifyKeys(doc, root, now, 0)
}

// Keys returns the tenant's current keys document (what agents fetch), or
// an error wrapping ErrNoTrust.
func (c *Catalog) Keys(ctx context.Context, tenant event.TenantID) ([]byte, error) {
	var doc []byte
	err := c.st.View(ctx, func(tx store.Tx) error {
		var err error
		doc, err = tx.Settings().Get(ctx, tenant, settingKeys)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: tenant has no keys document", firmware.ErrNoTrust)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ota keys: %w", err)
	}
	return doc, nil
}

// AddRelease verifies a signed manifest against the tenant's trust chain
// (keys document signed by root and fresh, manifest signed by the
// threshold of trusted unexpired release keys, manifest unexpired, version
// not below the tenant's minimum for any model, size within the limit),
// then streams artifact to a temporary file while hashing, refuses it if
// it is larger or smaller than the manifest's size or its digest differs,
// moves it to its content-addressed path and records the release with its
// audit record in one transaction. On any refusal nothing is left behind:
// no file, no setting, no audit record.
func (c *Catalog) AddRelease(ctx context.Context, tenant event.TenantID, actor string, manifest []byte, artifact io.Reader) (Entry, error) {
	m, err := firmware.ParseManifest(manifest)
	if err != nil {
		return Entry{}, fmt.Errorf("ota add release: %w", err)
	}
	if m.Signed.Size > c.maxSize {
		return Entry{}, fmt.Errorf("ota add release: %w: manifest size %d above the catalog limit %d", firmware.ErrSize, m.Signed.Size, c.maxSize)
	}
	// Verify before reading a byte of the artifact.
	if err := c.st.View(ctx, func(tx store.Tx) error {
		_, err := c.checkRelease(ctx, tx, tenant, m)
		return err
	}); err != nil {
		return Entry{}, fmt.Errorf("ota add release: %w", err)
	}

	mu := &c.stripes[digestStripe(m.Signed.SHA256)]
	mu.Lock()
	defer mu.Unlock()
	final, created, err := c.storeArtifact(ctx, m.Signed.SHA256, m.Signed.Size, artifact)
	if err != nil {
		return Entry{}, fmt.Errorf("ota add release: %w", err)
	}
	if err := c.share(ctx, m.Signed.SHA256, m.Signed.Size, final); err != nil {
		if created {
			_ = os.Remove(final)
		}
		return Entry{}, fmt.Errorf("ota add release: %w", err)
	}
	var e Entry
	err = c.st.Update(ctx, func(tx store.Tx) error {
		// Re-check inside the write transaction: trust may have changed
		// while the artifact streamed.
		keyIDs, err := c.checkRelease(ctx, tx, tenant, m)
		if err != nil {
			return err
		}
		enc, err := m.Marshal()
		if err != nil {
			return err
		}
		now := c.clk.Now().UTC()
		e = Entry{Manifest: enc, Digest: m.Signed.SHA256, Version: m.Signed.Version, Models: m.Signed.Models,
			Size: m.Signed.Size, Expires: m.Signed.Expires.UTC(), KeyIDs: keyIDs, AddedAt: now, AddedBy: actor}
		return c.record(ctx, tx, tenant, e)
	})
	if err != nil {
		if created {
			_ = os.Remove(final)
		}
		return Entry{}, fmt.Errorf("ota add release: %w", err)
	}
	c.log.InfoContext(ctx, "ota release added", "tenant", tenant, "version", e.Version, "sha256", e.Digest)
	if c.obs != nil {
		c.obs.ReleaseAdded(tenant, e)
	}
	return e, nil
}

func digestStripe(digest string) int {
	b, _ := hex.DecodeString(digest[:2])
	return int(b[0]) % 64
}

// checkRelease verifies m against the tenant's trust and catalog state
// and returns the key ids whose signatures are valid.
func (c *Catalog) checkRelease(ctx context.Context, tx store.Tx, tenant event.TenantID, m *firmware.Manifest) ([]string, error) {
	now := c.clk.Now()
	k, err := c.trust(ctx, tx, tenant, now)
	if err != nil {
		return nil, err
	}
	if err := firmware.VerifyManifest(m, k, now); err != nil {
		return nil, err
	}
	if _, err := tx.Settings().Get(ctx, tenant, settingRelease+m.Signed.SHA256); err == nil {
		return nil, fmt.Errorf("%w: release %s already in the catalog", store.ErrConflict, m.Signed.SHA256)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	v, _ := firmware.ParseVersion(m.Signed.Version)
	for _, model := range m.Signed.Models {
		mr, err := getModel(ctx, tx, tenant, model)
		if err != nil {
			return nil, err
		}
		if mr.MinVersion != "" {
			if minV, err := firmware.ParseVersion(mr.MinVersion); err == nil && v.Compare(minV) < 0 {
				return nil, fmt.Errorf("%w: release %s is below the tenant's minimum %s for model %s", firmware.ErrDowngrade, m.Signed.Version, mr.MinVersion, model)
			}
		}
		for d, ver := range mr.Releases {
			if ver == m.Signed.Version {
				return nil, fmt.Errorf("%w: model %s already has version %s (%s)", store.ErrConflict, model, ver, d)
			}
		}
	}
	var ids []string
	for _, s := range m.Signatures {
		if slices.ContainsFunc(k.Signed.Keys, func(tk firmware.TrustedKey) bool { return tk.KeyID == s.KeyID }) && !slices.Contains(ids, s.KeyID) {
			ids = append(ids, s.KeyID)
		}
	}
	return ids, nil
}

func (c *Catalog) record(ctx context.Context, tx store.Tx, tenant event.TenantID, e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := tx.Settings().Put(ctx, tenant, settingRelease+e.Digest, b); err != nil {
		return err
	}
	for _, model := range e.Models {
		mr, err := getModel(ctx, tx, tenant, model)
		if err != nil {
			return err
		}
		mr.Releases[e.Digest] = e.Version
		if err := putJSON(ctx, tx, tenant, settingModel+model, mr); err != nil {
			return err
		}
	}
	idx, err := getIndex(ctx, tx, tenant)
	if err != nil {
		return err
	}
	if len(idx) >= maxStoredReleases {
		return fmt.Errorf("%w: tenant has %d releases, the limit", store.ErrInvalid, len(idx))
	}
	i, _ := slices.BinarySearch(idx, e.Digest)
	idx = slices.Insert(idx, i, e.Digest)
	if err := putJSON(ctx, tx, tenant, settingIndex, idx); err != nil {
		return err
	}
	_, err = audit.Append(ctx, tx, c.entry(tenant, e.AddedBy, auditAddRelease, "release/"+e.Digest, map[string]any{
		"version": e.Version, "models": e.Models, "size": e.Size, "keyids": e.KeyIDs,
		"expires": e.Expires.Format(time.RFC3339),
	}))
	return err
}

func getModel(ctx context.Context, tx store.Tx, tenant event.TenantID, model string) (modelRecord, error) {
	mr := modelRecord{Releases: map[string]string{}}
	b, err := tx.Settings().Get(ctx, tenant, settingModel+model)
	if errors.Is(err, store.ErrNotFound) {
		return mr, nil
	}
	if err != nil {
		return mr, err
	}
	if err := json.Unmarshal(b, &mr); err != nil {
		return mr, fmt.Errorf("stored model %s: %w", model, err)
	}
	if mr.Releases == nil {
		mr.Releases = map[string]string{}
	}
	return mr, nil
}

func getIndex(ctx context.Context, tx store.Tx, tenant event.TenantID) ([]string, error) {
	var idx []string
	b, err := tx.Settings().Get(ctx, tenant, settingIndex)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("stored release index: %w", err)
	}
	return idx, nil
}

func putJSON(ctx context.Context, tx store.Tx, tenant event.TenantID, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Settings().Put(ctx, tenant, key, b)
}

func (c *Catalog) entry(tenant event.TenantID, actor, action, target string, details map[string]any) audit.Entry {
	d, _ := json.Marshal(details)
	return audit.Entry{Tenant: tenant, Time: c.clk.Now(), Actor: actor, Action: action, Target: target, Details: d}
}

// ArtifactPath returns where the artifact with that hex SHA-256 lives.
func (c *Catalog) ArtifactPath(digest string) string {
	return filepath.Join(c.dir, artifactsSHA256, digest[:2], digest)
}

// storeArtifact streams r into a temporary file while hashing, checks size
// and digest, and renames it into place. created reports whether the
// final file is new (an identical artifact may already be stored for
// another tenant or release).
func (c *Catalog) storeArtifact(ctx context.Context, digest string, size int64, r io.Reader) (final string, created bool, err error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(c.dir, artifactsTmp, digest+"."+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, artifactFilePerm)
	if err != nil {
		return "", false, err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(ctxReader{ctx, r}, size+1))
	if err != nil {
		return "", false, fmt.Errorf("artifact upload: %w", err)
	}
	switch {
	case n > size:
		return "", false, fmt.Errorf("%w: artifact is larger than the manifest's %d bytes", firmware.ErrSize, size)
	case n < size:
		return "", false, fmt.Errorf("%w: artifact truncated: %d of %d bytes", firmware.ErrSize, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return "", false, fmt.Errorf("%w: artifact sha256 %s, manifest says %s", firmware.ErrDigest, got, digest)
	}
	if err = f.Sync(); err != nil {
		return "", false, err
	}
	err = f.Close()
	f = nil
	if err != nil {
		return "", false, err
	}
	final = c.ArtifactPath(digest)
	if err = os.MkdirAll(filepath.Dir(final), artifactDirPerm); err != nil {
		return "", false, err
	}
	if _, statErr := os.Stat(final); statErr == nil {
		os.Remove(tmp) // identical content already stored
		return final, false, nil
	}
	if err = os.Rename(tmp, final); err != nil {
		return "", false, err
	}
	return final, true, nil
}

// ctxReader stops a long upload when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Release reports the version of the tenant's release with that digest
// for model, and whether there is one. The detection engine's
// unapproved reads it.
func (c *Catalog) Release(ctx context.Context, tenant event.TenantID, model, digest string) (version string, ok bool, err error) {
	err = c.st.View(ctx, func(tx store.Tx) error {
		mr, err := getModel(ctx, tx, tenant, model)
		if err != nil {
			return err
		}
		version, ok = mr.Releases[strings.ToLower(digest)]
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("ota release: %w", err)
	}
	return version, ok, nil
}

// MinVersion reports the tenant's minimum firmware version for model (the
// floor below which rollback fires and releases are refused), and
// whether one is set.
func (c *Catalog) MinVersion(ctx context.Context, tenant event.TenantID, model string) (string, bool, error) {
	var mr modelRecord
	err := c.st.View(ctx, func(tx store.Tx) error {
		var err error
		mr, err = getModel(ctx, tx, tenant, model)
		return err
	})
	if err != nil {
		return "", false, fmt.Errorf("ota min version: %w", err)
	}
	return mr.MinVersion, mr.MinVersion != "", nil
}

// SetMinVersion sets the tenant's minimum version for model, with its
// audit record. An empty version clears it.
func (c *Catalog) SetMinVersion(ctx context.Context, tenant event.TenantID, actor, model, version string) error {
	if err := firmware.ValidModel(model); err != nil {
		return fmt.Errorf("ota set min version: %w", err)
	}
	if version != "" {
		if _, err := firmware.ParseVersion(version); err != nil {
			return fmt.Errorf("ota set min version: %w", err)
		}
	}
	err := c.st.Update(ctx, func(tx store.Tx) error {
		mr, err := getModel(ctx, tx, tenant, model)
		if err != nil {
			return err
		}
		prev := mr.MinVersion
		mr.MinVersion = version
		if err := putJSON(ctx, tx, tenant, settingModel+model, mr); err != nil {
			return err
		}
		_, err = audit.Append(ctx, tx, c.entry(tenant, actor, auditSetMin, "model/"+model, map[string]any{"from": prev, "to": version}))
		return err
	})
	if err != nil {
		return fmt.Errorf("ota set min version: %w", err)
	}
	if c.obs != nil {
		c.obs.MinVersionSet(tenant, model, version)
	}
	return nil
}

// Releases lists the tenant's releases ordered by digest.
func (c *Catalog) Releases(ctx context.Context, tenant event.TenantID) ([]Entry, error) {
	var out []Entry
	err := c.st.View(ctx, func(tx store.Tx) error {
		idx, err := getIndex(ctx, tx, tenant)
		if err != nil {
			return err
		}
		out = make([]Entry, 0, len(idx))
		for _, d := range idx {
			e, err := getEntry(ctx, tx, tenant, d)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ota releases: %w", err)
	}
	return out, nil
}

func getEntry(ctx context.Context, tx store.Tx, tenant event.TenantID, digest string) (Entry, error) {
	var e Entry
	b, err := tx.Settings().Get(ctx, tenant, settingRelease+digest)
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("stored release %s: %w", digest, err)
	}
	return e, nil
}

// Entry returns the tenant's release with that digest or an error
// wrapping store.ErrNotFound.
func (c *Catalog) Entry(ctx context.Context, tenant event.TenantID, digest string) (Entry, error) {
	var e Entry
	err := c.st.View(ctx, func(tx store.Tx) error {
		var err error
		e, err = getEntry(ctx, tx, tenant, digest)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("ota entry: %w", err)
	}
	return e, nil
}

// Handler serves artifacts by digest: GET or HEAD on a path whose last
// element is the 64-hex SHA-256, with Range and If-Range (ETag
// "sha256:<hex>") so interrupted downloads resume. tenant tells which
// tenant the authenticated caller (a device behind mutual TLS) belongs
// to; an artifact that is not a release of that tenant is 404, the same
// as a missing one. Mount it behind authentication with
// http.StripPrefix.
func (c *Catalog) Handler(tenant func(*http.Request) (event.TenantID, bool)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		t, ok := tenant(r)
		if !ok {
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		digest := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		if !firmware.IsHex(digest, sha256.Size) {
			http.NotFound(w, r)
			return
		}
		e, err := c.Entry(r.Context(), t, digest)
		if errors.Is(err, store.ErrNotFound) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			c.log.ErrorContext(r.Context(), "ota artifact lookup", "tenant", t, "sha256", digest, "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		f, err := c.OpenArtifact(r.Context(), e)
		if err != nil {
			c.log.ErrorContext(r.Context(), "ota artifact missing", "tenant", t, "sha256", digest, "err", err)
			http.Error(w, "artifact unavailable", http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"sha256:`+digest+`"`)
		w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
		http.ServeContent(w, r, "", e.AddedAt, f)
	})
}

// share puts the verified artifact at path into the shared storage,
// unless an object with its SHA-256 and size is there already.
func (c *Catalog) share(ctx context.Context, digest string, size int64, path string) error {
	if c.shared == nil {
		return nil
	}
	want, _ := hex.DecodeString(digest)
	if sum, n, err := c.shared.Digest(ctx, digest); err == nil && n == size && bytes.Equal(sum, want) {
		return nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("artifact not shared with the other nodes: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := c.shared.Put(ctx, digest, f); err != nil {
		return fmt.Errorf("artifact not shared with the other nodes: %w", err)
	}
	c.log.InfoContext(ctx, "ota artifact shared", "sha256", digest, "size", size)
	return nil
}

// OpenArtifact opens the artifact of release e from this node's artifacts
// directory. When the file is missing and the catalog has shared storage,
// it first fetches the artifact from there (one fetch per digest at a
// time; concurrent callers wait for it), checks its size and SHA-256
// against e and moves it into place; an object that is missing or does
// not match stores nothing and gives an error wrapping ErrUnavailable.
func (c *Catalog) OpenArtifact(ctx context.Context, e Entry) (*os.File, error) {
	path := c.ArtifactPath(e.Digest)
	f, err := os.Open(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	if c.shared == nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err := c.fetch(ctx, e.Digest, e.Size); err != nil {
		return nil, err
	}
	return os.Open(path)
}

// fetch brings the artifact into the artifacts directory from the shared
// storage, or waits for the fetch of the same digest in progress.
func (c *Catalog) fetch(ctx context.Context, digest string, size int64) error {
	c.fetchMu.Lock()
	call, running := c.fetching[digest]
	if !running {
		call = &fetchCall{done: make(chan struct{})}
		c.fetching[digest] = call
	}
	call.waiters++
	c.fetchMu.Unlock()
	if running {
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Not canceled with the request: others may be waiting on it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	call.err = c.fetchShared(fctx, digest, size)
	c.fetchMu.Lock()
	delete(c.fetching, digest)
	c.fetchMu.Unlock()
	close(call.done)
	return call.err
}

func (c *Catalog) fetchShared(ctx context.Context, digest string, size int64) error {
	mu := &c.stripes[digestStripe(digest)]
	mu.Lock()
	defer mu.Unlock()
	if _, err := os.Stat(c.ArtifactPath(digest)); err == nil {
		return nil // added meanwhile
	}
	r, err := c.shared.Open(ctx, digest)
	if err != nil {
		return fmt.Errorf("%w: %s from the shared storage: %w", ErrUnavailable, digest, err)
	}
	defer r.Close()
	if _, _, err := c.storeArtifact(ctx, digest, size, r); err != nil {
		c.log.ErrorContext(ctx, "ota artifact refused from the shared storage", "sha256", digest, "size", size, "err", err)
		return fmt.Errorf("%w: %s from the shared storage: %w", ErrUnavailable, digest, err)
	}
	c.log.InfoContext(ctx, "ota artifact fetched from the shared storage", "sha256", digest, "size", size)
	return nil
}

// ShareStored puts into the shared storage every artifact of this node's
// artifacts directory the storage lacks (artifacts stored before the
// deployment shared them), after checking that each file still hashes to
// its name; a file that does not is logged and left out. It returns how
// many artifacts it put.
func (c *Catalog) ShareStored(ctx context.Context) (int, error) {
	if c.shared == nil {
		return 0, nil
	}
	dirs, err := os.ReadDir(filepath.Join(c.dir, artifactsSHA256))
	if err != nil {
		return 0, fmt.Errorf("ota share stored artifacts: %w", err)
	}
	n := 0
	for _, d := range dirs {
		files, err := os.ReadDir(filepath.Join(c.dir, artifactsSHA256, d.Name()))
		if err != nil {
			continue
		}
		for _, f := range files {
			digest := f.Name()
			if !firmware.IsHex(digest, sha256.Size) || digest[:2] != d.Name() {
				continue
			}
			put, err := c.shareStored(ctx, digest)
			if err != nil {
				if ctx.Err() != nil {
					return n, ctx.Err()
				}
				c.log.WarnContext(ctx, "ota stored artifact not shared", "sha256", digest, "err", err)
				continue
			}
			if put {
				n++
			}
		}
	}
	return n, nil
}

func (c *Catalog) shareStored(ctx context.Context, digest string) (bool, error) {
	mu := &c.stripes[digestStripe(digest)]
	mu.Lock()
	defer mu.Unlock()
	path := c.ArtifactPath(digest)
	if _, _, err := c.shared.Digest(ctx, digest); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	h := sha256.New()
	size, err := io.Copy(h, ctxReader{ctx, f})
	f.Close()
	if err != nil {
		return false, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return false, fmt.Errorf("%w: stored file hashes to %s", firmware.ErrDigest, got)
	}
	return true, c.share(ctx, digest, size, path)
}
