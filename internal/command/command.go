// Package command sends platform commands to devices through the broker and
// records their outcomes.
//
// A command is stored (with its audit record, in one transaction) before it
// is published on devices/{id}/commands as {"id","name","args","expires"}.
// The device answers with a command.result event on devices/{id}/events,
// which the broker decodes into a device.command_result event; [Service.Result]
// completes the stored command from it. Results arrive at least once and
// complete a command only once; a device can complete only its own
// commands.
package command

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Limits of a command request.
const (
	MaxNameLen = 64
	MaxArgs    = 8 << 10 // bytes of the args object
	DefaultTTL = 5 * time.Minute
	MaxTTL     = 24 * time.Hour
)

// Errors returned by [Service.Send], wrapped with the reason.
var (
	// ErrInvalid: the request breaks a rule (name, args, ttl). It wraps
	// store.ErrInvalid.
	ErrInvalid = fmt.Errorf("command: %w", store.ErrInvalid)
	// ErrState: the device's state does not let it receive commands
	// (only active and quarantined devices connect). It wraps
	// store.ErrConflict.
	ErrState = fmt.Errorf("command: device cannot receive commands: %w", store.ErrConflict)
)

// Sender publishes a command payload to a device (*broker.Broker) and
// reports whether the device had a live session.
type Sender interface {
	Command(t event.TenantID, d event.DeviceID, payload []byte) (bool, error)
}

// Relay hands a command that found no live session on this node to the
// other nodes of the deployment (the bus); the node holding the device's
// session delivers it with [Service.Deliver].
type Relay interface {
	Relay(ctx context.Context, c store.Command) error
}

// Options configure a [Service].
type Options struct {
	Store  store.Store // required
	Sender Sender      // required
	// Relay, when set, passes a command the local broker could not deliver
	// to the other nodes. Nil on a single node.
	Relay  Relay
	Clock  clock.Clock
	Logger *slog.Logger
	Rand   io.Reader // command ids; crypto/rand when nil
}

// Service sends commands and records their results.
type Service struct {
	o   Options
	log *slog.Logger
}

// New validates o and returns a service; it has no side effects.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Sender == nil {
		return nil, errors.New("command: store and sender are required")
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	return &Service{o: o, log: o.Logger}, nil
}

// Request is what an operator asks a device to do.
type Request struct {
	// Name of the command: ping, reboot, report, or one the device's
	// application registered. 1-64 characters of [A-Za-z0-9._-].
	Name string `json:"name"`
	// Args is a JSON object passed to the device as is (at most 8 KiB).
	Args json.RawMessage `json:"args,omitempty"`
	// TTLSeconds: the device refuses the command after this long (default
	// 300, at most 86400).
	TTLSeconds int `json:"ttl_s,omitempty"`
}

// payload is what the device receives on devices/{id}/commands.
type payload struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"`
	Args    json.RawMessage `json:"args,omitempty"`
	Expires time.Time       `json:"expires"`
}

func validName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Validate checks r and returns the TTL it asks for.
func (r Request) Validate() (time.Duration, error) {
	if !validName(r.Name) {
		return 0, fmt.Errorf("%w: name must be 1 to %d characters of A-Z, a-z, 0-9, '.', '_' or '-'", ErrInvalid, MaxNameLen)
	}
	if len(r.Args) > 0 {
		if len(r.Args) > MaxArgs {
			return 0, fmt.Errorf("%w: args larger than %d bytes", ErrInvalid, MaxArgs)
		}
		a := bytes.TrimSpace(r.Args)
		var obj map[string]json.RawMessage
		if len(a) == 0 || a[0] != '{' || json.Unmarshal(a, &obj) != nil {
			return 0, fmt.Errorf("%w: args must be a JSON object", ErrInvalid)
		}
	}
	ttl := DefaultTTL
	switch {
	case r.TTLSeconds < 0 || time.Duration(r.TTLSeconds)*time.Second > MaxTTL:
		return 0, fmt.Errorf("%w: ttl_s must be between 1 and %d", ErrInvalid, int(MaxTTL/time.Second))
	case r.TTLSeconds > 0:
		ttl = time.Duration(r.TTLSeconds) * time.Second
	}
	return ttl, nil
}

