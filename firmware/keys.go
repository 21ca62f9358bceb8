package firmware

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// KeyID is the hex SHA-256 of the raw 32-byte Ed25519 public key.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:])
}

// Role names which kind of key a pair is; it names the files Keygen writes.
type Role string

// Key roles.
const (
	RoleRoot    Role = "root"
	RoleRelease Role = "release"
)

// KeyPair names the files Keygen wrote.
type KeyPair struct {
	KeyID      string
	PrivateKey string // path, mode 0600, PEM "PRIVATE KEY" (PKCS #8)
	PublicKey  string // path, mode 0644, PEM "PUBLIC KEY" (PKIX)
}

// Keygen creates an Ed25519 key pair for role in dir as <name>.key and
// <name>.pub (name defaults to the role). It refuses to overwrite existing
// files. rnd may be nil for crypto/rand.
func Keygen(dir string, role Role, name string, rnd io.Reader) (KeyPair, error) {
	if role != RoleRoot && role != RoleRelease {
		return KeyPair{}, fmt.Errorf("keygen: unknown role %q", role)
	}
	if name == "" {
		name = string(role)
	}
	if name != filepath.Base(name) || name == "." || name == ".." {
		return KeyPair{}, fmt.Errorf("keygen: name %q must be a plain file name", name)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	pub, priv, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return KeyPair{}, fmt.Errorf("keygen: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return KeyPair{}, fmt.Errorf("keygen: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return KeyPair{}, fmt.Errorf("keygen: %w", err)
	}
	kp := KeyPair{
		KeyID:      KeyID(pub),
		PrivateKey: filepath.Join(dir, name+".key"),
		PublicKey:  filepath.Join(dir, name+".pub"),
	}
	if err := writeNew(kp.PrivateKey, 0o600, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})); err != nil {
		return KeyPair{}, err
	}
	if err := writeNew(kp.PublicKey, 0o644, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})); err != nil {
		_ = os.Remove(kp.PrivateKey)
		return KeyPair{}, err
	}
	return kp, nil
}

func writeNew(path string, mode os.FileMode, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("keygen: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("keygen: sync %s: %w", path, err)
	}
	return f.Close()
}

// ParsePrivateKey decodes a PEM "PRIVATE KEY" holding an Ed25519 key.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: not a PEM PRIVATE KEY", ErrMalformed)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: not an Ed25519 key", ErrMalformed)
	}
	return ek, nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" holding an Ed25519 key.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%w: not a PEM PUBLIC KEY", ErrMalformed)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: not an Ed25519 key", ErrMalformed)
	}
	return ek, nil
}

// LoadPrivateKey reads a private key file written by Keygen.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	return ParsePrivateKey(b)
}

// LoadPublicKey reads a public key file written by Keygen.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	return ParsePublicKey(b)
}

// TrustedKey is a release key listed in a keys document.
type TrustedKey struct {
	Expires time.Time `json:"expires"`
	KeyID   string    `json:"keyid"`  // KeyID(Public)
	Public  string    `json:"public"` // hex raw 32-byte Ed25519 key
}

// KeySet is the signed part of a keys document, fields in sorted JSON key
// order (canonical encoding, as for Release).
type KeySet struct {
	Expires   time.Time    `json:"expires"`
	Keys      []TrustedKey `json:"keys"`
	Threshold int          `json:"threshold"` // distinct valid signatures a manifest needs; 0 means 1
	Version   uint64       `json:"version"`   // strictly increases with every change
}

// Keys is a keys document: the release keys the root trusts.
type Keys struct {
	Signatures []Signature `json:"signatures"`
	Signed     KeySet      `json:"signed"`
}

// ParseKeys decodes and validates a keys document without checking its
// signature (see [VerifyKeys]).
func ParseKeys(b []byte) (*Keys, error) {
	var k Keys
	if err := decodeStrict(b, &k); err != nil {
		return nil, fmt.Errorf("parse keys: %w", err)
	}
	if err := k.Signed.validate(); err != nil {
		return nil, fmt.Errorf("parse keys: %w", err)
	}
	if err := validateSignatures(k.Signatures); err != nil {
		return nil, fmt.Errorf("parse keys: %w", err)
	}
	return &k, nil
}

