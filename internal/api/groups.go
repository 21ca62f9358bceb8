package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// GroupService is what the group routes need (*registry.Registry). Every
// change writes its audit record, with the actor given, in the transaction
// of the change; bad input matches store.ErrInvalid (a bad selector is a
// *registry.SelectorError naming the term), an unknown group or device
// store.ErrNotFound.
type GroupService interface {
	Groups(ctx context.Context, tenant event.TenantID) ([]registry.Group, error)
	Group(ctx context.Context, tenant event.TenantID, name string) (registry.GroupInfo, error)
	CreateGroup(ctx context.Context, tenant event.TenantID, spec registry.GroupSpec, actor string) (registry.Group, error)
	UpdateGroup(ctx context.Context, tenant event.TenantID, name string, up registry.GroupUpdate, actor string) (registry.Group, error)
	DeleteGroup(ctx context.Context, tenant event.TenantID, name, actor string) ([]event.DeviceID, error)
	GroupMembers(ctx context.Context, tenant event.TenantID, name string, after event.DeviceID, limit int) ([]store.Device, error)
	AddToGroup(ctx context.Context, tenant event.TenantID, name string, ids []event.DeviceID, actor string) (registry.Membership, error)
	RemoveFromGroup(ctx context.Context, tenant event.TenantID, name string, ids []event.DeviceID, actor string) (registry.Membership, error)
}

var _ GroupService = (*registry.Registry)(nil)

func (s *Server) groupRoutes(t string) []Route {
	const get, post, patch, del = http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete
	const ok, created = http.StatusOK, http.StatusCreated
	g := t + "/groups/{name}"
	return []Route{
		op(get, t+"/groups", auth.PermTenantRead, ScopeTenant, ok, "List the tenant's device groups, ordered by name.", (*Server).listGroups),
		op(post, t+"/groups", auth.PermDevicesWrite, ScopeTenant, created, "Create a group: static (members added by id) or dynamic (a selector, evaluated whenever devices are selected).", (*Server).createGroup),
		op(get, g, auth.PermTenantRead, ScopeTenant, ok, "Get a group with its current number of members.", (*Server).getGroup),
		op(patch, g, auth.PermDevicesWrite, ScopeTenant, ok, "Change a group's description or (dynamic groups) its selector.", (*Server).updateGroup),
		op(del, g, auth.PermDevicesWrite, ScopeTenant, ok, "Delete a group; its name is removed from every device in the same transaction.", (*Server).deleteGroup),
		op(get, g+"/members", auth.PermTenantRead, ScopeTenant, ok, "List a group's members ordered by id (a dynamic group's selector is evaluated now).", (*Server).groupMembers),
		op(post, g+"/members/add", auth.PermDevicesWrite, ScopeTenant, ok, "Add devices to a static group by id: all or none (an unknown id is 404).", (*Server).addGroupMembers),
		op(post, g+"/members/remove", auth.PermDevicesWrite, ScopeTenant, ok, "Remove devices from a static group by id: all or none (an unknown id is 404).", (*Server).removeGroupMembers),
	}
}

func (s *Server) groups() (GroupService, error) {
	if s.opt.Groups == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "device groups are not served by this server")
	}
	return s.opt.Groups, nil
}

// groupError gives group outcomes their public form.
func groupError(err error) error {
	var se *registry.SelectorError
	switch {
	case errors.As(err, &se):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: se.Error(), Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: afterSentinel(err, store.ErrInvalid, "invalid input"), Err: err}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: "a group with that name exists", Err: err}
	}
	return err
}

// afterSentinel is the part of err's text after the sentinel's own words
// ("invalid: ..."), which is what the caller wrote; fallback if none.
func afterSentinel(err, sentinel error, fallback string) string {
	msg := err.Error()
	i := strings.LastIndex(msg, sentinel.Error()+": ")
	if i < 0 {
		return fallback
	}
	msg = msg[i+len(sentinel.Error())+2:]
	if len(msg) > 300 {
		msg = msg[:300]
	}
	return msg
}

func (s *Server) listGroups(ctx context.Context, c *call, _ noBody) ([]registry.Group, error) {
	svc, err := s.groups()
	if err != nil {
		return nil, err
	}
	gs, err := svc.Groups(ctx, c.tenant)
	return nonNil(gs), err
}

// CreateGroupRequest creates a group. Name is 1-64 characters of
// [A-Za-z0-9._-]; Kind is static (default) or dynamic; a dynamic group's
// Selector uses the terms of the device selector (model=, firmware=,
// state=, group=, tag=K[:V], imsi^=), and may not reach the group itself
// through group= terms.
type CreateGroupRequest struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Kind        string `json:"kind,omitempty"`
	Selector    string `json:"selector,omitempty"`
}

