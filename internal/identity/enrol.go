package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// Errors of token enrolment. Each refusal changes nothing.
var (
	// ErrTokenInvalid: the token is malformed, unknown in this tenant
	// (including a token of another tenant) or its secret is wrong.
	ErrTokenInvalid = errors.New("enrolment token invalid")
	// ErrTokenExpired: the token's expiry has passed.
	ErrTokenExpired = errors.New("enrolment token expired")
	// ErrTokenUsed: the token has no uses left (a replay).
	ErrTokenUsed = errors.New("enrolment token already used")
	// ErrTokenScope: the token does not cover this device or its model.
	ErrTokenScope = errors.New("enrolment token does not cover this device")
	// ErrUnknownDevice: the device is not in the tenant's registry.
	ErrUnknownDevice = errors.New("device not registered")
)

// tokenPrefix starts every enrolment token: get_<id>_<secret>.
const tokenPrefix = "get_"

// EnrolToken is a one-time (or N-time) enrolment token as stored: the
// secret itself is never stored, only its SHA-256.
type EnrolToken struct {
	ID        string         `json:"id"`
	Tenant    event.TenantID `json:"tenant"`
	Device    event.DeviceID `json:"device,omitempty"` // set: only this device
	Models    []string       `json:"models,omitempty"` // set: only devices of these models
	Count     int            `json:"count"`            // uses granted
	Remaining int            `json:"remaining"`
	Hash      []byte         `json:"hash"`
	CreatedBy string         `json:"created_by"`
	CreatedAt time.Time      `json:"created_at"`
	ExpiresAt time.Time      `json:"expires_at"`
}

// TokenSpec asks for a token: per device (Device set, Count 1) or per batch
// (Count devices, optionally limited to Models).
type TokenSpec struct {
	Device event.DeviceID
	Models []string
	Count  int           // default 1
	TTL    time.Duration // default 24h
}

func tokenKey(id string) string { return "identity.enrol_token." + id }

// CreateToken makes an enrolment token and returns its secret (shown once)
// with the stored record (hash only).
func (s *Service) CreateToken(ctx context.Context, tenant event.TenantID, spec TokenSpec, actor string) (string, EnrolToken, error) {
	if err := checkIDs(tenant, spec.Device); err != nil {
		return "", EnrolToken{}, err
	}
	if spec.Count == 0 {
		spec.Count = 1
	}
	if spec.TTL == 0 {
		spec.TTL = 24 * time.Hour
	}
	if spec.Count < 1 || spec.Count > 1_000_000 || spec.TTL < 0 || (spec.Device != "" && spec.Count != 1) {
		return "", EnrolToken{}, fmt.Errorf("identity: token: count %d, ttl %v: %w (count 1-1000000, and 1 for a device token; ttl not negative)", spec.Count, spec.TTL, store.ErrInvalid)
	}
	if len(spec.Models) > 100 {
		return "", EnrolToken{}, fmt.Errorf("identity: token: %d models: %w (at most 100)", len(spec.Models), store.ErrInvalid)
	}
	for _, m := range spec.Models {
		if !deviceRE.MatchString(m) {
			return "", EnrolToken{}, fmt.Errorf("identity: token: model %q: %w", m, store.ErrInvalid)
		}
	}
	var idb [9]byte
	var sec [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", EnrolToken{}, err
	}
	if _, err := rand.Read(sec[:]); err != nil {
		return "", EnrolToken{}, err
	}
	id := hex.EncodeToString(idb[:])
	secret := tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(sec[:])
	h := sha256.Sum256([]byte(secret))
	now := s.clk.Now()
	tok := EnrolToken{ID: id, Tenant: tenant, Device: spec.Device, Models: spec.Models, Count: spec.Count, Remaining: spec.Count,
		Hash: h[:], CreatedBy: actor, CreatedAt: now, ExpiresAt: now.Add(spec.TTL)}
	b, err := json.Marshal(tok)
	if err != nil {
		return "", EnrolToken{}, err
	}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if spec.Device != "" {
			if _, err := tx.Devices().Get(ctx, tenant, spec.Device); err != nil {
				return fmt.Errorf("device %s: %w", spec.Device, err)
			}
		}
		if err := tx.Settings().Put(ctx, tenant, tokenKey(id), b); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, actor, "enrol.token_create", "enrol_token/"+id,
			map[string]any{"device": spec.Device, "models": spec.Models, "count": spec.Count, "expires_at": tok.ExpiresAt})
	})
	if err != nil {
		return "", EnrolToken{}, fmt.Errorf("identity: token: %w", err)
	}
	return secret, tok, nil
}

