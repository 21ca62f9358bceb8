package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/registry"
)

var passwordGrantCols = []cli.Column[registry.PasswordGrant]{
	{Header: "DEVICE", Value: func(g registry.PasswordGrant) string { return string(g.Device) }},
	{Header: "USERNAME", Value: func(g registry.PasswordGrant) string { return g.Username }},
	{Header: "PASSWORD", Value: func(g registry.PasswordGrant) string { return g.Password }},
	{Header: "ROTATED", Value: func(g registry.PasswordGrant) string { return strconv.FormatBool(g.Rotated) }},
}

var passwordStatusCols = []cli.Column[registry.PasswordStatus]{
	{Header: "DEVICE", Value: func(s registry.PasswordStatus) string { return string(s.Device) }},
	{Header: "PASSWORD SET", Value: func(s registry.PasswordStatus) string { return strconv.FormatBool(s.Set) }},
	{Header: "SINCE", Value: func(s registry.PasswordStatus) string {
		if s.CreatedAt == nil {
			return "-"
		}
		return cli.Time(*s.CreatedAt)
	}},
}

// devicePasswordCmd is `device password set|clear|show DEVICE`: the
// device's password for the broker's legacy password listener.
func devicePasswordCmd(e *cliEnv, f *apiFlags, run func(func(*cobra.Command, *cli.Client, string, []string) error) func(*cobra.Command, []string) error) *cobra.Command {
	path := func(base, id string) string { return base + "/" + url.PathEscape(id) + "/password" }
	cmd := &cobra.Command{
		Use:   "password",
		Short: "Set, rotate, clear or show a device's password for the broker's legacy password listener",
		Long: "Devices that cannot hold a certificate may log in to the broker's password listener (off unless\n" +
			"broker.password_enabled) with username TENANT/DEVICE and a password the platform generates.\n" +
			"The password is shown once, by `set`; the platform keeps only its hash.",
	}
	set := &cobra.Command{
		Use:   "set DEVICE",
		Short: "Generate a new random password for the device (replacing and disconnecting any earlier one); shown once",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, a []string) error {
			var g registry.PasswordGrant
			if err := cl.Do(c.Context(), http.MethodPost, path(base, a[0]), nil, &g); err != nil {
				return err
			}
			if f.output != "json" {
				fmt.Fprintln(e.Stderr, "The password is shown this once; the platform stores only its hash.")
			}
			return cli.PrintOne(e.Stdout, f.output, g, passwordGrantCols)
		}),
	}
	clr := &cobra.Command{
		Use:   "clear DEVICE",
		Short: "Remove the device's password: the password listener refuses it and its password sessions are closed",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, a []string) error {
			if err := cl.Do(c.Context(), http.MethodDelete, path(base, a[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(e.Stdout, "password of %s cleared\n", a[0])
			return nil
		}),
	}
	show := &cobra.Command{
		Use:   "show DEVICE",
		Short: "Tell whether the device has a password and since when (never the password)",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, a []string) error {
			var s registry.PasswordStatus
			if err := cl.Do(c.Context(), http.MethodGet, path(base, a[0]), nil, &s); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, s, passwordStatusCols)
		}),
	}
	cmd.AddCommand(set, clr, show)
	return cmd
}
