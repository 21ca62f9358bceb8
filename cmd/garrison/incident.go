package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/store"
)

var incidentCols = []cli.Column[store.Incident]{
	{Header: "ID", Value: func(i store.Incident) string { return i.ID }},
	{Header: "STATE", Value: func(i store.Incident) string { return string(i.State) }},
	{Header: "SEVERITY", Value: func(i store.Incident) string { return i.Severity.String() }},
	{Header: "KIND", Value: func(i store.Incident) string { return string(i.Kind) }},
	{Header: "DEVICE", Value: func(i store.Incident) string { return string(i.Device) }},
	{Header: "OPENED", Value: func(i store.Incident) string { return cli.Time(i.OpenedAt) }},
	{Header: "TITLE", Value: func(i store.Incident) string { return i.Title }},
}

var entryCols = []cli.Column[store.IncidentEntry]{
	{Header: "TIME", Value: func(e store.IncidentEntry) string { return cli.Time(e.Time) }},
	{Header: "KIND", Value: func(e store.IncidentEntry) string { return e.Kind }},
	{Header: "ACTOR", Value: func(e store.IncidentEntry) string { return e.Actor }},
	{Header: "WHAT", Value: func(e store.IncidentEntry) string { return e.Text }},
}

func seconds(p *float64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatFloat(*p, 'f', 0, 64) + "s"
}

func newIncidentCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "incident", Short: "Open, follow, move and report incidents of a tenant; edit its runbooks"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	base := func() (string, error) {
		if tenant == "" {
			return "", errors.New("--tenant is required")
		}
		return "/api/v1/tenants/" + url.PathEscape(tenant), nil
	}
	// call runs one API request with the command's flags.
	call := func(c *cobra.Command, method, path string, in, out any) error {
		b, err := base()
		if err != nil {
			return err
		}
		cl, err := f.client(e)
		if err != nil {
			return err
		}
		return cl.Do(c.Context(), method, b+path, in, out)
	}
	one := func(c *cobra.Command, method, path string, in any) error {
		var inc store.Incident
		if err := call(c, method, path, in, &inc); err != nil {
			return err
		}
		return cli.PrintOne(e.Stdout, f.output, inc, incidentCols)
	}

	var state, device string
	var open bool
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List incidents, newest first", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			q := url.Values{}
			if state != "" {
				q.Set("state", state)
			}
			if device != "" {
				q.Set("device", device)
			}
			if open {
				q.Set("open", "true")
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			path := "/incidents"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var list []store.Incident
			if err := call(c, http.MethodGet, path, nil, &list); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, list, incidentCols)
		},
	}
	list.Flags().StringVar(&state, "state", "", "only this state: open, contained, eradicated, recovered or closed")
	list.Flags().StringVar(&device, "device", "", "only incidents first opened on this device")
	list.Flags().BoolVar(&open, "open", false, "only incidents not closed")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100)")

	show := &cobra.Command{
		Use: "show ID", Short: "Show an incident with its durations and timeline", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var d incident.Detail
			if err := call(c, http.MethodGet, "/incidents/"+url.PathEscape(args[0]), nil, &d); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, d, nil)
			}
			if err := cli.PrintOne(e.Stdout, f.output, d.Incident, incidentCols); err != nil {
				return err
			}
			fmt.Fprintf(e.Stdout, "\nTime to detect %s, to contain %s, to close %s\n\n",
				seconds(d.Metrics.TimeToDetect), seconds(d.Metrics.TimeToContain), seconds(d.Metrics.TimeToClose))
			return cli.Print(e.Stdout, f.output, d.Timeline, entryCols)
		},
	}

	var req incident.OpenRequest
	var alerts []string
	var kind, dev string
	openCmd := &cobra.Command{
		Use: "open", Short: "Open an incident by hand", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			req.Alerts, req.Kind, req.Device = alerts, alert.Kind(kind), storeDevice(dev)
			return one(c, http.MethodPost, "/incidents", req)
		},
	}
	openCmd.Flags().StringVar(&req.Title, "title", "", "what happened (required)")
	openCmd.Flags().StringVar(&req.Severity, "severity", "", "info, low, medium, high or critical (default: the first alert's, else medium)")
	openCmd.Flags().StringVar(&kind, "kind", "", "alert kind whose runbook applies (default: the first alert's)")
	openCmd.Flags().StringVar(&dev, "device", "", "device concerned (default: the first alert's)")
	openCmd.Flags().StringArrayVar(&alerts, "alert", nil, "alert id to attach (repeatable)")

	attach := &cobra.Command{
		Use: "attach ID ALERT", Short: "Attach an alert (and the actions taken for it) to an incident", Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return one(c, http.MethodPost, "/incidents/"+url.PathEscape(args[0])+"/alerts", api.AttachAlertRequest{AlertID: args[1]})
		},
	}
	note := &cobra.Command{
		Use: "note ID TEXT", Short: "Add a note to an incident's timeline", Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			var en store.IncidentEntry
			if err := call(c, http.MethodPost, "/incidents/"+url.PathEscape(args[0])+"/notes", api.NoteRequest{Text: args[1]}, &en); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, en, entryCols)
		},
	}
	var moveNote string
	move := &cobra.Command{
		Use:   "move ID STATE",
		Short: "Move an incident: open → contained → eradicated → recovered → closed (or closed from any state)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return one(c, http.MethodPost, "/incidents/"+url.PathEscape(args[0])+"/transition",
				api.TransitionRequest{To: store.IncidentState(args[1]), Note: moveNote})
		},
	}
	move.Flags().StringVar(&moveNote, "note", "", "why (kept on the timeline and in the audit log)")

	var format string
	report := &cobra.Command{
		Use: "report ID", Short: "Print the post-incident report in Markdown or JSON", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var rep incident.Report
			if err := call(c, http.MethodGet, "/incidents/"+url.PathEscape(args[0])+"/report", nil, &rep); err != nil {
				return err
			}
			switch format {
			case "md", "markdown":
				_, err := io.WriteString(e.Stdout, keepLines(string(rep.Markdown())))
				return err
			case "json":
				enc := json.NewEncoder(e.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return fmt.Errorf("--format must be md or json, got %q", format)
		},
	}
	report.Flags().StringVar(&format, "format", "md", "md or json")

	cmd.AddCommand(list, show, openCmd, attach, note, move, report, newRunbookCmd(e, call, &f))
	return cmd
}

