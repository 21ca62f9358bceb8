// Package firmware is the signed firmware manifest format shared by the
// server (internal/ota) and the device agent, with its offline signing
// tools.
//
// Trust follows The Update Framework's roles. Each tenant holds an offline
// ROOT key (Ed25519). The root signs a keys document ([Keys]) listing the
// RELEASE keys it trusts, each with an expiry, plus a threshold and a
// version number; release keys sign firmware manifests ([Manifest]).
// Rotating or revoking a release key is a new keys document with a higher
// version signed by the root; a verifier refuses a keys document older than
// the last one it accepted (rollback) or past its expiry (freeze).
//
// Signatures cover canonical bytes, never the input bytes: a domain tag
// ("garrison.ota.manifest.v1\n" or "garrison.ota.keys.v1\n") followed by
// the compact JSON of the signed struct, encoded by this package with keys
// in sorted order and no whitespace (see [Manifest.Canonical]). A signature
// made for a keys document therefore never verifies as a manifest signature.
//
// The parsers ([ParseManifest], [ParseKeys]) take untrusted bytes: input is
// size-bounded, must be exactly one JSON value, and unknown fields are
// refused. Every refusal wraps one of the sentinel errors below, so callers
// (the server, the agent, the CLI) can report a clear reason with errors.Is.
//
// [Keygen], [SignKeys], [SignManifest], [VerifyKeys], [VerifyManifest] and
// [VerifyForDevice] work without a server. [Catalog] stores a tenant's trust
// root, keys document and releases in the store, and artifacts in a
// content-addressed directory.
package firmware

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Errors wrapped by every refusal.
var (
	// ErrMalformed: the bytes are not a well-formed document (bad JSON,
	// unknown field, trailing data, too large, invalid field value).
	ErrMalformed = errors.New("ota: malformed")
	// ErrSignature: a signature is missing, invalid, by an untrusted,
	// expired or revoked key, or fewer than the threshold are valid.
	ErrSignature = errors.New("ota: signature not trusted")
	// ErrExpired: the manifest or keys document is past its expiry.
	ErrExpired = errors.New("ota: expired")
	// ErrRollback: a keys document older than the last one accepted.
	ErrRollback = errors.New("ota: keys document rollback")
	// ErrWrongModel: the manifest does not target the device's model.
	ErrWrongModel = errors.New("ota: manifest for another model")
	// ErrDowngrade: the release would not move the device forward, or the
	// device is below the release's minimum version, or the release is
	// below the tenant's minimum version for the model.
	ErrDowngrade = errors.New("ota: downgrade refused")
	// ErrDigest: the artifact's SHA-256 differs from the manifest's.
	ErrDigest = errors.New("ota: artifact digest mismatch")
	// ErrSize: the artifact is larger or smaller than the manifest says, or
	// larger than the catalog accepts.
	ErrSize = errors.New("ota: artifact size mismatch")
	// ErrNoTrust: the tenant has no root key or keys document yet.
	ErrNoTrust = errors.New("ota: no trust configured")
)

// Limits on untrusted input.
const (
	MaxManifestSize = 64 << 10 // bytes of a manifest or keys document
	maxModels       = 64
	maxModelLen     = 64
	maxNotesLen     = 8 << 10
	maxSignatures   = 16
	maxKeys         = 64
)

// Domain tags prefixed to the canonical bytes before signing.
const (
	manifestDomain = "garrison.ota.manifest.v1\n"
	keysDomain     = "garrison.ota.keys.v1\n"
)

// Signature is one Ed25519 signature: KeyID is the hex SHA-256 of the raw
// 32-byte public key, Sig the hex signature.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// Release is the signed part of a manifest. Its fields are declared in
// the sorted order of their JSON keys, which makes encoding/json's output
// canonical (a test holds this).
type Release struct {
	Expires    time.Time `json:"expires"`     // RFC 3339
	MinVersion string    `json:"min_version"` // lowest version it may replace
	Models     []string  `json:"models"`
	Notes      string    `json:"notes"`
	SHA256     string    `json:"sha256"` // lowercase hex
	Size       int64     `json:"size"`
	Version    string    `json:"version"` // semver
}

// Manifest is a signed release.
type Manifest struct {
	Signatures []Signature `json:"signatures"`
	Signed     Release     `json:"signed"`
}

// ParseManifest decodes and validates a manifest. It does not check
// signatures (see [VerifyManifest]); a manifest with no signature parses.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := decodeStrict(b, &m); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if err := m.Signed.validate(); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if err := validateSignatures(m.Signatures); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	return &m, nil
}

// decodeStrict decodes exactly one JSON value of at most MaxManifestSize
// bytes into v, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxManifestSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(b), MaxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrMalformed)
	}
	return nil
}

