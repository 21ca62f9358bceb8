package incident

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Metrics are an incident's durations in seconds; nil while the incident
// has not reached that point.
//
//   - time_to_detect: from the first sign (StartedAt, the earliest evidence
//     event) to detection (DetectedAt, the first alert);
//   - time_to_contain: from detection to the contained state;
//   - time_to_close: from detection to the closed state;
//   - open_for: from detection to now, or to closing.
type Metrics struct {
	TimeToDetect  *float64 `json:"time_to_detect_seconds"`
	TimeToContain *float64 `json:"time_to_contain_seconds"`
	TimeToClose   *float64 `json:"time_to_close_seconds"`
	OpenFor       float64  `json:"open_for_seconds"`
}

func seconds(d time.Duration) *float64 {
	s := d.Seconds()
	if s < 0 {
		s = 0
	}
	return &s
}

// MetricsOf computes an incident's durations at time now.
func MetricsOf(inc store.Incident, now time.Time) Metrics {
	m := Metrics{TimeToDetect: seconds(inc.DetectedAt.Sub(inc.StartedAt))}
	if inc.ContainedAt != nil {
		m.TimeToContain = seconds(inc.ContainedAt.Sub(inc.DetectedAt))
	}
	end := now
	if inc.ClosedAt != nil {
		m.TimeToClose = seconds(inc.ClosedAt.Sub(inc.DetectedAt))
		end = *inc.ClosedAt
	}
	m.OpenFor = *seconds(end.Sub(inc.DetectedAt))
	return m
}

// Report is the post-incident report: everything on the incident's
// timeline with the alerts and actions themselves and the runbook followed.
type Report struct {
	Incident    store.Incident        `json:"incident"`
	Metrics     Metrics               `json:"metrics"`
	Alerts      []alert.Alert         `json:"alerts"`
	Actions     []store.Action        `json:"actions"`
	Timeline    []store.IncidentEntry `json:"timeline"`
	Runbook     Runbook               `json:"runbook"`
	GeneratedAt time.Time             `json:"generated_at"`
}

// Report builds the post-incident report of an incident.
func (s *Service) Report(ctx context.Context, tenant event.TenantID, id string) (Report, error) {
	r := Report{GeneratedAt: s.o.Clock.Now().UTC(), Alerts: []alert.Alert{}, Actions: []store.Action{}}
	err := s.o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		if r.Incident, err = tx.Incidents().Get(ctx, tenant, id); err != nil {
			return err
		}
		if r.Timeline, err = tx.Incidents().Timeline(ctx, tenant, id); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, e := range r.Timeline {
			switch {
			case strings.HasPrefix(e.ID, "alert:"):
				a, err := tx.Alerts().Get(ctx, tenant, strings.TrimPrefix(e.ID, "alert:"))
				if err == nil {
					r.Alerts = append(r.Alerts, a)
				}
			case strings.HasPrefix(e.ID, "action:"):
				id := strings.TrimPrefix(e.ID, "action:")
				if i := strings.LastIndexByte(id, '#'); i >= 0 {
					id = id[:i]
				}
				if seen[id] {
					continue
				}
				seen[id] = true
				a, err := tx.Actions().Get(ctx, tenant, id)
				if err == nil {
					r.Actions = append(r.Actions, a)
				}
			}
		}
		r.Runbook, err = runbook(ctx, tx, tenant, r.Incident.Kind)
		return err
	})
	if err != nil {
		return Report{}, fmt.Errorf("incident %s report: %w", id, err)
	}
	if r.Timeline == nil {
		r.Timeline = []store.IncidentEntry{}
	}
	r.Metrics = MetricsOf(r.Incident, r.GeneratedAt)
	return r, nil
}

func fmtSeconds(s *float64) string {
	if s == nil {
		return "not yet"
	}
	return (time.Duration(*s * float64(time.Second))).Round(time.Second).String()
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "—"
	}
	return t.UTC().Format(time.RFC3339)
}

// mdEscape keeps table cells on one line and neutralises Markdown and HTML
// that came from devices or operators.
func mdEscape(s string) string {
	r := strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "<", "&lt;", ">", "&gt;", "`", "'")
	return strings.Map(func(c rune) rune {
		if c < 0x20 || c == 0x7f {
			return ' '
		}
		return c
	}, r.Replace(s))
}

