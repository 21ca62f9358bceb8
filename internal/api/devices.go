package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"time"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// DeviceRegistry is what the device routes need (*registry.Registry). Every
// method writes its own audit record, with the actor given, in the
// transaction of its change.
type DeviceRegistry interface {
	Register(ctx context.Context, d store.Device, actor string) (store.Device, error)
	SetState(ctx context.Context, tenant event.TenantID, id event.DeviceID, to store.DeviceState, actor, reason string) (registry.Change, error)
	BindSIM(ctx context.Context, tenant event.TenantID, id event.DeviceID, b registry.Binding, actor string) (store.Device, error)
	Import(ctx context.Context, tenant event.TenantID, in io.Reader, actor string) (registry.ImportResult, error)
}

var _ DeviceRegistry = (*registry.Registry)(nil)

// manifestTimeout bounds one manifest upload (body read, validation and
// the one transaction), beyond the server's default deadlines.
const manifestTimeout = 10 * time.Minute

// deviceRoutes are the registry's write routes of a tenant (the reads are
// in alerts.go).
func (s *Server) deviceRoutes(t string) []Route {
	const post = http.MethodPost
	ok, created := http.StatusOK, http.StatusCreated
	imp := Route{Method: post, Pattern: t + "/devices/import", Perm: auth.PermDevicesWrite, Scope: ScopeTenant, Status: ok,
		Summary: "Import a manufacturing manifest (CSV: serial,model,imei,iccid,imsi[,id]), streamed, all rows or none; a refusal lists every bad row.",
		Resp:    reflect.TypeFor[registry.ImportResult](), Body: "text/csv", handle: (*Server).importManifest}
	return []Route{
		op(post, t+"/devices", auth.PermDevicesWrite, ScopeTenant, created, "Register a device (state registered).", (*Server).createDevice),
		imp,
		op(post, t+"/devices/revoke", auth.PermDevicesWrite, ScopeTenant, ok, "Revoke every device a selector picks, in one operation (certificates, CRL, state), or preview it with dry_run.", (*Server).revokeSelected),
		op(post, t+"/devices/{id}/state", auth.PermDevicesWrite, ScopeTenant, ok, "Move a device to another lifecycle state (allowed transitions only).", (*Server).setDeviceState),
		op(post, t+"/devices/{id}/sim", auth.PermDevicesWrite, ScopeTenant, ok, "Bind the device to a SIM (ICCID, IMSI) and IMEI; the old binding is kept in the audit log.", (*Server).bindSIM),
		op(post, t+"/devices/{id}/revoke", auth.PermDevicesWrite, ScopeTenant, ok, "Revoke a device: its certificates (CRL, OCSP, live sessions) and its state.", (*Server).revokeDevice),
	}
}

func (s *Server) needRegistry() error {
	if s.opt.Devices == nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the device registry is not running on this server")
	}
	return nil
}