func (s *KeySet) validate() error {
	if s.Version == 0 {
		return fmt.Errorf("%w: version must be at least 1", ErrMalformed)
	}
	if s.Expires.IsZero() {
		return fmt.Errorf("%w: expires is required", ErrMalformed)
	}
	if len(s.Keys) > maxKeys {
		return fmt.Errorf("%w: more than %d keys", ErrMalformed, maxKeys)
	}
	if s.Threshold < 0 || s.Threshold > max(len(s.Keys), 1) {
		return fmt.Errorf("%w: threshold %d with %d keys", ErrMalformed, s.Threshold, len(s.Keys))
	}
	for i, k := range s.Keys {
		if !IsHex(k.Public, ed25519.PublicKeySize) {
			return fmt.Errorf("%w: key %d: public must be 64 lowercase hex characters", ErrMalformed, i)
		}
		pub, _ := hex.DecodeString(k.Public)
		if k.KeyID != KeyID(pub) {
			return fmt.Errorf("%w: key %d: keyid is not the SHA-256 of the public key", ErrMalformed, i)
		}
		if k.Expires.IsZero() {
			return fmt.Errorf("%w: key %s: expires is required", ErrMalformed, k.KeyID)
		}
		if slices.ContainsFunc(s.Keys[:i], func(o TrustedKey) bool { return o.KeyID == k.KeyID }) {
			return fmt.Errorf("%w: key %s listed twice", ErrMalformed, k.KeyID)
		}
	}
	return nil
}

// threshold returns the effective threshold (0 means 1).
// Required is how many valid signatures a manifest needs (Threshold, at least 1).
func (s *KeySet) Required() int { return max(s.Threshold, 1) }

// Canonical returns the bytes the root key signs (see package doc).
func (k *Keys) Canonical() ([]byte, error) {
	s := k.Signed
	s.Expires = s.Expires.UTC()
	s.Keys = slices.Clone(s.Keys)
	if s.Keys == nil {
		s.Keys = []TrustedKey{}
	}
	for i := range s.Keys {
		s.Keys[i].Expires = s.Keys[i].Expires.UTC()
	}
	b, err := jsonMarshal(s)
	if err != nil {
		return nil, fmt.Errorf("canonical keys: %w", err)
	}
	return b, nil
}

// Marshal encodes the keys document; ParseKeys reads it back.
func (k *Keys) Marshal() ([]byte, error) {
	c, err := k.Canonical()
	if err != nil {
		return nil, err
	}
	return marshalEnvelope(k.Signatures, c)
}

// NewTrustedKey lists pub in a keys document until expires.
func NewTrustedKey(pub ed25519.PublicKey, expires time.Time) TrustedKey {
	return TrustedKey{Expires: expires, KeyID: KeyID(pub), Public: hex.EncodeToString(pub)}
}

// SignKeys validates set, signs it with the root key and returns the
// encoded keys document.
func SignKeys(set KeySet, root ed25519.PrivateKey) ([]byte, error) {
	if err := set.validate(); err != nil {
		return nil, fmt.Errorf("sign keys: %w", err)
	}
	k := &Keys{Signed: set}
	c, err := k.Canonical()
	if err != nil {
		return nil, err
	}
	k.Signatures = addSignature(nil, root, keysDomain, c)
	return k.Marshal()
}

// VerifyKeys parses a keys document and checks that root signed it, that
// it has not expired at now and that its version is at least
// lastVersion (0 when none was seen). Equal versions are accepted: the
// caller compares content when replacing a stored document.
func VerifyKeys(doc []byte, root ed25519.PublicKey, now time.Time, lastVersion uint64) (*Keys, error) {
	k, err := ParseKeys(doc)
	if err != nil {
		return nil, err
	}
	c, err := k.Canonical()
	if err != nil {
		return nil, err
	}
	if !hasValidSignature(k.Signatures, root, keysDomain, c) {
		return nil, fmt.Errorf("verify keys: %w: no valid signature by root key %s", ErrSignature, KeyID(root))
	}
	if !now.Before(k.Signed.Expires) {
		return nil, fmt.Errorf("verify keys: %w: keys document version %d expired at %s", ErrExpired, k.Signed.Version, k.Signed.Expires.UTC().Format(time.RFC3339))
	}
	if k.Signed.Version < lastVersion {
		return nil, fmt.Errorf("verify keys: %w: version %d is older than %d", ErrRollback, k.Signed.Version, lastVersion)
	}
	return k, nil
}

func hasValidSignature(sigs []Signature, pub ed25519.PublicKey, domain string, canonical []byte) bool {
	id := KeyID(pub)
	var msg []byte
	for _, s := range sigs {
		if s.KeyID != id {
			continue
		}
		if msg == nil {
			msg = signingInput(domain, canonical)
		}
		sig, err := hex.DecodeString(s.Sig)
		if err == nil && ed25519.Verify(pub, msg, sig) {
			return true
		}
	}
	return false
}