func (s *Server) createGroup(ctx context.Context, c *call, req CreateGroupRequest) (registry.Group, error) {
	svc, err := s.groups()
	if err != nil {
		return registry.Group{}, err
	}
	g, err := svc.CreateGroup(ctx, c.tenant, registry.GroupSpec{Name: req.Name, Description: req.Description,
		Kind: store.GroupKind(req.Kind), Selector: req.Selector}, c.p.Actor())
	if err != nil {
		return registry.Group{}, groupError(err)
	}
	s.opt.Logger.InfoContext(ctx, "group created", "tenant", c.tenant, "group", g.Name, "kind", g.Kind, "actor", c.p.Actor())
	return g, nil
}

func (s *Server) getGroup(ctx context.Context, c *call, _ noBody) (registry.GroupInfo, error) {
	svc, err := s.groups()
	if err != nil {
		return registry.GroupInfo{}, err
	}
	info, err := svc.Group(ctx, c.tenant, c.r.PathValue("name"))
	if err != nil {
		return registry.GroupInfo{}, groupError(err)
	}
	return info, nil
}

// UpdateGroupRequest changes the fields given; a static group has no
// selector.
type UpdateGroupRequest struct {
	Description *string `json:"description,omitempty"`
	Selector    *string `json:"selector,omitempty"`
}

func (s *Server) updateGroup(ctx context.Context, c *call, req UpdateGroupRequest) (registry.Group, error) {
	svc, err := s.groups()
	if err != nil {
		return registry.Group{}, err
	}
	if req.Description == nil && req.Selector == nil {
		return registry.Group{}, errorf(http.StatusBadRequest, CodeInvalid, "give description or selector")
	}
	g, err := svc.UpdateGroup(ctx, c.tenant, c.r.PathValue("name"), registry.GroupUpdate{Description: req.Description, Selector: req.Selector}, c.p.Actor())
	if err != nil {
		return registry.Group{}, groupError(err)
	}
	return g, nil
}

// GroupDeleted reports a deleted group and the devices whose groups no
// longer list it.
type GroupDeleted struct {
	Group       string           `json:"group"`
	RemovedFrom []event.DeviceID `json:"removed_from"`
}

func (s *Server) deleteGroup(ctx context.Context, c *call, _ noBody) (GroupDeleted, error) {
	svc, err := s.groups()
	if err != nil {
		return GroupDeleted{}, err
	}
	name := c.r.PathValue("name")
	ids, err := svc.DeleteGroup(ctx, c.tenant, name, c.p.Actor())
	if err != nil {
		return GroupDeleted{}, groupError(err)
	}
	s.opt.Logger.InfoContext(ctx, "group deleted", "tenant", c.tenant, "group", name, "devices", len(ids), "actor", c.p.Actor())
	return GroupDeleted{Group: name, RemovedFrom: nonNil(ids)}, nil
}

func (s *Server) groupMembers(ctx context.Context, c *call, _ noBody) ([]store.Device, error) {
	svc, err := s.groups()
	if err != nil {
		return nil, err
	}
	q := query{c.r.URL.Query()}
	after, err := q.ident("after")
	if err != nil {
		return nil, err
	}
	limit, err := q.limit()
	if err != nil {
		return nil, err
	}
	ds, err := svc.GroupMembers(ctx, c.tenant, c.r.PathValue("name"), event.DeviceID(after), limit)
	if err != nil {
		return nil, groupError(err)
	}
	return nonNil(ds), nil
}

// GroupMembersRequest names devices to add to or remove from a static
// group: 1-1000 ids, all of the tenant.
type GroupMembersRequest struct {
	Devices []event.DeviceID `json:"devices"`
}

func (s *Server) addGroupMembers(ctx context.Context, c *call, req GroupMembersRequest) (registry.Membership, error) {
	return s.changeGroupMembers(ctx, c, req, true)
}

func (s *Server) removeGroupMembers(ctx context.Context, c *call, req GroupMembersRequest) (registry.Membership, error) {
	return s.changeGroupMembers(ctx, c, req, false)
}

func (s *Server) changeGroupMembers(ctx context.Context, c *call, req GroupMembersRequest, add bool) (registry.Membership, error) {
	svc, err := s.groups()
	if err != nil {
		return registry.Membership{}, err
	}
	if len(req.Devices) == 0 || len(req.Devices) > registry.MaxGroupChange {
		return registry.Membership{}, errorf(http.StatusBadRequest, CodeInvalid, fmt.Sprintf("devices: give 1-%d device ids", registry.MaxGroupChange))
	}
	change := svc.RemoveFromGroup
	if add {
		change = svc.AddToGroup
	}
	m, err := change(ctx, c.tenant, c.r.PathValue("name"), req.Devices, c.p.Actor())
	if err != nil {
		return registry.Membership{}, groupError(err)
	}
	return m, nil
}
