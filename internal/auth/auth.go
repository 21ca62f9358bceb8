// Package auth authenticates API tokens and decides what a role may do.
//
// A token reads gar_<id>_<secret>: id is 16 lower-case hex characters used to
// find the stored record, secret is 64 hex characters (32 random bytes). The
// store keeps only SHA-256(secret); [Authenticator.Authenticate] compares
// hashes in constant time and refuses expired or revoked tokens. The
// plaintext exists only in the response that created it.
//
// Authorization is a fixed table from [store.Role] to [Permission]s
// ([Can]); a principal's tenant scope is checked by the API, which reports a
// foreign tenant as not found.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Errors returned by [Parse] and [Authenticator.Authenticate]. Callers show
// all of them to clients as one "unauthenticated" error.
var (
	ErrMalformed = errors.New("malformed token")
	ErrUnknown   = errors.New("unknown token")
	ErrExpired   = errors.New("token expired")
	ErrRevoked   = errors.New("token revoked")
)

const (
	prefix    = "gar_"
	idLen     = 16
	secretLen = 64
)

// Secret is a freshly minted token: the plaintext to hand out once and the
// parts to store.
type Secret struct {
	ID        string
	Plaintext string // gar_<id>_<secret>
	Hash      []byte // SHA-256 of the secret part
}

// String hides the plaintext so that a Secret logged by mistake leaks
// nothing.
func (s Secret) String() string { return "gar_" + s.ID + "_(redacted)" }

// NewSecret mints a token from r (crypto/rand.Reader when nil).
func NewSecret(r io.Reader) (Secret, error) {
	if r == nil {
		r = rand.Reader
	}
	var id [idLen / 2]byte
	var sec [secretLen / 2]byte
	if _, err := io.ReadFull(r, id[:]); err != nil {
		return Secret{}, fmt.Errorf("auth: new token id: %w", err)
	}
	if _, err := io.ReadFull(r, sec[:]); err != nil {
		return Secret{}, fmt.Errorf("auth: new token secret: %w", err)
	}
	s := hex.EncodeToString(sec[:])
	idh := hex.EncodeToString(id[:])
	return Secret{ID: idh, Plaintext: prefix + idh + "_" + s, Hash: Hash(s)}, nil
}

// Hash returns SHA-256 of a token's secret part.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Parse splits a token into its id and secret, or returns [ErrMalformed].
func Parse(tok string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(tok, prefix)
	if !ok {
		return "", "", ErrMalformed
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != idLen || len(secret) != secretLen || !isHex(id) || !isHex(secret) {
		return "", "", ErrMalformed
	}
	return id, secret, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Principal is who made a request.
type Principal struct {
	Operator string         `json:"operator"`
	Tenant   event.TenantID `json:"tenant,omitempty"` // "" for platform admins
	Role     store.Role     `json:"role"`
	TokenID  string         `json:"token_id"`
}

// Actor is how the principal appears in audit records.
func (p Principal) Actor() string { return "operator:" + p.Operator + "/token:" + p.TokenID }

// Authenticator checks bearer tokens against the store.
type Authenticator struct {
	Store store.Store
	Clock clock.Clock
}

// Authenticate returns the principal a token stands for, or an error
// wrapping one of the package's sentinel errors (or the store's error if it
// failed). A token whose operator or tenant no longer exists is
// [ErrUnknown].
func (a *Authenticator) Authenticate(ctx context.Context, tok string) (Principal, error) {
	id, secret, err := Parse(tok)
	if err != nil {
		return Principal{}, err
	}
	var t store.Token
	err = a.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if t, err = tx.Tokens().Lookup(ctx, id); err != nil {
			return err
		}
		// A token dies with its operator and its tenant.
		if _, err = tx.Operators().Get(ctx, t.Tenant, t.Operator); err != nil {
			return err
		}
		if t.Tenant != "" {
			_, err = tx.Tenants().Get(ctx, t.Tenant)
		}
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		// Spend the same hashing work as a hit so timing tells nothing.
		subtle.ConstantTimeCompare(Hash(secret), make([]byte, sha256.Size))
		return Principal{}, ErrUnknown
	}
	if err != nil {
		return Principal{}, fmt.Errorf("auth: look up token: %w", err)
	}
	if subtle.ConstantTimeCompare(Hash(secret), t.Hash) != 1 {
		return Principal{}, ErrUnknown
	}
	if t.RevokedAt != nil {
		return Principal{}, ErrRevoked
	}
	if !a.Clock.Now().Before(t.ExpiresAt) {
		return Principal{}, ErrExpired
	}
	return Principal{Operator: t.Operator, Tenant: t.Tenant, Role: t.Role, TokenID: t.ID}, nil
}
