package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type groups struct{ *tx }

// Groups implements [store.Tx].
func (t *tx) Groups() store.Groups { return groups{t} }

var _ store.Groups = groups{}

const groupCols = `tenant, name, description, kind, selector_json, created_at, updated_at`

// selectorJSON is the stored form of a dynamic group's selector.
type selectorJSON struct {
	Model      string `json:"model,omitempty"`
	State      string `json:"state,omitempty"`
	Firmware   string `json:"firmware,omitempty"`
	Tag        string `json:"tag,omitempty"`
	Group      string `json:"group,omitempty"`
	IMSIPrefix string `json:"imsi_prefix,omitempty"`
}

func encodeSelector(f store.DeviceFilter) (string, error) {
	b, err := json.Marshal(selectorJSON{Model: f.Model, State: string(f.State), Firmware: f.Firmware, Tag: f.Tag,
		Group: f.Group, IMSIPrefix: f.IMSIPrefix})
	return string(b), err
}

func scanGroup(r Row) (store.Group, error) {
	var g store.Group
	var tenant, kind, sel string
	var created, updated int64
	if err := r.Scan(&tenant, &g.Name, &g.Description, &kind, &sel, &created, &updated); err != nil {
		return store.Group{}, err
	}
	var sj selectorJSON
	if err := json.Unmarshal([]byte(sel), &sj); err != nil {
		return store.Group{}, fmt.Errorf("group %s selector: %w", g.Name, err)
	}
	g.Tenant, g.Kind, g.CreatedAt, g.UpdatedAt = event.TenantID(tenant), store.GroupKind(kind), FromMicros(created), FromMicros(updated)
	g.Selector = store.DeviceFilter{Model: sj.Model, State: store.DeviceState(sj.State), Firmware: sj.Firmware, Tag: sj.Tag,
		Group: sj.Group, IMSIPrefix: sj.IMSIPrefix}
	return g, nil
}

