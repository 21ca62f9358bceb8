package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
)

var caCols = []cli.Column[api.CAInfo]{
	{Header: "ID", Value: func(c api.CAInfo) string { return c.ID[:16] }},
	{Header: "ROLE", Value: func(c api.CAInfo) string { return c.Role }},
	{Header: "ACTIVE", Value: func(c api.CAInfo) string { return strconv.FormatBool(c.Active) }},
	{Header: "TRUSTED", Value: func(c api.CAInfo) string { return strconv.FormatBool(c.Trusted) }},
	{Header: "SUBJECT", Value: func(c api.CAInfo) string { return c.Subject }},
	{Header: "NOT BEFORE", Value: func(c api.CAInfo) string { return cli.Time(c.NotBefore) }},
	{Header: "NOT AFTER", Value: func(c api.CAInfo) string { return cli.Time(c.NotAfter) }},
	{Header: "SHA-256 FINGERPRINT", Value: func(c api.CAInfo) string { return c.Fingerprint }},
}

// tenantBase is the API prefix of --tenant, which these commands require.
func tenantBase(tenant string) (string, error) {
	if tenant == "" {
		return "", errors.New("--tenant is required")
	}
	return "/api/v1/tenants/" + url.PathEscape(tenant), nil
}

// tenantRun returns a RunE builder for a tenant's API sub-tree: it reads
// --tenant, builds the client, and calls fn with the path of the tenant's
// sub (e.g. "/devices"). The flags are read when the command runs.
func tenantRun(e *cliEnv, f *apiFlags, tenant *string, sub string) func(fn func(c *cobra.Command, cl *cli.Client, base string, args []string) error) func(*cobra.Command, []string) error {
	return func(fn func(c *cobra.Command, cl *cli.Client, base string, args []string) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			base, err := tenantBase(*tenant)
			if err != nil {
				return err
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			return fn(c, cl, base+sub, args)
		}
	}
}

func newCACmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "ca", Short: "Show, rotate and import the certificate authorities of a tenant (never their keys)"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")

	var pemOut bool
	show := &cobra.Command{
		Use: "show", Short: "List the tenant's CAs with fingerprints and validity", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			base, err := tenantBase(tenant)
			if err != nil {
				return err
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var cas []api.CAInfo
			if err := cl.Do(c.Context(), http.MethodGet, base+"/ca", nil, &cas); err != nil {
				return err
			}
			if pemOut {
				for _, ca := range cas {
					if ca.Trusted && !ca.Expired {
						fmt.Fprint(e.Stdout, ca.CertPEM)
					}
				}
				return nil
			}
			return cli.Print(e.Stdout, f.output, cas, caCols)
		},
	}
	show.Flags().BoolVar(&pemOut, "pem", false, "print the trusted, unexpired CA certificates as PEM (a trust bundle)")

	rotate := &cobra.Command{
		Use: "rotate", Short: "Make a new issuing CA active; the old one stays trusted until it expires", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			base, err := tenantBase(tenant)
			if err != nil {
				return err
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var ca api.CAInfo
			if err := cl.Do(c.Context(), http.MethodPost, base+"/ca/rotate", nil, &ca); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, ca, caCols)
		},
	}

	var role string
	imp := &cobra.Command{
		Use: "import FILE", Short: "Trust a CA certificate of the tenant's own (PEM), e.g. the factory's", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			base, err := tenantBase(tenant)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if len(data) > 64<<10 {
				return fmt.Errorf("%s: larger than 64 KiB; a CA certificate is a few KiB", args[0])
			}
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var ca api.CAInfo
			if err := cl.Do(c.Context(), http.MethodPost, base+"/ca/import", api.ImportCARequest{PEM: string(data), Role: role}, &ca); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, ca, caCols)
		},
	}
	imp.Flags().StringVar(&role, "role", "external", "external (factory certificates are trusted) or claim (claim certificates may be exchanged)")
	trust := func(use, short, verb string) *cobra.Command {
		return &cobra.Command{
			Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				base, err := tenantBase(tenant)
				if err != nil {
					return err
				}
				cl, err := f.client(e)
				if err != nil {
					return err
				}
				var ca api.CAInfo
				if err := cl.Do(c.Context(), http.MethodPost, base+"/ca/"+url.PathEscape(args[0])+"/"+verb, nil, &ca); err != nil {
					return err
				}
				return cli.PrintOne(e.Stdout, f.output, ca, caCols)
			},
		}
	}
	distrust := trust("distrust", "Stop trusting a retired or imported CA (ends a roll-over: its certificates stop verifying)", "distrust")
	retrust := trust("trust", "Trust a CA again", "trust")
	cmd.AddCommand(show, rotate, imp, distrust, retrust)
	return cmd
}
