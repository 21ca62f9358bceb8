package api

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
)

// FirmwareCatalog is what the firmware routes need (*ota.Catalog). Every
// mutating method verifies what it is given against the tenant's trust
// chain and writes its audit record in the transaction of its change.
type FirmwareCatalog interface {
	SetRoot(ctx context.Context, tenant event.TenantID, actor string, pub ed25519.PublicKey) error
	SetKeys(ctx context.Context, tenant event.TenantID, actor string, doc []byte) (*firmware.Keys, error)
	AddRelease(ctx context.Context, tenant event.TenantID, actor string, manifest []byte, artifact io.Reader) (ota.Entry, error)
	Releases(ctx context.Context, tenant event.TenantID) ([]ota.Entry, error)
	SetMinVersion(ctx context.Context, tenant event.TenantID, actor, model, version string) error
}

var _ FirmwareCatalog = (*ota.Catalog)(nil)

// CampaignEngine is what the campaign routes need (*ota.Engine); reads go
// to the store.
type CampaignEngine interface {
	Create(ctx context.Context, tenant event.TenantID, actor string, spec ota.Spec) (store.Campaign, error)
	Pause(ctx context.Context, tenant event.TenantID, actor, id, reason string) (store.Campaign, error)
	Resume(ctx context.Context, tenant event.TenantID, actor, id string) (store.Campaign, error)
	Cancel(ctx context.Context, tenant event.TenantID, actor, id, reason string) (store.Campaign, error)
	Emergency(ctx context.Context, tenant event.TenantID, actor, id string) (store.Campaign, error)
}

var _ CampaignEngine = (*ota.Engine)(nil)

// ReleaseContentType is the body of a release upload: the signed manifest
// (compact JSON, one line), a newline, then the artifact's bytes.
const ReleaseContentType = "application/vnd.garrison.release"

// uploadTimeout bounds one artifact upload beyond the server's default
// deadlines.
const uploadTimeout = 30 * time.Minute

func (s *Server) firmwareRoutes(t string) []Route {
	const get, post = http.MethodGet, http.MethodPost
	ok, created := http.StatusOK, http.StatusCreated
	upload := Route{Method: post, Pattern: t + "/firmware/releases", Perm: auth.PermFirmwareWrite, Scope: ScopeTenant, Status: created,
		Summary: "Upload a release: the signed manifest (one line of JSON), a newline, then the artifact, streamed. Refused unless signed by the tenant's trusted release keys, unexpired, not a downgrade, and the artifact matches the manifest's size and SHA-256; nothing is stored then.",
		Resp:    reflect.TypeFor[ReleaseInfo](), Body: ReleaseContentType, handle: (*Server).uploadRelease}
	return []Route{
		op(post, t+"/firmware/root", auth.PermFirmwareWrite, ScopeTenant, ok, "Set the tenant's OTA root public key (first setup or rotation).", (*Server).setFirmwareRoot),
		op(post, t+"/firmware/keys", auth.PermFirmwareWrite, ScopeTenant, ok, "Set the keys document (trusted release keys, threshold, expiry), signed by the root key; its version must not go back.", (*Server).setFirmwareKeys),
		upload,
		op(get, t+"/firmware/releases", auth.PermTenantRead, ScopeTenant, ok, "List the tenant's releases.", (*Server).listReleases),
		op(post, t+"/firmware/min-version", auth.PermFirmwareWrite, ScopeTenant, ok, "Set (or clear with an empty version) the lowest version a model may run or be given.", (*Server).setMinVersion),

		op(post, t+"/campaigns", auth.PermCampaignsWrite, ScopeTenant, created, "Create a campaign: a release rolled out to a selector's devices in waves with gates.", (*Server).createCampaign),
		op(get, t+"/campaigns", auth.PermTenantRead, ScopeTenant, ok, "List campaigns, oldest first.", (*Server).listCampaigns),
		op(get, t+"/campaigns/{id}", auth.PermTenantRead, ScopeTenant, ok, "Get a campaign with its progress per wave and state.", (*Server).getCampaign),
		op(post, t+"/campaigns/{id}/pause", auth.PermCampaignsWrite, ScopeTenant, ok, "Pause a running campaign: no new jobs; jobs in progress finish.", (*Server).pauseCampaign),
		op(post, t+"/campaigns/{id}/resume", auth.PermCampaignsWrite, ScopeTenant, ok, "Resume a paused campaign (a wave whose gate failed then counts as accepted).", (*Server).resumeCampaign),
		op(post, t+"/campaigns/{id}/cancel", auth.PermCampaignsWrite, ScopeTenant, ok, "Cancel an open campaign.", (*Server).cancelCampaign),
		op(post, t+"/campaigns/{id}/emergency", auth.PermCampaignsWrite, ScopeTenant, ok, "Emergency mode: every remaining device at once, outside maintenance windows; gates still stop it.", (*Server).emergencyCampaign),
	}
}

