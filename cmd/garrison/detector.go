package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
)

var detectorCols = []cli.Column[api.DetectorInfo]{
	{Header: "NAME", Value: func(d api.DetectorInfo) string { return d.Name }},
	{Header: "ALERT KIND", Value: func(d api.DetectorInfo) string { return strings.Join(d.AlertKinds, ",") }},
	{Header: "SEVERITY", Value: func(d api.DetectorInfo) string { return d.Severity }},
	{Header: "DISABLED", Value: func(d api.DetectorInfo) string { return strconv.FormatBool(d.Disabled) }},
	{Header: "OVERRIDE", Value: func(d api.DetectorInfo) string { return compactJSON(d.Override) }},
}

var feedCols = []cli.Column[api.FeedInfo]{
	{Header: "NAME", Value: func(f api.FeedInfo) string { return f.Name }},
	{Header: "SOURCE", Value: func(f api.FeedInfo) string { return f.Source }},
	{Header: "REFRESH", Value: func(f api.FeedInfo) string { return f.Refresh }},
	{Header: "ENTRIES", Value: func(f api.FeedInfo) string { return strconv.Itoa(f.Entries) }},
	{Header: "LAST REFRESH", Value: func(f api.FeedInfo) string {
		if f.LastRefresh == nil {
			return "-"
		}
		return cli.Time(*f.LastRefresh)
	}},
	{Header: "FAILURES", Value: func(f api.FeedInfo) string { return strconv.Itoa(f.Failures) }},
	{Header: "LAST ERROR", Value: func(f api.FeedInfo) string { return f.LastError }},
}

func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "-"
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return "?"
	}
	return b.String()
}

func newDetectorCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant, group string
	cmd := &cobra.Command{Use: "detector", Short: "List detectors, show and tune their settings per tenant and group, list threat-intelligence feeds"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (list: optional, shows the tenant's effective settings; show, set: required)")
	cmd.PersistentFlags().StringVar(&group, "group", "", "a group (cohort) of the tenant: its scope instead of the tenant's")
	tenantBase := func() (string, error) {
		if tenant == "" {
			return "", errors.New("--tenant is required")
		}
		return "/api/v1/tenants/" + url.PathEscape(tenant) + "/detectors", nil
	}
	query := func() string {
		if group == "" {
			return ""
		}
		return "?group=" + url.QueryEscape(group)
	}

	list := &cobra.Command{
		Use: "list", Short: "List the detectors (with --tenant: the tenant's or group's effective settings)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := "/api/v1/detectors"
			if tenant != "" {
				path = "/api/v1/tenants/" + url.PathEscape(tenant) + "/detectors" + query()
			} else if group != "" {
				return errors.New("--group needs --tenant")
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var ds []api.DetectorInfo
			if err := cl.Do(c.Context(), http.MethodGet, path, nil, &ds); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ds, detectorCols)
		},
	}

	get := func(c *cobra.Command, cl *cli.Client, name string) (api.DetectorInfo, string, error) {
		var d api.DetectorInfo
		base, err := tenantBase()
		if err != nil {
			return d, "", err
		}
		path := base + "/" + url.PathEscape(name) + "/settings" + query()
		err = cl.Do(c.Context(), http.MethodGet, path, nil, &d)
		return d, path, err
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a detector's settings: each field's default and effective value, and the override at this scope", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			d, _, err := get(c, cl, args[0])
			if err != nil {
				return err
			}
			return printDetector(e, f.output, d)
		},
	}

	var reset bool
	set := &cobra.Command{
		Use:   "set NAME [FIELD=VALUE...]",
		Short: "Change fields of a detector's override for the tenant (or --group); VALUE is JSON or a string, FIELD=null drops the field, disabled=true turns it off",
		Example: "  garrison detector set auth.bruteforce threshold=50 window=5m --tenant acme\n" +
			"  garrison detector set device.listener disabled=true --tenant acme --group meters\n" +
			"  garrison detector set auth.bruteforce --reset --tenant acme",
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if reset == (len(args) > 1) {
				return errors.New("give FIELD=VALUE pairs or --reset")
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			d, path, err := get(c, cl, args[0])
			if err != nil {
				return err
			}
			over := map[string]json.RawMessage{}
			if !reset && len(d.Override) > 0 {
				if err := json.Unmarshal(d.Override, &over); err != nil {
					return fmt.Errorf("stored override: %w", err)
				}
			}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("%q: want FIELD=VALUE", kv)
				}
				switch {
				case v == "null":
					delete(over, k)
				case json.Valid([]byte(v)):
					over[k] = json.RawMessage(v)
				default:
					b, _ := json.Marshal(v)
					over[k] = b
				}
			}
			var out api.DetectorInfo
			if err := cl.Do(c.Context(), http.MethodPut, path, over, &out); err != nil {
				return err
			}
			return printDetector(e, f.output, out)
		},
	}
	set.Flags().BoolVar(&reset, "reset", false, "remove the override at this scope (back to the wider scope's values)")

	feeds := &cobra.Command{
		Use: "feeds", Short: "List the threat-intelligence feeds: source, entries, last refresh, failures", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := "/api/v1/platform/intel/feeds"
			if tenant != "" {
				path = "/api/v1/tenants/" + url.PathEscape(tenant) + "/intel/feeds"
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var fs []api.FeedInfo
			if err := cl.Do(c.Context(), http.MethodGet, path, nil, &fs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, fs, feedCols)
		},
	}

	cmd.AddCommand(list, show, set, feeds)
	return cmd
}

// printDetector writes a detector's view: a header row, then each field
// with its default and effective value.
func printDetector(e *cliEnv, format string, d api.DetectorInfo) error {
	if err := cli.PrintOne(e.Stdout, format, d, detectorCols); err != nil || format == "json" {
		return err
	}
	var def, eff map[string]json.RawMessage
	_ = json.Unmarshal(d.Defaults, &def)
	_ = json.Unmarshal(d.Effective, &eff)
	w := e.Stdout
	fmt.Fprintf(w, "\n%s\n", cli.Sanitize(d.Description))
	scope := "tenant " + string(d.Tenant)
	if d.Group != "" {
		scope += ", group " + d.Group
	}
	fmt.Fprintf(w, "Settings (%s):\n", cli.Sanitize(scope))
	fmt.Fprintf(w, "  %-22s %-16s %-28s %s\n", "FIELD", "TYPE", "DEFAULT", "EFFECTIVE")
	types := map[string]string{}
	for _, fl := range d.Fields {
		types[fl.Name] = fl.Type
	}
	for _, k := range slices.Sorted(maps.Keys(def)) {
		fmt.Fprintf(w, "  %-22s %-16s %-28s %s\n", cli.Sanitize(k), types[k], cli.Sanitize(compactJSON(def[k])), cli.Sanitize(compactJSON(eff[k])))
	}
	return nil
}
