// Package detect is Garrison's streaming detection engine: the built-in
// detectors, learned per-device baselines, threat intelligence, alert
// merging and the per-device risk score.
//
// Contract:
//
//   - Everything runs on event time (ev.Time) and the watermark moved by
//     [Engine.Advance]; the injected clock is never used for a decision, so
//     replaying the same events in the same order gives the same alerts,
//     alert IDs included.
//   - [Engine.Process] is safe for concurrent use; events of one device are
//     serialised by a per-shard lock. An event more than Options.Lateness
//     behind the device's newest event is dropped (counted by
//     [Engine.Late]); slightly out-of-order events are processed.
//   - Per-device state is compact (about 1.6 KiB measured, fixed arrays and
//     capped slices) and serialised by [Engine.Snapshot]; an engine given
//     [Engine.Restore] continues identically.
//   - Alerts go to the [Sink]. Repeats of (tenant, device, kind) within
//     Options.MergeWindow (1h) of the last one update that alert (same ID,
//     Count+1, later LastSeen) and are raised again. Every alert carries
//     evidence: a summary, the compared values and up to five events.
//   - Operators' CEL rules ([CompileRule], [RuleSet], rules.go) run after
//     the detectors on every event of their tenant and kinds, outside the
//     device lock; each evaluation is cost-bounded and an error counts as
//     no match. [TryRule] evaluates a rule over recorded events without
//     an engine's state.
//   - Detectors register in one list (registry.go). Each has typed settings
//     with defaults, overridable per tenant and per tenant/group via
//     [Settings]; [Detectors] and [Fields] describe them for the API,
//     [ValidateOverride] checks an override field by field, and
//     [Engine.SetSettings] / [Engine.SetTenantSettings] change them while
//     Process runs (the next event uses them; learned state is kept).
//
// Cohort aggregates (fleet-wide usage shift, common destinations and
// listening ports) are shared between devices of a group; with several
// partitions processing concurrently their exact values depend on
// interleaving, which can only make a borderline usage alert differ.
//
// See docs/DETECTION.md for the detectors' logic.
package detect