func (s *Server) needCatalog() error {
	if s.opt.Firmware == nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the firmware catalog is not running on this server")
	}
	return nil
}

func (s *Server) needEngine() error {
	if s.opt.Campaigns == nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the campaign engine is not running on this server")
	}
	return nil
}

// otaError maps the catalog's and the engine's refusals to clear client
// errors; anything else stays internal.
func otaError(err error) error {
	msg := err.Error()
	if len(msg) > 500 {
		msg = msg[:500]
	}
	switch {
	case errors.Is(err, firmware.ErrMalformed), errors.Is(err, firmware.ErrSignature), errors.Is(err, firmware.ErrExpired),
		errors.Is(err, firmware.ErrRollback), errors.Is(err, firmware.ErrWrongModel), errors.Is(err, firmware.ErrDowngrade),
		errors.Is(err, firmware.ErrDigest), errors.Is(err, firmware.ErrSize), errors.Is(err, firmware.ErrNoTrust),
		errors.Is(err, ota.ErrBadSpec), errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: msg, Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, store.ErrConflict), errors.Is(err, ota.ErrCampaignState):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: msg, Err: err}
	}
	return err
}

// SetRootRequest carries the root public key as PEM ("PUBLIC KEY") or as
// 64 hex characters.
type SetRootRequest struct {
	PublicKey string `json:"public_key"`
}

// KeyIDResponse names a key by its id (SHA-256 of the public key, hex).
type KeyIDResponse struct {
	KeyID string `json:"keyid"`
}

func (s *Server) setFirmwareRoot(ctx context.Context, c *call, req SetRootRequest) (KeyIDResponse, error) {
	if err := s.needCatalog(); err != nil {
		return KeyIDResponse{}, err
	}
	var pub ed25519.PublicKey
	if firmware.IsHex(req.PublicKey, ed25519.PublicKeySize) {
		pub, _ = hex.DecodeString(req.PublicKey)
	} else {
		var err error
		if pub, err = firmware.ParsePublicKey([]byte(req.PublicKey)); err != nil {
			return KeyIDResponse{}, errorf(http.StatusBadRequest, CodeInvalid, "public_key must be an Ed25519 PEM PUBLIC KEY or 64 hex characters")
		}
	}
	if err := s.opt.Firmware.SetRoot(ctx, c.tenant, c.p.Actor(), pub); err != nil {
		return KeyIDResponse{}, otaError(err)
	}
	return KeyIDResponse{KeyID: firmware.KeyID(pub)}, nil
}

// KeysInfo summarises an accepted keys document.
type KeysInfo struct {
	Version   uint64    `json:"version"`
	Threshold int       `json:"threshold"`
	Expires   time.Time `json:"expires"`
	KeyIDs    []string  `json:"keyids"`
}

func (s *Server) setFirmwareKeys(ctx context.Context, c *call, req firmware.Keys) (KeysInfo, error) {
	if err := s.needCatalog(); err != nil {
		return KeysInfo{}, err
	}
	doc, err := req.Marshal()
	if err != nil {
		return KeysInfo{}, errorf(http.StatusBadRequest, CodeInvalid, "keys document cannot be encoded")
	}
	k, err := s.opt.Firmware.SetKeys(ctx, c.tenant, c.p.Actor(), doc)
	if err != nil {
		return KeysInfo{}, otaError(err)
	}
	info := KeysInfo{Version: k.Signed.Version, Threshold: k.Signed.Required(), Expires: k.Signed.Expires.UTC(), KeyIDs: []string{}}
	for _, tk := range k.Signed.Keys {
		info.KeyIDs = append(info.KeyIDs, tk.KeyID)
	}
	return info, nil
}

