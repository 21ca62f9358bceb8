// Package store defines Garrison's persistence: small interfaces per concern
// whose doc comments are the contract, implemented twice (sqlite/ for the
// embedded default, postgres/ for scale-out) and held to one conformance
// suite (storetest.Run).
//
// All reads and writes happen inside a transaction opened with [Store.Update]
// or [Store.View]. Every mutating operation that an operator or automation
// performs appends its audit record through [Tx.Audit] inside the same
// Update, so the change and its record commit together or not at all.
//
// Every method takes the tenant explicitly; no method returns or changes a
// record of a tenant other than the one named. A record of another tenant is
// reported as [ErrNotFound], never as forbidden.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// Errors returned by every implementation, wrapped with the operation.
var (
	// ErrNotFound: the record does not exist in the named tenant.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a record with the same unique key already exists, or a
	// state transition is not allowed from the current state.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the input breaks a constraint of the contract.
	ErrInvalid = errors.New("invalid")
)

// Store opens transactions. Implementations are safe for concurrent use.
type Store interface {
	// Update runs fn in one read-write transaction. If fn returns an error
	// the transaction is rolled back and that error returned. A nil return
	// means the transaction is durably committed (fsync'd) before Update
	// returns. fn may be retried on a serialization failure, so it must not
	// have side effects outside tx.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction (a consistent snapshot).
	View(ctx context.Context, fn func(Tx) error) error
	// Close releases resources. Pending transactions finish first.
	Close() error
}

// Tx is the set of concerns reachable inside one transaction. Its accessors
// are cheap and may be called repeatedly.
type Tx interface {
	Tenants() Tenants
	Operators() Operators
	Tokens() Tokens
	Audit() AuditLog
	Settings() Settings
	Devices() Devices
	Alerts() Alerts
	Actions() Actions
	CAs() CAs
	Certificates() Certificates
	Incidents() Incidents
	Webhooks() Webhooks
	Deliveries() Deliveries
	Playbooks() Playbooks // response.go
	Mass() Mass           // response.go
	Campaigns() Campaigns
	Cells() Cells
	Rules() Rules               // rule.go
	Commands() Commands         // command.go
	Groups() Groups             // group.go
	Passwords() DevicePasswords // password.go
	Leases() Leases             // lease.go
}

// Tenant is an isolated customer of the platform.
type Tenant struct {
	ID        event.TenantID `json:"id"`
	Name      string         `json:"name"`
	CreatedAt time.Time      `json:"created_at"`
}

// Tenants stores tenants.
type Tenants interface {
	// Create adds t; ErrConflict if the id exists; ErrInvalid if the id is
	// not 1-63 chars of [a-z0-9-].
	Create(ctx context.Context, t Tenant) error
	// Get returns the tenant or ErrNotFound.
	Get(ctx context.Context, id event.TenantID) (Tenant, error)
	// List returns all tenants ordered by id.
	List(ctx context.Context) ([]Tenant, error)
	// Delete removes the tenant; ErrNotFound if absent.
	Delete(ctx context.Context, id event.TenantID) error
}

// Role is an operator's authority within a tenant.
type Role string

// Roles, from most to least powerful. PlatformAdmin spans all tenants.
const (
	RolePlatformAdmin Role = "platform-admin"
	RoleAdmin         Role = "admin"
	RoleOperator      Role = "operator"
	RoleAuditor       Role = "auditor"
	RoleViewer        Role = "viewer"
)

// Operator is a human or service account. Tenant is empty for platform
// admins.
type Operator struct {
	ID        string         `json:"id"`
	Tenant    event.TenantID `json:"tenant,omitempty"`
	Name      string         `json:"name"`
	Role      Role           `json:"role"`
	CreatedAt time.Time      `json:"created_at"`
}

// Operators stores operators.
type Operators interface {
	// Create adds o; ErrConflict if (tenant, name) exists.
	Create(ctx context.Context, o Operator) error
	// Get returns the operator in tenant (or platform scope if tenant is "")
	// or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Operator, error)
	// List returns the tenant's operators ordered by name.
	List(ctx context.Context, tenant event.TenantID) ([]Operator, error)
	// Delete removes the operator; ErrNotFound if absent.
	Delete(ctx context.Context, tenant event.TenantID, id string) error
}

