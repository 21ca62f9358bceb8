package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

func incident(tenant event.TenantID, id string, opened time.Time) store.Incident {
	return store.Incident{Tenant: tenant, ID: id, Title: "Incident " + id, State: store.IncidentOpen, Severity: alert.High,
		Kind: alert.SIMIMEIMismatch, Device: "dev-1", OpenedBy: "automation", StartedAt: opened.Add(-time.Minute),
		DetectedAt: opened, OpenedAt: opened, UpdatedAt: opened}
}

func testIncidents(t *testing.T, s store.Store) {
	ctx := context.Background()
	inc := incident("acme", "in-1", t0)
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Incidents().Create(ctx, inc))
		later := incident("acme", "in-2", t0.Add(time.Hour))
		later.Device = "dev-2"
		require.NoError(t, tx.Incidents().Create(ctx, later))
		require.ErrorIs(t, tx.Incidents().Create(ctx, inc), store.ErrConflict)
		bad := inc
		bad.ID, bad.Title = "in-3", " "
		require.ErrorIs(t, tx.Incidents().Create(ctx, bad), store.ErrInvalid)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Incidents().Get(ctx, "acme", "in-1")
		require.NoError(t, err)
		want := inc
		want.StartedAt, want.DetectedAt, want.OpenedAt, want.UpdatedAt = us(inc.StartedAt), us(inc.DetectedAt), us(inc.OpenedAt), us(inc.UpdatedAt)
		require.Equal(t, want, got)
		_, err = tx.Incidents().Get(ctx, "acme", "in-9")
		require.ErrorIs(t, err, store.ErrNotFound)
		list, err := tx.Incidents().List(ctx, "acme", store.IncidentFilter{})
		require.NoError(t, err)
		require.Equal(t, []string{"in-2", "in-1"}, incidentIDs(list), "newest first")
		list, err = tx.Incidents().List(ctx, "acme", store.IncidentFilter{Device: "dev-1"})
		require.NoError(t, err)
		require.Equal(t, []string{"in-1"}, incidentIDs(list))
		list, err = tx.Incidents().List(ctx, "acme", store.IncidentFilter{Limit: 1})
		require.NoError(t, err)
		require.Equal(t, []string{"in-2"}, incidentIDs(list))
		return nil
	})

	// Compare-and-set update.
	contained := inc
	contained.State, contained.ContainedAt, contained.UpdatedAt = store.IncidentContained, ptr(t0.Add(time.Minute)), t0.Add(time.Minute)
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Incidents().Update(ctx, contained, store.IncidentOpen))
		require.ErrorIs(t, tx.Incidents().Update(ctx, contained, store.IncidentOpen), store.ErrConflict, "state moved on")
		gone := contained
		gone.ID = "in-9"
		require.ErrorIs(t, tx.Incidents().Update(ctx, gone, store.IncidentOpen), store.ErrNotFound)
		closed := incident("acme", "in-2", t0.Add(time.Hour))
		closed.State, closed.ClosedAt = store.IncidentClosed, ptr(t0.Add(2*time.Hour))
		require.NoError(t, tx.Incidents().Update(ctx, closed, store.IncidentOpen))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Incidents().Get(ctx, "acme", "in-1")
		require.NoError(t, err)
		require.Equal(t, store.IncidentContained, got.State)
		require.Equal(t, usp(contained.ContainedAt), got.ContainedAt)
		require.Nil(t, got.ClosedAt)
		list, err := tx.Incidents().List(ctx, "acme", store.IncidentFilter{Open: true})
		require.NoError(t, err)
		require.Equal(t, []string{"in-1"}, incidentIDs(list))
		list, err = tx.Incidents().List(ctx, "acme", store.IncidentFilter{State: store.IncidentClosed})
		require.NoError(t, err)
		require.Equal(t, []string{"in-2"}, incidentIDs(list))
		return nil
	})

	// Timeline: ordered by time then id, deduplicated by id.
	update(t, s, func(tx store.Tx) error {
		in := tx.Incidents()
		require.NoError(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "note-b", Time: t0.Add(2 * time.Minute), Kind: store.EntryNote, Actor: "op-1", Text: "looked"}))
		require.NoError(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "alert:al-1", Time: t0, Kind: store.EntryAlert, Actor: "automation", Text: "sim.imei_mismatch", Data: []byte(`{"severity":"high"}`)}))
		require.NoError(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "action:ac-1", Time: t0, Kind: store.EntryAction, Actor: "automation", Text: "quarantine done"}))
		require.ErrorIs(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "alert:al-1", Time: t0, Kind: store.EntryAlert}), store.ErrConflict)
		require.ErrorIs(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-9", ID: "x", Time: t0, Kind: store.EntryNote}), store.ErrNotFound)
		require.ErrorIs(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "y", Time: t0, Kind: store.EntryNote, Data: []byte("{")}), store.ErrInvalid)
		// The same alert may be referenced by another incident.
		require.NoError(t, in.AddEntry(ctx, store.IncidentEntry{Tenant: "acme", Incident: "in-2", ID: "alert:al-1", Time: t0, Kind: store.EntryAlert}))
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		tl, err := tx.Incidents().Timeline(ctx, "acme", "in-1")
		require.NoError(t, err)
		var ids []string
		for _, e := range tl {
			ids = append(ids, e.ID)
		}
		require.Equal(t, []string{"action:ac-1", "alert:al-1", "note-b"}, ids)
		require.Equal(t, store.IncidentEntry{Tenant: "acme", Incident: "in-1", ID: "alert:al-1", Time: us(t0), Kind: store.EntryAlert,
			Actor: "automation", Text: "sim.imei_mismatch", Data: []byte(`{"severity":"high"}`)}, tl[1])
		require.Nil(t, tl[0].Data)
		with, err := tx.Incidents().WithEntry(ctx, "acme", "alert:al-1")
		require.NoError(t, err)
		require.Equal(t, []string{"in-1", "in-2"}, with, "oldest incident first")
		with, err = tx.Incidents().WithEntry(ctx, "acme", "alert:none")
		require.NoError(t, err)
		require.Empty(t, with)
		return nil
	})
}