// ReleaseInfo is a release of the catalog.
type ReleaseInfo struct {
	SHA256   string          `json:"sha256"`
	Version  string          `json:"version"`
	Models   []string        `json:"models"`
	Size     int64           `json:"size"`
	Expires  time.Time       `json:"expires"`
	KeyIDs   []string        `json:"keyids"`
	AddedAt  time.Time       `json:"added_at"`
	AddedBy  string          `json:"added_by"`
	Manifest json.RawMessage `json:"manifest"`
}

func releaseInfo(e ota.Entry) ReleaseInfo {
	return ReleaseInfo{SHA256: e.Digest, Version: e.Version, Models: e.Models, Size: e.Size, Expires: e.Expires,
		KeyIDs: e.KeyIDs, AddedAt: e.AddedAt, AddedBy: e.AddedBy, Manifest: e.Manifest}
}

func (s *Server) uploadRelease(w http.ResponseWriter, c *call) error {
	if err := s.needCatalog(); err != nil {
		return err
	}
	mt, _, err := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if err != nil || mt != ReleaseContentType {
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "body must be "+ReleaseContentType+": the manifest, a newline, the artifact")
	}
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(uploadTimeout)
	_ = rc.SetReadDeadline(deadline) // unsupported by test recorders; the default deadlines then apply
	_ = rc.SetWriteDeadline(deadline)
	br := bufio.NewReaderSize(c.r.Body, 4096)
	var manifest []byte
	for {
		line, err := br.ReadSlice('\n')
		manifest = append(manifest, line...)
		if len(manifest) > firmware.MaxManifestSize+1 {
			return errorf(http.StatusBadRequest, CodeInvalid, "the manifest line is longer than 64 KiB")
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return errorf(http.StatusBadRequest, CodeInvalid, "the body must start with the manifest and a newline")
	}
	manifest = []byte(strings.TrimRight(string(manifest), "\r\n"))
	// The catalog reads at most the manifest's size plus one byte, and
	// refuses a size above its limit before reading any.
	e, err := s.opt.Firmware.AddRelease(c.r.Context(), c.tenant, c.p.Actor(), manifest, br)
	if err != nil {
		return otaError(err)
	}
	writeJSON(w, http.StatusCreated, releaseInfo(e))
	return nil
}

func (s *Server) listReleases(ctx context.Context, c *call, _ noBody) ([]ReleaseInfo, error) {
	if err := s.needCatalog(); err != nil {
		return nil, err
	}
	es, err := s.opt.Firmware.Releases(ctx, c.tenant)
	if err != nil {
		return nil, err
	}
	out := make([]ReleaseInfo, len(es))
	for i, e := range es {
		out[i] = releaseInfo(e)
	}
	return out, nil
}

// MinVersionRequest sets a model's minimum version; "" clears it.
type MinVersionRequest struct {
	Model   string `json:"model"`
	Version string `json:"version"`
}

func (s *Server) setMinVersion(ctx context.Context, c *call, req MinVersionRequest) (MinVersionRequest, error) {
	if err := s.needCatalog(); err != nil {
		return MinVersionRequest{}, err
	}
	if err := s.opt.Firmware.SetMinVersion(ctx, c.tenant, c.p.Actor(), req.Model, req.Version); err != nil {
		return MinVersionRequest{}, otaError(err)
	}
	return req, nil
}

