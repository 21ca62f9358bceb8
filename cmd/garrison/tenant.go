package main

import (
	"net/http"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/store"
)

var tenantCols = []cli.Column[store.Tenant]{
	{Header: "ID", Value: func(t store.Tenant) string { return string(t.ID) }},
	{Header: "NAME", Value: func(t store.Tenant) string { return t.Name }},
	{Header: "CREATED", Value: func(t store.Tenant) string { return cli.Time(t.CreatedAt) }},
}

func newTenantCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{Use: "tenant", Short: "Manage tenants (platform admin)"}
	f.bind(cmd)
	var name string
	create := &cobra.Command{
		Use: "create ID", Short: "Create a tenant", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var t store.Tenant
			if err := cl.Do(c.Context(), http.MethodPost, "/api/v1/tenants", api.CreateTenantRequest{ID: toTenant(args[0]), Name: name}, &t); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, t, tenantCols)
		},
	}
	create.Flags().StringVar(&name, "name", "", "display name (default: the id)")
	list := &cobra.Command{
		Use: "list", Short: "List tenants", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var ts []store.Tenant
			if err := cl.Do(c.Context(), http.MethodGet, "/api/v1/tenants", nil, &ts); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ts, tenantCols)
		},
	}
	get := &cobra.Command{
		Use: "get ID", Short: "Show a tenant", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var t store.Tenant
			if err := cl.Do(c.Context(), http.MethodGet, scopePath(args[0]), nil, &t); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, t, tenantCols)
		},
	}
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a tenant", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			return cl.Do(c.Context(), http.MethodDelete, scopePath(args[0]), nil, nil)
		},
	}
	cmd.AddCommand(create, list, get, del)
	return cmd
}
