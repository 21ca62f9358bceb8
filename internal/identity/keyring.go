package identity

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/scrypt"
)

// Errors returned by [Sealer.Open].
var (
	// ErrWrongPassphrase: the blob is well formed but does not decrypt
	// under this passphrase (or it was altered, or sealed for another
	// label). GCM cannot tell those apart.
	ErrWrongPassphrase = errors.New("identity: wrong key passphrase (or the sealed key was altered)")
	// ErrSealedFormat: the blob is not a sealed key of a known version.
	ErrSealedFormat = errors.New("identity: not a sealed key of a known format")
	// ErrNoPassphrase: NewSealer was given an empty or too short passphrase.
	ErrNoPassphrase = errors.New("identity: key passphrase missing or shorter than 12 bytes (set GARRISON_KEY_PASSPHRASE or --key-passphrase-file)")
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
	sealMagic      = "GKEY"
	sealVersion1   = 1
	kdfScrypt      = 1
	sealSaltLen    = 16
	sealNonceLen   = 12
	sealHeaderLen  = 4 + 1 + 1 + 3 + sealSaltLen + sealNonceLen
	maxScryptLogN  = 20 // bound what a tampered header can make us compute
	maxScryptR     = 16
	maxScryptP     = 4
	minPassphrase  = 12
	defaultLogN    = 15
	defaultScryptR = 8
	defaultScryptP = 1
)

// Sealer encrypts private keys at rest: AES-256-GCM under a key derived with
// scrypt from an operator passphrase and a random per-blob salt. The blob
// records its format version and KDF cost, so the cost can be raised later
// without breaking older blobs. A Sealer is safe for concurrent use; it
// never logs and never returns the passphrase.
type Sealer struct {
	pass []byte
	logN uint8
	r, p uint8
}

// SealerOption tunes a Sealer.
type SealerOption func(*Sealer)

// WithScryptCost sets the scrypt cost for new blobs (N = 2^logN). Tests use
// a low cost to stay fast; production keeps the default N=2^15, r=8, p=1.
func WithScryptCost(logN, r, p uint8) SealerOption {
	return func(s *Sealer) { s.logN, s.r, s.p = logN, r, p }
}

// NewSealer returns a Sealer for passphrase (copied). It refuses a
// passphrase shorter than 12 bytes with [ErrNoPassphrase].
func NewSealer(passphrase []byte, opts ...SealerOption) (*Sealer, error) {
	if len(passphrase) < minPassphrase {
		return nil, ErrNoPassphrase
	}
	s := &Sealer{pass: append([]byte(nil), passphrase...), logN: defaultLogN, r: defaultScryptR, p: defaultScryptP}
	for _, o := range opts {
		o(s)
	}
	if s.logN < 1 || s.logN > maxScryptLogN || s.r < 1 || s.r > maxScryptR || s.p < 1 || s.p > maxScryptP {
		return nil, fmt.Errorf("identity: scrypt cost logN=%d r=%d p=%d out of range", s.logN, s.r, s.p)
	}
	return s, nil
}

// Seal encrypts plaintext, binding it to label (for example the CA id) so a
// blob cannot be swapped into another record.
func (s *Sealer) Seal(plaintext, label []byte) ([]byte, error) {
	hdr := make([]byte, sealHeaderLen, sealHeaderLen+len(plaintext)+16)
	copy(hdr, sealMagic)
	hdr[4], hdr[5] = sealVersion1, kdfScrypt
	hdr[6], hdr[7], hdr[8] = s.logN, s.r, s.p
	if _, err := rand.Read(hdr[9:sealHeaderLen]); err != nil {
		return nil, fmt.Errorf("identity: seal: %w", err)
	}
	aead, err := s.aead(hdr)
	if err != nil {
		return nil, fmt.Errorf("identity: seal: %w", err)
	}
	nonce := hdr[9+sealSaltLen : sealHeaderLen]
	return aead.Seal(hdr, nonce, plaintext, aad(hdr, label)), nil
}

// Open decrypts a blob made by Seal with the same passphrase and label.
func (s *Sealer) Open(blob, label []byte) ([]byte, error) {
	if len(blob) < sealHeaderLen+16 || string(blob[:4]) != sealMagic {
		return nil, ErrSealedFormat
	}
	if blob[4] != sealVersion1 || blob[5] != kdfScrypt {
		return nil, fmt.Errorf("%w: version %d kdf %d", ErrSealedFormat, blob[4], blob[5])
	}
	logN, r, p := blob[6], blob[7], blob[8]
	if logN < 1 || logN > maxScryptLogN || r < 1 || r > maxScryptR || p < 1 || p > maxScryptP {
		return nil, fmt.Errorf("%w: scrypt cost out of range", ErrSealedFormat)
	}
	hdr := blob[:sealHeaderLen]
	aead, err := s.aead(hdr)
	if err != nil {
		return nil, fmt.Errorf("identity: open: %w", err)
	}
	pt, err := aead.Open(nil, hdr[9+sealSaltLen:], blob[sealHeaderLen:], aad(hdr, label))
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	return pt, nil
}

func (s *Sealer) aead(hdr []byte) (cipher.AEAD, error) {
	logN, r, p := hdr[6], hdr[7], hdr[8]
	key, err := scrypt.Key(s.pass, hdr[9:9+sealSaltLen], 1<<logN, int(r), int(p), 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func aad(hdr, label []byte) []byte {
	out := make([]byte, 0, len(hdr)+4+len(label))
	out = append(out, hdr...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(label)))
	return append(out, label...)
}