// Send stores the command with its audit record (actor, name, id), then
// publishes it to the device. The returned command is sent when the device
// had a live session, offline otherwise (a device whose MQTT session
// persisted still gets it when it reconnects; its result completes the
// command whenever it comes). ErrNotFound (wrapped) for an unknown device.
func (s *Service) Send(ctx context.Context, tenant event.TenantID, device event.DeviceID, req Request, actor string) (store.Command, error) {
	ttl, err := req.Validate()
	if err != nil {
		return store.Command{}, err
	}
	var b [10]byte
	if _, err := io.ReadFull(s.o.Rand, b[:]); err != nil {
		return store.Command{}, fmt.Errorf("command: random id: %w", err)
	}
	now := s.o.Clock.Now().UTC()
	cmd := store.Command{Tenant: tenant, ID: "cmd-" + hex.EncodeToString(b[:]), Device: device, Name: req.Name,
		Args: bytes.TrimSpace(req.Args), Status: store.CommandOffline, CreatedBy: actor,
		CreatedAt: now.Truncate(time.Microsecond), Expires: now.Add(ttl).Truncate(time.Microsecond)}
	if len(cmd.Args) == 0 {
		cmd.Args = nil
	}
	err = s.o.Store.Update(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, tenant, device)
		if err != nil {
			return err
		}
		if d.State != store.StateActive && d.State != store.StateQuarantined {
			return fmt.Errorf("%w: state %s", ErrState, d.State)
		}
		if err := tx.Commands().Create(ctx, cmd); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "device.command", "device/"+string(device),
			map[string]any{"command_id": cmd.ID, "name": cmd.Name, "expires": cmd.Expires.Format(time.RFC3339)})
	})
	if err != nil {
		return store.Command{}, fmt.Errorf("command send %s/%s: %w", tenant, device, err)
	}
	p, err := json.Marshal(payload{ID: cmd.ID, Name: cmd.Name, Args: cmd.Args, Expires: cmd.Expires})
	if err != nil {
		return cmd, fmt.Errorf("command send %s/%s: %w", tenant, device, err)
	}
	live, err := s.o.Sender.Command(tenant, device, p)
	if err != nil {
		return cmd, fmt.Errorf("command send %s/%s: publish: %w", tenant, device, err)
	}
	s.log.Info("command sent", "tenant", tenant, "device", device, "command", cmd.ID, "name", cmd.Name, "live", live)
	if !live {
		if s.o.Relay != nil {
			// Another node may hold the session; it marks the command sent
			// when it delivers. Failing to relay leaves the command offline,
			// sent again on the device's next subscription.
			if err := s.o.Relay.Relay(ctx, cmd); err != nil {
				s.log.Warn("command relay to other nodes", "tenant", tenant, "device", device, "command", cmd.ID, "err", err)
			}
		}
		return cmd, nil
	}
	err = s.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Commands().SetStatus(ctx, tenant, cmd.ID, store.CommandSent); err != nil {
			return err
		}
		cmd, err = tx.Commands().Get(ctx, tenant, cmd.ID)
		return err
	})
	if err != nil {
		return cmd, fmt.Errorf("command send %s/%s: %w", tenant, device, err)
	}
	return cmd, nil
}

// Get returns the device's command id; ErrNotFound (wrapped) if the
// tenant has no such command for that device.
func (s *Service) Get(ctx context.Context, tenant event.TenantID, device event.DeviceID, id string) (store.Command, error) {
	var c store.Command
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		c, err = tx.Commands().Get(ctx, tenant, id)
		return err
	})
	if err == nil && c.Device != device {
		err = fmt.Errorf("command get %s/%s: %w", tenant, id, store.ErrNotFound)
	}
	if err != nil {
		return store.Command{}, err
	}
	return c, nil
}

