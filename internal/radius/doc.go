// Package radius is Garrison's RADIUS side of the private APN: the
// accounting server (RFC 2866) that turns every Start, Interim-Update and
// Stop into a net.session event, the authentication server (RFC 2865) that
// is the platform's own SIM-level block, and the Disconnect/CoA client (RFC
// 5176) used by response playbooks.
//
// Contract:
//   - Only configured clients are heard: a datagram from an address no
//     [Client] covers is dropped and counted (unknown_client), never answered.
//     Accounting-Request authenticators are verified with the client's
//     secret; an Access-Request's Message-Authenticator is verified when
//     present and can be required.
//   - A retransmission (same source, code, identifier and authenticator
//     within [Options.DuplicateWindow]) is answered with the first answer and
//     not counted or published again.
//   - An accounting record is answered only after its event was published;
//     when publishing fails the NAS gets no answer, retransmits, and the
//     session's counters are rolled back so the bytes are counted once.
//   - Byte counters in events are deltas since the previous record of the
//     same session (gigawords included; a counter that goes backwards is
//     taken as a reset).
//   - Parsing is strict: an attribute length that lies drops the packet
//     (counted malformed); a 3GPP sub-attribute length that lies or a value
//     the server reads that does not fit its type, such as a User-Location-
//     Info of the wrong length, drops it too (counted bad_attribute).
//     Attributes the server does not read and other vendors' attributes are
//     ignored. The 3GPP vendor attributes of TS 29.061 are
//     decoded here.
//
// Attribute keys are those of [event.NetSession] plus imeisv and plmn
// (serving MCC-MNC); Access-Request decisions are net.session events with
// status "auth", decision (accept|reject), reason and bound_imei.
package radius