// Markdown renders the report for humans.
func (r Report) Markdown() []byte {
	var b bytes.Buffer
	inc := r.Incident
	fmt.Fprintf(&b, "# Post-incident report: %s\n\n", mdEscape(inc.Title))
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| Incident | `%s` |\n| Tenant | %s |\n| State | %s |\n| Severity | %s |\n", inc.ID, inc.Tenant, inc.State, inc.Severity)
	if inc.Kind != "" {
		fmt.Fprintf(&b, "| Alert kind | %s |\n", mdEscape(string(inc.Kind)))
	}
	if inc.Device != "" {
		fmt.Fprintf(&b, "| Device | %s |\n", mdEscape(string(inc.Device)))
	}
	fmt.Fprintf(&b, "| Opened by | %s |\n| Report generated | %s |\n\n", mdEscape(inc.OpenedBy), r.GeneratedAt.Format(time.RFC3339))

	b.WriteString("## Key times\n\n| milestone | time |\n|---|---|\n")
	fmt.Fprintf(&b, "| First sign | %s |\n| Detected | %s |\n| Opened | %s |\n", fmtTime(&inc.StartedAt), fmtTime(&inc.DetectedAt), fmtTime(&inc.OpenedAt))
	fmt.Fprintf(&b, "| Contained | %s |\n| Eradicated | %s |\n| Recovered | %s |\n| Closed | %s |\n\n",
		fmtTime(inc.ContainedAt), fmtTime(inc.EradicatedAt), fmtTime(inc.RecoveredAt), fmtTime(inc.ClosedAt))
	b.WriteString("## Durations\n\n")
	fmt.Fprintf(&b, "- Time to detect: %s\n- Time to contain: %s\n- Time to close: %s\n\n",
		fmtSeconds(r.Metrics.TimeToDetect), fmtSeconds(r.Metrics.TimeToContain), fmtSeconds(r.Metrics.TimeToClose))

	fmt.Fprintf(&b, "## Alerts (%d)\n\n", len(r.Alerts))
	if len(r.Alerts) > 0 {
		b.WriteString("| id | kind | device | severity | first seen | count | state | summary |\n|---|---|---|---|---|---|---|---|\n")
		for _, a := range r.Alerts {
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %d | %s | %s |\n", a.ID, mdEscape(string(a.Kind)), mdEscape(string(a.Device)),
				a.Severity, a.FirstSeen.UTC().Format(time.RFC3339), a.Count, a.State, mdEscape(a.Evidence.Summary))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "## Actions (%d)\n\n", len(r.Actions))
	if len(r.Actions) > 0 {
		acts := append([]store.Action(nil), r.Actions...)
		sort.SliceStable(acts, func(i, j int) bool { return acts[i].UpdatedAt.Before(acts[j].UpdatedAt) })
		b.WriteString("| id | kind | device | state | by | playbook | at |\n|---|---|---|---|---|---|---|\n")
		for _, a := range acts {
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s |\n", a.ID, mdEscape(a.Kind), mdEscape(string(a.Device)), a.State,
				mdEscape(a.Actor), mdEscape(a.Playbook), a.UpdatedAt.UTC().Format(time.RFC3339))
		}
		b.WriteString("\n")
	}
	b.WriteString("## Timeline\n\n| time | kind | actor | what |\n|---|---|---|---|\n")
	for _, e := range r.Timeline {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", e.Time.UTC().Format(time.RFC3339), e.Kind, mdEscape(e.Actor), mdEscape(e.Text))
	}
	b.WriteString("\n## Runbook\n\n")
	if r.Runbook.Markdown == "" {
		b.WriteString("No runbook for this incident's kind.\n")
	} else {
		fmt.Fprintf(&b, "_%s runbook for %s_\n\n", r.Runbook.Source, r.Runbook.Kind)
		// Demote the runbook's headings under this section.
		for _, line := range strings.Split(strings.TrimRight(r.Runbook.Markdown, "\n"), "\n") {
			if strings.HasPrefix(line, "#") {
				line = "##" + line
			}
			b.WriteString(line + "\n")
		}
	}
	return b.Bytes()
}
