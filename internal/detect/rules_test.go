package detect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

var rt0 = time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)

func testRule(id, expr string, evs ...event.Kind) Rule {
	return Rule{Tenant: "acme", ID: id, Name: "rule " + id, Expr: expr, Severity: alert.High, Events: evs, Enabled: true, Version: 1}
}

func mustCompile(t testing.TB, r Rule) *CompiledRule {
	t.Helper()
	cr, err := CompileRule(r)
	require.NoError(t, err)
	return cr
}

func flowEv(dev event.DeviceID, at time.Time, dst string, port float64) event.Event {
	return event.Event{ID: fmt.Sprintf("ev-%s-%d", dev, at.Unix()), Tenant: "acme", Device: dev, Kind: event.NetFlow, Time: at, Source: "flows",
		Attrs: map[string]any{"dst_ip": dst, "dst_port": port, "bytes": 1200.0, "proto": 6.0}}
}

func TestCompileRuleErrorsNamePosition(t *testing.T) {
	cases := []struct {
		expr      string
		line, col int
		msg       string
	}{
		{"event.kind ==", 1, 14, "Syntax error"},
		{"event.kindd == 'net.flow'", 1, 6, "undefined field 'kindd'"},
		{"event.kind == 'net.flow' &&\n  device.modle == 'x'", 2, 9, "undefined field 'modle'"},
		{"evnt.kind == 'x'", 1, 1, "undeclared reference to 'evnt'"},
		{"event.attrs.bytes > 'a' + 1", 1, 25, "no matching overload"},
		{"event.kind", 1, 1, "must yield a bool"},
	}
	for _, tc := range cases {
		_, err := CompileRule(testRule("r1", tc.expr))
		require.Error(t, err, tc.expr)
		require.ErrorIs(t, err, ErrRule)
		var re *RuleError
		require.True(t, errors.As(err, &re))
		require.Equal(t, "expr", re.Field)
		require.Equal(t, tc.line, re.Line, "%q: %v", tc.expr, err)
		require.Equal(t, tc.col, re.Column, "%q: %v", tc.expr, err)
		require.Contains(t, re.Msg, tc.msg)
		require.Contains(t, err.Error(), fmt.Sprintf("line %d, column %d", tc.line, tc.col))
	}
}

func TestValidateRuleFields(t *testing.T) {
	ok := testRule("no-telnet", "true")
	require.NoError(t, ValidateRule(ok))
	cases := map[string]func(r *Rule){
		"id":          func(r *Rule) { r.ID = "Bad_ID" },
		"name":        func(r *Rule) { r.Name = " " },
		"expr":        func(r *Rule) { r.Expr = strings.Repeat("true && ", 600) + "true" },
		"severity":    func(r *Rule) { r.Severity = 0 },
		"alert_kind":  func(r *Rule) { r.Kind = "response.blast_radius" },
		"events[1]":   func(r *Rule) { r.Events = []event.Kind{event.NetFlow, "Net Flow"} },
		"description": func(r *Rule) { r.Description = strings.Repeat("x", 2001) },
	}
	for field, mut := range cases {
		r := ok
		mut(&r)
		err := ValidateRule(r)
		var re *RuleError
		require.True(t, errors.As(err, &re), field)
		require.Equal(t, field, re.Field)
		_, err = CompileRule(r)
		require.ErrorIs(t, err, ErrRule, field)
	}
	for _, k := range []alert.Kind{"rule.telnet_out", alert.PortScan} {
		r := ok
		r.Kind = k
		cr := mustCompile(t, r)
		require.Equal(t, k, cr.AlertKind())
	}
	require.Equal(t, alert.Kind("rule.no_telnet"), mustCompile(t, ok).AlertKind())
}

