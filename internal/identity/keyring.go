package identity

import "github.com/garrisonhq/garrison/internal/seal"

// Sealer encrypts private keys at rest (see package seal: AES-256-GCM under
// a key derived with scrypt from the operator passphrase).
type Sealer = seal.Sealer

// SealerOption tunes a Sealer.
type SealerOption = seal.Option

// Errors of the sealer, as package seal returns them.
var (
	ErrWrongPassphrase = seal.ErrWrongPassphrase
	ErrSealedFormat    = seal.ErrFormat
	ErrNoPassphrase    = seal.ErrNoPassphrase
)

// NewSealer returns a Sealer for passphrase (see [seal.New]).
func NewSealer(passphrase []byte, opts ...SealerOption) (*Sealer, error) {
	return seal.New(passphrase, opts...)
}

// WithScryptCost sets the scrypt cost for new blobs (see [seal.WithScryptCost]).
func WithScryptCost(logN, r, p uint8) SealerOption { return seal.WithScryptCost(logN, r, p) }