// Enrol redeems token for device: the device must be registered in the
// tenant and covered by the token (its id, or its model), the token
// unexpired with a use left. The CSR is validated first; the token's use,
// the certificate and both audit records commit in one transaction. Any
// refusal changes nothing.
func (s *Service) Enrol(ctx context.Context, tenant event.TenantID, device event.DeviceID, token string, csrDER []byte) (Issued, error) {
	csr, err := ParseCSR(csrDER, tenant, device)
	if err != nil {
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, err)
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 18 {
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, ErrTokenInvalid)
	}
	opt := IssueOptions{Actor: "enrol_token/" + id, Reason: "enrol"}
	iss, err := s.sign(ctx, tenant, device, csr.PublicKey, &opt)
	if err != nil {
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, err)
	}
	h := sha256.Sum256([]byte(token))
	now := s.clk.Now()
	// The checks and the token's use run in the group commit's transaction
	// (see batch.go), so concurrent enrolments share one fsync; a refusal
	// refuses this enrolment alone and writes nothing.
	var activated bool
	pre := func(ctx context.Context, tx store.Tx) error {
		activated = false // the group commit may run pre again
		b, err := tx.Settings().Get(ctx, tenant, tokenKey(id))
		if errors.Is(err, store.ErrNotFound) {
			return &refusal{ErrTokenInvalid}
		} else if err != nil {
			return err
		}
		var tok EnrolToken
		if err := json.Unmarshal(b, &tok); err != nil {
			return fmt.Errorf("stored token: %w", err)
		}
		switch {
		case tok.Tenant != tenant || subtle.ConstantTimeCompare(tok.Hash, h[:]) != 1:
			return &refusal{ErrTokenInvalid}
		case !now.Before(tok.ExpiresAt):
			return &refusal{ErrTokenExpired}
		case tok.Remaining < 1:
			return &refusal{ErrTokenUsed}
		case tok.Device != "" && tok.Device != device:
			return &refusal{fmt.Errorf("%w: token is for device %s", ErrTokenScope, tok.Device)}
		}
		d, err := tx.Devices().Get(ctx, tenant, device)
		if errors.Is(err, store.ErrNotFound) {
			return &refusal{ErrUnknownDevice}
		} else if err != nil {
			return err
		}
		if len(tok.Models) > 0 && !slices.Contains(tok.Models, d.Model) {
			return &refusal{fmt.Errorf("%w: model %q", ErrTokenScope, d.Model)}
		}
		tok.Remaining--
		if b, err = json.Marshal(tok); err != nil {
			return err
		}
		if err := tx.Settings().Put(ctx, tenant, tokenKey(id), b); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, tenant, opt.Actor, "enrol.token_use", "enrol_token/"+id,
			map[string]any{"device": device, "remaining": tok.Remaining}); err != nil {
			return err
		}
		activated, err = s.activateTx(ctx, tx, tenant, device, opt.Actor)
		return err
	}
	err = s.commitWith(ctx, iss, opt, pre)
	if err != nil {
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, err)
	}
	s.published(ctx, iss, opt)
	if activated {
		s.publishActivated(ctx, tenant, device)
	}
	return iss, nil
}

// activateTx moves a registered device to active in tx when it receives
// its first identity by enrolment with a one-time token or its own factory
// certificate: until then the broker refuses it. (A claim exchange leaves
// it registered: the claim certificate is the whole model's.) It reports whether
// the state changed, so the caller publishes the change after commit. A
// device the registry does not know is left alone.
func (s *Service) activateTx(ctx context.Context, tx store.Tx, tenant event.TenantID, device event.DeviceID, actor string) (bool, error) {
	d, err := tx.Devices().Get(ctx, tenant, device)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if d.State != store.StateRegistered {
		return false, nil
	}
	if _, _, err := registry.SetStateTx(ctx, tx, tenant, device, store.StateActive, actor, "enrolled", s.clk.Now()); err != nil {
		return false, err
	}
	return true, nil
}

// publishActivated announces a committed activation (brokers and
// detection follow device.state events).
func (s *Service) publishActivated(ctx context.Context, tenant event.TenantID, device event.DeviceID) {
	if s.opt.Publisher == nil {
		return
	}
	e := registry.StateEvent(tenant, device, store.StateRegistered, store.StateActive, "enrolled", s.clk.Now())
	if err := s.opt.Publisher.Publish(ctx, e); err != nil {
		s.log.WarnContext(ctx, "identity: publish failed", "tenant", tenant, "device", device, "kind", e.Kind, "err", err)
	}
}