func TestRuleMatchSeesEventAndDevice(t *testing.T) {
	p := Profile{Tenant: "acme", ID: "m-1", Model: "acme-meter-2", Cohort: "meters", Groups: []string{"meters", "madrid"},
		State: "active", Firmware: "2.4.1", IMEI: "356938035643809", IMSI: "214010000000001", ICCID: "8934010000000000001",
		Tags: map[string]string{"site": "north"}}
	ev := flowEv("m-1", rt0, "203.0.113.9", 23)
	ev.Attrs["ports"] = []any{22.0, 80.0}
	cases := []struct {
		expr  string
		known bool
		want  bool
	}{
		{`event.kind == 'net.flow' && event.attrs.dst_port == 23.0`, true, true},
		{`event.attrs.dst_port in [23, 2323]`, true, true}, // numbers compare across int and double
		{`event.tenant == 'acme' && event.device == 'm-1' && event.source == 'flows' && event.id.startsWith('ev-')`, true, true},
		{`event.time > timestamp('2026-05-04T09:00:00Z') && event.time.getHours() == 10`, true, true},
		{`device.known && device.model == 'acme-meter-2' && 'madrid' in device.groups && device.group == 'meters'`, true, true},
		{`device.state == 'active' && device.firmware == '2.4.1' && device.imsi.startsWith('21401') && device.tags.site == 'north'`, true, true},
		{`device.imei != '' && device.iccid.size() == 19`, true, true},
		{`device.known`, false, false},
		{`!device.known && device.id == 'm-1' && device.model == ''`, false, true},
		{`has(event.attrs.nope) && event.attrs.nope == 1`, true, false},
		{`event.attrs.?nope.orValue(0) == 0`, true, true},
		{`80.0 in event.attrs.ports`, true, true},
		{`cidr('203.0.113.0/24').containsIP(ip(event.attrs.dst_ip))`, true, true},
		{`event.attrs.dst_ip.matches('^203\\.0\\.113\\.')`, true, true},
		{`event.kind.split('.')[0] == 'net'`, true, true},
	}
	for _, tc := range cases {
		cr := mustCompile(t, testRule("r", tc.expr))
		got, err := cr.Match(&ev, p, tc.known)
		require.NoError(t, err, tc.expr)
		require.Equal(t, tc.want, got, tc.expr)
	}
}

func TestRuleEvalErrorsAreNoMatch(t *testing.T) {
	ev := flowEv("m-1", rt0, "203.0.113.9", 23)
	for _, expr := range []string{
		`event.attrs.nope == 1`,           // missing key
		`event.attrs.dst_ip > 3`,          // string vs number at runtime
		`event.attrs.dst_ip`,              // dyn that is not a bool
		`int(event.attrs.bytes) / 0 == 1`, // division by zero
	} {
		cr := mustCompile(t, testRule("r", expr))
		got, err := cr.Match(&ev, Profile{}, false)
		require.Error(t, err, expr)
		require.False(t, got)
		require.Equal(t, int64(1), cr.Errors())
	}
}

func TestRuleCostLimit(t *testing.T) {
	list := make([]any, 300)
	for i := range list {
		list[i] = float64(i)
	}
	ev := event.Event{Tenant: "acme", Device: "d", Kind: event.DeviceMetrics, Time: rt0, Attrs: map[string]any{"l": list, "s": strings.Repeat("a", 1_000_000)}}
	for _, expr := range []string{
		`event.attrs.l.all(x, event.attrs.l.all(y, x != y || x == y))`, // 90,000 iterations
		`event.attrs.s.matches('a*b')`,
	} {
		cr := mustCompile(t, testRule("slow", expr))
		ok, err := cr.Match(&ev, Profile{}, false)
		require.False(t, ok)
		require.ErrorContains(t, err, "cost limit", expr)
	}
	// The same shape over a small list is fine.
	cr := mustCompile(t, testRule("fine", `event.attrs.l.exists(x, x == 299.0)`))
	ok, err := cr.Match(&ev, Profile{}, false)
	require.NoError(t, err)
	require.True(t, ok)
}

type stringerT struct{}

func (stringerT) String() string { return "str" }

