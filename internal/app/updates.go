package app

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// updatesBackend carries out the playbooks' firmware steps with the
// campaign engine and the signed catalog: freeze_updates pauses the running
// campaigns that still have the device to update, schedule_update starts
// an emergency campaign for the device alone. Every change goes through the
// engine, so it is audited and seen by every node as an operator's would be.
type updatesBackend struct{ a *App }

var _ respond.Updates = updatesBackend{}

func (b updatesBackend) engine() (*ota.Engine, *ota.Catalog, error) {
	if b.a.otaEngine == nil || b.a.otaCatalog == nil {
		return nil, nil, errors.New("the campaign engine is not running")
	}
	return b.a.otaEngine, b.a.otaCatalog, nil
}

func (b updatesBackend) FreezeUpdates(ctx context.Context, t respond.Target) (respond.Undo, error) {
	eng, _, err := b.engine()
	if err != nil {
		return respond.Undo{}, err
	}
	var running []string
	err = b.a.store.View(ctx, func(tx store.Tx) error {
		cs, err := tx.Campaigns().List(ctx, t.Tenant)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if c.State != store.CampaignRunning {
				continue
			}
			tg, err := tx.Campaigns().Target(ctx, t.Tenant, c.ID, t.Device)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if !ota.Final(tg.State) {
				running = append(running, c.ID)
			}
		}
		return nil
	})
	if err != nil {
		return respond.Undo{}, fmt.Errorf("freeze updates of %s: %w", t.Device, err)
	}
	u := respond.Undo{Kind: respond.UndoResumeCampaigns, Note: "no running campaign targets the device"}
	for _, id := range running {
		_, err := eng.Pause(ctx, t.Tenant, t.Actor, id, "frozen by response: "+t.Reason)
		if errors.Is(err, ota.ErrCampaignState) {
			continue // it ended or was paused meanwhile: nothing of ours to resume
		}
		if err != nil {
			return u, fmt.Errorf("freeze updates of %s: campaign %s: %w", t.Device, id, err)
		}
		u.Campaigns = append(u.Campaigns, id)
	}
	if len(u.Campaigns) > 0 {
		u.Note = "resume the paused campaigns"
	}
	return u, nil
}

func (b updatesBackend) ThawUpdates(ctx context.Context, t respond.Target, u respond.Undo) error {
	eng, _, err := b.engine()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range u.Campaigns {
		_, err := eng.Resume(ctx, t.Tenant, t.Actor, id)
		if err != nil && !errors.Is(err, ota.ErrCampaignState) { // resumed or cancelled meanwhile: leave it
			errs = append(errs, fmt.Errorf("campaign %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func (b updatesBackend) ScheduleUpdate(ctx context.Context, t respond.Target, release string) (respond.Undo, error) {
	eng, cat, err := b.engine()
	if err != nil {
		return respond.Undo{}, err
	}
	var dev store.Device
	if err := b.a.store.View(ctx, func(tx store.Tx) error {
		dev, err = tx.Devices().Get(ctx, t.Tenant, t.Device)
		return err
	}); err != nil {
		return respond.Undo{}, fmt.Errorf("schedule update of %s: %w", t.Device, err)
	}
	digest, version := release, ""
	if release == respond.LatestRelease {
		rels, err := cat.Releases(ctx, t.Tenant)
		if err != nil {
			return respond.Undo{}, fmt.Errorf("schedule update of %s: %w", t.Device, err)
		}
		now := b.a.clk.Now()
		digest = ""
		for _, r := range rels {
			if !slices.Contains(r.Models, dev.Model) || !r.Expires.After(now) {
				continue
			}
			if c, err := firmware.CompareVersions(r.Version, version); digest == "" || (err == nil && c > 0) {
				digest, version = r.Digest, r.Version
			}
		}
		if digest == "" {
			return respond.Undo{}, fmt.Errorf("schedule update of %s: %w: no signed release of the catalog targets model %q", t.Device, store.ErrNotFound, dev.Model)
		}
	}
	if version == "" {
		ent, err := cat.Entry(ctx, t.Tenant, digest)
		if err != nil {
			return respond.Undo{}, fmt.Errorf("schedule update of %s: %w", t.Device, err)
		}
		version = ent.Version
	}
	// The agent installs only a strictly newer version (anti-rollback): a
	// campaign that cannot move the device forward would only be refused.
	if c, err := firmware.CompareVersions(version, dev.Firmware); dev.Firmware != "" && err == nil && c <= 0 {
		return respond.Undo{}, fmt.Errorf("schedule update of %s: %w: it runs %s, release %s is not newer", t.Device, store.ErrConflict, dev.Firmware, version)
	}
	c, err := eng.Create(ctx, t.Tenant, t.Actor, ota.Spec{
		Name:      "response: " + t.Reason,
		Release:   digest,
		Selector:  ota.Selector{Model: dev.Model, Devices: []event.DeviceID{t.Device}},
		Waves:     []float64{100},
		Emergency: true,
	})
	if err != nil {
		return respond.Undo{}, fmt.Errorf("schedule update of %s: %w", t.Device, err)
	}
	return respond.Undo{Kind: respond.UndoCancelCampaign, Campaigns: []string{c.ID}, Note: "cancel the campaign unless it has finished"}, nil
}

func (b updatesBackend) CancelUpdate(ctx context.Context, t respond.Target, u respond.Undo) error {
	eng, _, err := b.engine()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range u.Campaigns {
		_, err := eng.Cancel(ctx, t.Tenant, t.Actor, id, "cancelled by response: "+t.Reason)
		if err != nil && !errors.Is(err, ota.ErrCampaignState) { // finished already: the update stays
			errs = append(errs, fmt.Errorf("campaign %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
