package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Selector picks devices of one tenant. Zero fields match everything; set
// fields must all match. Its text form, read by [ParseSelector] and written by
// [Selector.String], is a comma-separated list of terms:
//
//	model=acme-meter-2,state=active,tag=site:north,imsi^=21401
//
// Terms: model=M, firmware=V, state=S, group=G, tag=K or tag=K:V (the tag K
// with value V), imsi^=PREFIX (IMSI starts with PREFIX). Each key appears at
// most once. The empty string (or "*") selects every device. group=G
// matches the devices statically in G and, when G is a dynamic group, the
// devices its own selector matches (resolved by the store when devices are
// selected; see group.go).
type Selector struct {
	Model      string
	Firmware   string
	State      store.DeviceState
	Group      string
	TagKey     string
	TagValue   string // only with TagKey; "" means any value
	IMSIPrefix string
}

// ErrSelector is matched by every error of [ParseSelector].
var ErrSelector = errors.New("invalid selector")

// SelectorError locates a bad term. It matches [ErrSelector] and
// store.ErrInvalid.
type SelectorError struct {
	Term int    // 1-based index of the term
	Text string // the term as written
	Msg  string
}

func (e *SelectorError) Error() string {
	return fmt.Sprintf("invalid selector: term %d %q: %s", e.Term, e.Text, e.Msg)
}

// Is makes the error match ErrSelector and store.ErrInvalid.
func (e *SelectorError) Is(target error) bool {
	return target == ErrSelector || target == store.ErrInvalid
}

const maxSelectorLen = 1024

// selValue reports whether v is a valid value: 1-64 characters of
// [A-Za-z0-9._-] (no separators ',', '=', ':', '^' or spaces).
func selValue(v string) bool {
	if len(v) == 0 || len(v) > maxIDLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ParseSelector parses the text form of a [Selector]. Errors are
// *[SelectorError] naming the bad term.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	if len(s) > maxSelectorLen {
		return sel, &SelectorError{Term: 0, Text: s[:32] + "...", Msg: fmt.Sprintf("longer than %d bytes", maxSelectorLen)}
	}
	t := strings.TrimSpace(s)
	if t == "" || t == "*" {
		return sel, nil
	}
	seen := map[string]bool{}
	for i, raw := range strings.Split(t, ",") {
		n := i + 1
		term := strings.TrimSpace(raw)
		bad := func(format string, a ...any) (Selector, error) {
			return Selector{}, &SelectorError{Term: n, Text: term, Msg: fmt.Sprintf(format, a...)}
		}
		if term == "" {
			return bad("empty term (stray comma?)")
		}
		var key, val string
		if k, v, ok := strings.Cut(term, "^="); ok && !strings.Contains(k, "=") {
			key, val = strings.TrimSpace(k)+"^", strings.TrimSpace(v)
		} else if k, v, ok := strings.Cut(term, "="); ok {
			key, val = strings.TrimSpace(k), strings.TrimSpace(v)
		} else {
			return bad("want key=value (keys: model, firmware, state, group, tag, imsi^)")
		}
		if seen[key] {
			return bad("key %q given twice", strings.TrimSuffix(key, "^"))
		}
		seen[key] = true
		switch key {
		case "model", "firmware", "group":
			if !selValue(val) {
				return bad("value must be 1-64 characters of [A-Za-z0-9._-]")
			}
			switch key {
			case "model":
				sel.Model = val
			case "firmware":
				sel.Firmware = val
			default:
				sel.Group = val
			}
		case "state":
			if !ValidState(store.DeviceState(val)) {
				return bad("unknown state (want registered, active, quarantined, suspended, revoked or decommissioned)")
			}
			sel.State = store.DeviceState(val)
		case "tag":
			k, v, hasV := strings.Cut(val, ":")
			if !selValue(k) || (hasV && !selValue(v)) {
				return bad("want tag=KEY or tag=KEY:VALUE, each 1-64 characters of [A-Za-z0-9._-]")
			}
			sel.TagKey, sel.TagValue = k, v
		case "imsi^":
			if !digits(val, 1, 15) {
				return bad("imsi prefix must be 1-15 digits")
			}
			sel.IMSIPrefix = val
		case "imsi":
			return bad("use imsi^=PREFIX for an IMSI prefix")
		default:
			return bad("unknown key %q (keys: model, firmware, state, group, tag, imsi^)", strings.TrimSuffix(key, "^"))
		}
	}
	return sel, nil
}

// String returns the canonical text form; ParseSelector(s.String()) == s for
// every Selector that ParseSelector returns.
func (s Selector) String() string {
	var terms []string
	if s.Model != "" {
		terms = append(terms, "model="+s.Model)
	}
	if s.Firmware != "" {
		terms = append(terms, "firmware="+s.Firmware)
	}
	if s.State != "" {
		terms = append(terms, "state="+string(s.State))
	}
	if s.Group != "" {
		terms = append(terms, "group="+s.Group)
	}
	if s.TagKey != "" {
		t := "tag=" + s.TagKey
		if s.TagValue != "" {
			t += ":" + s.TagValue
		}
		terms = append(terms, t)
	}
	if s.IMSIPrefix != "" {
		terms = append(terms, "imsi^="+s.IMSIPrefix)
	}
	return strings.Join(terms, ",")
}

// Filter returns the store filter of the selector.
func (s Selector) Filter() store.DeviceFilter {
	f := store.DeviceFilter{Model: s.Model, State: s.State, Firmware: s.Firmware, Group: s.Group, IMSIPrefix: s.IMSIPrefix}
	if s.TagKey != "" {
		f.Tag = s.TagKey
		if s.TagValue != "" {
			f.Tag += "=" + s.TagValue
		}
	}
	return f
}