func incidentIDs(list []store.Incident) []string {
	out := []string{}
	for _, i := range list {
		out = append(out, i.ID)
	}
	return out
}

// testIncidentCAS races transitions of one incident: exactly one wins.
func testIncidentCAS(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error { return tx.Incidents().Create(ctx, incident("acme", "in-1", t0)) })
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Update(ctx, func(tx store.Tx) error {
				inc, err := tx.Incidents().Get(ctx, "acme", "in-1")
				if err != nil {
					return err
				}
				if inc.State != store.IncidentOpen {
					return store.ErrConflict
				}
				inc.State, inc.Title = store.IncidentContained, fmt.Sprintf("winner %d", i)
				return tx.Incidents().Update(ctx, inc, store.IncidentOpen)
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case isConflict(err):
				conflicts++
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 1, wins)
	require.Equal(t, 7, conflicts)
}

func isConflict(err error) bool { return errors.Is(err, store.ErrConflict) }

func testWebhooks(t *testing.T, s store.Store) {
	ctx := context.Background()
	wh := store.Webhook{Tenant: "acme", ID: "wh-2", Name: "soc", URL: "https://soc.example/hook", Secret: []byte("s3cret"),
		Events: []string{"alert.raised", "incident.changed"}, Channel: "default", CreatedAt: t0}
	update(t, s, func(tx store.Tx) error {
		w := tx.Webhooks()
		require.NoError(t, w.Create(ctx, wh))
		require.NoError(t, w.Create(ctx, store.Webhook{Tenant: "acme", ID: "wh-1", Name: "pager", URL: "https://p.example/", Secret: []byte("x"), Channel: "oncall", CreatedAt: t0}))
		require.ErrorIs(t, w.Create(ctx, store.Webhook{Tenant: "acme", ID: "wh-3", Name: "soc", URL: "https://x/", Secret: []byte("x")}), store.ErrConflict, "name taken")
		require.ErrorIs(t, w.Create(ctx, store.Webhook{Tenant: "acme", ID: "wh-1", Name: "other", URL: "https://x/", Secret: []byte("x")}), store.ErrConflict, "id taken")
		require.ErrorIs(t, w.Create(ctx, store.Webhook{Tenant: "acme", ID: "wh-4", Name: "nosecret", URL: "https://x/"}), store.ErrInvalid)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Webhooks().Get(ctx, "acme", "wh-2")
		require.NoError(t, err)
		want := wh
		want.CreatedAt = us(t0)
		require.Equal(t, want, got)
		list, err := tx.Webhooks().List(ctx, "acme")
		require.NoError(t, err)
		require.Len(t, list, 2)
		require.Equal(t, "pager", list[0].Name)
		require.Empty(t, list[0].Events)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		w := tx.Webhooks()
		require.NoError(t, w.SetSecret(ctx, "acme", "wh-1", []byte("sealed\x00bytes")))
		require.ErrorIs(t, w.SetSecret(ctx, "acme", "wh-9", []byte("x")), store.ErrNotFound)
		require.ErrorIs(t, w.SetSecret(ctx, "other", "wh-1", []byte("x")), store.ErrNotFound, "another tenant's id")
		require.ErrorIs(t, w.SetSecret(ctx, "acme", "wh-1", nil), store.ErrInvalid)
		got, err := w.Get(ctx, "acme", "wh-1")
		require.NoError(t, err)
		require.Equal(t, []byte("sealed\x00bytes"), got.Secret)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Deliveries().Create(ctx, delivery("acme", "d-1", "wh-2", t0)))
		require.NoError(t, tx.Webhooks().Delete(ctx, "acme", "wh-2"))
		require.ErrorIs(t, tx.Webhooks().Delete(ctx, "acme", "wh-2"), store.ErrNotFound)
		_, err := tx.Deliveries().Get(ctx, "acme", "d-1")
		require.ErrorIs(t, err, store.ErrNotFound, "deliveries go with their webhook")
		return nil
	})
}