// VerifyManifest checks that m carries valid signatures by at least the
// threshold of distinct release keys listed in keys and unexpired at now,
// and that m itself has not expired. A key absent from keys (revoked by a
// newer keys document) does not count. keys must come from VerifyKeys.
func VerifyManifest(m *Manifest, keys *Keys, now time.Time) error {
	if keys == nil {
		return fmt.Errorf("verify manifest: %w", ErrNoTrust)
	}
	if len(m.Signatures) == 0 {
		return fmt.Errorf("verify manifest: %w: the manifest is not signed", ErrSignature)
	}
	c, err := m.Canonical()
	if err != nil {
		return err
	}
	msg := signingInput(manifestDomain, c)
	valid := 0
	var reasons []error
	seen := make(map[string]bool, len(m.Signatures))
	for _, s := range m.Signatures {
		if seen[s.KeyID] {
			continue
		}
		i := slices.IndexFunc(keys.Signed.Keys, func(k TrustedKey) bool { return k.KeyID == s.KeyID })
		if i < 0 {
			reasons = append(reasons, fmt.Errorf("key %s is not trusted (unknown or revoked)", s.KeyID))
			continue
		}
		tk := keys.Signed.Keys[i]
		if !now.Before(tk.Expires) {
			reasons = append(reasons, fmt.Errorf("key %s expired at %s", s.KeyID, tk.Expires.UTC().Format(time.RFC3339)))
			continue
		}
		pub, _ := hex.DecodeString(tk.Public)
		sig, _ := hex.DecodeString(s.Sig)
		if !ed25519.Verify(pub, msg, sig) {
			reasons = append(reasons, fmt.Errorf("signature by key %s is invalid", s.KeyID))
			continue
		}
		seen[s.KeyID] = true
		valid++
	}
	if need := keys.Signed.Required(); valid < need {
		return fmt.Errorf("verify manifest: %w: %d valid of %d required: %w", ErrSignature, valid, need, errors.Join(reasons...))
	}
	if !now.Before(m.Signed.Expires) {
		return fmt.Errorf("verify manifest: %w: manifest %s expired at %s", ErrExpired, m.Signed.Version, m.Signed.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// Verify is the whole offline chain: keys document signed by root, fresh
// and not rolled back past lastKeysVersion, then the manifest signed by
// enough of its keys. It returns both parsed documents.
func Verify(manifest, keysDoc []byte, root ed25519.PublicKey, lastKeysVersion uint64, now time.Time) (*Manifest, *Keys, error) {
	k, err := VerifyKeys(keysDoc, root, now, lastKeysVersion)
	if err != nil {
		return nil, nil, err
	}
	m, err := ParseManifest(manifest)
	if err != nil {
		return nil, nil, err
	}
	if err := VerifyManifest(m, k, now); err != nil {
		return nil, nil, err
	}
	return m, k, nil
}

// VerifyForDevice is the install-time check the agent also runs on a
// manifest whose signatures were verified: the device's model is targeted,
// the release moves it strictly forward (version > currentVersion), the
// device is at or above the release's min_version, and the manifest has
// not expired at now.
func VerifyForDevice(m *Manifest, model, currentVersion string, now time.Time) error {
	if !slices.Contains(m.Signed.Models, model) {
		return fmt.Errorf("verify for device: %w: release %s targets %v, device is %q", ErrWrongModel, m.Signed.Version, m.Signed.Models, model)
	}
	cur, err := ParseVersion(currentVersion)
	if err != nil {
		return fmt.Errorf("verify for device: current version: %w", err)
	}
	v, err := ParseVersion(m.Signed.Version)
	if err != nil {
		return fmt.Errorf("verify for device: %w", err)
	}
	minV, err := ParseVersion(m.Signed.MinVersion)
	if err != nil {
		return fmt.Errorf("verify for device: %w", err)
	}
	if v.Compare(cur) <= 0 {
		return fmt.Errorf("verify for device: %w: release %s is not newer than running %s", ErrDowngrade, m.Signed.Version, currentVersion)
	}
	if cur.Compare(minV) < 0 {
		return fmt.Errorf("verify for device: %w: running %s is below the release's min_version %s", ErrDowngrade, currentVersion, m.Signed.MinVersion)
	}
	if !now.Before(m.Signed.Expires) {
		return fmt.Errorf("verify for device: %w: manifest %s expired at %s", ErrExpired, m.Signed.Version, m.Signed.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}
