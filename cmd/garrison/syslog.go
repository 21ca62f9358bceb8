package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/export"
)

var syslogCols = []cli.Column[export.SyslogTarget]{
	{Header: "ADDR", Value: func(t export.SyslogTarget) string { return t.Addr }},
	{Header: "TLS", Value: func(t export.SyslogTarget) string { return strconv.FormatBool(t.TLS) }},
	{Header: "CA", Value: func(t export.SyslogTarget) string {
		if t.CAPEM == "" {
			return "system roots"
		}
		return "given"
	}},
	{Header: "BY", Value: func(t export.SyslogTarget) string { return t.Actor }},
	{Header: "UPDATED", Value: func(t export.SyslogTarget) string { return cli.Time(t.UpdatedAt) }},
}

// newSyslogCmd manages a tenant's own syslog target (docs/EXPORTS.md).
func newSyslogCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd, call := tenantCmd(e, &f, "syslog", "Show, set or clear the tenant's own syslog target (its alerts as RFC 5424 OCSF findings)")
	show := &cobra.Command{
		Use: "show", Short: "Show the tenant's syslog target", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var t export.SyslogTarget
			if err := call(c, http.MethodGet, "/syslog", nil, &t); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, t, syslogCols)
		},
	}
	var useTLS bool
	var caFile string
	set := &cobra.Command{
		Use: "set HOST:PORT", Short: "Send the tenant's alerts to this collector (TCP, or TLS with --tls)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			req := api.SyslogRequest{Addr: args[0], TLS: useTLS}
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("--collector-ca: %w", err)
				}
				req.CAPEM = string(b)
			}
			var t export.SyslogTarget
			if err := call(c, http.MethodPut, "/syslog", req, &t); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, t, syslogCols)
		},
	}
	set.Flags().BoolVar(&useTLS, "tls", false, "TLS (RFC 5425), verifying the collector's certificate")
	set.Flags().StringVar(&caFile, "collector-ca", "", "PEM file of the CA that signed the collector's certificate (with --tls; default: the system roots)")
	clearCmd := &cobra.Command{
		Use: "clear", Short: "Stop sending to the tenant's syslog target", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return call(c, http.MethodDelete, "/syslog", nil, nil)
		},
	}
	cmd.AddCommand(show, set, clearCmd)
	return cmd
}
