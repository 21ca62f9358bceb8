// Package seal encrypts secrets at rest under the platform's key
// passphrase: AES-256-GCM under a key derived with scrypt from the
// passphrase and a random per-blob salt, bound to a label (the record the
// blob belongs to) so that a blob cannot be swapped into another record.
// The CA private keys (package identity) and the webhook signing secrets
// (package export) are sealed with it.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/crypto/scrypt"
)

// Errors returned by [Sealer.Open] and [New].
var (
	// ErrWrongPassphrase: the blob is well formed but does not decrypt
	// under this passphrase (or it was altered, or sealed for another
	// label). GCM cannot tell those apart.
	ErrWrongPassphrase = errors.New("seal: wrong key passphrase (or the sealed data was altered)")
	// ErrFormat: the blob is not a sealed blob of a known version.
	ErrFormat = errors.New("seal: not sealed data of a known format")
	// ErrNoPassphrase: New was given an empty or too short passphrase.
	ErrNoPassphrase = errors.New("seal: key passphrase missing or shorter than 12 bytes (set GARRISON_KEY_PASSPHRASE or --key-passphrase-file)")
)

// Sealed blob, version 1 (all integers big-endian):
//
//	"GKEY"  magic
//	0x01    version
//	0x01    KDF: scrypt
//	logN r p   one byte each (scrypt N = 2^logN)
//	salt    16 random bytes, fresh for every Seal
//	nonce   12 random bytes
//	ct      AES-256-GCM(key = scrypt(passphrase, salt), aad = header || label)
const (
	magic          = "GKEY"
	version1       = 1
	kdfScrypt      = 1
	saltLen        = 16
	nonceLen       = 12
	headerLen      = 4 + 1 + 1 + 3 + saltLen + nonceLen
	maxScryptLogN  = 20 // bound what a tampered header can make us compute
	maxScryptR     = 16
	maxScryptP     = 4
	minPassphrase  = 12
	defaultLogN    = 15
	defaultScryptR = 8
	defaultScryptP = 1
	// maxCached bounds the derived keys kept in memory (see [Sealer]).
	maxCached = 4096
)

// Sealer seals and opens blobs. The blob records its format version and KDF
// cost, so the cost can be raised later without breaking older blobs.
//
// A derived key is kept in memory once computed (at most 4096, keyed by the
// blob's cost and salt), so that opening the same blob again (a webhook
// secret, for every delivery it signs) costs one AES-GCM decryption, not an
// scrypt derivation. That holds no more than the passphrase the Sealer
// already holds. A Sealer is safe for concurrent use; it never logs and
// never returns the passphrase.
type Sealer struct {
	pass []byte
	logN uint8
	r, p uint8

	mu   sync.Mutex
	keys map[[3 + saltLen]byte]cipher.AEAD
}

// Option tunes a Sealer.
type Option func(*Sealer)

// WithScryptCost sets the scrypt cost for new blobs (N = 2^logN). Tests use
// a low cost to stay fast; production keeps the default N=2^15, r=8, p=1.
func WithScryptCost(logN, r, p uint8) Option {
	return func(s *Sealer) { s.logN, s.r, s.p = logN, r, p }
}

// New returns a Sealer for passphrase (copied). It refuses a passphrase
// shorter than 12 bytes with [ErrNoPassphrase].
func New(passphrase []byte, opts ...Option) (*Sealer, error) {
	if len(passphrase) < minPassphrase {
		return nil, ErrNoPassphrase
	}
	s := &Sealer{pass: append([]byte(nil), passphrase...), logN: defaultLogN, r: defaultScryptR, p: defaultScryptP,
		keys: map[[3 + saltLen]byte]cipher.AEAD{}}
	for _, o := range opts {
		o(s)
	}
	if s.logN < 1 || s.logN > maxScryptLogN || s.r < 1 || s.r > maxScryptR || s.p < 1 || s.p > maxScryptP {
		return nil, fmt.Errorf("seal: scrypt cost logN=%d r=%d p=%d out of range", s.logN, s.r, s.p)
	}
	return s, nil
}

// IsSealed reports whether blob has the shape of a sealed blob of a known
// version (it says nothing of whether it opens).
func IsSealed(blob []byte) bool {
	return len(blob) >= headerLen+16 && string(blob[:4]) == magic && blob[4] == version1 && blob[5] == kdfScrypt
}

// Seal encrypts plaintext, binding it to label (for example the CA id) so a
// blob cannot be swapped into another record.
func (s *Sealer) Seal(plaintext, label []byte) ([]byte, error) {
	hdr := make([]byte, headerLen, headerLen+len(plaintext)+16)
	copy(hdr, magic)
	hdr[4], hdr[5] = version1, kdfScrypt
	hdr[6], hdr[7], hdr[8] = s.logN, s.r, s.p
	if _, err := rand.Read(hdr[9:headerLen]); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := s.aead(hdr)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	nonce := hdr[9+saltLen : headerLen]
	return aead.Seal(hdr, nonce, plaintext, aad(hdr, label)), nil
}

// Open decrypts a blob made by Seal with the same passphrase and label.
func (s *Sealer) Open(blob, label []byte) ([]byte, error) {
	if len(blob) < headerLen+16 || string(blob[:4]) != magic {
		return nil, ErrFormat
	}
	if blob[4] != version1 || blob[5] != kdfScrypt {
		return nil, fmt.Errorf("%w: version %d kdf %d", ErrFormat, blob[4], blob[5])
	}
	logN, r, p := blob[6], blob[7], blob[8]
	if logN < 1 || logN > maxScryptLogN || r < 1 || r > maxScryptR || p < 1 || p > maxScryptP {
		return nil, fmt.Errorf("%w: scrypt cost out of range", ErrFormat)
	}
	hdr := blob[:headerLen]
	aead, err := s.aead(hdr)
	if err != nil {
		return nil, fmt.Errorf("seal: open: %w", err)
	}
	pt, err := aead.Open(nil, hdr[9+saltLen:], blob[headerLen:], aad(hdr, label))
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	return pt, nil
}

// aead returns the cipher of the header's cost and salt, derived once.
func (s *Sealer) aead(hdr []byte) (cipher.AEAD, error) {
	var k [3 + saltLen]byte
	copy(k[:], hdr[6:9+saltLen])
	s.mu.Lock()
	a, ok := s.keys[k]
	s.mu.Unlock()
	if ok {
		return a, nil
	}
	logN, r, p := hdr[6], hdr[7], hdr[8]
	key, err := scrypt.Key(s.pass, hdr[9:9+saltLen], 1<<logN, int(r), int(p), 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if a, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.keys) >= maxCached {
		clear(s.keys)
	}
	s.keys[k] = a
	s.mu.Unlock()
	return a, nil
}

func aad(hdr, label []byte) []byte {
	out := make([]byte, 0, len(hdr)+4+len(label))
	out = append(out, hdr...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(label)))
	return append(out, label...)
}
