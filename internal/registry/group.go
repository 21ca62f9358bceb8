package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Groups
//
// A group is a named set of a tenant's devices. A static group's members
// are the devices whose Groups list its name (changed with
// [Registry.AddToGroup] and [Registry.RemoveFromGroup]); a dynamic group's
// are those plus every device its selector matches now. The selector term
// group=G resolves G the same way wherever devices are selected (device
// lists, mass actions, revocations, campaigns): the store evaluates it in
// the query, so membership follows device changes at once.

// Limits on group input.
const (
	MaxGroupDescription = 500  // bytes
	MaxGroupChange      = 1000 // device ids in one add or remove
)

// Group is a group as the API shows it.
type Group struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Kind        store.GroupKind `json:"kind"`
	// Selector is a dynamic group's rule in the text form of [Selector].
	Selector  string    `json:"selector,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// GroupInfo is a group with its current number of members.
type GroupInfo struct {
	Group   Group `json:"group"`
	Members int   `json:"members"`
}

// GroupSpec creates a group. Kind is static (the default) or dynamic; a
// dynamic group needs a Selector (see [ParseSelector]), a static one has
// none.
type GroupSpec struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Kind        store.GroupKind `json:"kind,omitempty"`
	Selector    string          `json:"selector,omitempty"`
}

// GroupUpdate changes a group: the fields given (non-nil) are replaced.
// Only a dynamic group has a selector to change.
type GroupUpdate struct {
	Description *string `json:"description,omitempty"`
	Selector    *string `json:"selector,omitempty"`
}

// Membership is the outcome of an add or remove: the devices whose groups
// changed and those already as asked.
type Membership struct {
	Group     string           `json:"group"`
	Changed   []event.DeviceID `json:"changed"`
	Unchanged []event.DeviceID `json:"unchanged"`
}

func groupView(g store.Group) Group {
	v := Group{Name: g.Name, Description: g.Description, Kind: g.Kind, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt}
	if g.Kind == store.GroupDynamic {
		v.Selector = SelectorOf(g.Selector).String()
	}
	return v
}

// SelectorOf is the inverse of [Selector.Filter] (After and Limit are
// dropped).
func SelectorOf(f store.DeviceFilter) Selector {
	s := Selector{Model: f.Model, Firmware: f.Firmware, State: f.State, Group: f.Group, IMSIPrefix: f.IMSIPrefix}
	if f.Tag != "" {
		s.TagKey, s.TagValue, _ = strings.Cut(f.Tag, "=")
	}
	return s
}

// groupSelector parses a dynamic group's selector text.
func groupSelector(text string) (store.DeviceFilter, error) {
	if strings.TrimSpace(text) == "" || strings.TrimSpace(text) == "*" {
		return store.DeviceFilter{}, fmt.Errorf("%w: a dynamic group needs a selector (e.g. model=acme-meter-2,tag=site:north)", store.ErrInvalid)
	}
	sel, err := ParseSelector(text)
	if err != nil {
		return store.DeviceFilter{}, err
	}
	return sel.Filter(), nil
}

func validGroupName(name string) error {
	if !selValue(name) {
		return fmt.Errorf("%w: group name %q must be 1-64 characters of [A-Za-z0-9._-]", store.ErrInvalid, name)
	}
	return nil
}

// Groups returns the tenant's groups ordered by name.
func (r *Registry) Groups(ctx context.Context, tenant event.TenantID) ([]Group, error) {
	var gs []store.Group
	err := r.st.View(ctx, func(tx store.Tx) (err error) {
		gs, err = tx.Groups().List(ctx, tenant)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry groups %s: %w", tenant, err)
	}
	out := make([]Group, len(gs))
	for i, g := range gs {
		out[i] = groupView(g)
	}
	return out, nil
}

// Group returns the group and its member count, read in one snapshot, or
// an error matching store.ErrNotFound.
func (r *Registry) Group(ctx context.Context, tenant event.TenantID, name string) (GroupInfo, error) {
	var info GroupInfo
	err := r.st.View(ctx, func(tx store.Tx) error {
		g, err := tx.Groups().Get(ctx, tenant, name)
		if err != nil {
			return err
		}
		info.Group = groupView(g)
		info.Members, err = tx.Devices().Count(ctx, tenant, store.DeviceFilter{Group: name})
		return err
	})
	if err != nil {
		return GroupInfo{}, fmt.Errorf("registry group %s/%s: %w", tenant, name, err)
	}
	return info, nil
}

// CreateGroup adds a group and its "group.create" audit record in one
// transaction. Bad input (name, kind, description, selector: a
// *[SelectorError] naming the term, or a cycle of group= terms) matches
// store.ErrInvalid; an existing name store.ErrConflict. Nothing is stored
// on error.
func (r *Registry) CreateGroup(ctx context.Context, tenant event.TenantID, spec GroupSpec, actor string) (Group, error) {
	if spec.Kind == "" {
		spec.Kind = store.GroupStatic
	}
	g := store.Group{Tenant: tenant, Name: spec.Name, Description: spec.Description, Kind: spec.Kind}
	if err := validGroupName(spec.Name); err != nil {
		return Group{}, fmt.Errorf("registry create group: %w", err)
	}
	if len(spec.Description) > MaxGroupDescription {
		return Group{}, fmt.Errorf("registry create group: %w: description longer than %d bytes", store.ErrInvalid, MaxGroupDescription)
	}
	switch spec.Kind {
	case store.GroupStatic:
		if spec.Selector != "" {
			return Group{}, fmt.Errorf("registry create group: %w: a static group has no selector (its members are added by id); use kind dynamic", store.ErrInvalid)
		}
	case store.GroupDynamic:
		f, err := groupSelector(spec.Selector)
		if err != nil {
			return Group{}, fmt.Errorf("registry create group: %w", err)
		}
		g.Selector = f
	default:
		return Group{}, fmt.Errorf("registry create group: %w: unknown kind %q (static or dynamic)", store.ErrInvalid, spec.Kind)
	}
	now := r.clk.Now().UTC()
	g.CreatedAt, g.UpdatedAt = now, now
	err := r.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.Groups().Create(ctx, g); err != nil {
			return err
		}
		return audit.Record(ctx, tx, tenant, now, actor, "group.create", "group:"+g.Name, map[string]any{
			"kind": g.Kind, "description": g.Description, "selector": groupView(g).Selector,
		})
	})
	if err != nil {
		return Group{}, fmt.Errorf("registry create group %s/%s: %w", tenant, spec.Name, err)
	}
	return groupView(g), nil
}

// UpdateGroup changes a group's description and (dynamic groups only) its
// selector, with a "group.update" audit record holding the old and new
// values, in one transaction. Errors as for [Registry.CreateGroup], plus
// store.ErrNotFound.
func (r *Registry) UpdateGroup(ctx context.Context, tenant event.TenantID, name string, up GroupUpdate, actor string) (Group, error) {
	if up.Description != nil && len(*up.Description) > MaxGroupDescription {
		return Group{}, fmt.Errorf("registry update group: %w: description longer than %d bytes", store.ErrInvalid, MaxGroupDescription)
	}
	var sel *store.DeviceFilter
	if up.Selector != nil {
		f, err := groupSelector(*up.Selector)
		if err != nil {
			return Group{}, fmt.Errorf("registry update group: %w", err)
		}
		sel = &f
	}
	now := r.clk.Now().UTC()
	var g store.Group
	err := r.st.Update(ctx, func(tx store.Tx) error {
		old, err := tx.Groups().Get(ctx, tenant, name)
		if err != nil {
			return err
		}
		g = old
		if up.Description != nil {
			g.Description = *up.Description
		}
		if sel != nil {
			if g.Kind != store.GroupDynamic {
				return fmt.Errorf("%w: group %s is static: it has no selector (add and remove its members by id)", store.ErrInvalid, name)
			}
			g.Selector = *sel
		}
		g.UpdatedAt = now
		if err := tx.Groups().Update(ctx, g); err != nil {
			return err
		}
		ov, nv := groupView(old), groupView(g)
		return audit.Record(ctx, tx, tenant, now, actor, "group.update", "group:"+name, map[string]any{
			"old": map[string]string{"description": ov.Description, "selector": ov.Selector},
			"new": map[string]string{"description": nv.Description, "selector": nv.Selector},
		})
	})
	if err != nil {
		return Group{}, fmt.Errorf("registry update group %s/%s: %w", tenant, name, err)
	}
	return groupView(g), nil
}

// DeleteGroup removes a group and its name from every device's groups,
// with one "group.delete" audit record listing those devices, in one
// transaction. It returns the devices whose groups changed.
func (r *Registry) DeleteGroup(ctx context.Context, tenant event.TenantID, name, actor string) ([]event.DeviceID, error) {
	now := r.clk.Now().UTC()
	var removed []event.DeviceID
	err := r.st.Update(ctx, func(tx store.Tx) error {
		g, err := tx.Groups().Get(ctx, tenant, name)
		if err != nil {
			return err
		}
		if removed, err = tx.Groups().Delete(ctx, tenant, name); err != nil {
			return err
		}
		v := groupView(g)
		return audit.Record(ctx, tx, tenant, now, actor, "group.delete", "group:"+name, map[string]any{
			"kind": v.Kind, "description": v.Description, "selector": v.Selector, "removed_from": removed,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry delete group %s/%s: %w", tenant, name, err)
	}
	return removed, nil
}

// GroupMembers returns the group's members ordered by id, after the id
// after, at most limit (0: all); store.ErrNotFound if the group does not
// exist. A dynamic group's selector is evaluated now.
func (r *Registry) GroupMembers(ctx context.Context, tenant event.TenantID, name string, after event.DeviceID, limit int) ([]store.Device, error) {
	var out []store.Device
	err := r.st.View(ctx, func(tx store.Tx) error {
		if _, err := tx.Groups().Get(ctx, tenant, name); err != nil {
			return err
		}
		var err error
		out, err = tx.Devices().List(ctx, tenant, store.DeviceFilter{Group: name, After: after, Limit: limit})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry group members %s/%s: %w", tenant, name, err)
	}
	return out, nil
}

// AddToGroup puts devices into a static group: all of them or none (an
// unknown id fails the call with store.ErrNotFound and changes nothing).
// One "group.members.add" audit record lists every device changed with its
// groups before and after, and those already members. A dynamic group is
// refused (store.ErrInvalid): its members follow its selector.
func (r *Registry) AddToGroup(ctx context.Context, tenant event.TenantID, name string, ids []event.DeviceID, actor string) (Membership, error) {
	return r.changeMembers(ctx, tenant, name, ids, actor, true)
}

// RemoveFromGroup takes devices out of a static group, as [Registry.AddToGroup]
// puts them in ("group.members.remove").
func (r *Registry) RemoveFromGroup(ctx context.Context, tenant event.TenantID, name string, ids []event.DeviceID, actor string) (Membership, error) {
	return r.changeMembers(ctx, tenant, name, ids, actor, false)
}

func (r *Registry) changeMembers(ctx context.Context, tenant event.TenantID, name string, ids []event.DeviceID, actor string, add bool) (Membership, error) {
	op, action := "remove from", "group.members.remove"
	if add {
		op, action = "add to", "group.members.add"
	}
	if len(ids) == 0 || len(ids) > MaxGroupChange {
		return Membership{}, fmt.Errorf("registry %s group: %w: give 1-%d device ids", op, store.ErrInvalid, MaxGroupChange)
	}
	var uniq []event.DeviceID
	for _, id := range ids {
		if !validName(string(id)) {
			return Membership{}, fmt.Errorf("registry %s group: %w: device id %q must be 1-64 characters of [A-Za-z0-9._:-]", op, store.ErrInvalid, id)
		}
		if !slices.Contains(uniq, id) {
			uniq = append(uniq, id)
		}
	}
	now := r.clk.Now().UTC()
	var m Membership
	err := r.st.Update(ctx, func(tx store.Tx) error {
		m = Membership{Group: name, Changed: []event.DeviceID{}, Unchanged: []event.DeviceID{}}
		g, err := tx.Groups().Get(ctx, tenant, name)
		if err != nil {
			return err
		}
		if g.Kind != store.GroupStatic {
			return fmt.Errorf("%w: group %s is dynamic: its members follow its selector %q", store.ErrInvalid, name, groupView(g).Selector)
		}
		changes := []map[string]any{}
		for _, id := range uniq {
			d, err := tx.Devices().Get(ctx, tenant, id)
			if err != nil {
				return err
			}
			in := slices.Contains(d.Groups, name)
			if in == add {
				m.Unchanged = append(m.Unchanged, id)
				continue
			}
			old := slices.Clone(d.Groups)
			if add {
				d.Groups = append(d.Groups, name)
			} else {
				d.Groups = slices.DeleteFunc(d.Groups, func(g string) bool { return g == name })
			}
			d.UpdatedAt = now
			if err := tx.Devices().Update(ctx, d); err != nil {
				return err
			}
			m.Changed = append(m.Changed, id)
			changes = append(changes, map[string]any{"id": id, "old": nonNil(old), "new": nonNil(d.Groups)})
		}
		return audit.Record(ctx, tx, tenant, now, actor, action, "group:"+name, map[string]any{
			"devices": changes, "unchanged": m.Unchanged,
		})
	})
	if err != nil {
		return Membership{}, fmt.Errorf("registry %s group %s/%s: %w", op, tenant, name, err)
	}
	return m, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// MatchTx reports whether sel selects d, resolving a group term as the
// store does: d is statically in the group, or the group is dynamic and its
// selector (recursively) selects d. Groups are read in tx.
func MatchTx(ctx context.Context, tx store.Tx, tenant event.TenantID, sel Selector, d store.Device) (bool, error) {
	return matchTx(ctx, tx, tenant, sel, d, nil)
}

func matchTx(ctx context.Context, tx store.Tx, tenant event.TenantID, sel Selector, d store.Device, seen []string) (bool, error) {
	rest := sel
	rest.Group = ""
	if !rest.Match(d) {
		return false, nil
	}
	if sel.Group == "" || slices.Contains(d.Groups, sel.Group) {
		return true, nil
	}
	if slices.Contains(seen, sel.Group) {
		return false, nil
	}
	g, err := tx.Groups().Get(ctx, tenant, sel.Group)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("registry match group %s/%s: %w", tenant, sel.Group, err)
	case g.Kind != store.GroupDynamic:
		return false, nil
	}
	return matchTx(ctx, tx, tenant, SelectorOf(g.Selector), d, append(slices.Clip(seen), sel.Group))
}
