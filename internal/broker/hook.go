package broker

import (
	"context"
	"errors"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// hook wires authentication, ACLs, limits and events into mochi-mqtt.
// Everything not explicitly allowed is denied.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "garrison" }

// Provides is asked by mochi for every hook call of every packet: a
// switch, not a lookup in a slice.
func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablish,
		mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnSubscribed, mqtt.OnPublishDropped:
		return true
	}
	return false
}

// sessionOf returns the broker session of a client, or nil for clients the
// broker did not authenticate (the inline client).
func (h *hook) sessionOf(cl *mqtt.Client) *session {
	id, ok := connIdentity(cl)
	if !ok {
		return nil
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	s := h.b.sessions[key(id.Tenant, id.Device)]
	if s == nil || s.cl != cl {
		return nil
	}
	return s
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	c, ok := cl.Net.Conn.(*conn)
	if !ok {
		if pc, ok := cl.Net.Conn.(*pwConn); ok {
			return h.passwordConnect(cl, pk, pc)
		}
		return false // default deny: only verified mTLS connections get here
	}
	id, remote := c.id, cl.Net.Remote
	refuse := func(reason string, attrs map[string]any) bool {
		if attrs == nil {
			attrs = map[string]any{}
		}
		attrs["client_id"] = pk.Connect.ClientIdentifier
		h.b.authFailed(context.Background(), id, remote, reason, nil, attrs)
		return false
	}
	if pk.Connect.UsernameFlag || pk.Connect.PasswordFlag {
		user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
		if h.b.opts.Credentials.Pair(user, pass) {
			return refuse("default_credentials", map[string]any{"username": user})
		}
		if pk.Connect.PasswordFlag {
			// Password login is off on the mTLS listener.
			return refuse("bad_password", map[string]any{"username": user})
		}
	}
	return h.admit(cl, pk, id, remote, refuse)
}

// admit is the end of every connect, whichever listener authenticated id:
// the client id must be the device id, the device must be active or
// quarantined, and the session is registered (quarantine narrowing its
// ACL from the start).
func (h *hook) admit(cl *mqtt.Client, pk packets.Packet, id Identity, remote string, refuse func(reason string, attrs map[string]any) bool) bool {
	if pk.Connect.ClientIdentifier != string(id.Device) {
		return refuse("client_id_mismatch", nil)
	}
	// Before the store lookup: a device reconnecting in a loop costs no
	// more than its handshake.
	if ok, report := h.b.devices.take(key(id.Tenant, id.Device), h.b.opts.Clock.Now()); !ok {
		h.b.metrics.deviceConnectsRefused.Add(1)
		if report == 0 {
			h.b.metrics.refused.Add(1) // reported with a later refusal
			return false
		}
		return refuse("connect_rate", map[string]any{"limit": "device", "refused": float64(report)})
	}
	st, err := h.b.opts.States.DeviceState(context.Background(), id.Tenant, id.Device)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return refuse("unknown_device", nil)
		}
		h.b.log.Warn("mqtt state lookup", "tenant", id.Tenant, "device", id.Device, "err", err)
		return refuse("state_unavailable", nil)
	}
	if st != store.StateActive && st != store.StateQuarantined {
		return refuse("state_"+string(st), nil)
	}
	now := h.b.opts.Clock.Now()
	s := &session{id: id, remote: remote, sessionID: event.NewID(now), cl: cl,
		rate: newBucket(h.b.opts.PublishRate, h.b.opts.PublishBurst, now)}
	s.quarantined.Store(st == store.StateQuarantined)
	// Sessions are keyed by tenant and device inside the broker.
	cl.ID = key(id.Tenant, id.Device)
	h.b.mu.Lock()
	h.b.sessions[cl.ID] = s
	h.b.mu.Unlock()
	return true
}

// OnSessionEstablish publishes the connect before any takeover of an older
// session of the same identity, so a clone shows as two concurrent sessions.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	proto := "3.1.1"
	if cl.Properties.ProtocolVersion == 5 {
		proto = "5"
	}
	attrs := map[string]any{
		"remote": s.remote, "client_id": string(s.id.Device), "cert_serial": s.id.Serial,
		"session_id": s.sessionID, "protocol": proto,
	}
	if _, ok := cl.Net.Conn.(*pwConn); ok {
		attrs["listener"] = "password" // no certificate: cert_serial is empty
	}
	h.b.emit(s.id, event.MQTTConnect, attrs)
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	id, ok := connIdentity(cl)
	if !ok {
		return
	}
	h.b.mu.Lock()
	s := h.b.sessions[key(id.Tenant, id.Device)]
	if s == nil || s.cl != cl {
		h.b.mu.Unlock()
		return
	}
	delete(h.b.sessions, key(id.Tenant, id.Device))
	h.b.mu.Unlock()
	// The first cause wins: a kick or takeover stops the client before its
	// read loop fails with a closed connection.
	if cause := cl.StopCause(); cause != nil {
		err = cause
	}
	reason := "client"
	var code packets.Code
	_, kicked := s.kicked.Load().(string)
	switch {
	case kicked:
		reason = "kicked"
	case errors.As(err, &code) && code == packets.ErrSessionTakenOver:
		reason = "session_taken_over"
	case errors.As(err, &code) && code == packets.ErrAdministrativeAction:
		reason = "kicked"
	case errors.As(err, &code) && code == packets.ErrPendingClientWritesExceeded:
		reason = "queue_full"
	case err != nil && errors.As(err, &code):
		reason = code.Reason
	case err != nil:
		reason = "connection_lost"
	}
	h.b.emit(s.id, event.MQTTDisconnect, map[string]any{"reason": reason, "remote": s.remote, "session_id": s.sessionID})
}

