package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// CommandService sends commands to devices and reads their outcomes
// (*command.Service). Send writes its own audit record.
type CommandService interface {
	Send(ctx context.Context, tenant event.TenantID, device event.DeviceID, req command.Request, actor string) (store.Command, error)
	Get(ctx context.Context, tenant event.TenantID, device event.DeviceID, id string) (store.Command, error)
	List(ctx context.Context, tenant event.TenantID, device event.DeviceID, limit int) ([]store.Command, error)
}

var _ CommandService = (*command.Service)(nil)

// commandRoutes are a device's command routes.
func (s *Server) commandRoutes(t string) []Route {
	const get, post = http.MethodGet, http.MethodPost
	ok, accepted := http.StatusOK, http.StatusAccepted
	list := op(get, t+"/devices/{id}/commands", auth.PermTenantRead, ScopeTenant, ok, "List the device's commands, newest first.", (*Server).listCommands)
	list.Query = []string{"limit"}
	return []Route{
		op(post, t+"/devices/{id}/commands", auth.PermCommandsWrite, ScopeTenant, accepted,
			"Send a command to the device through the broker (ping, reboot, report, or one its application registered); its outcome arrives as the device's command.result and is read with GET .../commands/{command}.",
			(*Server).sendCommand),
		list,
		op(get, t+"/devices/{id}/commands/{command}", auth.PermTenantRead, ScopeTenant, ok, "Get a command and its outcome (status sent or offline until the device answers, then succeeded or failed).", (*Server).getCommand),
	}
}

func (s *Server) needCommands() error {
	if s.opt.Commands == nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "device commands are not running on this server (no broker)")
	}
	return nil
}

// CommandList is a page of a device's commands.
type CommandList struct {
	Commands []store.Command `json:"commands"`
}

func (s *Server) sendCommand(ctx context.Context, c *call, req command.Request) (store.Command, error) {
	if err := s.needCommands(); err != nil {
		return store.Command{}, err
	}
	if _, err := req.Validate(); err != nil {
		return store.Command{}, &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: strings.TrimPrefix(err.Error(), command.ErrInvalid.Error()+": "), Err: err}
	}
	cmd, err := s.opt.Commands.Send(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), req, c.p.Actor())
	switch {
	case errors.Is(err, command.ErrState):
		return store.Command{}, &Error{Status: http.StatusConflict, Code: CodeConflict, Message: "the device's state does not let it receive commands (active or quarantined only)", Err: err}
	case err != nil && cmd.ID != "":
		// Stored and audited, but the broker refused it: say so.
		return store.Command{}, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "command " + cmd.ID + " recorded but not published; send it again", Err: err}
	}
	return cmd, err
}

func (s *Server) getCommand(ctx context.Context, c *call, _ noBody) (store.Command, error) {
	if err := s.needCommands(); err != nil {
		return store.Command{}, err
	}
	return s.opt.Commands.Get(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), c.r.PathValue("command"))
}

func (s *Server) listCommands(ctx context.Context, c *call, _ noBody) (CommandList, error) {
	if err := s.needCommands(); err != nil {
		return CommandList{}, err
	}
	n, err := query{c.r.URL.Query()}.limit()
	if err != nil {
		return CommandList{}, err
	}
	cs, err := s.opt.Commands.List(ctx, c.tenant, event.DeviceID(c.r.PathValue("id")), n)
	if cs == nil {
		cs = []store.Command{}
	}
	return CommandList{Commands: cs}, err
}
