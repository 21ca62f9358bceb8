package broker

import "github.com/garrisonhq/garrison/internal/event"

// Live reports whether this broker holds a live session of the device. In
// a deployment of several nodes behind a TCP load balancer, exactly the
// node holding the session answers true.
func (b *Broker) Live(t event.TenantID, d event.DeviceID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sessions[key(t, d)] != nil
}

// CommandIfLive publishes a command payload to the device's command topic
// only when this broker holds a live session of the device, and reports
// whether it did. Unlike [Broker.Command] it never queues the payload for
// a persisted offline session: a node relaying a command another node
// received uses it, so that a command reaches the device once, through
// the node it is connected to.
//
// As for [Broker.Command], a command dropped on a full outbound queue
// reports false (the session is closed; the command stays offline).
func (b *Broker) CommandIfLive(t event.TenantID, d event.DeviceID, payload []byte) (bool, error) {
	return b.publishTo(t, d, "commands", payload, true)
}
