package platform

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/event"
)

// agentPath turns what the simulator's device agents report (positions,
// metrics, firmware after boot) into the MQTT payloads of
// docs/DEVICE_PROTOCOL.md and decodes them with
// [broker.DecodeDevicePayload], the function the broker runs on every
// publish it accepts. The events on the bus are the decoder's, not the
// simulator's. Not safe for concurrent use (one scenario run drives it).
type agentPath struct {
	buf []byte
}

// handles reports whether ev is a report of the device agent.
func (a *agentPath) handles(ev *event.Event) bool {
	switch ev.Kind {
	case event.Location, event.DeviceMetrics, event.FirmwareReport:
		return ev.Source == "agent"
	}
	return false
}

// decode encodes ev as the payload its device publishes and returns the
// events the broker's decoder makes of it, at ev's time. A position
// travels in a telemetry payload; the device.telemetry event the decoder
// also returns is dropped, since the simulator's telemetry is the broker's
// mqtt.publish accounting and carries no application data of its own.
func (a *agentPath) decode(ev *event.Event) ([]*event.Event, error) {
	sub, payload, err := a.payload(ev)
	if err != nil {
		return nil, fmt.Errorf("agent %s %s of %s: %w", ev.Kind, ev.ID, ev.Device, err)
	}
	evs, err := broker.DecodeDevicePayload(broker.Identity{Tenant: ev.Tenant, Device: ev.Device}, sub, payload, ev.Time)
	if err != nil {
		return nil, fmt.Errorf("agent %s %s of %s: %w", ev.Kind, ev.ID, ev.Device, err)
	}
	out := evs[:0]
	for _, e := range evs {
		if e.Kind != event.DeviceTelemetry {
			out = append(out, e)
		}
	}
	return out, nil
}

func (a *agentPath) payload(ev *event.Event) (subtopic string, payload []byte, err error) {
	b := append(a.buf[:0], `{"ts":"`...)
	b = ev.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	num := func(field, attr string) error {
		v, ok := ev.Float(attr)
		if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%s %v not a number", attr, ev.Attrs[attr])
		}
		b = append(b, `,"`...)
		b = append(b, field...)
		b = append(b, `":`...)
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
		return nil
	}
	str := func(field, attr string) error {
		s := ev.Str(attr)
		if s == "" {
			return nil
		}
		q, err := json.Marshal(s)
		if err != nil {
			return err
		}
		b = append(b, `,"`...)
		b = append(b, field...)
		b = append(b, `":`...)
		b = append(b, q...)
		return nil
	}
	switch ev.Kind {
	case event.Location:
		subtopic = "telemetry"
		if err := num("lat", "lat"); err != nil {
			return "", nil, err
		}
		if err := num("lon", "lon"); err != nil {
			return "", nil, err
		}
		if _, ok := ev.Attrs["accuracy_m"]; ok {
			if err := num("accuracy_m", "accuracy_m"); err != nil {
				return "", nil, err
			}
		}
	case event.DeviceMetrics:
		subtopic = "metrics"
		if err := str("fw_version", "fw_version"); err != nil {
			return "", nil, err
		}
		if err := str("fw_digest", "fw_digest"); err != nil {
			return "", nil, err
		}
		for _, k := range []string{"connections", "processes"} {
			if _, ok := ev.Attrs[k]; ok {
				if err := num(k, k); err != nil {
					return "", nil, err
				}
			}
		}
		if ports, ok := ev.Attrs["listening_ports"].([]any); ok {
			b = append(b, `,"listening_ports":[`...)
			for i, p := range ports {
				f, ok := p.(float64)
				if !ok {
					return "", nil, fmt.Errorf("listening_ports[%d] %v not a number", i, p)
				}
				if i > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendFloat(b, f, 'g', -1, 64)
			}
			b = append(b, ']')
		}
	case event.FirmwareReport:
		subtopic = "events"
		b = append(b, `,"type":"boot"`...)
		if err := str("fw_version", "version"); err != nil {
			return "", nil, err
		}
		if err := str("fw_digest", "digest"); err != nil {
			return "", nil, err
		}
	default:
		return "", nil, fmt.Errorf("no device payload for %s", ev.Kind)
	}
	b = append(b, '}')
	a.buf = b
	return subtopic, b, nil
}
