package detect

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

func TestValidateOverrideNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name, raw, want string
	}{
		{"auth.bruteforce", `{"threshold": 5, "window": "1m", "disabled": false}`, ""},
		{"auth.bruteforce", `{}`, ""},
		{"auth.bruteforce", `null`, ""},
		{"auth.bruteforce", `{"threshld": 5}`, `unknown field "threshld"`},
		{"auth.bruteforce", `{"threshold": "x"}`, `field "threshold": want integer`},
		{"auth.bruteforce", `{"threshold": -1}`, `field "threshold": must not be negative`},
		{"auth.bruteforce", `{"window": "soon"}`, `field "window": want duration`},
		{"auth.bruteforce", `{"disabled": "yes"}`, `field "disabled"`},
		{"auth.bruteforce", `[1]`, `want a JSON object`},
		{"location.travel", `{"max_speed_kmh": -3.5}`, `field "max_speed_kmh"`},
		{"no.such", `{}`, `unknown detector "no.such"`},
	} {
		err := ValidateOverride(tc.name, json.RawMessage(tc.raw))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s %s: %v", tc.name, tc.raw, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrSettings) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: got %v, want an ErrSettings naming %s", tc.name, tc.raw, err, tc.want)
		}
	}
}

func TestFieldsDescribeEveryDetector(t *testing.T) {
	for _, d := range Detectors() {
		fs := Fields(d.Name)
		if fs == nil {
			t.Fatalf("%s: no fields", d.Name)
		}
		var defaults map[string]json.RawMessage
		if err := json.Unmarshal(d.Settings, &defaults); err != nil {
			t.Fatal(err)
		}
		if len(defaults) != len(fs) {
			t.Errorf("%s: %d fields, %d defaults", d.Name, len(fs), len(defaults))
		}
		for _, f := range fs {
			if _, ok := defaults[f.Name]; !ok || f.Type == "" {
				t.Errorf("%s: field %+v not in defaults %s", d.Name, f, d.Settings)
			}
		}
	}
	if got := Fields("auth.bruteforce"); got[0] != (Field{Name: "window", Type: "duration"}) {
		t.Fatalf("bruteforce fields: %+v", got)
	}
}

func TestTenantSettingsWithAndApply(t *testing.T) {
	ts := TenantSettings{}.With("", "auth.bruteforce", json.RawMessage(`{"threshold":5}`)).
		With("meters", "auth.default_credentials", json.RawMessage(`{"disabled":true}`))
	if err := ts.Validate(); err != nil {
		t.Fatal(err)
	}
	s := Settings{Overrides: map[string]map[string]json.RawMessage{"other": {"sim.swap": json.RawMessage(`{"imei_digits":15}`)}, "t1/old": {"sim.swap": json.RawMessage(`{}`)}}}
	ts.Apply("t1", &s)
	if _, ok := s.Overrides["t1/old"]; ok {
		t.Fatal("Apply kept a scope of the tenant that ts no longer has")
	}
	if s.Overrides["other"] == nil || s.Overrides["t1"] == nil || s.Overrides["t1/meters"] == nil {
		t.Fatalf("Apply: %v", s.Overrides)
	}
	eff := Resolve(s, "t1", "meters")
	for _, e := range eff {
		switch e.Name {
		case "auth.bruteforce":
			if !strings.Contains(string(e.Settings), `"threshold":5`) || e.Disabled {
				t.Errorf("tenant scope not applied to its group: %+v", e)
			}
		case "auth.default_credentials":
			if !e.Disabled {
				t.Errorf("group scope not applied: %+v", e)
			}
		}
	}
	// Removing the last override of a scope removes the scope.
	ts = ts.With("meters", "auth.default_credentials", json.RawMessage(`{}`))
	if ts.Groups != nil {
		t.Fatalf("empty group kept: %+v", ts)
	}
	if bad := ts.With("", "auth.bruteforce", json.RawMessage(`{"threshold":-1}`)); bad.Validate() == nil {
		t.Fatal("negative threshold accepted")
	}
}

