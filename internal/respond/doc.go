// Package respond turns alerts into actions: per-tenant playbooks written in
// YAML ([Parse], [Engine.SetPlaybooks]), a default set for every built-in
// alert kind ([Defaults]), an [Engine] that runs them automatically or after
// a human approves, and a blast-radius [Guard] that stops automation from
// disabling more than a set share of a tenant's fleet per window.
//
// Contract:
//   - Every step of a playbook for an alert is one store.Action whose id is
//     derived from the alert id, the playbook name and the step index
//     ([ActionID]); handling an alert again never repeats a finished step.
//   - Every action change is stored with its audit record (package audit)
//     in the same transaction; automation acts as [Automation], approvals
//     as the operator, and each record names the alert and playbook.
//   - Steps reach the world only through the small interfaces of this
//     package ([Quarantiner], [Disconnecter], [SIMBlocker], [Revoker],
//     [Notifier], [Incidents]); a step whose back-end is absent is recorded
//     as skipped with the reason, never as done.
//   - Disruptive steps (quarantine, disconnect, suspend_sim, revoke) taken by
//     automation beyond the guard's cap wait for approval, and a
//     response.blast_radius alert says why, once per tenant and window.
//   - Every method takes the tenant explicitly; an action of another tenant
//     is not found.
//   - Time comes from the injected clock, or from the alert's LastSeen when
//     [Options.EventTime] is set.
//
// See docs/RESPONSE.md for the playbook format and the guard's defaults.
package respond