func TestRuleOddAttributeTypes(t *testing.T) {
	ch := make(chan int)
	ev := event.Event{Tenant: "acme", Device: "d", Kind: event.DeviceMetrics, Time: rt0, Attrs: map[string]any{
		"i": 3, "u": uint16(7), "f32": float32(1.5), "ss": []string{"a", "b"}, "ints": []int{1, 2}, "addr": netip.MustParseAddr("192.0.2.1"),
		"m": map[string]int{"a": 1}, "ms": map[string]string{"k": "v"}, "nil": nil, "t": rt0, "st": stringerT{}, "ch": ch,
		"nested": map[string]any{"deep": []any{int64(4), struct{ A int }{1}}}, "ptr": &struct{}{},
	}}
	ok := []string{
		`event.attrs.i == 3`, `event.attrs.u == 7.0`, `event.attrs.f32 == 1.5`, `'b' in event.attrs.ss`, `2 in event.attrs.ints`,
		`event.attrs.addr == '192.0.2.1'`, `event.attrs.ms.k == 'v'`, `event.attrs.nil == null`, `event.attrs.st == 'str'`,
		`event.attrs.t.startsWith('2026-05-04')`, `event.attrs.nested.deep[0] == 4`, `event.attrs.m.a == 1`,
	}
	for _, expr := range ok {
		got, err := mustCompile(t, testRule("r", expr)).Match(&ev, Profile{}, false)
		require.NoError(t, err, expr)
		require.True(t, got, expr)
	}
	for _, expr := range []string{`event.attrs.ch == 1`, `event.attrs.ptr == 1`, `event.attrs.nested.deep[1] == 1`, `event.attrs.size() > 0`} {
		require.NotPanics(t, func() { _, _ = mustCompile(t, testRule("r", expr)).Match(&ev, Profile{}, false) }, expr)
	}
}

func ruleEngine(t testing.TB, sink Sink, dir Directory, rules ...Rule) (*Engine, *RuleSet) {
	t.Helper()
	rs := NewRuleSet()
	byTenant := map[event.TenantID][]*CompiledRule{}
	for _, r := range rules {
		byTenant[r.Tenant] = append(byTenant[r.Tenant], mustCompile(t, r))
	}
	for tn, crs := range byTenant {
		rs.Set(tn, crs)
	}
	return New(Options{Sink: sink, Directory: dir, Rules: rs}), rs
}

