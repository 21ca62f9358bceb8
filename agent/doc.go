// Package agent is Garrison's device agent: a library a device maker links
// into its firmware (and the fleet simulator runs by the thousand) to speak
// the device protocol of docs/DEVICE_PROTOCOL.md.
//
// An [Agent] enrols once (a one-time token, a factory certificate or a
// claim certificate, all through EST on the platform's HTTPS port), keeping
// the private key it generated in its state directory with mode 0600; it
// renews its certificate (EST simplereenroll, with a fresh key) once a
// configurable fraction of its lifetime has passed. It then keeps a
// mutual-TLS MQTT session to the broker, reconnecting with exponential
// back-off and full jitter so a fleet coming back after an outage spreads
// out instead of stampeding, and it:
//
//   - publishes a boot event after every (simulated) start, its metrics
//     (listening ports, established connections and process count read from
//     /proc, the running firmware's version and digest) and the telemetry
//     the application supplies;
//   - executes commands (ping, reboot, report and handlers the application
//     registers) and answers each with a command.result event;
//   - applies firmware jobs: it verifies the keys document against the
//     provisioned OTA root, the manifest's signatures, model and
//     anti-rollback with the public firmware package, downloads the
//     artifact with its device certificate (resuming with Range), checks
//     size and SHA-256, writes the inactive slot of a simulated A/B layout,
//     "reboots" into it, runs the boot check and reports succeeded, or
//     returns to the previous slot and reports rolled_back. Any failed check
//     is reported as refused with its reason, and nothing is applied.
//
// The package depends on the standard library, the MQTT client
// (github.com/eclipse/paho.golang) and the firmware package only.
//
// State directory layout (created with mode 0700):
//
//	identity.pem   certificate chain and private key (0600), replaced atomically
//	state.json     firmware slots, accepted keys-document version, last job (0600)
//	slots/a.img    slot images of the simulated A/B layout
//	slots/b.img
//	download/      partial artifacts (<sha256>.part), resumed with Range
package agent
