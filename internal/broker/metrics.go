package broker

import "github.com/prometheus/client_golang/prometheus"

// collector exports [Broker.Stats] to Prometheus, read once per scrape.
type collector struct {
	b     *Broker
	descs map[string]*prometheus.Desc
}

// brokerMetrics are the exported series: name, help, and whether it is a
// gauge (else a counter).
var brokerMetrics = []struct {
	name, help string
	gauge      bool
	value      func(Stats) int64
}{
	{"garrison_broker_sessions", "Live device sessions.", true, func(s Stats) int64 { return int64(s.Sessions) }},
	{"garrison_broker_handshakes_in_flight", "TLS handshakes running now (capped by max_handshakes).", true, func(s Stats) int64 { return s.HandshakesInFlight }},
	{"garrison_broker_handshakes_total", "Mutual-TLS handshakes completed and verified.", false, func(s Stats) int64 { return s.Handshakes }},
	{"garrison_broker_handshake_failures_total", "TLS handshakes or certificate verifications that failed.", false, func(s Stats) int64 { return s.HandshakeFailures }},
	{"garrison_broker_handshake_queue_timeouts_total", "Connections dropped while queued for a handshake slot.", false, func(s Stats) int64 { return s.HandshakeQueueTimeouts }},
	{"garrison_broker_refused_total", "CONNECTs refused (unknown device, state, client id, credentials...).", false, func(s Stats) int64 { return s.Refused }},
	{"garrison_broker_denied_total", "Publishes and subscriptions denied by the ACL.", false, func(s Stats) int64 { return s.Denied }},
	{"garrison_broker_dropped_total", "Publishes of quarantined devices acknowledged and dropped.", false, func(s Stats) int64 { return s.Dropped }},
	{"garrison_broker_published_total", "Device publishes accepted.", false, func(s Stats) int64 { return s.Published }},
	{"garrison_broker_violations_total", "Publishes over a limit (payload size, rate).", false, func(s Stats) int64 { return s.Violations }},
	{"garrison_broker_kicks_total", "Sessions closed by the platform (revocation, state change).", false, func(s Stats) int64 { return s.Kicks }},
	{"garrison_broker_source_connects_refused_total", "Connections reset before the TLS handshake: their source address was over its connect rate.", false, func(s Stats) int64 { return s.SourceConnectsRefused }},
	{"garrison_broker_device_connects_refused_total", "CONNECTs refused: the device was over its connect rate (also in refused_total).", false, func(s Stats) int64 { return s.DeviceConnectsRefused }},
	{"garrison_broker_deliveries_dropped_total", "Commands or jobs to a device dropped on its full outbound queue (the session is closed; they are sent again after it reconnects).", false, func(s Stats) int64 { return s.DeliveriesDropped }},
	{"garrison_broker_payloads_rejected_total", "Accepted publishes whose payload did not decode (device.payload_rejected).", false, func(s Stats) int64 { return s.Rejected }},
}

// Collector returns a Prometheus collector of the broker's counters.
func (b *Broker) Collector() prometheus.Collector {
	c := &collector{b: b, descs: map[string]*prometheus.Desc{}}
	for _, m := range brokerMetrics {
		c.descs[m.name] = prometheus.NewDesc(m.name, m.help, nil, nil)
	}
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range brokerMetrics {
		ch <- c.descs[m.name]
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	for _, m := range brokerMetrics {
		t := prometheus.CounterValue
		if m.gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[m.name], t, float64(m.value(s)))
	}
}