// Token is an API token. The secret itself is never stored: only Hash
// (SHA-256 of the secret), looked up by its public ID prefix.
type Token struct {
	ID        string         `json:"id"`
	Tenant    event.TenantID `json:"tenant,omitempty"`
	Operator  string         `json:"operator"`
	Role      Role           `json:"role"`
	Name      string         `json:"name"`
	Hash      []byte         `json:"-"`
	CreatedAt time.Time      `json:"created_at"`
	ExpiresAt time.Time      `json:"expires_at"`
	RevokedAt *time.Time     `json:"revoked_at,omitempty"`
}

// Tokens stores API tokens.
type Tokens interface {
	// Create adds t; ErrConflict if the id exists.
	Create(ctx context.Context, t Token) error
	// Lookup returns the token with that id in any tenant (used by
	// authentication before the tenant is known) or ErrNotFound. Callers
	// check hash, expiry and revocation.
	Lookup(ctx context.Context, id string) (Token, error)
	// List returns the tenant's tokens ordered by creation.
	List(ctx context.Context, tenant event.TenantID) ([]Token, error)
	// Revoke sets RevokedAt; ErrNotFound if absent in tenant; revoking twice
	// keeps the first time.
	Revoke(ctx context.Context, tenant event.TenantID, id string, at time.Time) error
}

// AuditRecord is one entry of a tenant's hash chain. Seq starts at 1 and has
// no gaps; PrevHash is the Hash of record Seq-1 (32 zero bytes for Seq 1);
// Hash is computed by package audit over every other field.
type AuditRecord struct {
	Tenant   event.TenantID `json:"tenant"`
	Seq      int64          `json:"seq"`
	Time     time.Time      `json:"time"`
	Actor    string         `json:"actor"`
	Action   string         `json:"action"`
	Target   string         `json:"target"`
	Details  []byte         `json:"details,omitempty"` // JSON object
	PrevHash []byte         `json:"prev_hash"`
	Hash     []byte         `json:"hash"`
}

// AuditLog is append-only. Implementations serialize appends per tenant (two
// concurrent transactions never get the same Seq).
type AuditLog interface {
	// Head returns the last record of the tenant, or ErrNotFound if the
	// chain is empty.
	Head(ctx context.Context, tenant event.TenantID) (AuditRecord, error)
	// Append writes r, whose Seq, PrevHash and Hash the caller computed
	// from Head in the same transaction; ErrConflict if Seq is taken.
	Append(ctx context.Context, r AuditRecord) error
	// Range returns up to limit records with Seq > after, in Seq order.
	Range(ctx context.Context, tenant event.TenantID, after int64, limit int) ([]AuditRecord, error)
}

// Settings is a per-tenant key/value store of JSON documents (detector
// tuning, playbooks, trusted keys...). Tenant "" holds platform settings.
type Settings interface {
	// Get returns the value or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, key string) ([]byte, error)
	// Put creates or replaces the value.
	Put(ctx context.Context, tenant event.TenantID, key string, value []byte) error
	// Delete removes the key; ErrNotFound if absent.
	Delete(ctx context.Context, tenant event.TenantID, key string) error
}

// DeviceState is a device's lifecycle state.
type DeviceState string

// Lifecycle states. Allowed transitions are enforced by package registry.
const (
	StateRegistered     DeviceState = "registered"
	StateActive         DeviceState = "active"
	StateQuarantined    DeviceState = "quarantined"
	StateSuspended      DeviceState = "suspended"
	StateRevoked        DeviceState = "revoked"
	StateDecommissioned DeviceState = "decommissioned"
)

