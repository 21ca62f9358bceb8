package api

import (
	"context"
	"net/http"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
)

// PasswordService generates, rotates and clears device broker passwords
// for the legacy password listener (*registry.Registry). Every change
// writes its own audit record (never with the secret) with the actor given.
type PasswordService interface {
	SetPassword(ctx context.Context, tenant event.TenantID, id event.DeviceID, actor string) (registry.PasswordGrant, error)
	ClearPassword(ctx context.Context, tenant event.TenantID, id event.DeviceID, actor string) error
	Password(ctx context.Context, tenant event.TenantID, id event.DeviceID) (registry.PasswordStatus, error)
}

var _ PasswordService = (*registry.Registry)(nil)

// passwordRoutes are a device's broker-password routes.
func (s *Server) passwordRoutes(t string) []Route {
	const get, post, del = http.MethodGet, http.MethodPost, http.MethodDelete
	p := t + "/devices/{id}/password"
	return []Route{
		op(get, p, auth.PermTenantRead, ScopeTenant, http.StatusOK, "Tell whether the device has a broker password (legacy password listener) and since when; never the password.", (*Server).getPassword),
		op(post, p, auth.PermDevicesWrite, ScopeTenant, http.StatusOK,
			"Generate a new random broker password for the device (username TENANT/DEVICE), replacing any earlier one and closing its password sessions. The password is in this response only; the platform keeps its hash.",
			(*Server).setPassword),
		op(del, p, auth.PermDevicesWrite, ScopeTenant, http.StatusNoContent, "Clear the device's broker password: the password listener refuses it from now on and its password sessions are closed.", (*Server).clearPassword),
	}
}

func (s *Server) passwords() (PasswordService, error) {
	if s.opt.Passwords == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "device passwords are not served by this server")
	}
	return s.opt.Passwords, nil
}

func (s *Server) getPassword(ctx context.Context, c *call, _ noBody) (registry.PasswordStatus, error) {
	svc, err := s.passwords()
	if err != nil {
		return registry.PasswordStatus{}, err
	}
	return svc.Password(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")))
}

func (s *Server) setPassword(ctx context.Context, c *call, _ noBody) (registry.PasswordGrant, error) {
	svc, err := s.passwords()
	if err != nil {
		return registry.PasswordGrant{}, err
	}
	g, err := svc.SetPassword(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), c.p.Actor())
	if err != nil {
		return registry.PasswordGrant{}, err
	}
	s.opt.Logger.InfoContext(ctx, "device password set", "tenant", c.tenant, "device", g.Device, "rotated", g.Rotated, "actor", c.p.Actor())
	return g, nil
}

func (s *Server) clearPassword(ctx context.Context, c *call, _ noBody) (noBody, error) {
	svc, err := s.passwords()
	if err != nil {
		return noBody{}, err
	}
	id := event.DeviceID(c.r.PathValue("id"))
	if err := svc.ClearPassword(ctx, c.tenant, id, c.p.Actor()); err != nil {
		return noBody{}, err
	}
	s.opt.Logger.InfoContext(ctx, "device password cleared", "tenant", c.tenant, "device", id, "actor", c.p.Actor())
	return noBody{}, nil
}
