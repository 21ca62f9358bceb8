package incident

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

//go:embed runbooks/*.md
var shipped embed.FS

// MaxRunbookBytes bounds a runbook.
const MaxRunbookBytes = 64 << 10

// Runbook sources.
const (
	SourceShipped = "shipped" // embedded in the binary
	SourceTenant  = "tenant"  // edited by the tenant
)

// Runbook is the Markdown procedure for one alert kind.
type Runbook struct {
	Kind      alert.Kind `json:"kind"`
	Source    string     `json:"source"` // shipped or tenant; "" when there is none
	Markdown  string     `json:"markdown"`
	UpdatedBy string     `json:"updated_by,omitempty"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// kindPattern is an alert kind: domain.name in lower case.
var kindPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,30}\.[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidKind reports whether k is shaped like an alert kind.
func ValidKind(k alert.Kind) bool { return kindPattern.MatchString(string(k)) }

// SettingKey is the tenant setting that holds its own runbook for k (a JSON
// document written by [Service.SetRunbook]).
func SettingKey(k alert.Kind) string { return "runbook:" + string(k) }

// Shipped returns the runbook shipped for kind, if any.
func Shipped(k alert.Kind) (string, bool) {
	if !ValidKind(k) {
		return "", false
	}
	b, err := shipped.ReadFile("runbooks/" + string(k) + ".md")
	if err != nil {
		return "", false
	}
	return string(b), true
}

// ShippedKinds lists the alert kinds with a shipped runbook, sorted.
func ShippedKinds() []alert.Kind {
	ents, _ := fs.ReadDir(shipped, "runbooks")
	var out []alert.Kind
	for _, e := range ents {
		out = append(out, alert.Kind(strings.TrimSuffix(e.Name(), ".md")))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

type storedRunbook struct {
	Markdown  string    `json:"markdown"`
	UpdatedBy string    `json:"updated_by"`
	UpdatedAt time.Time `json:"updated_at"`
}

// runbook returns the tenant's runbook for k, else the shipped one, else an
// empty Runbook (Source "").
func runbook(ctx context.Context, tx store.Tx, tenant event.TenantID, k alert.Kind) (Runbook, error) {
	rb := Runbook{Kind: k}
	if k == "" || !ValidKind(k) {
		return rb, nil
	}
	raw, err := tx.Settings().Get(ctx, tenant, SettingKey(k))
	switch {
	case err == nil:
		var sr storedRunbook
		if err := json.Unmarshal(raw, &sr); err != nil {
			return rb, fmt.Errorf("runbook %s: %w", k, err)
		}
		at := sr.UpdatedAt
		rb.Source, rb.Markdown, rb.UpdatedBy, rb.UpdatedAt = SourceTenant, sr.Markdown, sr.UpdatedBy, &at
		return rb, nil
	case !errors.Is(err, store.ErrNotFound):
		return rb, err
	}
	if md, ok := Shipped(k); ok {
		rb.Source, rb.Markdown = SourceShipped, md
	}
	return rb, nil
}

// Runbook returns the runbook a tenant follows for kind: its own edit, else
// the shipped one; store.ErrNotFound when there is neither.
func (s *Service) Runbook(ctx context.Context, tenant event.TenantID, k alert.Kind) (Runbook, error) {
	if !ValidKind(k) {
		return Runbook{}, fmt.Errorf("runbook: %w: %q is not an alert kind (domain.name)", ErrInvalid, k)
	}
	var rb Runbook
	err := s.o.Store.View(ctx, func(tx store.Tx) (err error) {
		rb, err = runbook(ctx, tx, tenant, k)
		return err
	})
	if err != nil {
		return Runbook{}, err
	}
	if rb.Source == "" {
		return Runbook{}, fmt.Errorf("runbook %s: %w", k, store.ErrNotFound)
	}
	return rb, nil
}

// Runbooks lists every runbook a tenant has: the shipped kinds and the
// tenant's own, each with the Markdown it follows, sorted by kind.
func (s *Service) Runbooks(ctx context.Context, tenant event.TenantID, kinds []alert.Kind) ([]Runbook, error) {
	seen := map[alert.Kind]bool{}
	var all []alert.Kind
	for _, k := range append(ShippedKinds(), kinds...) {
		if !seen[k] {
			seen[k] = true
			all = append(all, k)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	var out []Runbook
	err := s.o.Store.View(ctx, func(tx store.Tx) error {
		for _, k := range all {
			rb, err := runbook(ctx, tx, tenant, k)
			if err != nil {
				return err
			}
			if rb.Source != "" {
				out = append(out, rb)
			}
		}
		return nil
	})
	return out, err
}

// SetRunbook stores the tenant's own runbook for kind, with its audit
// record.
func (s *Service) SetRunbook(ctx context.Context, tenant event.TenantID, k alert.Kind, markdown, actor string) (Runbook, error) {
	if !ValidKind(k) {
		return Runbook{}, fmt.Errorf("runbook: %w: %q is not an alert kind (domain.name)", ErrInvalid, k)
	}
	if strings.TrimSpace(markdown) == "" || len(markdown) > MaxRunbookBytes || !utf8.ValidString(markdown) {
		return Runbook{}, fmt.Errorf("runbook: %w: markdown must be 1-%d bytes of UTF-8", ErrInvalid, MaxRunbookBytes)
	}
	now := s.o.Clock.Now().UTC()
	raw, err := json.Marshal(storedRunbook{Markdown: markdown, UpdatedBy: actor, UpdatedAt: now})
	if err != nil {
		return Runbook{}, err
	}
	err = s.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().Put(ctx, tenant, SettingKey(k), raw); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "runbook.update", "runbook:"+string(k), map[string]any{"bytes": len(markdown)})
	})
	if err != nil {
		return Runbook{}, fmt.Errorf("runbook %s: %w", k, err)
	}
	return Runbook{Kind: k, Source: SourceTenant, Markdown: markdown, UpdatedBy: actor, UpdatedAt: &now}, nil
}

// ResetRunbook deletes the tenant's own runbook for kind, so the shipped
// one applies again; store.ErrNotFound if the tenant has none.
func (s *Service) ResetRunbook(ctx context.Context, tenant event.TenantID, k alert.Kind, actor string) error {
	if !ValidKind(k) {
		return fmt.Errorf("runbook: %w: %q is not an alert kind (domain.name)", ErrInvalid, k)
	}
	now := s.o.Clock.Now().UTC()
	err := s.o.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Settings().Delete(ctx, tenant, SettingKey(k)); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "runbook.reset", "runbook:"+string(k), nil)
	})
	if err != nil {
		return fmt.Errorf("runbook %s: %w", k, err)
	}
	return nil
}
