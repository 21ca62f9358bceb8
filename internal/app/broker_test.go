package app

import (
	"errors"
	"fmt"
	"testing"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/identity"
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
