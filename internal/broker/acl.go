package broker

import (
	"strings"
	"unicode/utf8"

	"github.com/garrisonhq/garrison/internal/event"
)

// TopicClass is the kind of a device topic, used in publish metadata events.
type TopicClass string

// Topic classes under devices/{id}/.
const (
	ClassTelemetry TopicClass = "telemetry"
	ClassMetrics   TopicClass = "metrics"
	ClassEvents    TopicClass = "events"
	ClassOTA       TopicClass = "ota"
	ClassCommands  TopicClass = "commands"
)

// attr returns c as an event attribute value. The constants box without
// an allocation, which string(c) of a variable would not.
func (c TopicClass) attr() any {
	switch c {
	case ClassTelemetry:
		return string(ClassTelemetry)
	case ClassMetrics:
		return string(ClassMetrics)
	case ClassEvents:
		return string(ClassEvents)
	case ClassOTA:
		return string(ClassOTA)
	case ClassCommands:
		return string(ClassCommands)
	}
	return string(c)
}

// MaxTopicLen bounds topic names and filters; MQTT allows 65535 but no
// device topic needs more than this.
const MaxTopicLen = 256

// validTopic reports whether t is acceptable as a topic name or filter:
// non-empty, bounded, valid UTF-8, no NUL, no control characters.
func validTopic(t string) bool {
	if t == "" || len(t) > MaxTopicLen || !utf8.ValidString(t) {
		return false
	}
	for _, r := range t {
		if r == 0 || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
	}
	return true
}

// classify splits a topic name under devices/{device}/ and returns its class.
// ok is false for anything that is not exactly a device topic of a known class
// (wildcards are not allowed in names).
func classify(topic string, device event.DeviceID) (TopicClass, bool) {
	if !validTopic(topic) || strings.ContainsAny(topic, "+#") {
		return "", false
	}
	prefix := "devices/" + string(device) + "/"
	rest, found := strings.CutPrefix(topic, prefix)
	if !found || rest == "" {
		return "", false
	}
	head, tail, hasTail := strings.Cut(rest, "/")
	switch TopicClass(head) {
	case ClassTelemetry, ClassMetrics, ClassEvents, ClassCommands:
		return TopicClass(head), !hasTail || validSubtopic(tail)
	case ClassOTA:
		// ota/status, ota/progress ...
		return ClassOTA, hasTail && validSubtopic(tail)
	}
	return "", false
}

// validSubtopic reports whether every /-separated level of s is non-empty
// (without splitting: this runs twice for every publish).
func validSubtopic(s string) bool {
	return s != "" && s[0] != '/' && s[len(s)-1] != '/' && !strings.Contains(s, "//")
}

// CanPublish is the publish ACL: default deny. A device may publish only
// under its own devices/{id}/ to telemetry, metrics, events or ota/...; a
// quarantined device only reports and updates: metrics, events (boot
// reports, answers to the commands it may still receive) and ota/....
func CanPublish(device event.DeviceID, quarantined bool, topic string) (TopicClass, bool) {
	c, ok := classify(topic, device)
	if !ok || c == ClassCommands {
		return c, false
	}
	if quarantined && c != ClassMetrics && c != ClassEvents && c != ClassOTA {
		return c, false
	}
	return c, true
}

// CanSubscribe is the subscribe ACL: default deny. A device may subscribe
// only to devices/{id}/commands (or a sub-topic of it, exactly) and to
// devices/{id}/ota/# or a filter within it. Wildcards are allowed only after
// devices/{id}/ota/, and # only as the last level, so no filter can reach
// another device's topics.
func CanSubscribe(device event.DeviceID, filter string) bool {
	if !validTopic(filter) {
		return false
	}
	prefix := "devices/" + string(device) + "/"
	rest, found := strings.CutPrefix(filter, prefix)
	if !found {
		return false
	}
	levels := strings.Split(rest, "/")
	switch levels[0] {
	case string(ClassCommands):
		for _, l := range levels[1:] {
			if l == "" || strings.ContainsAny(l, "+#") {
				return false
			}
		}
		return true
	case string(ClassOTA):
		if len(levels) < 2 {
			return false
		}
		for i, l := range levels[1:] {
			last := i == len(levels)-2
			switch {
			case l == "#":
				if !last {
					return false
				}
			case l == "+":
			case l == "" || strings.ContainsAny(l, "+#"):
				return false
			}
		}
		return true
	}
	return false
}