func (r *Release) validate() error {
	if len(r.Models) == 0 || len(r.Models) > maxModels {
		return fmt.Errorf("%w: models: want 1 to %d", ErrMalformed, maxModels)
	}
	for i, m := range r.Models {
		if err := ValidModel(m); err != nil {
			return err
		}
		if slices.Contains(r.Models[:i], m) {
			return fmt.Errorf("%w: model %q listed twice", ErrMalformed, m)
		}
	}
	v, err := ParseVersion(r.Version)
	if err != nil {
		return err
	}
	mv, err := ParseVersion(r.MinVersion)
	if err != nil {
		return fmt.Errorf("min_version: %w", err)
	}
	if mv.Compare(v) > 0 {
		return fmt.Errorf("%w: min_version %s above version %s", ErrMalformed, r.MinVersion, r.Version)
	}
	if !IsHex(r.SHA256, 32) {
		return fmt.Errorf("%w: sha256 must be 64 lowercase hex characters", ErrMalformed)
	}
	if r.Size <= 0 {
		return fmt.Errorf("%w: size must be positive", ErrMalformed)
	}
	if r.Expires.IsZero() {
		return fmt.Errorf("%w: expires is required", ErrMalformed)
	}
	if len(r.Notes) > maxNotesLen {
		return fmt.Errorf("%w: notes longer than %d bytes", ErrMalformed, maxNotesLen)
	}
	return nil
}

// ValidModel checks a model name: 1 to 64 characters of [A-Za-z0-9._-].
func ValidModel(m string) error {
	if m == "" || len(m) > maxModelLen {
		return fmt.Errorf("%w: model %q: want 1 to %d characters", ErrMalformed, m, maxModelLen)
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: model %q: only [A-Za-z0-9._-]", ErrMalformed, m)
		}
	}
	return nil
}

func validateSignatures(sigs []Signature) error {
	if len(sigs) > maxSignatures {
		return fmt.Errorf("%w: more than %d signatures", ErrMalformed, maxSignatures)
	}
	for _, s := range sigs {
		if !IsHex(s.KeyID, 32) || !IsHex(s.Sig, ed25519.SignatureSize) {
			return fmt.Errorf("%w: signature needs a 64-hex keyid and a 128-hex sig", ErrMalformed)
		}
	}
	return nil
}

// IsHex reports whether s is exactly n bytes in lowercase hex.
func IsHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Canonical returns the bytes release keys sign: the compact JSON of
// m.Signed with keys in sorted order, times in RFC 3339 UTC, produced by
// this encoder from the parsed values (never the input bytes).
func (m *Manifest) Canonical() ([]byte, error) {
	r := m.Signed
	r.Expires = r.Expires.UTC()
	if r.Models == nil {
		r.Models = []string{}
	}
	b, err := jsonMarshal(r)
	if err != nil {
		return nil, fmt.Errorf("canonical manifest: %w", err)
	}
	return b, nil
}

// Marshal encodes the manifest (signed part canonical) for storage or
// transport; ParseManifest reads it back.
func (m *Manifest) Marshal() ([]byte, error) {
	c, err := m.Canonical()
	if err != nil {
		return nil, err
	}
	return marshalEnvelope(m.Signatures, c)
}

// marshalEnvelope encodes {"signatures":[...],"signed":<canonical>}.
func marshalEnvelope(sigs []Signature, canonical []byte) ([]byte, error) {
	if sigs == nil {
		sigs = []Signature{}
	}
	return jsonMarshal(struct {
		Signatures []Signature     `json:"signatures"`
		Signed     json.RawMessage `json:"signed"`
	}{sigs, canonical})
}

// jsonMarshal is json.Marshal without HTML escaping, so canonical bytes
// hold notes such as "<3" as written.
func jsonMarshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Sign adds key's signature over the canonical bytes, replacing an
// earlier signature by the same key.
func (m *Manifest) Sign(key ed25519.PrivateKey) error {
	if err := m.Signed.validate(); err != nil {
		return fmt.Errorf("sign manifest: %w", err)
	}
	c, err := m.Canonical()
	if err != nil {
		return err
	}
	m.Signatures = addSignature(m.Signatures, key, manifestDomain, c)
	return nil
}

func addSignature(sigs []Signature, key ed25519.PrivateKey, domain string, canonical []byte) []Signature {
	id := KeyID(key.Public().(ed25519.PublicKey))
	sig := ed25519.Sign(key, signingInput(domain, canonical))
	sigs = slices.DeleteFunc(slices.Clone(sigs), func(s Signature) bool { return s.KeyID == id })
	return append(sigs, Signature{KeyID: id, Sig: hex.EncodeToString(sig)})
}

func signingInput(domain string, canonical []byte) []byte {
	msg := make([]byte, 0, len(domain)+len(canonical))
	msg = append(msg, domain...)
	return append(msg, canonical...)
}

// NewRelease describes artifact for a manifest: it reads it to the end and
// fills SHA256 and Size; the caller sets the other fields (or passes them
// here) before signing.
func NewRelease(artifact io.Reader, models []string, version, minVersion string, expires time.Time, notes string) (Release, error) {
	h := sha256.New()
	n, err := io.Copy(h, artifact)
	if err != nil {
		return Release{}, fmt.Errorf("new release: %w", err)
	}
	r := Release{Expires: expires, MinVersion: minVersion, Models: models, Notes: notes,
		SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Version: version}
	if err := r.validate(); err != nil {
		return Release{}, fmt.Errorf("new release: %w", err)
	}
	return r, nil
}

// SignManifest parses manifest bytes (signed or not), adds the release
// key's signature and returns the re-encoded manifest. Signing twice with
// two keys yields a manifest for a threshold of two.
func SignManifest(manifest []byte, releaseKey ed25519.PrivateKey) ([]byte, error) {
	m, err := ParseManifest(manifest)
	if err != nil {
		return nil, err
	}
	if err := m.Sign(releaseKey); err != nil {
		return nil, err
	}
	return m.Marshal()
}
