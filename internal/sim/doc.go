// Package sim is Garrison's fleet simulator and scenario runner.
//
// [Parse] and [Load] read a scenario (the format of
// ../shared/scenarios/README.md) strictly: unknown keys are errors and every
// invalid field is reported at once, named by its path. [NewGenerator]
// builds the fleet deterministically from the seed and yields its events
// (and the operator controls the scenario needs, such as a revocation) in
// non-decreasing time order across the whole fleet, streamed: memory grows
// with the fleet, never with the simulated duration. The same scenario and
// seed always yield the same events.
//
// [Run] registers the fleet and catalog through a [Setup], publishes the
// stream to a [Sink], lets the platform drain, reads the alerts and actions
// back through [Results] and scores them with [Score], which never consults
// the injected attacks beyond the onsets of the expectations.
//
// What each attack kind and each part of normal life produces is described
// in docs/SIMULATOR.md.
package sim
