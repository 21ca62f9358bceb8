package app

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
)

// TestMassRevokeRefreshesCRL: a mass revoke run by serve's runner revokes
// every certificate of the selected devices, audited with their serials,
// publishes identity.cert_revoked for each, and the CRL that was served
// (and cached) before the job lists them all right after it, not a cache
// lifetime later.
func TestMassRevokeRefreshesCRL(t *testing.T) {
	ctx := context.Background()
	const tenant = event.TenantID("acme")
	const n = 30
	a := massApp(ctx, t)
	t.Cleanup(func() { _ = a.Stop(context.Background()) })
	massSetup(ctx, t, a, tenant, n)
	massCRL(ctx, t, a, tenant, 0)
	svc, err := a.response.get()
	if err != nil {
		t.Fatal(err)
	}
	after := auditHead(ctx, t, a, tenant)
	j, err := svc.Submit(ctx, tenant, respond.MassRequest{Kind: respond.MassRevoke, Selector: "model=bench-meter"}, "op")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for j.State == respond.JobRunning {
		if time.Now().After(deadline) {
			t.Fatalf("job still running after 30 s: %+v", j)
		}
		time.Sleep(10 * time.Millisecond)
		if j, err = svc.Job(ctx, tenant, j.ID); err != nil {
			t.Fatal(err)
		}
	}
	if j.State != respond.JobDone || j.Changed != n {
		t.Fatalf("job %+v", j)
	}
	massCheck(ctx, t, a, tenant, respond.MassRevoke, j, n, after)
	massCRL(ctx, t, a, tenant, n)

	var mu sync.Mutex
	serials := map[string]bool{}
	c, err := a.Bus().Consume(ctx, bus.ConsumerOptions{Name: "cert-revoked", Stream: bus.Security,
		Filters: []string{bus.KindFilter(event.CertRevoked)},
		Handler: func(_ context.Context, e *event.Event) error {
			if e.Tenant == tenant && e.Str("reason") == "key_compromise" {
				mu.Lock()
				serials[e.Str("serial")] = true
				mu.Unlock()
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		got := len(serials)
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity.cert_revoked for %d certificates, want %d", got, n)
		}
	}
}
