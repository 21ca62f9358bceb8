package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// CommandStatus is where a platform command to a device is.
type CommandStatus string

// Command statuses. Sent and offline are open: the device's result, when
// it comes, completes them. Succeeded and failed are final.
const (
	CommandSent      CommandStatus = "sent"      // handed to the device's live session
	CommandOffline   CommandStatus = "offline"   // published while the device had no live session
	CommandSucceeded CommandStatus = "succeeded" // the device answered ok
	CommandFailed    CommandStatus = "failed"    // the device answered not ok (unknown name, expired, handler error)
)

// Command is one command sent to a device on devices/{id}/commands, and
// its outcome once the device answered with a command.result event.
type Command struct {
	Tenant      event.TenantID `json:"tenant"`
	ID          string         `json:"id"`
	Device      event.DeviceID `json:"device"`
	Name        string         `json:"name"`
	Args        []byte         `json:"args,omitempty"` // a JSON object, or empty
	Status      CommandStatus  `json:"status"`
	Output      string         `json:"output,omitempty"`
	Error       string         `json:"error,omitempty"`
	CreatedBy   string         `json:"created_by"`
	CreatedAt   time.Time      `json:"created_at"`
	Expires     time.Time      `json:"expires"`
	CompletedAt time.Time      `json:"completed_at,omitzero"`
}

// Commands stores device commands. Every method is tenant-scoped.
type Commands interface {
	// Create adds c; ErrConflict if (tenant, id) exists; ErrInvalid without
	// tenant, id, device, name or status.
	Create(ctx context.Context, c Command) error
	// Get returns the command or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Command, error)
	// SetStatus moves an open command (sent or offline) to another open
	// status; it changes nothing on a completed one. ErrNotFound if absent.
	SetStatus(ctx context.Context, tenant event.TenantID, id string, st CommandStatus) error
	// Complete records the device's answer: status succeeded or failed,
	// output, error text and time. It applies only to the command of that
	// tenant, id and device (a device cannot complete another's command:
	// ErrNotFound) and only once: completing a completed command changes
	// nothing and returns it as stored (results arrive at least once).
	// It returns the command as stored afterwards.
	Complete(ctx context.Context, tenant event.TenantID, device event.DeviceID, id string, ok bool, output, errText string, at time.Time) (Command, error)
	// ListDevice returns the device's commands, newest first, at most limit
	// (all when limit <= 0).
	ListDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID, limit int) ([]Command, error)
}