// Match reports whether d is selected (the same rule the store applies),
// except that a group term counts static membership only: resolving a
// dynamic group takes the store (see [MatchTx]).
func (s Selector) Match(d store.Device) bool {
	if s.Model != "" && d.Model != s.Model || s.Firmware != "" && d.Firmware != s.Firmware ||
		s.State != "" && d.State != s.State || s.IMSIPrefix != "" && !strings.HasPrefix(d.IMSI, s.IMSIPrefix) {
		return false
	}
	if s.Group != "" {
		found := false
		for _, g := range d.Groups {
			if g == s.Group {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if s.TagKey != "" {
		v, ok := d.Tags[s.TagKey]
		if !ok || s.TagValue != "" && v != s.TagValue {
			return false
		}
	}
	return true
}

// Select returns the selected devices of the tenant, ordered by id. limit 0
// means all.
func (r *Registry) Select(ctx context.Context, tenant event.TenantID, sel Selector, limit int) ([]store.Device, error) {
	f := sel.Filter()
	f.Limit = limit
	var out []store.Device
	err := r.st.View(ctx, func(tx store.Tx) error {
		var err error
		out, err = tx.Devices().List(ctx, tenant, f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry select %s %q: %w", tenant, sel, err)
	}
	return out, nil
}

// Count returns the number of selected devices of the tenant.
func (r *Registry) Count(ctx context.Context, tenant event.TenantID, sel Selector) (int, error) {
	var n int
	err := r.st.View(ctx, func(tx store.Tx) error {
		var err error
		n, err = tx.Devices().Count(ctx, tenant, sel.Filter())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("registry count %s %q: %w", tenant, sel, err)
	}
	return n, nil
}

// MassResult reports a mass state change.
type MassResult struct {
	Selected  int // devices the selector matched while paging
	Changed   int // devices moved to the target state
	Unchanged int // already in the target state
	Refused   int // transition not allowed from their state (left as they were)
}

// SetStateSelected moves every selected device that may make the transition
// to state to, in transactions of batch devices (default 1000), each
// committing the state changes with one "device.state.bulk" audit record
// listing every device changed (id and former state). Devices whose
// transition is refused are counted and left alone. progress, if not nil, is
// called after each batch. It stops at the first store error, reporting what
// was committed before it; a rerun continues where it stopped, since devices
// already in the target state are skipped.
func (r *Registry) SetStateSelected(ctx context.Context, tenant event.TenantID, sel Selector, to store.DeviceState, actor, reason string, batch int, progress func(MassResult)) (MassResult, error) {
	var res MassResult
	if !ValidState(to) {
		return res, fmt.Errorf("registry mass set state: %w: unknown state %q", store.ErrInvalid, to)
	}
	if batch <= 0 {
		batch = 1000
	}
	f := sel.Filter()
	f.Limit = batch
	for {
		type change struct {
			id   event.DeviceID
			from store.DeviceState
		}
		var changes []change
		var page MassResult
		var last event.DeviceID
		var n int
		now := r.clk.Now().UTC()
		err := r.st.Update(ctx, func(tx store.Tx) error {
			changes, page, last, n = changes[:0], MassResult{}, "", 0
			devs, err := tx.Devices().List(ctx, tenant, f)
			if err != nil {
				return err
			}
			n = len(devs)
			for _, d := range devs {
				last = d.ID
				page.Selected++
				if d.State == to {
					page.Unchanged++
					continue
				}
				if !CanTransition(d.State, to) {
					page.Refused++
					continue
				}
				from := d.State
				d.State, d.UpdatedAt = to, now
				if err := tx.Devices().Update(ctx, d); err != nil {
					return err
				}
				changes = append(changes, change{d.ID, from})
				page.Changed++
			}
			if len(changes) == 0 {
				return nil
			}
			devices := make([]map[string]string, len(changes))
			for i, c := range changes {
				devices[i] = map[string]string{"id": string(c.id), "from": string(c.from)}
			}
			return audit.Record(ctx, tx, tenant, now, actor, "device.state.bulk", "selector:"+sel.String(), map[string]any{
				"to": to, "reason": reason, "selector": sel.String(), "count": len(changes), "devices": devices,
			})
		})
		if err != nil {
			return res, fmt.Errorf("registry mass set state %s %q: %w", tenant, sel, err)
		}
		res.Selected += page.Selected
		res.Changed += page.Changed
		res.Unchanged += page.Unchanged
		res.Refused += page.Refused
		for _, c := range changes {
			r.publish(ctx, tenant, c.id, c.from, to, reason, now)
		}
		if progress != nil {
			progress(res)
		}
		if n < batch {
			return res, nil
		}
		f.After = last
	}
}

// Preview is a dry run of a mass action: how many devices the selector
// matches now and the first sample of them (by id). Nothing is changed.
type Preview struct {
	Count  int            `json:"count"`
	Sample []store.Device `json:"sample"`
}

// Preview returns the count and a sample of up to sample devices selected,
// read in one consistent snapshot.
func (r *Registry) Preview(ctx context.Context, tenant event.TenantID, sel Selector, sample int) (Preview, error) {
	var p Preview
	f := sel.Filter()
	f.Limit = max(sample, 1)
	err := r.st.View(ctx, func(tx store.Tx) error {
		var err error
		if p.Count, err = tx.Devices().Count(ctx, tenant, sel.Filter()); err != nil {
			return err
		}
		if sample > 0 {
			p.Sample, err = tx.Devices().List(ctx, tenant, f)
		}
		return err
	})
	if err != nil {
		return Preview{}, fmt.Errorf("registry preview %s %q: %w", tenant, sel, err)
	}
	return p, nil
}
