package export

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/seal"
	"github.com/garrisonhq/garrison/internal/store"
)

// SecretSealer seals webhook secrets at rest and opens them to sign a
// delivery (*seal.Sealer, keyed by the platform's key passphrase).
type SecretSealer interface {
	Seal(plaintext, label []byte) ([]byte, error)
	Open(blob, label []byte) ([]byte, error)
}

var _ SecretSealer = (*seal.Sealer)(nil)

// ErrNoSealer: a sealed webhook secret cannot be opened because no sealer
// is configured.
var ErrNoSealer = errors.New("export: webhook secret is sealed and no key passphrase is configured")

// secretLabel binds a sealed secret to its webhook: a blob copied into
// another webhook's row does not open.
func secretLabel(tenant event.TenantID, id string) []byte {
	return []byte("garrison webhook secret\x00" + string(tenant) + "\x00" + id)
}

// SealSecret seals a webhook's signing secret for storage.
func SealSecret(s SecretSealer, tenant event.TenantID, id string, secret []byte) ([]byte, error) {
	blob, err := s.Seal(secret, secretLabel(tenant, id))
	if err != nil {
		return nil, fmt.Errorf("export: seal webhook secret %s/%s: %w", tenant, id, err)
	}
	return blob, nil
}

// openSecret returns the webhook's signing secret: the stored blob opened
// (the caller clears it after signing). A row stored in clear by an
// earlier version, not yet re-sealed by [SealClearSecrets], is used as it
// is.
func (w *Webhooks) openSecret(hook store.Webhook) ([]byte, error) {
	if !seal.IsSealed(hook.Secret) {
		return bytes.Clone(hook.Secret), nil
	}
	if w.o.Sealer == nil {
		return nil, ErrNoSealer
	}
	pt, err := w.o.Sealer.Open(hook.Secret, secretLabel(hook.Tenant, hook.ID))
	if err != nil {
		return nil, fmt.Errorf("export: open webhook secret %s/%s: %w", hook.Tenant, hook.ID, err)
	}
	return pt, nil
}

// SealClearSecrets seals, in place, every webhook secret still stored in
// clear (rows written before secrets were sealed), each with a
// webhook.secret_sealed audit record by [Worker] in the same transaction.
// serve runs it at start, before the delivery worker; it returns how many
// it sealed. Sealed rows are left alone, so running it again does nothing.
func SealClearSecrets(ctx context.Context, st store.Store, s SecretSealer, now time.Time) (int, error) {
	type clearRow struct {
		tenant event.TenantID
		id     string
	}
	var rows []clearRow
	err := st.View(ctx, func(tx store.Tx) error {
		ts, err := tx.Tenants().List(ctx)
		if err != nil {
			return err
		}
		for _, t := range ts {
			hooks, err := tx.Webhooks().List(ctx, t.ID)
			if err != nil {
				return err
			}
			for _, h := range hooks {
				if !seal.IsSealed(h.Secret) {
					rows = append(rows, clearRow{t.ID, h.ID})
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("export: seal clear secrets: %w", err)
	}
	n := 0
	for _, r := range rows {
		err := st.Update(ctx, func(tx store.Tx) error {
			h, err := tx.Webhooks().Get(ctx, r.tenant, r.id)
			if err != nil {
				return err
			}
			if seal.IsSealed(h.Secret) {
				return nil // another node sealed it meanwhile
			}
			blob, err := SealSecret(s, h.Tenant, h.ID, h.Secret)
			clear(h.Secret)
			if err != nil {
				return err
			}
			if err := tx.Webhooks().SetSecret(ctx, h.Tenant, h.ID, blob); err != nil {
				return err
			}
			n++
			return audit.Record(ctx, tx, h.Tenant, now, Worker, "webhook.secret_sealed", "webhook:"+h.ID,
				map[string]any{"name": h.Name})
		})
		switch {
		case errors.Is(err, store.ErrNotFound): // deleted meanwhile
		case err != nil:
			return n, fmt.Errorf("export: seal secret of webhook %s/%s: %w", r.tenant, r.id, err)
		}
	}
	return n, nil
}