func delivery(tenant event.TenantID, id, webhook string, next time.Time) store.Delivery {
	return store.Delivery{Tenant: tenant, ID: id, Webhook: webhook, Type: "alert.raised", Body: []byte(`{"specversion":"1.0"}`),
		State: store.DeliveryPending, NextAt: next, CreatedAt: next, UpdatedAt: next}
}

func testDeliveries(t *testing.T, s store.Store) {
	ctx := context.Background()
	update(t, s, func(tx store.Tx) error {
		for _, tn := range []event.TenantID{"acme", "zeta"} {
			require.NoError(t, tx.Webhooks().Create(ctx, store.Webhook{Tenant: tn, ID: "wh", Name: "soc", URL: "https://x/", Secret: []byte("k"), CreatedAt: t0}))
		}
		d := tx.Deliveries()
		require.NoError(t, d.Create(ctx, delivery("acme", "d-2", "wh", t0.Add(2*time.Second))))
		require.NoError(t, d.Create(ctx, delivery("zeta", "d-1", "wh", t0.Add(time.Second))))
		require.NoError(t, d.Create(ctx, delivery("acme", "d-3", "wh", t0.Add(time.Hour))))
		require.ErrorIs(t, d.Create(ctx, delivery("acme", "d-2", "wh", t0)), store.ErrConflict)
		require.ErrorIs(t, d.Create(ctx, delivery("acme", "d-9", "nope", t0)), store.ErrNotFound)
		bad := delivery("acme", "d-8", "wh", t0)
		bad.Body = nil
		require.ErrorIs(t, d.Create(ctx, bad), store.ErrInvalid)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		due, err := tx.Deliveries().Due(ctx, t0.Add(time.Minute), 10)
		require.NoError(t, err)
		require.Len(t, due, 2)
		require.Equal(t, []string{"zeta/d-1", "acme/d-2"}, []string{string(due[0].Tenant) + "/" + due[0].ID, string(due[1].Tenant) + "/" + due[1].ID})
		require.Equal(t, []byte(`{"specversion":"1.0"}`), due[0].Body)
		due, err = tx.Deliveries().Due(ctx, t0.Add(time.Minute), 1)
		require.NoError(t, err)
		require.Len(t, due, 1)
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		d, err := tx.Deliveries().Get(ctx, "acme", "d-2")
		require.NoError(t, err)
		d.State, d.Attempts, d.LastError, d.UpdatedAt = store.DeliveryDead, 5, "HTTP 500", t0.Add(time.Minute)
		require.NoError(t, tx.Deliveries().Update(ctx, d))
		d.ID = "d-none"
		require.ErrorIs(t, tx.Deliveries().Update(ctx, d), store.ErrNotFound)
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		got, err := tx.Deliveries().Get(ctx, "acme", "d-2")
		require.NoError(t, err)
		require.Equal(t, store.DeliveryDead, got.State)
		require.Equal(t, 5, got.Attempts)
		require.Equal(t, "HTTP 500", got.LastError)
		require.Equal(t, us(t0.Add(time.Minute)), got.UpdatedAt)
		dead, err := tx.Deliveries().List(ctx, "acme", store.DeliveryDead, 0)
		require.NoError(t, err)
		require.Len(t, dead, 1)
		all, err := tx.Deliveries().List(ctx, "acme", "", 0)
		require.NoError(t, err)
		require.Equal(t, []string{"d-3", "d-2"}, []string{all[0].ID, all[1].ID}, "newest first")
		due, err := tx.Deliveries().Due(ctx, t0.Add(time.Minute), 10)
		require.NoError(t, err)
		require.Len(t, due, 1, "dead deliveries are not due")
		_, err = tx.Deliveries().Get(ctx, "zeta", "d-2")
		require.ErrorIs(t, err, store.ErrNotFound, "other tenant")
		return nil
	})
}

