package export_test

import (
	"bytes"
	"context"
	"database/sql"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/seal"
	"github.com/garrisonhq/garrison/internal/store"
)

// rawSecret reads a webhook's secret column straight from the SQLite file,
// past the store.
func rawSecret(t *testing.T, path, id string) []byte {
	t.Helper()
	raw, err := sql.Open("sqlite", "file:"+path+"?_query_only=1")
	require.NoError(t, err)
	defer raw.Close()
	var b []byte
	require.NoError(t, raw.QueryRow(`SELECT secret FROM webhooks WHERE tenant = ? AND id = ?`, string(tenant), id).Scan(&b))
	return b
}

// TestWebhookSecretSealedAtRest: a sealed secret is not in the row, yet the
// delivery's signature verifies with it; a row sealed for another webhook
// does not open; a secret stored in clear by an earlier version is sealed
// by SealClearSecrets (audited) and still signs.
func TestWebhookSecretSealedAtRest(t *testing.T) {
	ctx := context.Background()
	st, path := newStore(t)
	clk := clock.NewManual(t0)
	sl, err := seal.New([]byte("webhook test passphrase"), seal.WithScryptCost(10, 8, 1))
	require.NoError(t, err)
	const secret = "whsec_4f1c9a0e2b7d4c5a8e6f0d1b3c2a9e7f"
	rc := &receiver{t: t, secret: []byte(secret), clk: clk}
	srv := httptest.NewServer(rc)
	defer srv.Close()

	blob, err := export.SealSecret(sl, tenant, "wh-sealed", []byte(secret))
	require.NoError(t, err)
	addHook(t, st, tenant, "wh-sealed", srv.URL, string(blob), nil, "")
	row := rawSecret(t, path, "wh-sealed")
	require.True(t, seal.IsSealed(row))
	require.False(t, bytes.Contains(row, []byte(secret)), "the secret is not in the row")
	require.False(t, bytes.Contains(row, []byte("4f1c9a0e2b7d")), "not even part of it")

	newW := func(s export.SecretSealer) *export.Webhooks {
		w, err := export.NewWebhooks(export.WebhookOptions{Store: st, Clock: clk, Client: srv.Client(), MaxAttempts: 3,
			Backoff: time.Second, Timeout: 5 * time.Second, Sealer: s})
		require.NoError(t, err)
		return w
	}
	w := newW(sl)
	require.NoError(t, w.OnAlert(ctx, testAlert("al-1"), "ev-1"))
	n, err := w.DeliverDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, bad, _ := rc.snapshot()
	require.Equal(t, 0, bad, "the signature verifies with the secret the operator holds")
	require.Len(t, got, 1)

	// Without the passphrase a sealed secret signs nothing: the delivery
	// fails (and is retried), nothing is sent unsigned.
	require.NoError(t, newW(nil).OnAlert(ctx, testAlert("al-2"), "ev-2"))
	_, err = newW(nil).DeliverDue(ctx)
	require.NoError(t, err)
	var ds []store.Delivery
	require.NoError(t, st.View(ctx, func(tx store.Tx) (err error) {
		ds, err = tx.Deliveries().List(ctx, tenant, store.DeliveryPending, 10)
		return err
	}))
	require.Len(t, ds, 1)
	require.Contains(t, ds[0].LastError, "no key passphrase")
	require.NotContains(t, ds[0].LastError, secret)

	// A blob copied into another webhook's row does not open there.
	addHook(t, st, tenant, "wh-copy", srv.URL, string(blob), nil, "")
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Webhooks().Delete(ctx, tenant, "wh-sealed") }))
	clk.Advance(time.Minute)
	require.NoError(t, w.OnAlert(ctx, testAlert("al-3"), "ev-3"))
	_, err = w.DeliverDue(ctx)
	require.NoError(t, err)
	got, _, _ = rc.snapshot()
	require.Len(t, got, 1, "the copied blob signed nothing")
	require.NoError(t, st.View(ctx, func(tx store.Tx) (err error) {
		ds, err = tx.Deliveries().List(ctx, tenant, store.DeliveryPending, 10)
		return err
	}))
	require.Len(t, ds, 1)
	require.Equal(t, "wh-copy", ds[0].Webhook)
	require.Contains(t, ds[0].LastError, "wrong key passphrase")
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Webhooks().Delete(ctx, tenant, "wh-copy") }))

	// An earlier version's clear row: it signs as it is, and SealClearSecrets
	// seals it in place with an audit record; running it again does nothing.
	const old = "an-old-clear-secret-0123"
	rcOld := &receiver{t: t, secret: []byte(old), clk: clk}
	srvOld := httptest.NewServer(rcOld)
	defer srvOld.Close()
	addHook(t, st, tenant, "wh-old", srvOld.URL, old, nil, "")
	require.Equal(t, []byte(old), rawSecret(t, path, "wh-old"))
	sealed, err := export.SealClearSecrets(ctx, st, sl, clk.Now())
	require.NoError(t, err)
	require.Equal(t, 1, sealed)
	row = rawSecret(t, path, "wh-old")
	require.True(t, seal.IsSealed(row))
	require.False(t, bytes.Contains(row, []byte(old)))
	sealed, err = export.SealClearSecrets(ctx, st, sl, clk.Now())
	require.NoError(t, err)
	require.Zero(t, sealed, "already sealed")
	var audited bool
	require.NoError(t, st.View(ctx, func(tx store.Tx) error {
		recs, err := tx.Audit().Range(ctx, tenant, 0, 1000)
		for _, r := range recs {
			audited = audited || (r.Action == "webhook.secret_sealed" && r.Target == "webhook:wh-old" && !bytes.Contains(r.Details, []byte(old)))
		}
		return err
	}))
	require.True(t, audited)
	wOld, err := export.NewWebhooks(export.WebhookOptions{Store: st, Clock: clk, Client: srvOld.Client(), Sealer: sl, Timeout: 5 * time.Second})
	require.NoError(t, err)
	require.NoError(t, wOld.OnAlert(ctx, testAlert("al-4"), "ev-4"))
	_, err = wOld.DeliverDue(ctx)
	require.NoError(t, err)
	gotOld, badOld, _ := rcOld.snapshot()
	require.Zero(t, badOld)
	require.Len(t, gotOld, 1, "the re-sealed secret still signs")
}