// CreateDeviceRequest registers a device. Unset SIM and hardware ids may be
// bound later.
type CreateDeviceRequest struct {
	ID     string            `json:"id"`
	Name   string            `json:"name,omitempty"`
	Model  string            `json:"model"`
	Serial string            `json:"serial,omitempty"`
	IMEI   string            `json:"imei,omitempty"`
	ICCID  string            `json:"iccid,omitempty"`
	IMSI   string            `json:"imsi,omitempty"`
	MSISDN string            `json:"msisdn,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
	Groups []string          `json:"groups,omitempty"`
}

func (s *Server) createDevice(ctx context.Context, c *call, req CreateDeviceRequest) (store.Device, error) {
	if err := s.needRegistry(); err != nil {
		return store.Device{}, err
	}
	if len(req.Name) > 200 || len(req.MSISDN) > 20 || len(req.Tags) > 64 || len(req.Groups) > 64 {
		return store.Device{}, errorf(http.StatusBadRequest, CodeInvalid, "name at most 200 bytes, msisdn at most 20, at most 64 tags and 64 groups")
	}
	d := store.Device{Tenant: c.tenant, ID: event.DeviceID(req.ID), Name: req.Name, Model: req.Model, Serial: req.Serial,
		IMEI: req.IMEI, ICCID: req.ICCID, IMSI: req.IMSI, MSISDN: req.MSISDN, Tags: req.Tags, Groups: req.Groups}
	d, err := s.opt.Devices.Register(ctx, d, c.p.Actor())
	if err != nil {
		return store.Device{}, identityError(err)
	}
	return d, nil
}

// ManifestRefused is the body of a refused manifest (400 invalid, or 409
// conflict when rows clash with devices already registered): nothing was
// imported. Rows lists up to 1000 bad rows by CSV line; BadRows counts them
// all.
type ManifestRefused struct {
	Error   ErrorDetail         `json:"error"`
	BadRows int                 `json:"bad_rows"`
	Rows    []registry.RowError `json:"rows"`
}

func (s *Server) importManifest(w http.ResponseWriter, c *call) error {
	if err := s.needRegistry(); err != nil {
		return err
	}
	mt, _, err := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if err != nil || mt != "text/csv" {
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "body must be text/csv (a manufacturing manifest)")
	}
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(manifestTimeout)
	_ = rc.SetReadDeadline(deadline) // not every ResponseWriter supports it (tests); the default deadlines then apply
	_ = rc.SetWriteDeadline(deadline)
	body := http.MaxBytesReader(w, c.r.Body, registry.MaxManifestBytes)
	res, err := s.opt.Devices.Import(c.r.Context(), c.tenant, body, c.p.Actor())
	var ie *registry.ImportError
	switch {
	case errors.As(err, &ie):
		status, code := http.StatusBadRequest, CodeInvalid
		if errors.Is(err, store.ErrConflict) {
			status, code = http.StatusConflict, CodeConflict
		}
		s.opt.Logger.DebugContext(c.r.Context(), "manifest refused", "tenant", c.tenant, "bad_rows", ie.Total, "file", ie.File)
		rows := ie.Rows
		if rows == nil {
			rows = []registry.RowError{}
		}
		writeJSON(w, status, ManifestRefused{Error: ErrorDetail{Code: code, Message: ie.Error()}, BadRows: ie.Total, Rows: rows})
		return nil
	case err != nil:
		return identityError(err)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// SetStateRequest moves a device to State. Moving to "revoked" also
// revokes its certificates (as POST .../revoke does).
type SetStateRequest struct {
	State  store.DeviceState `json:"state"`
	Reason string            `json:"reason,omitempty"`
}

// StateChange is the outcome of a state change.
type StateChange struct {
	Device  store.Device      `json:"device"`
	From    store.DeviceState `json:"from"`
	Changed bool              `json:"changed"`
}

func (s *Server) setDeviceState(ctx context.Context, c *call, req SetStateRequest) (StateChange, error) {
	if err := s.needRegistry(); err != nil {
		return StateChange{}, err
	}
	if !registry.ValidState(req.State) {
		return StateChange{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown state %q (registered, active, quarantined, suspended, revoked, decommissioned)", req.State))
	}
	if len(req.Reason) > maxNoteBytes {
		return StateChange{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("reason longer than %d bytes", maxNoteBytes))
	}
	id := event.DeviceID(c.r.PathValue("id"))
	if req.State == store.StateRevoked {
		// Revocation is more than a state: it goes through the CA, which
		// refuses the transition the same way the registry does.
		if err := s.needCA(); err != nil {
			return StateChange{}, err
		}
		var before store.Device
		if err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
			before, err = tx.Devices().Get(ctx, c.tenant, id)
			return err
		}); err != nil {
			return StateChange{}, identityError(err)
		}
		if before.State != store.StateRevoked && !registry.CanTransition(before.State, store.StateRevoked) {
			return StateChange{}, errorf(http.StatusConflict, CodeConflict, fmt.Sprintf("transition not allowed: %s -> revoked", before.State))
		}
		if _, err := s.opt.Identity.RevokeDeviceState(ctx, c.tenant, id, identity.ReasonUnspecified, c.p.Actor(), false); err != nil {
			return StateChange{}, identityError(err)
		}
		var after store.Device
		if err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
			after, err = tx.Devices().Get(ctx, c.tenant, id)
			return err
		}); err != nil {
			return StateChange{}, err
		}
		return StateChange{Device: after, From: before.State, Changed: before.State != after.State}, nil
	}
	ch, err := s.opt.Devices.SetState(ctx, c.tenant, id, req.State, c.p.Actor(), req.Reason)
	if err != nil {
		return StateChange{}, identityError(err)
	}
	return StateChange{Device: ch.Device, From: ch.From, Changed: ch.Changed()}, nil
}

func (s *Server) bindSIM(ctx context.Context, c *call, req registry.Binding) (store.Device, error) {
	if err := s.needRegistry(); err != nil {
		return store.Device{}, err
	}
	d, err := s.opt.Devices.BindSIM(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), req, c.p.Actor())
	if err != nil {
		return store.Device{}, identityError(err)
	}
	return d, nil
}

// RevokeDeviceRequest revokes one device. Reason is an RFC 5280 CRLReason
// name (default unspecified).
type RevokeDeviceRequest struct {
	Reason string `json:"reason,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// RevokeSelectedRequest revokes every device Selector picks (see
// registry.ParseSelector: model=,firmware=,state=,group=,tag=K[:V],imsi^=).
// An empty selector is refused: say "*" to mean every device. With DryRun
// nothing changes and the answer holds the count and up to Sample devices
// (default 10, at most 100).
type RevokeSelectedRequest struct {
	Selector string `json:"selector"`
	Reason   string `json:"reason,omitempty"`
	DryRun   bool   `json:"dry_run,omitempty"`
	Sample   int    `json:"sample,omitempty"`
}

// reasons maps the names accepted in requests to RFC 5280 CRLReason codes.
var reasons = map[string]int{
	"":                       identity.ReasonUnspecified,
	"unspecified":            identity.ReasonUnspecified,
	"key_compromise":         identity.ReasonKeyCompromise,
	"affiliation_changed":    identity.ReasonAffiliationChanged,
	"superseded":             identity.ReasonSuperseded,
	"cessation_of_operation": identity.ReasonCessationOfOperation,
	"privilege_withdrawn":    identity.ReasonPrivilegeWithdrawn,
}

func reasonCode(name string) (int, error) {
	r, ok := reasons[name]
	if !ok {
		return 0, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown reason %q (unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn)", name))
	}
	return r, nil
}

func (s *Server) revokeDevice(ctx context.Context, c *call, req RevokeDeviceRequest) (identity.Revocation, error) {
	if err := s.needCA(); err != nil {
		return identity.Revocation{}, err
	}
	reason, err := reasonCode(req.Reason)
	if err != nil {
		return identity.Revocation{}, err
	}
	rv, err := s.opt.Identity.RevokeDeviceState(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), reason, c.p.Actor(), req.DryRun)
	if err != nil {
		return identity.Revocation{}, identityError(err)
	}
	return rv, nil
}

func (s *Server) revokeSelected(ctx context.Context, c *call, req RevokeSelectedRequest) (identity.Revocation, error) {
	if err := s.needCA(); err != nil {
		return identity.Revocation{}, err
	}
	if req.Selector == "" {
		return identity.Revocation{}, errorf(http.StatusBadRequest, CodeInvalid, `selector is required (say "*" to select every device)`)
	}
	sel, err := registry.ParseSelector(req.Selector)
	if err != nil {
		return identity.Revocation{}, identityError(err)
	}
	reason, err := reasonCode(req.Reason)
	if err != nil {
		return identity.Revocation{}, err
	}
	if req.Sample == 0 {
		req.Sample = 10
	}
	if req.Sample < 0 || req.Sample > 100 {
		return identity.Revocation{}, errorf(http.StatusBadRequest, CodeInvalid, "sample must be 1-100")
	}
	label := sel.String()
	if label == "" {
		label = "*"
	}
	rv, err := s.opt.Identity.RevokeSelected(ctx, c.tenant, sel.Filter(), label, reason, c.p.Actor(), req.DryRun, req.Sample)
	if err != nil {
		return identity.Revocation{}, identityError(err)
	}
	return rv, nil
}
