package auth

import "github.com/garrisonhq/garrison/internal/store"

// Permission is what an API route requires.
type Permission string

// Permissions. PermAuthenticated is held by every valid token.
const (
	PermAuthenticated  Permission = "authenticated"
	PermPlatform       Permission = "platform:admin" // tenants, platform operators/tokens/audit
	PermTenantRead     Permission = "tenant:read"
	PermOperatorsRead  Permission = "operators:read"
	PermOperatorsWrite Permission = "operators:write"
	PermTokensRead     Permission = "tokens:read"
	PermTokensWrite    Permission = "tokens:write"
	PermAuditRead      Permission = "audit:read"
	PermAlertsWrite    Permission = "alerts:write"    // acknowledge and resolve alerts
	PermDevicesWrite   Permission = "devices:write"   // register, import, change state, bind SIM, revoke devices; enrolment tokens
	PermCAWrite        Permission = "ca:write"        // rotate the issuing CA, import CAs
	PermIncidentsWrite Permission = "incidents:write" // open incidents, add alerts and notes, move states, edit runbooks
	PermExportsRead    Permission = "exports:read"    // webhooks and their deliveries (never secrets)
	PermExportsWrite   Permission = "exports:write"   // create and delete webhooks, redrive dead deliveries
	PermFirmwareWrite  Permission = "firmware:write"  // OTA root, keys document, releases, minimum versions
	PermCampaignsWrite Permission = "campaigns:write" // create, pause, resume, cancel firmware campaigns
	PermPlaybooksWrite Permission = "playbooks:write" // upload, enable and disable playbooks
	PermResponseWrite  Permission = "response:write"  // approve or reject actions, start and cancel mass actions
	PermRulesWrite     Permission = "rules:write"     // create, change and delete detection rules (CEL)
	// PermConnectivityWrite pushes connectivity records (provider webhooks).
	PermConnectivityWrite Permission = "connectivity:write"
	// PermCommandsWrite sends commands to devices (ping, reboot, report, ...).
	PermCommandsWrite Permission = "commands:write"
	// PermDetectorsWrite tunes detectors per tenant and group.
	PermDetectorsWrite Permission = "detectors:write"
)

// grants is the whole role model. platform-admin holds every permission in
// every tenant and is not listed.
var grants = map[store.Role][]Permission{
	store.RoleAdmin: {PermAuthenticated, PermTenantRead, PermOperatorsRead, PermOperatorsWrite,
		PermTokensRead, PermTokensWrite, PermAuditRead, PermAlertsWrite, PermDevicesWrite, PermCAWrite,
		PermIncidentsWrite, PermExportsRead, PermExportsWrite, PermFirmwareWrite, PermCampaignsWrite, PermPlaybooksWrite, PermResponseWrite, PermConnectivityWrite, PermCommandsWrite, PermDetectorsWrite,
		PermRulesWrite},
	store.RoleOperator: {PermAuthenticated, PermTenantRead, PermAlertsWrite, PermDevicesWrite, PermIncidentsWrite, PermCampaignsWrite, PermResponseWrite, PermConnectivityWrite, PermCommandsWrite},
	store.RoleAuditor:  {PermAuthenticated, PermTenantRead, PermOperatorsRead, PermTokensRead, PermAuditRead, PermExportsRead},
	store.RoleViewer:   {PermAuthenticated, PermTenantRead},
}

// Roles lists every role, most powerful first.
func Roles() []store.Role {
	return []store.Role{store.RolePlatformAdmin, store.RoleAdmin, store.RoleOperator, store.RoleAuditor, store.RoleViewer}
}

// ValidRole reports whether r is a known role.
func ValidRole(r store.Role) bool {
	for _, x := range Roles() {
		if x == r {
			return true
		}
	}
	return false
}

// Can reports whether role r holds permission p (within its tenant).
func Can(r store.Role, p Permission) bool {
	if r == store.RolePlatformAdmin {
		return true
	}
	for _, g := range grants[r] {
		if g == p {
			return true
		}
	}
	return false
}