// testIncidentIsolation: records of tenant a are invisible to tenant b.
func testIncidentIsolation(t *testing.T, s store.Store) {
	ctx := context.Background()
	const a, b event.TenantID = "tenant-a", "tenant-b"
	update(t, s, func(tx store.Tx) error {
		require.NoError(t, tx.Incidents().Create(ctx, incident(a, "in", t0)))
		require.NoError(t, tx.Incidents().AddEntry(ctx, store.IncidentEntry{Tenant: a, Incident: "in", ID: "alert:al", Time: t0, Kind: store.EntryAlert}))
		require.NoError(t, tx.Webhooks().Create(ctx, store.Webhook{Tenant: a, ID: "wh", Name: "n", URL: "https://x/", Secret: []byte("k")}))
		require.NoError(t, tx.Deliveries().Create(ctx, delivery(a, "d", "wh", t0)))
		return nil
	})
	for name, op := range map[string]func(context.Context, store.Tx) error{
		"incidents get": func(ctx context.Context, tx store.Tx) error { _, err := tx.Incidents().Get(ctx, b, "in"); return err },
		"incidents update": func(ctx context.Context, tx store.Tx) error {
			return tx.Incidents().Update(ctx, incident(b, "in", t0), store.IncidentOpen)
		},
		"incidents add entry": func(ctx context.Context, tx store.Tx) error {
			return tx.Incidents().AddEntry(ctx, store.IncidentEntry{Tenant: b, Incident: "in", ID: "n", Time: t0, Kind: store.EntryNote})
		},
		"webhooks get":    func(ctx context.Context, tx store.Tx) error { _, err := tx.Webhooks().Get(ctx, b, "wh"); return err },
		"webhooks delete": func(ctx context.Context, tx store.Tx) error { return tx.Webhooks().Delete(ctx, b, "wh") },
		"deliveries get":  func(ctx context.Context, tx store.Tx) error { _, err := tx.Deliveries().Get(ctx, b, "d"); return err },
		"deliveries update": func(ctx context.Context, tx store.Tx) error {
			return tx.Deliveries().Update(ctx, delivery(b, "d", "wh", t0))
		},
		"deliveries create": func(ctx context.Context, tx store.Tx) error {
			return tx.Deliveries().Create(ctx, delivery(b, "d2", "wh", t0))
		},
	} {
		require.ErrorIs(t, updateErr(t, s, op), store.ErrNotFound, name)
	}
	view(t, s, func(tx store.Tx) error {
		l, err := tx.Incidents().List(ctx, b, store.IncidentFilter{})
		require.NoError(t, err)
		require.Empty(t, l)
		tl, err := tx.Incidents().Timeline(ctx, b, "in")
		require.NoError(t, err)
		require.Empty(t, tl)
		with, err := tx.Incidents().WithEntry(ctx, b, "alert:al")
		require.NoError(t, err)
		require.Empty(t, with)
		wl, err := tx.Webhooks().List(ctx, b)
		require.NoError(t, err)
		require.Empty(t, wl)
		dl, err := tx.Deliveries().List(ctx, b, "", 0)
		require.NoError(t, err)
		require.Empty(t, dl)
		return nil
	})
}
