package bus

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the bus's counters. They always exist; they are exported only
// when Options.Registerer is set.
type metrics struct {
	published, acked, failed *prometheus.CounterVec // by stream
	handled, handlerErrs     *prometheus.CounterVec // by consumer
	dropped, malformed       *prometheus.CounterVec // by consumer
	stream                   [3]streamCounters      // indexed by Stream
}

func newMetrics(r prometheus.Registerer) *metrics {
	cv := func(name, help, label string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "garrison", Subsystem: "bus", Name: name, Help: help}, []string{label})
		if r == nil {
			return c
		}
		if err := r.Register(c); err != nil {
			// A second bus on the same registry shares the first one's counters.
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					return existing
				}
			}
		}
		return c
	}
	m := &metrics{
		published:   cv("published_total", "Events handed to JetStream.", "stream"),
		acked:       cv("acked_total", "Events acknowledged as stored by JetStream.", "stream"),
		failed:      cv("publish_failed_total", "Events that could not be encoded, sent or stored.", "stream"),
		handled:     cv("handled_total", "Events handled and acknowledged by a consumer.", "consumer"),
		handlerErrs: cv("handler_errors_total", "Handler calls that returned an error (the event is retried).", "consumer"),
		dropped:     cv("dropped_total", "Events a consumer gave up on (undecodable or out of attempts).", "consumer"),
		malformed:   cv("malformed_total", "Messages a consumer could not decode: not an event or a malformed batch (terminated, also counted as dropped).", "consumer"),
	}
	for _, st := range []Stream{Events, Security, Data} {
		l := st.String()
		m.stream[st] = streamCounters{m.published.WithLabelValues(l), m.acked.WithLabelValues(l), m.failed.WithLabelValues(l)}
	}
	return m
}

// streamCounters are one stream's publish counters, resolved once: they are
// touched for every event.
type streamCounters struct{ published, acked, failed prometheus.Counter }

// consumerCounters are one consumer's counters, resolved once.
type consumerCounters struct{ handled, handlerErrs, dropped, malformed prometheus.Counter }

func (m *metrics) consumer(label string) consumerCounters {
	return consumerCounters{m.handled.WithLabelValues(label), m.handlerErrs.WithLabelValues(label), m.dropped.WithLabelValues(label), m.malformed.WithLabelValues(label)}
}