// OnPublishDropped: a delivery to a device (a command, a firmware job)
// found its session's outbound queue full, which happens only when the
// device stops reading its connection (the queue drains as fast as TLS
// writes). Nothing is lost silently: the drop is counted on the session
// (so [Broker.Command] reports the command undelivered and it stays
// offline) and in the broker's counters, and the session is closed
// (disconnect reason queue_full). Commands still offline and unanswered
// jobs are sent again when the device subscribes after reconnecting.
// Closing the connection (not a DISCONNECT packet, which would wait
// behind the stuck write) unblocks the write loop at once.
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.b.metrics.deliveriesDropped.Add(1)
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	if s.dropped.Add(1) == 1 {
		h.b.log.Warn("mqtt outbound queue full; closing the session", "tenant", s.id.Tenant, "device", s.id.Device,
			"topic", truncate(pk.TopicName, 128), "queue", maxPendingWrites)
		go cl.Stop(packets.ErrPendingClientWritesExceeded)
	}
}

// OnACLCheck is the default-deny topic ACL. write=true is a publish by the
// device; write=false a subscription filter or a delivery to the device.
// Quarantine is enforced in OnPublish so that dropped telemetry is still
// acknowledged (a 3.1.1 client would otherwise be disconnected).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	s := h.sessionOf(cl)
	if s == nil {
		return false
	}
	if write {
		if _, ok := CanPublish(s.id.Device, false, topic); ok {
			return true
		}
	} else if CanSubscribe(s.id.Device, topic) {
		return true
	}
	h.b.metrics.denied.Add(1)
	action := "subscribe"
	if write {
		action = "publish"
	}
	h.b.emit(s.id, event.MQTTDenied, map[string]any{"topic": truncate(topic, 128), "action": action})
	return false
}

func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	s := h.sessionOf(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	class, ok := CanPublish(s.id.Device, s.quarantined.Load(), pk.TopicName)
	if !ok {
		h.b.metrics.dropped.Add(1)
		return pk, packets.CodeSuccessIgnore
	}
	now := h.b.opts.Clock.Now()
	if len(pk.Payload) > h.b.opts.MaxPayload || !s.rate.allow(now) {
		h.b.metrics.violations.Add(1)
		n := s.violations.Add(1)
		reason := "rate"
		if len(pk.Payload) > h.b.opts.MaxPayload {
			reason = "payload_size"
		}
		h.b.emit(s.id, event.MQTTDenied, map[string]any{"topic": truncate(pk.TopicName, 128), "action": "publish", "limit": reason})
		if n >= int64(h.b.opts.MaxViolations) {
			h.b.disconnect(cl, packets.ErrQuotaExceeded)
		}
		return pk, packets.CodeSuccessIgnore
	}
	h.b.metrics.published.Add(1)
	h.b.emitPublish(s.id, now, class, len(pk.Payload), pk.FixedHeader.Qos)
	h.b.decode(s.id, class, pk.TopicName, pk.Payload, now)
	return pk, nil
}

// qosAttr is the qos attribute of mqtt.publish; the constants box without
// an allocation.
func qosAttr(q byte) any {
	switch q {
	case 0:
		return float64(0)
	case 1:
		return float64(1)
	case 2:
		return float64(2)
	}
	return float64(q)
}

// decode turns an accepted publish into device events (DecodeDevicePayload)
// and publishes them; a payload that does not decode is counted and
// reported as device.payload_rejected, and the publish itself stands.
func (b *Broker) decode(id Identity, class TopicClass, topic string, payload []byte, now time.Time) {
	sub := strings.TrimPrefix(topic, "devices/"+string(id.Device)+"/")
	var buf [2]*event.Event // no publish decodes to more
	evs, err := appendDevicePayload(buf[:0], &envelopes{id: id, now: now, attrs: &b.attrMaps}, sub, payload)
	if err != nil {
		b.metrics.rejected.Add(1)
		b.log.Debug("mqtt payload rejected", "tenant", id.Tenant, "device", id.Device, "topic_class", class, "err", err)
		b.emitAt(id, event.PayloadRejected, now, map[string]any{
			"topic_class": class.attr(), "subtopic": truncate(sub, 128), "reason": truncate(err.Error(), 512), "bytes": float64(len(payload)),
		})
		return
	}
	for _, ev := range evs {
		if err := b.opts.Publisher.Publish(context.Background(), ev); err != nil {
			b.log.Warn("mqtt device event publish failed", "tenant", id.Tenant, "device", id.Device, "kind", ev.Kind, "err", err)
		}
		// The Publisher kept nothing of ev (see [Publisher]).
		clear(ev.Attrs)
		b.attrMaps.Put(ev.Attrs)
	}
}

// OnSubscribed tells the platform when a device's subscription to its own
// commands or firmware jobs was granted: from then on a command or a job
// reaches it (see [Broker.OnCommandsSubscribed], [Broker.OnJobsSubscribed]).
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	cmds, jobs := h.b.onCommands.Load(), h.b.onOTA.Load()
	if cl.Net.Inline || (cmds == nil && jobs == nil) {
		return
	}
	s := h.sessionOf(cl)
	if s == nil {
		return
	}
	prefix := "devices/" + string(s.id.Device) + "/"
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= 0x80 {
			continue
		}
		switch rest, _ := strings.CutPrefix(f.Filter, prefix); {
		case cmds != nil && f.Filter == prefix+"commands":
			(*cmds)(s.id)
			cmds = nil
		case jobs != nil && strings.HasPrefix(f.Filter, prefix) && (rest == "ota/job" || rest == "ota/+" || rest == "ota/#"):
			(*jobs)(s.id)
			jobs = nil
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
