package detect

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// benchRules are 20 rules of the shapes operators write: field compares,
// list membership, string functions, CIDR checks, optional attributes.
var benchRules = []string{
	`event.attrs.dst_port in [23, 2323]`,
	`event.attrs.dst_port == 22.0 && device.model != 'edge-gw-1'`,
	`has(event.attrs.bytes) && event.attrs.bytes > 50000000.0`,
	`cidr('198.51.100.0/24').containsIP(ip(event.attrs.dst_ip))`,
	`event.attrs.dst_ip.startsWith('10.66.')`,
	`device.state == 'quarantined'`,
	`!device.known`,
	`device.firmware == '0.9.0'`,
	`event.attrs.proto == 17.0 && event.attrs.dst_port == 53.0 && event.attrs.bytes > 100000.0`,
	`event.attrs.?packets.orValue(0) > 1000000`,
	`device.tags.?site.orValue('') == 'lab' && event.attrs.dst_port == 80.0`,
	`event.time.getHours() == 3 && event.attrs.bytes > 10000000.0`,
	`event.attrs.dst_ip in ['203.0.113.66', '203.0.113.67', '203.0.113.68']`,
	`'blocked' in device.groups`,
	`event.source != 'flows'`,
	`event.attrs.dst_port > 49151.0 && event.attrs.bytes > 1000000.0`,
	`device.imsi.startsWith('99999')`,
	`event.attrs.dst_ip.matches('^192\\.0\\.2\\.(1|2|3)$')`,
	`device.model.lowerAscii().contains('camera') && event.attrs.dst_port == 554.0`,
	`event.device.endsWith('-9999')`,
}

func benchFlows(n int) []event.Event {
	evs := make([]event.Event, n)
	t := rt0
	for i := range evs {
		dev := event.DeviceID(fmt.Sprintf("m-%04d", i%500))
		t = t.Add(100 * time.Millisecond)
		evs[i] = event.Event{ID: "e", Tenant: "acme", Device: dev, Kind: event.NetFlow, Time: t, Source: "flows",
			Attrs: map[string]any{"src_ip": "10.0.0.1", "src_port": 40000.0, "dst_ip": "203.0.113.5", "dst_port": 443.0, "proto": 6.0, "bytes": 1500.0, "packets": 3.0}}
	}
	return evs
}

// BenchmarkRules is the per-event cost of operator rules in the engine:
// the same flow stream through the engine with no rules and with 20
// enabled rules that all apply to the event (none matches).
func BenchmarkRules(b *testing.B) {
	dir := NewMemDirectory()
	for i := range 500 {
		dir.Put(Profile{Tenant: "acme", ID: event.DeviceID(fmt.Sprintf("m-%04d", i)), Model: "acme-meter-2", Cohort: "meters",
			Groups: []string{"meters"}, State: "active", Firmware: "2.4.1", IMSI: "21401000000", Tags: map[string]string{"site": "north"}})
	}
	evs := benchFlows(50_000)
	for _, n := range []int{0, 1, 20} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			var crs []*CompiledRule
			for i, expr := range benchRules[:n] {
				crs = append(crs, mustCompile(b, Rule{Tenant: "acme", ID: fmt.Sprintf("r%02d", i), Name: "r", Expr: expr, Severity: alert.Low, Enabled: true}))
			}
			rs := NewRuleSet()
			rs.Set("acme", crs)
			sink := &recSink{}
			e := New(Options{Sink: sink, Directory: dir, Rules: rs})
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				ev := evs[i%len(evs)]
				ev.Time = ev.Time.Add(time.Duration(i/len(evs)) * time.Hour)
				_ = e.Process(ctx, &ev)
			}
			b.StopTimer()
			if len(sink.alerts) != 0 || e.RuleErrors() != 0 {
				b.Fatalf("%d alerts, %d rule errors", len(sink.alerts), e.RuleErrors())
			}
		})
	}
}

// BenchmarkRuleEval is one evaluation of the 20 rules against one event,
// outside the engine.
func BenchmarkRuleEval(b *testing.B) {
	var crs []*CompiledRule
	for i, expr := range benchRules {
		crs = append(crs, mustCompile(b, Rule{Tenant: "acme", ID: fmt.Sprintf("r%02d", i), Name: "r", Expr: expr, Severity: alert.Low, Enabled: true}))
	}
	ev := benchFlows(1)[0]
	p := Profile{Tenant: "acme", ID: ev.Device, Model: "acme-meter-2", State: "active", Groups: []string{"meters"}}
	b.ReportAllocs()
	for b.Loop() {
		var v ruleVars
		v.fill(&ev, p, true)
		for _, cr := range crs {
			if ok, err := cr.evalHot(&v); ok || err != nil {
				b.Fatal(cr.Expr, ok, err)
			}
		}
	}
}