func TestEngineRaisesRuleAlerts(t *testing.T) {
	ctx := context.Background()
	dir := NewMemDirectory()
	dir.Put(Profile{Tenant: "acme", ID: "m-1", Model: "acme-meter-2", State: "active"})
	sink := &recSink{}
	telnet := testRule("telnet-out", `event.attrs.dst_port in [23, 2323] && device.model.startsWith('acme')`, event.NetFlow)
	off := testRule("off", `true`)
	off.Enabled = false
	other := testRule("other-tenant", `true`)
	other.Tenant = "globex"
	anyq := testRule("any-quarantined", `device.state == 'quarantined'`)
	anyq.Severity = alert.Critical
	e, rs := ruleEngine(t, sink, dir, telnet, off, other, anyq)

	require.NoError(t, e.Process(ctx, ptrEv(flowEv("m-1", rt0, "203.0.113.9", 443))))
	require.Empty(t, sink.alerts)
	ev1 := flowEv("m-1", rt0.Add(time.Minute), "203.0.113.9", 23)
	require.NoError(t, e.Process(ctx, &ev1))
	require.Len(t, sink.alerts, 1)
	a := sink.alerts[0]
	require.Equal(t, alert.Kind("rule.telnet_out"), a.Kind)
	require.Equal(t, "rule:telnet-out", a.Detector)
	require.Equal(t, alert.High, a.Severity)
	require.Equal(t, event.DeviceID("m-1"), a.Device)
	require.Equal(t, "telnet-out", a.Evidence.Values["rule"])
	require.Equal(t, telnet.Expr, a.Evidence.Values["expr"])
	require.Contains(t, a.Evidence.Summary, "telnet-out")
	require.Len(t, a.Evidence.Events, 1)
	require.Equal(t, ev1.ID, a.Evidence.Events[0].ID)

	// A repeat merges into the same alert.
	ev2 := flowEv("m-1", rt0.Add(2*time.Minute), "203.0.113.10", 2323)
	require.NoError(t, e.Process(ctx, &ev2))
	require.Len(t, sink.alerts, 2)
	require.Equal(t, a.ID, sink.alerts[1].ID)
	require.Equal(t, 2, sink.alerts[1].Count)
	require.Len(t, sink.alerts[1].Evidence.Events, 2)

	// Another tenant's events never see acme's rules; globex's rule runs for globex.
	g := flowEv("m-1", rt0.Add(3*time.Minute), "203.0.113.9", 23)
	g.Tenant = "globex"
	require.NoError(t, e.Process(ctx, &g))
	require.Len(t, sink.alerts, 3)
	require.Equal(t, event.TenantID("globex"), sink.alerts[2].Tenant)
	require.Equal(t, alert.Kind("rule.other_tenant"), sink.alerts[2].Kind)

	// Unfiltered rules see every kind; state changes in the directory are seen.
	dir.Put(Profile{Tenant: "acme", ID: "m-1", Model: "acme-meter-2", State: "quarantined"})
	loc := event.Event{ID: "loc", Tenant: "acme", Device: "m-1", Kind: event.Location, Time: rt0.Add(4 * time.Minute), Attrs: map[string]any{"lat": 1.0, "lon": 2.0}}
	require.NoError(t, e.Process(ctx, &loc))
	require.Len(t, sink.alerts, 4)
	require.Equal(t, alert.Kind("rule.any_quarantined"), sink.alerts[3].Kind)
	require.Equal(t, alert.Critical, sink.alerts[3].Severity)

	// Replacing the tenant's rules takes effect on the next event.
	rs.Set("acme", nil)
	require.Empty(t, rs.Rules("acme"))
	ev3 := flowEv("m-1", rt0.Add(5*time.Minute), "203.0.113.9", 23)
	require.NoError(t, e.Process(ctx, &ev3))
	require.Len(t, sink.alerts, 4)
	require.Len(t, rs.Rules("globex"), 1)

	// A failing rule is counted, never raised.
	rs.Set("acme", []*CompiledRule{mustCompile(t, testRule("broken", `event.attrs.nope == 1`))})
	require.NoError(t, e.Process(ctx, ptrEv(flowEv("m-1", rt0.Add(6*time.Minute), "203.0.113.9", 23))))
	require.Len(t, sink.alerts, 4)
	require.Equal(t, int64(1), e.RuleErrors())
	require.Equal(t, int64(1), rs.Errors())
	require.Equal(t, 2, rs.Len(), "acme's broken rule and globex's")
}

func ptrEv(ev event.Event) *event.Event { return &ev }

