package sqlstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type campaigns struct{ *tx }

const campaignCols = `tenant, id, release_sha256, spec, state, wave, reason, created_by, created_at, updated_at, wave_at, rev`

func scanCampaign(r Row) (store.Campaign, error) {
	var c store.Campaign
	var tenant, state string
	var created, updated, waveAt int64
	err := r.Scan(&tenant, &c.ID, &c.Release, &c.Spec, &state, &c.Wave, &c.Reason, &c.CreatedBy, &created, &updated, &waveAt, &c.Rev)
	c.Tenant, c.State = event.TenantID(tenant), store.CampaignState(state)
	c.CreatedAt, c.UpdatedAt, c.WaveAt = FromMicros(created), FromMicros(updated), FromMicros(waveAt)
	return c, err
}

func (s campaigns) Create(ctx context.Context, c store.Campaign) error {
	if c.Tenant == "" || c.ID == "" || c.Release == "" {
		return fmt.Errorf("campaigns create: %w: tenant, id and release are required", store.ErrInvalid)
	}
	n, err := s.c.Exec(ctx, `INSERT INTO campaigns (`+campaignCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant, id) DO NOTHING`,
		string(c.Tenant), c.ID, c.Release, nonNil(c.Spec), string(c.State), c.Wave, c.Reason, c.CreatedBy,
		Micros(c.CreatedAt), Micros(c.UpdatedAt), Micros(c.WaveAt), c.Rev)
	if err != nil {
		return fmt.Errorf("campaigns create %s/%s: %w", c.Tenant, c.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("campaigns create %s/%s: %w", c.Tenant, c.ID, store.ErrConflict)
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func (s campaigns) Get(ctx context.Context, tenant event.TenantID, id string) (store.Campaign, error) {
	c, err := scanCampaign(s.c.QueryRow(ctx, `SELECT `+campaignCols+` FROM campaigns WHERE tenant = ? AND id = ?`, string(tenant), id))
	if err != nil {
		return store.Campaign{}, fmt.Errorf("campaigns get %s/%s: %w", tenant, id, err)
	}
	return c, nil
}

func (s campaigns) Update(ctx context.Context, c store.Campaign) error {
	n, err := s.c.Exec(ctx, `UPDATE campaigns SET spec = ?, state = ?, wave = ?, reason = ?, updated_at = ?, wave_at = ?, rev = ?
		WHERE tenant = ? AND id = ? AND rev = ?`, nonNil(c.Spec), string(c.State), c.Wave, c.Reason, Micros(c.UpdatedAt), Micros(c.WaveAt),
		c.Rev+1, string(c.Tenant), c.ID, c.Rev)
	if err != nil {
		return fmt.Errorf("campaigns update %s/%s: %w", c.Tenant, c.ID, err)
	}
	if n > 0 {
		return nil
	}
	var rev int64
	err = s.c.QueryRow(ctx, `SELECT rev FROM campaigns WHERE tenant = ? AND id = ?`, string(c.Tenant), c.ID).Scan(&rev)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("campaigns update %s/%s: %w", c.Tenant, c.ID, store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("campaigns update %s/%s: %w", c.Tenant, c.ID, err)
	}
	return fmt.Errorf("campaigns update %s/%s: %w: revision %d, not %d", c.Tenant, c.ID, store.ErrConflict, rev, c.Rev)
}

func (s campaigns) List(ctx context.Context, tenant event.TenantID) ([]store.Campaign, error) {
	out, err := collect(ctx, s.c, scanCampaign, `SELECT `+campaignCols+` FROM campaigns WHERE tenant = ? ORDER BY created_at, id`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("campaigns list %s: %w", tenant, err)
	}
	return out, nil
}

func (s campaigns) Open(ctx context.Context) ([]store.Campaign, error) {
	out, err := collect(ctx, s.c, scanCampaign, `SELECT `+campaignCols+` FROM campaigns WHERE state IN (?, ?) ORDER BY tenant, created_at, id`,
		string(store.CampaignRunning), string(store.CampaignPaused))
	if err != nil {
		return nil, fmt.Errorf("campaigns open: %w", err)
	}
	return out, nil
}

const targetCols = `tenant, campaign, device, wave, state, reason, version, digest, updated_at`

func scanTarget(r Row) (store.CampaignTarget, error) {
	var t store.CampaignTarget
	var tenant, device string
	var updated int64
	err := r.Scan(&tenant, &t.Campaign, &device, &t.Wave, &t.State, &t.Reason, &t.Version, &t.Digest, &updated)
	t.Tenant, t.Device, t.UpdatedAt = event.TenantID(tenant), event.DeviceID(device), FromMicros(updated)
	return t, err
}

func (s campaigns) PutTargets(ctx context.Context, ts []store.CampaignTarget) error {
	for _, t := range ts {
		if t.Tenant == "" || t.Campaign == "" || t.Device == "" {
			return fmt.Errorf("campaigns put targets: %w: tenant, campaign and device are required", store.ErrInvalid)
		}
		_, err := s.c.Exec(ctx, `INSERT INTO campaign_targets (`+targetCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant, campaign, device) DO UPDATE SET wave = excluded.wave, state = excluded.state,
			reason = excluded.reason, version = excluded.version, digest = excluded.digest, updated_at = excluded.updated_at`,
			string(t.Tenant), t.Campaign, string(t.Device), t.Wave, t.State, t.Reason, t.Version, t.Digest, Micros(t.UpdatedAt))
		if err != nil {
			return fmt.Errorf("campaigns put target %s/%s/%s: %w", t.Tenant, t.Campaign, t.Device, err)
		}
	}
	return nil
}

func (s campaigns) Targets(ctx context.Context, tenant event.TenantID, campaign string, after event.DeviceID, n int) ([]store.CampaignTarget, error) {
	q := limit(`SELECT `+targetCols+` FROM campaign_targets WHERE tenant = ? AND campaign = ? AND device > ? ORDER BY device`, n)
	out, err := collect(ctx, s.c, scanTarget, q, string(tenant), campaign, string(after))
	if err != nil {
		return nil, fmt.Errorf("campaigns targets %s/%s: %w", tenant, campaign, err)
	}
	return out, nil
}

func (s campaigns) Target(ctx context.Context, tenant event.TenantID, campaign string, device event.DeviceID) (store.CampaignTarget, error) {
	t, err := scanTarget(s.c.QueryRow(ctx, `SELECT `+targetCols+` FROM campaign_targets WHERE tenant = ? AND campaign = ? AND device = ?`,
		string(tenant), campaign, string(device)))
	if err != nil {
		return store.CampaignTarget{}, fmt.Errorf("campaigns target %s/%s/%s: %w", tenant, campaign, device, err)
	}
	return t, nil
}

func (s campaigns) CountTargets(ctx context.Context, tenant event.TenantID, campaign string) ([]store.TargetCount, error) {
	out, err := collect(ctx, s.c, func(r Row) (store.TargetCount, error) {
		var c store.TargetCount
		err := r.Scan(&c.Wave, &c.State, &c.N)
		return c, err
	}, `SELECT wave, state, COUNT(*) FROM campaign_targets WHERE tenant = ? AND campaign = ? GROUP BY wave, state ORDER BY wave, state`,
		string(tenant), campaign)
	if err != nil {
		return nil, fmt.Errorf("campaigns count targets %s/%s: %w", tenant, campaign, err)
	}
	return out, nil
}
