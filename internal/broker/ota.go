package broker

import (
	"errors"
	"fmt"
	"hash/crc32"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/garrisonhq/garrison/internal/event"
)

// OnDevicePublish calls fn for every message a device publishes under its
// own devices/{id}/<subtopic> (for example "ota/status"), after the
// publish ACL let it through, with the identity of the publishing
// session. fn runs on the publishing client's read loop: it must return
// quickly. One callback per subtopic: registering the same subtopic again
// replaces it.
func (b *Broker) OnDevicePublish(subtopic string, fn func(id Identity, payload []byte)) error {
	if !validSubtopic(subtopic) || strings.ContainsAny(subtopic, "+#") {
		return fmt.Errorf("broker: on device publish: bad subtopic %q", subtopic)
	}
	suffix := "/" + subtopic
	return b.srv.Subscribe("devices/+"+suffix, int(crc32.ChecksumIEEE([]byte(subtopic))&0xffff)+1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		cl, ok := b.srv.Clients.Get(pk.Origin)
		if !ok || cl.Net.Inline {
			return
		}
		c, ok := cl.Net.Conn.(*conn)
		if !ok {
			return
		}
		if pk.TopicName != "devices/"+string(c.id.Device)+suffix {
			return // the ACL forbids it; never attribute a foreign topic
		}
		fn(c.id, pk.Payload)
	})
}

// PublishDevice publishes payload at QoS 1 on devices/{id}/<subtopic>
// (for example "ota/job") and reports whether a live session of the
// device took it (false also when it was dropped on the session's full
// outbound queue: the session is then closed, and a job is sent again
// when the device subscribes after reconnecting).
func (b *Broker) PublishDevice(t event.TenantID, d event.DeviceID, subtopic string, payload []byte) (bool, error) {
	if !validSubtopic(subtopic) || strings.ContainsAny(subtopic, "+#") {
		return false, errors.New("broker: publish: bad subtopic")
	}
	return b.publishTo(t, d, subtopic, payload, false)
}