// check applies the rules Create and Update share, including the cycle
// check (read in this transaction).
func (s groups) check(ctx context.Context, g store.Group) error {
	if g.Tenant == "" || g.Name == "" {
		return fmt.Errorf("%w: tenant and name are required", store.ErrInvalid)
	}
	if g.Selector.After != "" || g.Selector.Limit != 0 {
		return fmt.Errorf("%w: a group selector has no after or limit", store.ErrInvalid)
	}
	switch g.Kind {
	case store.GroupStatic:
		if g.Selector != (store.DeviceFilter{}) {
			return fmt.Errorf("%w: a static group has no selector", store.ErrInvalid)
		}
		return nil
	case store.GroupDynamic:
		if g.Selector == (store.DeviceFilter{}) {
			return fmt.Errorf("%w: a dynamic group needs a selector", store.ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: unknown group kind %q (static or dynamic)", store.ErrInvalid, g.Kind)
	}
	// Follow the chain of group terms: each selector has at most one.
	path := []string{g.Name}
	next := g.Selector.Group
	for next != "" {
		path = append(path, next)
		if next == g.Name {
			return fmt.Errorf("%w: group cycle %s (a dynamic group may not select itself through group= terms)", store.ErrInvalid, strings.Join(path, " -> "))
		}
		if slices.Contains(path[:len(path)-1], next) {
			return nil // a cycle elsewhere that g is not part of; evaluation stops at it
		}
		h, err := s.Get(ctx, g.Tenant, next)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Kind != store.GroupDynamic {
			return nil
		}
		next = h.Selector.Group
	}
	return nil
}

func (s groups) Create(ctx context.Context, g store.Group) error {
	if err := s.check(ctx, g); err != nil {
		return fmt.Errorf("groups create %s/%s: %w", g.Tenant, g.Name, err)
	}
	sel, err := encodeSelector(g.Selector)
	if err != nil {
		return fmt.Errorf("groups create %s/%s: %w", g.Tenant, g.Name, err)
	}
	err = conflict(s.c.Exec(ctx, `INSERT INTO device_groups (`+groupCols+`) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		string(g.Tenant), g.Name, g.Description, string(g.Kind), sel, Micros(g.CreatedAt), Micros(g.UpdatedAt)))
	if err != nil {
		return fmt.Errorf("groups create %s/%s: %w", g.Tenant, g.Name, err)
	}
	return nil
}

func (s groups) Get(ctx context.Context, tenant event.TenantID, name string) (store.Group, error) {
	g, err := scanGroup(s.c.QueryRow(ctx, `SELECT `+groupCols+` FROM device_groups WHERE tenant = ? AND name = ?`, string(tenant), name))
	if err != nil {
		return store.Group{}, fmt.Errorf("groups get %s/%s: %w", tenant, name, err)
	}
	return g, nil
}

func (s groups) List(ctx context.Context, tenant event.TenantID) ([]store.Group, error) {
	out, err := collect(ctx, s.c, scanGroup, `SELECT `+groupCols+` FROM device_groups WHERE tenant = ? ORDER BY name`, string(tenant))
	if err != nil {
		return nil, fmt.Errorf("groups list %s: %w", tenant, err)
	}
	return out, nil
}

func (s groups) Update(ctx context.Context, g store.Group) error {
	cur, err := s.Get(ctx, g.Tenant, g.Name)
	if err != nil {
		return fmt.Errorf("groups update: %w", err)
	}
	if cur.Kind != g.Kind {
		return fmt.Errorf("groups update %s/%s: %w: the group is %s; its kind cannot change", g.Tenant, g.Name, store.ErrInvalid, cur.Kind)
	}
	if err := s.check(ctx, g); err != nil {
		return fmt.Errorf("groups update %s/%s: %w", g.Tenant, g.Name, err)
	}
	sel, err := encodeSelector(g.Selector)
	if err != nil {
		return fmt.Errorf("groups update %s/%s: %w", g.Tenant, g.Name, err)
	}
	err = notFound(s.c.Exec(ctx, `UPDATE device_groups SET description = ?, selector_json = ?, updated_at = ? WHERE tenant = ? AND name = ?`,
		g.Description, sel, Micros(g.UpdatedAt), string(g.Tenant), g.Name))
	if err != nil {
		return fmt.Errorf("groups update %s/%s: %w", g.Tenant, g.Name, err)
	}
	return nil
}

func (s groups) Delete(ctx context.Context, tenant event.TenantID, name string) ([]event.DeviceID, error) {
	if err := notFound(s.c.Exec(ctx, `DELETE FROM device_groups WHERE tenant = ? AND name = ?`, string(tenant), name)); err != nil {
		return nil, fmt.Errorf("groups delete %s/%s: %w", tenant, name, err)
	}
	type member struct {
		id     string
		groups []string
	}
	scan := func(r Row) (member, error) {
		var m member
		var gs string
		if err := r.Scan(&m.id, &gs); err != nil {
			return m, err
		}
		return m, json.Unmarshal([]byte(gs), &m.groups)
	}
	ms, err := collect(ctx, s.c, scan, `SELECT d.id, d.groups_json FROM devices d WHERE d.tenant = ? AND `+s.d.Group+` ORDER BY d.id`,
		string(tenant), name)
	if err != nil {
		return nil, fmt.Errorf("groups delete %s/%s: members: %w", tenant, name, err)
	}
	ids := make([]event.DeviceID, 0, len(ms))
	for _, m := range ms {
		gs, err := encodeJSON(slices.DeleteFunc(m.groups, func(g string) bool { return g == name }), "[]")
		if err != nil {
			return nil, fmt.Errorf("groups delete %s/%s: %w", tenant, name, err)
		}
		if _, err := s.c.Exec(ctx, `UPDATE devices SET groups_json = ? WHERE tenant = ? AND id = ?`, gs, string(tenant), m.id); err != nil {
			return nil, fmt.Errorf("groups delete %s/%s: device %s: %w", tenant, name, m.id, err)
		}
		ids = append(ids, event.DeviceID(m.id))
	}
	return ids, nil
}

// groupCond returns the condition "device d is a member of the group":
// statically (its groups list the name) or, for a dynamic group of the
// tenant, by the group's selector. seen holds the groups being resolved
// further up; a name already in it counts its static members only.
func (t *tx) groupCond(ctx context.Context, tenant event.TenantID, name string, seen []string) (string, []any, error) {
	static, args := t.d.Group, []any{name}
	if slices.Contains(seen, name) {
		return static, args, nil
	}
	g, err := groups{t}.Get(ctx, tenant, name)
	switch {
	case isNotFound(err):
		return static, args, nil
	case err != nil:
		return "", nil, err
	case g.Kind != store.GroupDynamic:
		return static, args, nil
	}
	w, err := t.deviceConds(ctx, tenant, g.Selector, append(slices.Clip(seen), name))
	if err != nil {
		return "", nil, err
	}
	if len(w.conds) == 0 {
		return "1 = 1", nil, nil
	}
	// The selector's terms first: a row they match skips the JSON scan of
	// its groups.
	return "((" + w.String() + ") OR " + static + ")", append(w.args, args...), nil
}
