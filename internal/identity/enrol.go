package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	s.beginSign()
	iss, id, opt, err := s.signEnrol(ctx, tenant, device, token, csrDER)
	if err != nil {
		s.abortSign()
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, err)
	}
	// The checks and the token's use run in the group commit's transaction
	// (see batch.go), so concurrent enrolments share one fsync; a refusal
	// refuses this enrolment alone and writes nothing.
	activated, err := s.commitEntry(ctx, &pendingIssue{iss: iss, opt: opt, activate: true,
		token: &tokenUse{id: id, hash: sha256.Sum256([]byte(token))}})
	if err != nil {
		return Issued{}, fmt.Errorf("identity: enrol %s/%s: %w", tenant, device, err)
	}
	s.published(ctx, iss, opt)
	if activated {
		s.publishActivated(ctx, tenant, device)
	}
	return iss, nil
}

// signEnrol validates the CSR and the token's form and signs the
// certificate; it returns the token id and the options of the issuance.
func (s *Service) signEnrol(ctx context.Context, tenant event.TenantID, device event.DeviceID, token string, csrDER []byte) (Issued, string, IssueOptions, error) {
	csr, err := ParseCSR(csrDER, tenant, device)
	if err != nil {
		return Issued{}, "", IssueOptions{}, err
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || len(id) != 18 {
		return Issued{}, "", IssueOptions{}, ErrTokenInvalid
	}
	opt := IssueOptions{Actor: "enrol_token/" + id, Reason: "enrol"}
	iss, err := s.sign(ctx, tenant, device, csr.PublicKey, &opt)
	return iss, id, opt, err
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
