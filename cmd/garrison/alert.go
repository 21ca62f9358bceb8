package main

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
)

var alertCols = []cli.Column[alert.Alert]{
	{Header: "ID", Value: func(a alert.Alert) string { return a.ID }},
	{Header: "DEVICE", Value: func(a alert.Alert) string { return string(a.Device) }},
	{Header: "KIND", Value: func(a alert.Alert) string { return string(a.Kind) }},
	{Header: "SEVERITY", Value: func(a alert.Alert) string { return a.Severity.String() }},
	{Header: "STATE", Value: func(a alert.Alert) string { return string(a.State) }},
	{Header: "COUNT", Value: func(a alert.Alert) string { return strconv.Itoa(a.Count) }},
	{Header: "FIRST SEEN", Value: func(a alert.Alert) string { return cli.Time(a.FirstSeen) }},
	{Header: "LAST SEEN", Value: func(a alert.Alert) string { return cli.Time(a.LastSeen) }},
}

func newAlertCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "alert", Short: "List, inspect, acknowledge and resolve alerts of a tenant"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	base := func() (string, error) {
		if tenant == "" {
			return "", errors.New("--tenant is required")
		}
		return "/api/v1/tenants/" + url.PathEscape(tenant) + "/alerts", nil
	}

	var device, kind, state, since string
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List alerts, newest first", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path, err := base()
			if err != nil {
				return err
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"device": device, "kind": kind, "state": state, "since": since} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var as []alert.Alert
			if err := cl.Do(c.Context(), http.MethodGet, path, nil, &as); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, as, alertCols)
		},
	}
	list.Flags().StringVar(&device, "device", "", "only this device")
	list.Flags().StringVar(&kind, "kind", "", "only this kind, e.g. net.port_scan")
	list.Flags().StringVar(&state, "state", "", "only this state: open, acknowledged, resolved or false_positive")
	list.Flags().StringVar(&since, "since", "", "only alerts last seen at or after this RFC 3339 time")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100, max 1000)")

	show := &cobra.Command{
		Use: "show ID", Short: "Show an alert with its evidence", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path, err := base()
			if err != nil {
				return err
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var a alert.Alert
			if err := cl.Do(c.Context(), http.MethodGet, path+"/"+url.PathEscape(args[0]), nil, &a); err != nil {
				return err
			}
			if err := cli.PrintOne(e.Stdout, f.output, a, alertCols); err != nil || f.output == "json" {
				return err
			}
			return printEvidence(e, a)
		},
	}

	// change posts to one of the alert's transition routes and prints the
	// alert as it now is.
	change := func(c *cobra.Command, id, verb string, body any) error {
		path, err := base()
		if err != nil {
			return err
		}
		cl, err := f.client(e)
		if err != nil {
			return err
		}
		var a alert.Alert
		if err := cl.Do(c.Context(), http.MethodPost, path+"/"+url.PathEscape(id)+"/"+verb, body, &a); err != nil {
			return err
		}
		return cli.PrintOne(e.Stdout, f.output, a, alertCols)
	}
	ack := &cobra.Command{
		Use: "ack ID", Short: "Acknowledge an open alert", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error { return change(c, args[0], "ack", nil) },
	}
	var req api.ResolveAlertRequest
	resolve := &cobra.Command{
		Use: "resolve ID", Short: "Resolve an open or acknowledged alert", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error { return change(c, args[0], "resolve", req) },
	}
	resolve.Flags().BoolVar(&req.FalsePositive, "false-positive", false, "close it as a false positive")
	resolve.Flags().StringVar(&req.Note, "note", "", "why (kept in the audit log)")

	cmd.AddCommand(list, show, ack, resolve)
	return cmd
}

// printEvidence writes what made the detector raise the alert.
func printEvidence(e *cliEnv, a alert.Alert) error {
	w := e.Stdout
	fmt.Fprintf(w, "\nDetector: %s\nEvidence: %s\n", cli.Sanitize(a.Detector), cli.Sanitize(a.Evidence.Summary))
	for _, k := range slices.Sorted(maps.Keys(a.Evidence.Values)) {
		fmt.Fprintf(w, "  %s = %s\n", cli.Sanitize(k), cli.Sanitize(fmt.Sprint(a.Evidence.Values[k])))
	}
	if n := len(a.Evidence.Events); n > 0 {
		_, err := fmt.Fprintf(w, "Events: %d (see -o json)\n", n)
		return err
	}
	return nil
}
