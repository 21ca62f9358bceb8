package detect

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/garrisonhq/garrison/internal/event"
)

// FuzzRule compiles untrusted expressions and evaluates what compiles
// against events with attributes of every shape: nothing may panic, a
// compile error is a *RuleError on expr, and an evaluation is a bool or an
// error.
func FuzzRule(f *testing.F) {
	for _, s := range []string{
		`event.attrs.dst_port in [23, 2323]`,
		`device.known && device.model.startsWith('acme')`,
		`event.attrs.?x.orValue(1) == 1`,
		`cidr('10.0.0.0/8').containsIP(ip(event.attrs.ip))`,
		`event.attrs.l.all(x, event.attrs.l.exists(y, x == y))`,
		`event.time > timestamp('2026-01-01T00:00:00Z')`,
		`size(event.attrs) > 2 && event.attrs.m.k == 'v'`,
		`event.attrs.s.matches('(a+)+$')`,
		"event.kind ==\n",
		`((((((((((true))))))))))`,
	} {
		f.Add(s)
	}
	long := make([]any, 500)
	for i := range long {
		long[i] = float64(i)
	}
	evs := []event.Event{
		{Tenant: "acme", Device: "d", Kind: event.NetFlow, Time: rt0, Attrs: map[string]any{"dst_port": 23.0, "ip": "10.1.2.3", "l": long, "s": strings.Repeat("a", 5000) + "!"}},
		{Tenant: "acme", Device: "d", Kind: event.DeviceMetrics, Time: rt0, Attrs: map[string]any{"ip": 3, "l": []string{"a"}, "m": map[string]string{"k": "v"},
			"x": netip.MustParseAddr("::1"), "n": nil, "c": make(chan int), "s": []int{1}}},
		{Tenant: "acme", Device: "d", Kind: event.Location, Time: rt0},
	}
	prof := Profile{Tenant: "acme", ID: "d", Model: "acme-meter-2", Groups: []string{"g"}, Tags: map[string]string{"k": "v"}}
	f.Fuzz(func(t *testing.T, expr string) {
		cr, err := CompileRule(Rule{Tenant: "acme", ID: "fz", Name: "fz", Expr: expr, Severity: 1, Enabled: true})
		if err != nil {
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("compile error is not a RuleError: %v", err)
			}
			if re.Field != "expr" {
				t.Fatalf("compile error on field %q", re.Field)
			}
			return
		}
		for i := range evs {
			for _, known := range []bool{true, false} {
				ok, err := cr.Match(&evs[i], prof, known)
				if err != nil && ok {
					t.Fatalf("match and error: %v", err)
				}
			}
		}
	})
}
