package api_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// BenchmarkWhoami is the cost of an authenticated read: token parse,
// store lookup, constant-time hash compare, routing and JSON rendering.
func BenchmarkWhoami(b *testing.B) {
	e := newEnv(b)
	tok := e.world(b).tokens[store.RoleViewer]
	b.ReportAllocs()
	for b.Loop() {
		if rec := e.do("GET", "/api/v1/whoami", tok, ""); rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// BenchmarkCreateTenant is an audited write: decode, one store.Update
// holding the insert and the hash-chained audit append, fsync'd commit.
func BenchmarkCreateTenant(b *testing.B) {
	e := newEnv(b)
	tok := e.world(b).tokens[store.RolePlatformAdmin]
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if rec := e.do("POST", "/api/v1/tenants", tok, fmt.Sprintf(`{"id":"b-%d"}`, i)); rec.Code != 201 {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}

// BenchmarkListAlerts is the alert console's refresh: a filtered page of
// 100 alerts out of 2,000, rendered with their evidence.
func BenchmarkListAlerts(b *testing.B) {
	e := newEnv(b)
	w := e.world(b)
	ctx := context.Background()
	require.NoError(b, e.st.Update(ctx, func(tx store.Tx) error {
		for i := range 2000 {
			ts := t0.Add(-time.Duration(i) * time.Minute)
			a := alert.Alert{ID: fmt.Sprintf("b%d", i), Tenant: w.tenant, Device: event.DeviceID(fmt.Sprintf("d%d", i%50)),
				Kind: alert.PortScan, Severity: alert.High, Detector: "net", FirstSeen: ts, LastSeen: ts, Count: 1, State: alert.Open,
				Evidence: alert.Evidence{Summary: "scan", Values: map[string]any{"ports": 40, "baseline": 2}}}
			if err := tx.Alerts().Put(ctx, a); err != nil {
				return err
			}
		}
		return nil
	}))
	tok := w.tokens[store.RoleViewer]
	path := "/api/v1/tenants/" + string(w.tenant) + "/alerts?state=open&limit=100"
	b.ReportAllocs()
	for b.Loop() {
		if rec := e.do("GET", path, tok, ""); rec.Code != 200 {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}