// TestSetTenantSettingsLive changes a detector's settings while events are
// processed concurrently (run with -race) and shows that the change takes
// effect for the next event without losing learned state.
func TestSetTenantSettingsLive(t *testing.T) {
	sink := &recSink{}
	e := New(Options{Sink: sink})
	ctx := context.Background()
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	factory := func(dev event.DeviceID, at time.Time) *event.Event {
		return &event.Event{Tenant: "t1", Device: dev, Kind: event.MQTTAuthFailed, Time: at, Source: "broker",
			Attrs: map[string]any{"reason": "default_credentials", "username": "root", "remote": "198.51.100.7:4000"}}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // concurrent traffic of another tenant
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = e.Process(ctx, &event.Event{Tenant: "t2", Device: "d", Kind: event.MQTTAuthFailed, Time: t0.Add(time.Duration(i) * time.Second),
				Attrs: map[string]any{"reason": "bad_password", "username": "u"}})
		}
	}()
	off := TenantSettings{}.With("", "auth.default_credentials", json.RawMessage(`{"disabled":true}`))
	for range 50 {
		if err := e.SetTenantSettings("t1", off); err != nil {
			t.Fatal(err)
		}
		if err := e.SetTenantSettings("t1", TenantSettings{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.SetTenantSettings("t1", off); err != nil {
		t.Fatal(err)
	}
	if err := e.Process(ctx, factory("dev-1", t0)); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	count := func() int {
		n := 0
		sink.mu.Lock()
		defer sink.mu.Unlock()
		for _, a := range sink.alerts {
			if a.Kind == alert.DefaultCredentials {
				n++
			}
		}
		return n
	}
	if count() != 0 {
		t.Fatal("a disabled detector raised")
	}
	// Invalid settings change nothing.
	bad := TenantSettings{}.With("", "auth.default_credentials", json.RawMessage(`{"disabled":"no"}`))
	if err := e.SetTenantSettings("t1", bad); err == nil {
		t.Fatal("invalid settings accepted")
	}
	if err := e.Process(ctx, factory("dev-1", t0.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if count() != 0 {
		t.Fatal("rejected settings were applied")
	}
	if err := e.SetTenantSettings("t1", TenantSettings{}); err != nil {
		t.Fatal(err)
	}
	if err := e.Process(ctx, factory("dev-1", t0.Add(2*time.Minute))); err != nil {
		t.Fatal(err)
	}
	if count() != 1 {
		t.Fatalf("re-enabled detector: %d alerts", count())
	}
	if got := e.Settings(); len(got.Overrides) != 0 {
		t.Fatalf("settings after clearing: %v", got.Overrides)
	}
}

// FuzzValidateOverride: an override from an API body either is refused
// with ErrSettings or resolves without panicking, every field it sets
// taking effect as validated (no negative number gets through).
func FuzzValidateOverride(f *testing.F) {
	f.Add("auth.bruteforce", []byte(`{"threshold": 50, "window": "5m", "disabled": true}`))
	f.Add("location.travel", []byte(`{"max_speed_kmh": 1e308}`))
	f.Add("identity.revoked", []byte(`{"reasons": ["revoked_cert", null]}`))
	f.Add("net.destination", []byte(`{"min_bytes": -1}`))
	f.Fuzz(func(t *testing.T, name string, raw []byte) {
		err := ValidateOverride(name, raw)
		if err != nil {
			if !errors.Is(err, ErrSettings) {
				t.Fatalf("unwrapped error %v", err)
			}
			return
		}
		s := Settings{Overrides: map[string]map[string]json.RawMessage{"t": {name: raw}}}
		if err := ValidateSettings(s); err != nil {
			t.Fatalf("ValidateOverride accepted what ValidateSettings refuses: %v", err)
		}
		for _, e := range Resolve(s, "t", "") {
			var m map[string]any
			if err := json.Unmarshal(e.Settings, &m); err != nil {
				t.Fatalf("%s: effective settings do not encode: %v", e.Name, err)
			}
			for k, v := range m {
				if f, ok := v.(float64); ok && f < 0 {
					t.Fatalf("%s.%s = %v got through", e.Name, k, f)
				}
			}
		}
	})
}
