// Package flows is Garrison's flow-record collector: IPFIX (RFC 7011) and
// NetFlow v9 (RFC 3954) over UDP, decoded here with encoding/binary.
//
// Contract:
//   - Only configured exporters are heard; other datagrams are counted
//     (UnknownExporter) and dropped.
//   - Templates are kept per transport session (exporter address and port),
//     version and observation domain; data sets whose template is unknown
//     are dropped and counted; options templates are parsed and their
//     records used only for systemInitTimeMilliseconds (IPFIX sysUpTime
//     times), never published as flows.
//   - Bounds are strict: a set or field length that lies, a template with
//     no bytes per record or more than [MaxFields] fields, or more than the
//     template limit end the message with an error; the decoder never
//     panics and every loop consumes at least one byte per turn.
//   - Each flow is mapped to a device by its source address, else its
//     destination (then reported from the device's side, direction "in");
//     flows of neither are counted as unmapped. Mapped flows become
//     net.flow events with the keys of [event.NetFlow] plus direction
//     (out|in), start_ms and end_ms (Unix milliseconds); the event time is
//     the flow's end, or the collector's clock when the flow has no end or
//     its end is more than a day away from the clock.
package flows