func TestTryRule(t *testing.T) {
	dir := NewMemDirectory()
	dir.Put(Profile{Tenant: "acme", ID: "m-1", Model: "acme-meter-2"})
	cr := mustCompile(t, testRule("telnet-out", `event.attrs.dst_port == 23.0 && device.known`, event.NetFlow))
	cr.Enabled = false // tried anyway
	other := flowEv("m-1", rt0, "203.0.113.9", 23)
	other.Tenant = "globex"
	bad := flowEv("m-1", rt0, "203.0.113.9", 23)
	delete(bad.Attrs, "dst_port")
	evs := []event.Event{
		flowEv("m-1", rt0, "203.0.113.9", 443),                           // 0 no
		flowEv("m-1", rt0.Add(time.Minute), "203.0.113.9", 23),           // 1 yes
		{Tenant: "acme", Device: "m-1", Kind: event.Location, Time: rt0}, // 2 other kind
		other, // 3 other tenant
		flowEv("m-2", rt0.Add(2*time.Minute), "203.0.113.9", 23), // 4 unknown device: no
		bad, // 5 error
		flowEv("m-1", rt0.Add(3*time.Minute), "203.0.113.9", 23), // 6 yes, merged
		flowEv("m-1", rt0.Add(3*time.Hour), "203.0.113.9", 23),   // 7 yes, a new alert
	}
	res := TryRule(context.Background(), cr, evs, dir)
	require.Equal(t, 6, res.Evaluated)
	require.Equal(t, []int{1, 6, 7}, []int{res.Matches[0].Index, res.Matches[1].Index, res.Matches[2].Index})
	require.Equal(t, []int{1, 2, 1}, []int{res.Matches[0].Count, res.Matches[1].Count, res.Matches[2].Count})
	require.Equal(t, 1, res.ErrorCount)
	require.Equal(t, 5, res.Errors[0].Index)
	require.Contains(t, res.Errors[0].Error, "no such key")
	require.Len(t, res.Alerts, 2)
	require.Equal(t, 2, res.Alerts[0].Count)
	require.Equal(t, res.Matches[0].AlertID, res.Alerts[0].ID)
	require.Equal(t, alert.Kind("rule.telnet_out"), res.Alerts[1].Kind)
}

// TestRuleBoundedRunsUntracked: rules whose static worst case over
// event-sized inputs is within the limit run in the engine without runtime
// cost tracking, and give the same answers; the others keep the limit.
func TestRuleBoundedRunsUntracked(t *testing.T) {
	ev := flowEv("m-1", rt0, "203.0.113.9", 23)
	ev.Attrs["l"] = []any{1.0, 2.0, 3.0}
	for _, tc := range []struct {
		expr    string
		bounded bool
	}{
		{`event.attrs.dst_port in [23, 2323]`, true},
		{`device.model.startsWith('acme') && event.attrs.dst_ip.matches('^203\\.')`, true},
		{`cidr('203.0.113.0/24').containsIP(ip(event.attrs.dst_ip))`, true},
		{`event.attrs.l.exists(x, x == 2.0)`, false},
		{`event.attrs.l.all(x, event.attrs.l.all(y, x != y || x == y))`, false},
	} {
		cr := mustCompile(t, testRule("r", tc.expr))
		require.Equal(t, tc.bounded, cr.bounded, tc.expr)
		var v ruleVars
		v.fill(&ev, Profile{Model: "acme-meter-2"}, true)
		a, errA := cr.eval(&v)
		b, errB := cr.evalHot(&v)
		require.NoError(t, errA, tc.expr)
		require.NoError(t, errB, tc.expr)
		require.Equal(t, a, b, tc.expr)
	}
}

// TestRuleSetSwapWhileProcessing: rules replaced while events flow in
// several goroutines (run with -race): every event sees either set.
func TestRuleSetSwapWhileProcessing(t *testing.T) {
	sink := &recSink{}
	e, rs := ruleEngine(t, sink, nil, testRule("a", `event.attrs.dst_port == 23.0`))
	b := []*CompiledRule{mustCompile(t, testRule("b", `event.attrs.dst_port == 23.0`))}
	a := rs.Rules("acme")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			if i%2 == 0 {
				rs.Set("acme", b)
			} else {
				rs.Set("acme", a)
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				ev := flowEv(event.DeviceID(fmt.Sprintf("d%d", g)), rt0.Add(time.Duration(i)*time.Second), "203.0.113.9", 23)
				_ = e.Process(context.Background(), &ev)
			}
		}()
	}
	wg.Wait()
	<-done
	sink.mu.Lock()
	defer sink.mu.Unlock()
	require.Len(t, sink.alerts, 400, "every event matched the rule of one set or the other")
	for _, al := range sink.alerts {
		require.Contains(t, []alert.Kind{"rule.a", "rule.b"}, al.Kind)
	}
}
