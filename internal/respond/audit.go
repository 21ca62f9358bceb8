package respond

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// appendAudit writes one audit record in tx (the caller's Update).
func appendAudit(ctx context.Context, tx store.Tx, tenant event.TenantID, at time.Time, actor, action, target string, details map[string]any) error {
	b, err := json.Marshal(details)
	if err != nil {
		return fmt.Errorf("audit details: %w", err)
	}
	_, err = audit.Append(ctx, tx, audit.Entry{Tenant: tenant, Time: at, Actor: actor, Action: action, Target: target, Details: b})
	return err
}