func newRunbookCmd(e *cliEnv, call func(c *cobra.Command, method, path string, in, out any) error, f *apiFlags) *cobra.Command {
	rb := &cobra.Command{Use: "runbook", Short: "Show, replace or reset the tenant's runbook of an alert kind"}
	cols := []cli.Column[incident.Runbook]{
		{Header: "KIND", Value: func(r incident.Runbook) string { return string(r.Kind) }},
		{Header: "SOURCE", Value: func(r incident.Runbook) string { return r.Source }},
		{Header: "UPDATED BY", Value: func(r incident.Runbook) string { return r.UpdatedBy }},
	}
	list := &cobra.Command{
		Use: "list", Short: "List the runbooks the tenant follows", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var rbs []incident.Runbook
			if err := call(c, http.MethodGet, "/runbooks", nil, &rbs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, rbs, cols)
		},
	}
	show := &cobra.Command{
		Use: "show KIND", Short: "Print the runbook of an alert kind (Markdown)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var r incident.Runbook
			if err := call(c, http.MethodGet, "/runbooks/"+url.PathEscape(args[0]), nil, &r); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, r, cols)
			}
			_, err := io.WriteString(e.Stdout, keepLines(r.Markdown))
			return err
		},
	}
	set := &cobra.Command{
		Use: "set KIND FILE", Short: "Replace the tenant's runbook of an alert kind with a Markdown file (- for stdin)", Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			md, err := readDoc(args[1], incident.MaxRunbookBytes)
			if err != nil {
				return err
			}
			var r incident.Runbook
			if err := call(c, http.MethodPut, "/runbooks/"+url.PathEscape(args[0]), api.RunbookRequest{Markdown: string(md)}, &r); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, r, cols)
		},
	}
	reset := &cobra.Command{
		Use: "reset KIND", Short: "Delete the tenant's own runbook so the shipped one applies again", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return call(c, http.MethodDelete, "/runbooks/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	rb.AddCommand(list, show, set, reset)
	return rb
}

func storeDevice(s string) event.DeviceID { return event.DeviceID(strings.TrimSpace(s)) }

// keepLines is cli.Sanitize for multi-line text: newlines and tabs stay,
// other control characters (terminal escapes) become '?'.
func keepLines(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
