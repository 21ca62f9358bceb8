package identity

import (
	"context"
	"fmt"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// Revocation is the outcome of revoking devices, or in a dry run the plan.
type Revocation struct {
	DryRun bool `json:"dry_run"`
	// Devices is the number of devices selected.
	Devices int `json:"devices"`
	// Certificates is the number of unrevoked certificates revoked (or that
	// would be).
	Certificates int `json:"certificates"`
	// StateChanged counts devices moved to state revoked (or that would be).
	StateChanged int `json:"state_changed"`
	// StateKept counts devices left in their state: already revoked, or a
	// state from which revoked is not a lifecycle transition (registered,
	// decommissioned). Their certificates are revoked all the same.
	StateKept int `json:"state_kept"`
	// Sample is the first devices selected, by id (dry run only).
	Sample []store.Device `json:"sample,omitempty"`
}

// RevokeSelected revokes the devices of a tenant that filter f selects (a
// registry selector's filter; label is its text, for the audit record): in
// ONE transaction, every unrevoked certificate of theirs is revoked (a
// "cert.revoke" audit record each) and every device that may make the
// transition moves to state revoked (one "device.revoke.bulk" audit record
// listing them and their former states). After the commit the CRLs of the
// issuers are regenerated on next request, OCSP answers revoked, and
// identity.cert_revoked and device.state events are published.
//
// With dryRun nothing changes: the counts are computed in one snapshot and
// Sample holds up to sample devices. A selection of no device is not an
// error (all counts zero).
func (s *Service) RevokeSelected(ctx context.Context, tenant event.TenantID, f store.DeviceFilter, label string, reason int, actor string, dryRun bool, sample int) (Revocation, error) {
	f.After, f.Limit = "", 0
	load := func(tx store.Tx) ([]store.Device, error) { return tx.Devices().List(ctx, tenant, f) }
	rv, err := s.revokeDevices(ctx, tenant, load, "selector:"+label, reason, actor, dryRun, sample)
	if err != nil {
		return Revocation{}, fmt.Errorf("identity: revoke selected %s %q: %w", tenant, label, err)
	}
	return rv, nil
}

// RevokeDeviceState is [Service.RevokeSelected] for one device: its
// certificates are revoked and it moves to state revoked if the lifecycle
// allows it, in one transaction. An unknown device (or one of another
// tenant) is store.ErrNotFound and changes nothing.
func (s *Service) RevokeDeviceState(ctx context.Context, tenant event.TenantID, device event.DeviceID, reason int, actor string, dryRun bool) (Revocation, error) {
	load := func(tx store.Tx) ([]store.Device, error) {
		d, err := tx.Devices().Get(ctx, tenant, device)
		if err != nil {
			return nil, err
		}
		return []store.Device{d}, nil
	}
	rv, err := s.revokeDevices(ctx, tenant, load, "device:"+string(device), reason, actor, dryRun, 1)
	if err != nil {
		return Revocation{}, fmt.Errorf("identity: revoke device %s/%s: %w", tenant, device, err)
	}
	return rv, nil
}

type stateChange struct {
	id   event.DeviceID
	from store.DeviceState
}

func (s *Service) revokeDevices(ctx context.Context, tenant event.TenantID, load func(store.Tx) ([]store.Device, error),
	target string, reason int, actor string, dryRun bool, sample int) (Revocation, error) {
	if err := checkIDs(tenant, ""); err != nil {
		return Revocation{}, err
	}
	if err := checkReason(reason); err != nil {
		return Revocation{}, err
	}
	var (
		rv      Revocation
		done    []store.Certificate
		changes []stateChange
	)
	now := s.clk.Now().UTC()
	run := func(tx store.Tx) error {
		rv, done, changes = Revocation{DryRun: dryRun}, nil, nil
		devs, err := load(tx)
		if err != nil {
			return err
		}
		rv.Devices = len(devs)
		if dryRun && sample > 0 {
			rv.Sample = devs[:min(sample, len(devs))]
		}
		var live []store.Certificate
		for _, d := range devs {
			certs, err := tx.Certificates().ByDevice(ctx, tenant, d.ID)
			if err != nil {
				return err
			}
			for _, c := range certs {
				if c.RevokedAt == nil && c.NotAfter.After(now) {
					live = append(live, c)
				}
			}
			if !registry.CanTransition(d.State, store.StateRevoked) {
				rv.StateKept++
				continue
			}
			rv.StateChanged++
			if dryRun {
				continue
			}
			changes = append(changes, stateChange{d.ID, d.State})
			d.State, d.UpdatedAt = store.StateRevoked, now
			if err := tx.Devices().Update(ctx, d); err != nil {
				return err
			}
		}
		rv.Certificates = len(live)
		if dryRun {
			return nil
		}
		if done, err = s.revokeIn(ctx, tx, live, reason, actor); err != nil {
			return err
		}
		if len(changes) == 0 {
			return nil
		}
		list := make([]map[string]string, len(changes))
		for i, c := range changes {
			list[i] = map[string]string{"id": string(c.id), "from": string(c.from)}
		}
		return s.audit(ctx, tx, tenant, actor, "device.revoke.bulk", target, map[string]any{
			"to": store.StateRevoked, "reason": reasonName(reason), "count": len(changes), "certificates": len(done), "devices": list,
		})
	}
	var err error
	if dryRun {
		err = s.opt.Store.View(ctx, run)
	} else {
		err = s.opt.Store.Update(ctx, run)
	}
	if err != nil {
		return Revocation{}, err
	}
	if dryRun {
		return rv, nil
	}
	s.revoked(ctx, done, reason)
	if s.opt.Publisher != nil {
		for _, c := range changes {
			ev := registry.StateEvent(tenant, c.id, c.from, store.StateRevoked, "revoked: "+reasonName(reason), now)
			if err := s.opt.Publisher.Publish(ctx, ev); err != nil {
				s.log.WarnContext(ctx, "identity: device state event not published", "tenant", tenant, "device", c.id, "err", err)
			}
		}
	}
	s.log.InfoContext(ctx, "identity: devices revoked", "tenant", tenant, "target", target,
		"devices", rv.Devices, "certificates", rv.Certificates, "state_changed", rv.StateChanged)
	return rv, nil
}
