package store

import (
	"context"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// DevicePassword is a device's broker password for the legacy password
// listener: only its hash (an argon2id PHC string, package creds) is ever
// stored; the password itself is shown once when generated.
type DevicePassword struct {
	Tenant    event.TenantID `json:"tenant"`
	Device    event.DeviceID `json:"device"`
	Hash      string         `json:"-"`
	CreatedAt time.Time      `json:"created_at"`
}

// DevicePasswords stores device password hashes, one per device.
type DevicePasswords interface {
	// Set creates the device's password hash or replaces the one it had
	// (a rotation); ErrInvalid without tenant, device or hash. It does not
	// check that the device exists: the caller does, in the same
	// transaction.
	Set(ctx context.Context, p DevicePassword) error
	// Get returns the device's password hash or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, device event.DeviceID) (DevicePassword, error)
	// Delete removes the device's password hash; ErrNotFound if it had
	// none.
	Delete(ctx context.Context, tenant event.TenantID, device event.DeviceID) error
}