// CampaignInfo is a campaign with its definition and progress.
type CampaignInfo struct {
	ID        string              `json:"id"`
	Release   string              `json:"release"`
	State     store.CampaignState `json:"state"`
	Wave      int                 `json:"wave"` // current wave, from 1
	Waves     int                 `json:"waves"`
	Reason    string              `json:"reason,omitempty"`
	CreatedBy string              `json:"created_by"`
	CreatedAt time.Time           `json:"created_at"`
	UpdatedAt time.Time           `json:"updated_at"`
	WaveAt    time.Time           `json:"wave_at"`
	Spec      ota.Spec            `json:"spec"`
	// Counts per wave (from 1) and target state; only on a single campaign.
	Counts []store.TargetCount `json:"counts,omitempty"`
}

func campaignInfo(c store.Campaign, counts []store.TargetCount) CampaignInfo {
	var spec ota.Spec
	_ = json.Unmarshal(c.Spec, &spec)
	for i := range counts {
		counts[i].Wave++
	}
	return CampaignInfo{ID: c.ID, Release: c.Release, State: c.State, Wave: c.Wave + 1, Waves: len(spec.Waves), Reason: c.Reason,
		CreatedBy: c.CreatedBy, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, WaveAt: c.WaveAt, Spec: spec, Counts: counts}
}

func (s *Server) createCampaign(ctx context.Context, c *call, req ota.Spec) (CampaignInfo, error) {
	if err := s.needEngine(); err != nil {
		return CampaignInfo{}, err
	}
	cp, err := s.opt.Campaigns.Create(ctx, c.tenant, c.p.Actor(), req)
	if err != nil {
		return CampaignInfo{}, otaError(err)
	}
	return campaignInfo(cp, nil), nil
}

func (s *Server) listCampaigns(ctx context.Context, c *call, _ noBody) ([]CampaignInfo, error) {
	var cs []store.Campaign
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		cs, err = tx.Campaigns().List(ctx, c.tenant)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]CampaignInfo, len(cs))
	for i, x := range cs {
		out[i] = campaignInfo(x, nil)
	}
	return out, nil
}

func (s *Server) getCampaign(ctx context.Context, c *call, _ noBody) (CampaignInfo, error) {
	var cp store.Campaign
	var counts []store.TargetCount
	if err := s.opt.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if cp, err = tx.Campaigns().Get(ctx, c.tenant, c.r.PathValue("id")); err != nil {
			return err
		}
		counts, err = tx.Campaigns().CountTargets(ctx, c.tenant, cp.ID)
		return err
	}); err != nil {
		return CampaignInfo{}, err
	}
	return campaignInfo(cp, counts), nil
}

// CampaignActionRequest carries an optional reason.
type CampaignActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (s *Server) pauseCampaign(ctx context.Context, c *call, req CampaignActionRequest) (CampaignInfo, error) {
	return s.campaignAction(func() (store.Campaign, error) {
		return s.opt.Campaigns.Pause(ctx, c.tenant, c.p.Actor(), c.r.PathValue("id"), req.Reason)
	})
}

func (s *Server) cancelCampaign(ctx context.Context, c *call, req CampaignActionRequest) (CampaignInfo, error) {
	return s.campaignAction(func() (store.Campaign, error) {
		return s.opt.Campaigns.Cancel(ctx, c.tenant, c.p.Actor(), c.r.PathValue("id"), req.Reason)
	})
}

func (s *Server) resumeCampaign(ctx context.Context, c *call, _ noBody) (CampaignInfo, error) {
	return s.campaignAction(func() (store.Campaign, error) {
		return s.opt.Campaigns.Resume(ctx, c.tenant, c.p.Actor(), c.r.PathValue("id"))
	})
}

func (s *Server) emergencyCampaign(ctx context.Context, c *call, _ noBody) (CampaignInfo, error) {
	return s.campaignAction(func() (store.Campaign, error) {
		return s.opt.Campaigns.Emergency(ctx, c.tenant, c.p.Actor(), c.r.PathValue("id"))
	})
}

func (s *Server) campaignAction(fn func() (store.Campaign, error)) (CampaignInfo, error) {
	if err := s.needEngine(); err != nil {
		return CampaignInfo{}, err
	}
	cp, err := fn()
	if err != nil {
		return CampaignInfo{}, otaError(err)
	}
	return campaignInfo(cp, nil), nil
}
