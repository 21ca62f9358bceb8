package connectivity

import (
	"context"
	"errors"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/radius"
	"github.com/garrisonhq/garrison/internal/store"
)

// StoreSIMs resolves SIMs through the registry's SIM bindings in the store
// (radius.SIMs): the device bound to the IMSI, its bound IMEI and its
// lifecycle state. Every call reads the store, so a suspension is seen by
// the next Access-Request.
type StoreSIMs struct{ Store store.Store }

var _ radius.SIMs = StoreSIMs{}

// ByIMSI implements [radius.SIMs].
func (s StoreSIMs) ByIMSI(ctx context.Context, tenant event.TenantID, imsi string) (event.DeviceID, string, string, bool, error) {
	var d store.Device
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		d, err = tx.Devices().ByIMSI(ctx, tenant, imsi)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return "", "", "", false, nil
	}
	if err != nil {
		return "", "", "", false, err
	}
	return d.ID, d.IMEI, string(d.State), true, nil
}