// Device is a registry entry, bound to its hardware and SIM.
type Device struct {
	Tenant    event.TenantID    `json:"tenant"`
	ID        event.DeviceID    `json:"id"`
	Name      string            `json:"name,omitempty"`
	Model     string            `json:"model"`
	Serial    string            `json:"serial,omitempty"`
	IMEI      string            `json:"imei,omitempty"`
	ICCID     string            `json:"iccid,omitempty"`
	IMSI      string            `json:"imsi,omitempty"`
	MSISDN    string            `json:"msisdn,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	Groups    []string          `json:"groups,omitempty"`
	State     DeviceState       `json:"state"`
	Firmware  string            `json:"firmware,omitempty"`
	FirstSeen *time.Time        `json:"first_seen,omitempty"`
	LastSeen  *time.Time        `json:"last_seen,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// DeviceFilter selects devices; zero fields match everything.
type DeviceFilter struct {
	Model      string
	State      DeviceState
	Firmware   string
	Tag        string // key or key=value
	Group      string // static members, or a dynamic group's (see [Groups])
	IMSIPrefix string
	After      event.DeviceID // keyset pagination: ids greater than this
	Limit      int            // 0 means no limit
}

// Devices stores the registry.
type Devices interface {
	// Create adds d; ErrConflict if (tenant, id) exists or the IMSI or
	// ICCID is already bound to another device of the tenant.
	Create(ctx context.Context, d Device) error
	// Get returns the device or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id event.DeviceID) (Device, error)
	// ByIMSI returns the device bound to the IMSI or ErrNotFound.
	ByIMSI(ctx context.Context, tenant event.TenantID, imsi string) (Device, error)
	// Update replaces every mutable field of d (matched by tenant and id);
	// ErrNotFound if absent.
	Update(ctx context.Context, d Device) error
	// List returns matching devices ordered by id.
	List(ctx context.Context, tenant event.TenantID, f DeviceFilter) ([]Device, error)
	// Count returns the number of matching devices (ignores After/Limit).
	Count(ctx context.Context, tenant event.TenantID, f DeviceFilter) (int, error)
}

// AlertFilter selects alerts; zero fields match everything.
type AlertFilter struct {
	Device event.DeviceID
	Kind   alert.Kind
	State  alert.State
	Since  time.Time // LastSeen >= Since
	// Before, an alert id, continues a listing after that alert: only
	// alerts that come after it in the list order are returned (keyset
	// paging); an id that does not exist matches nothing.
	Before string
	Limit  int
}

// Alerts stores alerts.
type Alerts interface {
	// Put creates the alert, or replaces it if (tenant, id) exists.
	Put(ctx context.Context, a alert.Alert) error
	// Get returns the alert or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (alert.Alert, error)
	// List returns matching alerts, newest FirstSeen first.
	List(ctx context.Context, tenant event.TenantID, f AlertFilter) ([]alert.Alert, error)
	// SetState changes the state; ErrNotFound if absent.
	SetState(ctx context.Context, tenant event.TenantID, id string, s alert.State) error
}

// ActionState is where a response action is in its life.
type ActionState string

// Action states.
const (
	ActionPending  ActionState = "pending"  // queued, will run
	ActionApproval ActionState = "approval" // waits for a human
	ActionDone     ActionState = "done"
	ActionFailed   ActionState = "failed"
	ActionRejected ActionState = "rejected" // a human declined it
	ActionUndone   ActionState = "undone"
	ActionSkipped  ActionState = "skipped" // its back-end is absent; Reason says which
)

// Action is one step a playbook (or a human) takes against one device.
type Action struct {
	Tenant    event.TenantID `json:"tenant"`
	ID        string         `json:"id"`
	Device    event.DeviceID `json:"device"`
	Kind      string         `json:"kind"` // quarantine, disconnect, revoke, suspend_sim, notify, ...
	AlertID   string         `json:"alert_id,omitempty"`
	Playbook  string         `json:"playbook,omitempty"`
	Actor     string         `json:"actor"` // "automation" or an operator id
	State     ActionState    `json:"state"`
	Reason    string         `json:"reason,omitempty"` // why it waits or failed
	Undo      []byte         `json:"undo,omitempty"`   // JSON: how to reverse it
	Attempts  int            `json:"attempts"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// ActionFilter selects actions; zero fields match everything.
type ActionFilter struct {
	Device event.DeviceID
	Kind   string
	State  ActionState
	Since  time.Time // CreatedAt >= Since
	// After, an action id, continues a listing after that action: only
	// actions that come after it in the list order are returned (keyset
	// paging); an id that does not exist matches nothing.
	After string
	Limit int
}

// Actions stores response actions. Put with an existing id replaces it, so
// the response engine can advance an action idempotently.
type Actions interface {
	Put(ctx context.Context, a Action) error
	// Get returns the action or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (Action, error)
	// List returns matching actions, oldest first.
	List(ctx context.Context, tenant event.TenantID, f ActionFilter) ([]Action, error)
	// CountDevices returns the number of distinct devices with an action of
	// one of kinds in state done or pending created at or after since
	// (used by the blast-radius guard).
	CountDevices(ctx context.Context, tenant event.TenantID, kinds []string, since time.Time) (int, error)
}

// CA is a certificate authority the platform keeps: its own root (Tenant
// ""), a tenant's issuing CA, or a CA a tenant registered (KeyEnc empty:
// the platform trusts it but cannot sign with it).
type CA struct {
	Tenant    event.TenantID `json:"tenant,omitempty"`
	ID        string         `json:"id"`   // SHA-256 of the certificate, hex
	Role      string         `json:"role"` // root, issuing, external, claim
	CertDER   []byte         `json:"-"`
	KeyEnc    []byte         `json:"-"`      // private key encrypted at rest; never leaves package identity
	Active    bool           `json:"active"` // the one used to sign new certificates
	Trusted   bool           `json:"trusted"`
	NotAfter  time.Time      `json:"not_after"`
	CreatedAt time.Time      `json:"created_at"`
	RevokedAt *time.Time     `json:"revoked_at,omitempty"`
}

// CAs stores certificate authorities.
type CAs interface {
	// Put creates or replaces the CA (matched by tenant and id).
	Put(ctx context.Context, c CA) error
	// Get returns the CA or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, id string) (CA, error)
	// List returns the tenant's CAs ordered by creation.
	List(ctx context.Context, tenant event.TenantID) ([]CA, error)
}

// Certificate is an issued device certificate.
type Certificate struct {
	Tenant           event.TenantID `json:"tenant"`
	Serial           string         `json:"serial"` // hex, unique per tenant
	Device           event.DeviceID `json:"device"`
	Issuer           string         `json:"issuer"` // CA id
	DER              []byte         `json:"-"`
	NotBefore        time.Time      `json:"not_before"`
	NotAfter         time.Time      `json:"not_after"`
	RevokedAt        *time.Time     `json:"revoked_at,omitempty"`
	RevocationReason int            `json:"revocation_reason,omitempty"` // RFC 5280 CRLReason
}

// Certificates stores issued certificates.
type Certificates interface {
	// Create adds c; ErrConflict if the serial exists in the tenant.
	Create(ctx context.Context, c Certificate) error
	// Get returns the certificate by serial or ErrNotFound.
	Get(ctx context.Context, tenant event.TenantID, serial string) (Certificate, error)
	// ByDevice returns the device's certificates, newest NotBefore first.
	ByDevice(ctx context.Context, tenant event.TenantID, device event.DeviceID) ([]Certificate, error)
	// Revoke marks the certificate revoked; ErrNotFound if absent; a second
	// revocation keeps the first time and reason.
	Revoke(ctx context.Context, tenant event.TenantID, serial string, at time.Time, reason int) error
	// Revoked returns every revoked, unexpired certificate of an issuer (for
	// the CRL), ordered by serial.
	Revoked(ctx context.Context, tenant event.TenantID, issuer string, now time.Time) ([]Certificate, error)
}

// Cell is one radio cell's position (OpenCellID layout). Cells are public
// reference data shared by every tenant: the table is platform-wide and its
// methods take no tenant.
type Cell struct {
	Radio     string    `json:"radio"` // GSM, UMTS, LTE, NR, CDMA
	MCC       int       `json:"mcc"`   // 0-999
	MNC       int       `json:"mnc"`   // 0-999
	Area      int64     `json:"area"`  // LAC or TAC, 0-65535
	Cell      int64     `json:"cell"`  // CI, SAC, 28-bit ECI or 36-bit NCI; >= 0
	Lat       float64   `json:"lat"`   // -90..90
	Lon       float64   `json:"lon"`   // -180..180
	RangeM    float64   `json:"range_m"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Cells stores the cell table, keyed by (MCC, MNC, Area, Cell).
type Cells interface {
	// Put creates or replaces every cell of cs (matched by its key). A cell
	// whose fields are out of the ranges documented on [Cell] (or whose
	// RangeM is negative or not finite) is ErrInvalid and nothing of cs is
	// written.
	Put(ctx context.Context, cs []Cell) error
	// Get returns the cell or ErrNotFound.
	Get(ctx context.Context, mcc, mnc int, area, cell int64) (Cell, error)
	// ByECI returns an LTE or NR cell by its cell identity alone (a
	// User-Location-Info with an ECGI but no TAI): when several areas hold
	// the same identity, the most recently updated one; ErrNotFound if none.
	ByECI(ctx context.Context, mcc, mnc int, cell int64) (Cell, error)
	// Count returns the number of cells.
	Count(ctx context.Context) (int, error)
}
