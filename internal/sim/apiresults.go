package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// apiPage is the largest page the API serves.
const apiPage = 1000

// APIResults reads a tenant's alerts and actions back through the
// platform's HTTP API, as an operator would see them, paging by key until a
// short page. The token needs tenant:read (a viewer's is enough).
type APIResults struct {
	BaseURL string // https://host:port
	Token   string
	Tenant  event.TenantID
	Client  *http.Client
}

// Alerts returns every alert of the tenant, newest first.
func (r APIResults) Alerts(ctx context.Context) ([]alert.Alert, error) {
	return readAll(ctx, r, "alerts", "before", func(a alert.Alert) string { return a.ID })
}

// Actions returns every response action of the tenant, oldest first.
func (r APIResults) Actions(ctx context.Context) ([]store.Action, error) {
	return readAll(ctx, r, "actions", "after", func(a store.Action) string { return a.ID })
}

func readAll[T any](ctx context.Context, r APIResults, what, cursor string, id func(T) string) ([]T, error) {
	var out []T
	last := ""
	for {
		q := url.Values{"limit": {strconv.Itoa(apiPage)}}
		if last != "" {
			q.Set(cursor, last)
		}
		u := r.BaseURL + "/api/v1/tenants/" + url.PathEscape(string(r.Tenant)) + "/" + what + "?" + q.Encode()
		var page []T
		if err := r.get(ctx, u, &page); err != nil {
			return nil, fmt.Errorf("sim: read %s through the API: %w", what, err)
		}
		out = append(out, page...)
		if len(page) < apiPage {
			return out, nil
		}
		next := id(page[len(page)-1])
		if next == last {
			return nil, fmt.Errorf("sim: read %s through the API: paging did not advance past %q", what, last)
		}
		last = next
	}
}

func (r APIResults) get(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+r.Token)
	c := r.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
