// Package connectivity joins Garrison's network-side sources to the rest of
// the platform: it loads the peers file (RADIUS clients, flow exporters and
// connectivity-platform providers per tenant), resolves SIMs to devices
// through the registry, keeps the cell table (in the store, with a bounded
// cache in front of it for the RADIUS hot path), turns records pushed by
// providers' webhooks into the same net.session and location events the
// RADIUS server publishes, and offers the network-side response back-ends:
//
//   - [Disconnector]: ends a device's data sessions with a RADIUS
//     Disconnect-Request (RFC 5176) to the gateway that carries them.
//   - [SIMControl]: suspends and reactivates a device's SIM at its tenant's
//     connectivity platform through a [Provider] ([HTTPProvider] is the
//     generic implementation configured by URL templates).
//
// Contracts are on each type. Nothing here listens: the app starts the
// RADIUS servers and the flow collector with what this package builds.
package connectivity
