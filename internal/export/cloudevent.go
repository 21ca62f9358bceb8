// Package export sends what happens in Garrison to the tools a security team
// already runs: webhooks as CloudEvents signed with HMAC-SHA256, and syslog
// (RFC 5424 over TCP or TLS) carrying alerts in the OCSF Detection Finding
// shape, so a SIEM takes them without glue.
//
// Webhooks contract:
//   - A delivery is written to the store's outbox ([store.Deliveries]) in
//     the transaction of the change it reports where there is one
//     (incidents), or when its bus event is handled (alert.raised,
//     action.taken, alert.state_changed); the bus event is acknowledged only after, so a restart
//     loses nothing. Delivery ids derive from the event id and the webhook,
//     so a redelivered event is not sent twice.
//   - [Webhooks.Run] sends due deliveries: a 2xx answer marks it delivered;
//     anything else is retried with exponential back-off (Backoff, doubled
//     per attempt, capped at MaxBackoff) until MaxAttempts, after which it
//     goes to the dead-letter list (state dead), from which
//     [Webhooks.Redrive] sends it again.
//   - Delivery is at least once: receivers deduplicate on the CloudEvent id.
//   - Every request is signed: header Garrison-Signature:
//     t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>; receivers
//     check the MAC and refuse a t too far from their clock ([Verify]).
//
// Syslog contract: see [Syslog].
package export

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CloudEvent is a CloudEvents 1.0 event in structured JSON mode
// (Content-Type application/cloudevents+json). Tenant is the extension
// attribute garrisontenant.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Tenant          string          `json:"garrisontenant"`
	Data            json.RawMessage `json:"data"`
}

// ContentType is the media type of a structured-mode CloudEvent.
const ContentType = "application/cloudevents+json; charset=utf-8"

// TypePrefix prefixes every CloudEvent type: an event of filter name
// alert.raised has type io.garrison.alert.raised.
const TypePrefix = "io.garrison."

// Event types (the names webhooks filter on).
const (
	TypeAlertRaised  = "alert.raised"
	TypeActionTaken  = "action.taken"
	TypeIncident     = "incident.opened"
	TypeIncidentUpd  = "incident.updated"
	TypeIncidentStat = "incident.state"
	TypeNotification = "notification" // the notify step of a playbook
	TypeAlertState   = "alert.state_changed"
)

// Types lists every event type a webhook may filter on.
func Types() []string {
	return []string{TypeAlertRaised, TypeActionTaken, TypeIncident, TypeIncidentUpd, TypeIncidentStat, TypeNotification, TypeAlertState}
}

// SignatureHeader carries the delivery's signature.
const SignatureHeader = "Garrison-Signature"

// Sign returns the SignatureHeader value of body sent at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors returned by [Verify].
var (
	ErrSignature = errors.New("webhook signature does not match")
	ErrStale     = errors.New("webhook timestamp outside the tolerance")
)

// Verify checks a SignatureHeader value for body against secret, refusing
// timestamps more than tolerance away from now (replay protection). It is
// what a receiver runs; Garrison's own tests use it against real requests.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return fmt.Errorf("%w: malformed header", ErrSignature)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s old", ErrStale, d.Round(time.Second))
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrSignature
}
