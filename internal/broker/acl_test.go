package broker

import (
	"strings"
	"testing"
)

func TestCanPublish(t *testing.T) {
	tests := []struct {
		topic       string
		quarantined bool
		want        bool
	}{
		{"devices/d1/telemetry", false, true},
		{"devices/d1/metrics", false, true},
		{"devices/d1/events/boot", false, true},
		{"devices/d1/ota/status", false, true},
		{"devices/d1/ota", false, false},
		{"devices/d1/commands", false, false},
		{"devices/d2/telemetry", false, false},
		{"devices/d1x/telemetry", false, false},
		{"devices/d1/telemetry/", false, false},
		{"devices/d1//telemetry", false, false},
		{"devices/d1/+", false, false},
		{"devices/d1/#", false, false},
		{"devices/d1/unknown", false, false},
		{"devices/d1/telemetry\x00", false, false},
		{"devices/d1/telemetry\xff", false, false},
		{"$SYS/broker", false, false},
		{"", false, false},
		{"devices/d1/" + strings.Repeat("a", 300), false, false},
		{"devices/d1/telemetry", true, false},
		{"devices/d1/events", true, true},
		{"devices/d1/metrics", true, true},
		{"devices/d1/ota/progress", true, true},
	}
	for _, tt := range tests {
		if _, got := CanPublish("d1", tt.quarantined, tt.topic); got != tt.want {
			t.Errorf("CanPublish(d1, q=%v, %q) = %v, want %v", tt.quarantined, tt.topic, got, tt.want)
		}
	}
}

func TestCanSubscribe(t *testing.T) {
	tests := []struct {
		filter string
		want   bool
	}{
		{"devices/d1/commands", true},
		{"devices/d1/ota/#", true},
		{"devices/d1/ota/+/x", true},
		{"devices/d1/ota/jobs", true},
		{"devices/d1/ota", false},
		{"devices/d1/#", false},
		{"devices/d1/+", false},
		{"devices/+/commands", false},
		{"devices/#", false},
		{"#", false},
		{"+/d1/commands", false},
		{"devices/d2/commands", false},
		{"devices/d1/commands/#", false},
		{"devices/d1/ota/#/x", false},
		{"devices/d1/ota/a#", false},
		{"devices/d1/telemetry", false},
		{"$share/g/devices/d1/commands", false},
		{"devices/d1/commands\x00", false},
	}
	for _, tt := range tests {
		if got := CanSubscribe("d1", tt.filter); got != tt.want {
			t.Errorf("CanSubscribe(d1, %q) = %v, want %v", tt.filter, got, tt.want)
		}
	}
}

// FuzzACL checks the ACL's safety property on arbitrary topics: whatever it
// allows stays inside the device's own namespace, and a wildcard can never
// appear before the device's ota/ subtree.
func FuzzACL(f *testing.F) {
	for _, s := range []string{"devices/d1/telemetry", "devices/d1/ota/#", "devices/+/commands", "#", "devices/d1/../d2/x", "devices/d1/ota/+/#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		const own = "devices/d1/"
		if _, ok := CanPublish("d1", false, topic); ok {
			if !strings.HasPrefix(topic, own) || strings.ContainsAny(topic, "+#\x00") {
				t.Fatalf("publish allowed outside own namespace: %q", topic)
			}
		}
		if CanSubscribe("d1", topic) {
			if !strings.HasPrefix(topic, own) || strings.ContainsAny(topic[:len(own)], "+#") {
				t.Fatalf("subscribe allowed outside own namespace: %q", topic)
			}
			if strings.ContainsAny(topic, "+#") && !strings.HasPrefix(topic, own+"ota/") {
				t.Fatalf("wildcard outside ota subtree: %q", topic)
			}
		}
	})
}
