package respond_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// hookPublisher records events and calls after once per page flush.
type hookPublisher struct {
	mu     sync.Mutex
	events []*event.Event
	after  func()
}

func (p *hookPublisher) Publish(_ context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, e)
	return nil
}

func (p *hookPublisher) PublishAsync(ctx context.Context, e *event.Event) error {
	return p.Publish(ctx, e)
}

func (p *hookPublisher) Flush(context.Context) error {
	if p.after != nil {
		p.after()
	}
	return nil
}

func newMass(t *testing.T, f *fixture, mod func(*respond.MassOptions)) *respond.Mass {
	t.Helper()
	o := respond.MassOptions{Store: f.st, Clock: f.clk, Publisher: f.rec, Disconnecter: f.rec, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&o)
	}
	m, err := respond.NewMass(o)
	require.NoError(t, err)
	return m
}

func createTenants(t *testing.T, f *fixture, ids ...event.TenantID) {
	t.Helper()
	require.NoError(t, f.st.Update(context.Background(), func(tx store.Tx) error {
		for _, id := range ids {
			if err := tx.Tenants().Create(context.Background(), store.Tenant{ID: id, Name: string(id), CreatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	}))
}

// massAudited returns every device id listed by the tenant's mass.KIND audit records.
func massAudited(t *testing.T, f *fixture, tenant event.TenantID, kind string) []string {
	t.Helper()
	var out []string
	for _, r := range f.audit(t, tenant) {
		if r.Action != "mass."+kind {
			continue
		}
		var d struct {
			Devices []map[string]string `json:"devices"`
		}
		require.NoError(t, json.Unmarshal(r.Details, &d))
		for _, dev := range d.Devices {
			out = append(out, dev["id"])
		}
	}
	return out
}

func TestMassPreviewChangesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	createTenants(t, f, "acme")
	f.fleet(t, "acme", 30)
	before := len(f.audit(t, "acme"))
	m := newMass(t, f, nil)
	p, err := m.Preview(ctx, "acme", "model=acme-meter-2,imsi^=21401000000002", 3)
	require.NoError(t, err)
	require.Equal(t, 10, p.Count, "dev-00020..29")
	require.Len(t, p.Sample, 3)
	require.Equal(t, event.DeviceID("dev-00020"), p.Sample[0].ID)
	require.Equal(t, "model=acme-meter-2,imsi^=21401000000002", p.Selector)
	require.Len(t, f.audit(t, "acme"), before, "a preview writes nothing")
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00020"))
}

func TestMassQuarantineRevokeKickAndTenancy(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	createTenants(t, f, "acme", "beta")
	f.fleet(t, "acme", 25)
	f.fleet(t, "beta", 25) // the same device ids in another tenant
	_, err := f.reg.SetState(ctx, "acme", "dev-00003", store.StateRevoked, "op", "test")
	require.NoError(t, err)
	_, err = f.reg.SetState(ctx, "acme", "dev-00004", store.StateQuarantined, "op", "test")
	require.NoError(t, err)
	m := newMass(t, f, func(o *respond.MassOptions) { o.Batch = 7 })

	j, err := m.Submit(ctx, "acme", respond.MassRequest{Kind: respond.MassQuarantine, Selector: "imsi^=21401000000000", Reason: "outbreak"}, "alice")
	require.NoError(t, err)
	require.Equal(t, 10, j.Total)
	require.Equal(t, respond.JobRunning, j.State)
	j, err = m.Run(ctx, "acme", j.ID)
	require.NoError(t, err)
	require.Equal(t, respond.JobDone, j.State)
	require.Equal(t, 10, j.Processed)
	require.Equal(t, 8, j.Changed)
	require.Equal(t, 1, j.Unchanged, "dev-00004 was quarantined already")
	require.Equal(t, 1, j.Refused, "dev-00003 is revoked")
	for i := 0; i < 25; i++ {
		id := event.DeviceID(fmt.Sprintf("dev-%05d", i))
		want := store.StateActive
		switch {
		case i == 3:
			want = store.StateRevoked
		case i < 10:
			want = store.StateQuarantined
		}
		require.Equal(t, want, f.state(t, "acme", id), id)
		require.Equal(t, store.StateActive, f.state(t, "beta", id), "beta untouched")
	}
	require.Len(t, massAudited(t, f, "acme", "quarantine"), 8)
	f.rec.mu.Lock()
	var states int
	for _, e := range f.rec.events {
		if e.Kind == event.DeviceState {
			states++
			require.Equal(t, event.TenantID("acme"), e.Tenant)
			require.Equal(t, "quarantined", e.Attrs["to"])
		}
	}
	f.rec.mu.Unlock()
	require.Equal(t, 8, states)

	// Revoke: state revoked and every certificate of the devices revoked.
	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error {
		for _, tn := range []event.TenantID{"acme", "beta"} {
			if err := tx.Certificates().Create(ctx, store.Certificate{Tenant: tn, Serial: "0a", Device: "dev-00012", Issuer: "ca",
				NotBefore: t0, NotAfter: t0.Add(time.Hour)}); err != nil {
				return err
			}
		}
		return nil
	}))
	j, err = m.Submit(ctx, "acme", respond.MassRequest{Kind: respond.MassRevoke, Selector: "imsi^=21401000000001,state=active"}, "alice")
	require.NoError(t, err)
	j, err = m.Run(ctx, "acme", j.ID)
	require.NoError(t, err)
	require.Equal(t, 10, j.Changed)
	require.Equal(t, store.StateRevoked, f.state(t, "acme", "dev-00012"))
	require.NoError(t, f.st.View(ctx, func(tx store.Tx) error {
		c, err := tx.Certificates().Get(ctx, "acme", "0a")
		require.NoError(t, err)
		require.NotNil(t, c.RevokedAt)
		c, err = tx.Certificates().Get(ctx, "beta", "0a")
		require.NoError(t, err)
		require.Nil(t, c.RevokedAt, "beta's certificate of the same device id stays valid")
		return nil
	}))

	// Kick: every selected device's session, nothing else.
	j, err = m.Submit(ctx, "acme", respond.MassRequest{Kind: respond.MassKick, Selector: "state=quarantined"}, "alice")
	require.NoError(t, err)
	j, err = m.Run(ctx, "acme", j.ID)
	require.NoError(t, err)
	require.Equal(t, 9, j.Changed)
	f.rec.mu.Lock()
	require.Len(t, f.rec.disc, 9)
	f.rec.mu.Unlock()

	// Another tenant's job is not found.
	_, err = m.Job(ctx, "beta", j.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = m.Run(ctx, "beta", j.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestMassResumesAfterInterruption(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	createTenants(t, f, "acme")
	f.fleet(t, "acme", 35)
	runCtx, cancel := context.WithCancel(ctx)
	pub := &hookPublisher{}
	pages := 0
	pub.after = func() {
		pages++
		if pages == 2 {
			cancel() // the process "dies" after two pages
		}
	}
	m := newMass(t, f, func(o *respond.MassOptions) { o.Batch = 10; o.Publisher = pub })
	j, err := m.Submit(ctx, "acme", respond.MassRequest{Kind: respond.MassQuarantine, Selector: "*"}, "alice")
	require.NoError(t, err)
	j, err = m.Run(runCtx, "acme", j.ID)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, respond.JobRunning, j.State)
	require.Equal(t, 20, j.Processed)
	require.Equal(t, event.DeviceID("dev-00019"), j.Cursor)

	// A new runner (a restarted process) picks it up through Serve.
	m2 := newMass(t, f, func(o *respond.MassOptions) { o.Batch = 10 })
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m2.Serve(sctx) }()
	require.Eventually(t, func() bool {
		j, err = m2.Job(ctx, "acme", j.ID)
		return err == nil && j.State == respond.JobDone
	}, 10*time.Second, 10*time.Millisecond)
	stop()
	require.NoError(t, <-done)
	require.Equal(t, 35, j.Processed)
	require.Equal(t, 35, j.Changed)
	ids := massAudited(t, f, "acme", "quarantine")
	require.Len(t, ids, 35)
	seen := map[string]bool{}
	for _, id := range ids {
		require.False(t, seen[id], "%s handled twice", id)
		seen[id] = true
	}
}

func TestMassRateAndCancel(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	createTenants(t, f, "acme")
	f.fleet(t, "acme", 20)
	m := newMass(t, f, nil)
	j, err := m.Submit(ctx, "acme", respond.MassRequest{Kind: respond.MassKick, Selector: "*", Rate: 10}, "alice")
	require.NoError(t, err)
	done := make(chan store.MassJob, 1)
	go func() { j, _ := m.Run(ctx, "acme", j.ID); done <- j }()
	// At 10 devices/s in pages of one, the job is still running when canceled.
	require.Eventually(t, func() bool {
		cur, err := m.Job(ctx, "acme", j.ID)
		return err == nil && cur.Processed >= 2
	}, 5*time.Second, 5*time.Millisecond)
	_, err = m.Cancel(ctx, "acme", j.ID, "bob")
	require.NoError(t, err)
	final := <-done
	require.Equal(t, respond.JobCanceled, final.State)
	require.Less(t, final.Processed, 20)
	_, err = m.Cancel(ctx, "acme", j.ID, "bob")
	require.ErrorIs(t, err, store.ErrConflict)
}

func TestMassBadInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	createTenants(t, f, "acme")
	m := newMass(t, f, nil)
	for _, tc := range []struct {
		r    respond.MassRequest
		want string
	}{
		{respond.MassRequest{Kind: "reboot", Selector: "*"}, `kind "reboot" must be quarantine, revoke or kick`},
		{respond.MassRequest{Kind: "kick"}, `a selector is required`},
		{respond.MassRequest{Kind: "kick", Selector: "model=a,colour=red"}, `term 2 "colour=red": unknown key "colour"`},
		{respond.MassRequest{Kind: "kick", Selector: "last_seen>soon"}, `term 1 "last_seen>soon": age must be a positive duration`},
		{respond.MassRequest{Kind: "kick", Selector: "last_seen=3h"}, `want last_seen>AGE`},
		{respond.MassRequest{Kind: "kick", Selector: "alert=Telnet"}, `alert kind must be domain.name`},
		{respond.MassRequest{Kind: "kick", Selector: "model=a,model=b"}, `key "model" given twice`},
		{respond.MassRequest{Kind: "kick", Selector: "*", Rate: -1}, `rate must be`},
	} {
		_, err := m.Submit(ctx, "acme", tc.r, "alice")
		require.ErrorIs(t, err, store.ErrInvalid, tc.want)
		require.Contains(t, err.Error(), tc.want)
	}
	require.Empty(t, f.audit(t, "acme"), "refused requests change nothing")
	_, err := m.Submit(ctx, "nobody", respond.MassRequest{Kind: "kick", Selector: "*"}, "alice")
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestMassSelectorRoundTripAndTerms(t *testing.T) {
	ctx := context.Background()
	for _, s := range []string{"*", "model=m,state=active,group=g,tag=k:v,imsi^=214,last_seen>7d,alert=net.telnet_scan",
		"firmware=1.2,last_seen<90m0s"} {
		ms, err := respond.ParseMassSelector(s)
		require.NoError(t, err, s)
		back, err := respond.ParseMassSelector(ms.String())
		require.NoError(t, err)
		require.Equal(t, ms, back, s)
	}
	_, err := respond.ParseMassSelector("state=sleepy")
	require.ErrorIs(t, err, registry.ErrSelector)

	// last seen and open alert kind select through the store.
	f := newFixture(t, nil)
	createTenants(t, f, "acme")
	f.fleet(t, "acme", 4)
	require.NoError(t, f.st.Update(ctx, func(tx store.Tx) error {
		d, err := tx.Devices().Get(ctx, "acme", "dev-00001")
		if err != nil {
			return err
		}
		seen := t0.Add(-10 * time.Minute)
		d.LastSeen = &seen
		if err := tx.Devices().Update(ctx, d); err != nil {
			return err
		}
		return tx.Alerts().Put(ctx, mkAlert("acme", "al-1", "dev-00002", alert.TelnetScan, t0))
	}))
	m := newMass(t, f, nil)
	p, err := m.Preview(ctx, "acme", "last_seen<1h", 10)
	require.NoError(t, err)
	require.Equal(t, 1, p.Count)
	require.Equal(t, event.DeviceID("dev-00001"), p.Sample[0].ID)
	p, err = m.Preview(ctx, "acme", "last_seen>1h", 10)
	require.NoError(t, err)
	require.Equal(t, 3, p.Count, "the never-seen devices")
	p, err = m.Preview(ctx, "acme", "alert=net.telnet_scan", 10)
	require.NoError(t, err)
	require.Equal(t, 1, p.Count)
	require.Equal(t, event.DeviceID("dev-00002"), p.Sample[0].ID)
}