// Result completes the command named by a device.command_result event.
// A result for a command the device does not have (unknown id, another
// device's) is logged and dropped: it is the device's word, not an error
// to retry. Store failures are returned so the bus retries.
func (s *Service) Result(ctx context.Context, ev *event.Event) error {
	if ev.Kind != event.CommandResult {
		return nil
	}
	id := ev.Str("command_id")
	ok, _ := ev.Attrs["ok"].(bool)
	var c store.Command
	err := s.o.Store.Update(ctx, func(tx store.Tx) (err error) {
		c, err = tx.Commands().Complete(ctx, ev.Tenant, ev.Device, id, ok, ev.Str("output"), ev.Str("error"), ev.Time)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.log.Info("command result for no command of this device", "tenant", ev.Tenant, "device", ev.Device, "command", id)
		return nil
	case err != nil:
		return fmt.Errorf("command result %s/%s: %w", ev.Tenant, id, err)
	}
	s.log.Info("command result", "tenant", ev.Tenant, "device", ev.Device, "command", id, "status", c.Status)
	return nil
}

// List returns the device's commands, newest first, at most limit.
func (s *Service) List(ctx context.Context, tenant event.TenantID, device event.DeviceID, limit int) ([]store.Command, error) {
	var out []store.Command
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		out, err = tx.Commands().ListDevice(ctx, tenant, device, limit)
		return err
	})
	return out, err
}

// Deliver sends the device its command id through via, when via reports a
// live session; a node calls it for a command another node relayed to it.
// Only a command still offline and not expired goes out (a command the
// device already got, or answered, is left alone), and it is marked sent.
// It reports whether the command was delivered. An unknown id, or another
// device's, is not an error: there is nothing to deliver.
func (s *Service) Deliver(ctx context.Context, tenant event.TenantID, device event.DeviceID, id string, via Sender) (bool, error) {
	c, err := s.Get(ctx, tenant, device, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("command deliver %s/%s: %w", tenant, id, err)
	}
	if c.Status != store.CommandOffline || !s.o.Clock.Now().Before(c.Expires) {
		return false, nil
	}
	p, err := json.Marshal(payload{ID: c.ID, Name: c.Name, Args: c.Args, Expires: c.Expires})
	if err != nil {
		return false, fmt.Errorf("command deliver %s/%s: %w", tenant, id, err)
	}
	live, err := via.Command(tenant, device, p)
	if err != nil {
		return false, fmt.Errorf("command deliver %s/%s: publish: %w", tenant, id, err)
	}
	if !live {
		return false, nil
	}
	if err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		return tx.Commands().SetStatus(ctx, tenant, id, store.CommandSent)
	}); err != nil {
		return true, fmt.Errorf("command deliver %s/%s: %w", tenant, id, err)
	}
	s.log.Info("command delivered for another node", "tenant", tenant, "device", device, "command", id, "name", c.Name)
	return true, nil
}

// redeliverScan bounds how many of a device's newest commands Redeliver
// looks at.
const redeliverScan = 100

// Redeliver publishes again the device's commands that went out while it
// had no live session (status offline) and have not expired, oldest
// first, and marks them sent. Call it when the device has subscribed to
// its commands again. A device answers a repeated id from its result cache
// rather than running it twice. It returns how many were sent.
func (s *Service) Redeliver(ctx context.Context, tenant event.TenantID, device event.DeviceID) (int, error) {
	cs, err := s.List(ctx, tenant, device, redeliverScan)
	if err != nil {
		return 0, fmt.Errorf("command redeliver %s/%s: %w", tenant, device, err)
	}
	now := s.o.Clock.Now()
	n := 0
	for i := len(cs) - 1; i >= 0; i-- {
		c := cs[i]
		if c.Status != store.CommandOffline || !now.Before(c.Expires) {
			continue
		}
		p, err := json.Marshal(payload{ID: c.ID, Name: c.Name, Args: c.Args, Expires: c.Expires})
		if err != nil {
			return n, fmt.Errorf("command redeliver %s/%s: %w", tenant, c.ID, err)
		}
		live, err := s.o.Sender.Command(tenant, device, p)
		if err != nil {
			return n, fmt.Errorf("command redeliver %s/%s: publish: %w", tenant, c.ID, err)
		}
		if !live {
			return n, nil // gone again; the next subscription retries
		}
		if err := s.o.Store.Update(ctx, func(tx store.Tx) error {
			return tx.Commands().SetStatus(ctx, tenant, c.ID, store.CommandSent)
		}); err != nil {
			return n, fmt.Errorf("command redeliver %s/%s: %w", tenant, c.ID, err)
		}
		s.log.Info("command redelivered", "tenant", tenant, "device", device, "command", c.ID, "name", c.Name)
		n++
	}
	return n, nil
}
