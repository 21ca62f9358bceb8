package app

import (
	"errors"
	"fmt"
	"testing"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
)

func TestMapVerifyErr(t *testing.T) {
	outage := errors.New("store down")
	for _, tc := range []struct {
		name string
		in   error
		want error
	}{
		{"revoked", fmt.Errorf("identity: verify 1f: %w", identity.ErrRevoked), broker.ErrRevoked},
		{"expired wraps untrusted too", fmt.Errorf("identity: verify: %w: %w", identity.ErrExpired, identity.ErrUntrusted), broker.ErrExpired},
		{"untrusted", fmt.Errorf("identity: verify: %w", identity.ErrUntrusted), broker.ErrUnknown},
		{"unknown cert", fmt.Errorf("identity: verify: %w", identity.ErrUnknownCert), broker.ErrUnknown},
		{"bad id", fmt.Errorf("identity: %w", identity.ErrBadID), broker.ErrUnknown},
		{"outage passes unchanged", outage, outage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mapVerifyErr(tc.in)
			if !errors.Is(got, tc.want) {
				t.Fatalf("mapVerifyErr(%v) = %v, want it to wrap %v", tc.in, got, tc.want)
			}
			if !errors.Is(got, tc.in) {
				t.Fatalf("the cause %v is lost in %v", tc.in, got)
			}
			for _, other := range []error{broker.ErrRevoked, broker.ErrExpired, broker.ErrUnknown} {
				if other != tc.want && errors.Is(got, other) {
					t.Fatalf("%v also wraps %v", got, other)
				}
			}
		})
	}
}

type fakeKicker struct {
	kicked []string
	states []string
}

func (f *fakeKicker) Kick(t event.TenantID, d event.DeviceID, reason string) bool {
	f.kicked = append(f.kicked, string(t)+"/"+string(d)+":"+reason)
	return true
}

func (f *fakeKicker) SetState(t event.TenantID, d event.DeviceID, s store.DeviceState) bool {
	f.states = append(f.states, string(t)+"/"+string(d)+":"+string(s))
	return true
}

func (f *fakeKicker) KickPasswordSession(t event.TenantID, d event.DeviceID, reason string) bool {
	f.kicked = append(f.kicked, "password "+string(t)+"/"+string(d)+":"+reason)
	return true
}

func TestApplyToSessions(t *testing.T) {
	for _, tc := range []struct {
		name           string
		ev             event.Event
		kicked, states []string
	}{
		{"revoked", event.Event{Kind: event.CertRevoked, Tenant: "t", Device: "d", Attrs: map[string]any{"serial": "1f"}}, []string{"t/d:certificate_revoked"}, nil},
		{"revoked without device", event.Event{Kind: event.CertRevoked, Tenant: "t"}, nil, nil},
		{"quarantined", event.Event{Kind: event.DeviceState, Tenant: "t", Device: "d", Attrs: map[string]any{"from": "active", "to": "quarantined"}}, nil, []string{"t/d:quarantined"}},
		{"state without to", event.Event{Kind: event.DeviceState, Tenant: "t", Device: "d", Attrs: map[string]any{"from": "active"}}, nil, nil},
		{"other kind", event.Event{Kind: event.CertIssued, Tenant: "t", Device: "d"}, nil, nil},
		{"password rotated", event.Event{Kind: event.DevicePassword, Tenant: "t", Device: "d", Attrs: map[string]any{"action": "set"}}, []string{"password t/d:password_set"}, nil},
		{"kick asked elsewhere", event.Event{Kind: event.SessionKick, Tenant: "t", Device: "d", Attrs: map[string]any{"reason": "mass: x", "origin": "n1"}}, []string{"t/d:mass: x"}, nil},
		{"kick without device", event.Event{Kind: event.SessionKick, Tenant: "t"}, nil, nil},
		{"password cleared", event.Event{Kind: event.DevicePassword, Tenant: "t", Device: "d", Attrs: map[string]any{"action": "cleared"}}, []string{"password t/d:password_cleared"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fakeKicker
			applyToSessions(&f, &tc.ev)
			if fmt.Sprint(f.kicked) != fmt.Sprint(tc.kicked) || fmt.Sprint(f.states) != fmt.Sprint(tc.states) {
				t.Fatalf("kicked %v states %v, want %v %v", f.kicked, f.states, tc.kicked, tc.states)
			}
		})
	}
}
