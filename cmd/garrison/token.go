package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

var tokenCols = []cli.Column[store.Token]{
	{Header: "ID", Value: func(t store.Token) string { return t.ID }},
	{Header: "NAME", Value: func(t store.Token) string { return t.Name }},
	{Header: "OPERATOR", Value: func(t store.Token) string { return t.Operator }},
	{Header: "ROLE", Value: func(t store.Token) string { return string(t.Role) }},
	{Header: "EXPIRES", Value: func(t store.Token) string { return cli.Time(t.ExpiresAt) }},
	{Header: "REVOKED", Value: func(t store.Token) string {
		if t.RevokedAt == nil {
			return "-"
		}
		return cli.Time(*t.RevokedAt)
	}},
}

func toTenant(s string) event.TenantID { return event.TenantID(s) }

func newTokenCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "token", Short: "Manage API tokens of a tenant (or of the platform without --tenant)"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (empty: platform tokens)")

	var req api.CreateTokenRequest
	var role string
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a token; its secret is printed once", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			req.Name, req.Role = args[0], store.Role(role)
			var ct api.CreatedToken
			if err := cl.Do(c.Context(), http.MethodPost, scopePath(tenant)+"/tokens", req, &ct); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, ct, nil)
			}
			if err := cli.PrintOne(e.Stdout, f.output, ct.Token, tokenCols); err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.Stdout, "\nSecret (shown once, store it now):\n%s\n", ct.Secret)
			return err
		},
	}
	create.Flags().StringVar(&role, "role", "", "role: admin, operator, auditor or viewer (platform tokens: platform-admin)")
	create.Flags().StringVar(&req.Operator, "operator", "", "existing operator id (default: a new service operator named NAME)")
	create.Flags().StringVar(&req.TTL, "ttl", "", "lifetime, e.g. 720h (default: the server's api.token_ttl)")

	list := &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var ts []store.Token
			if err := cl.Do(c.Context(), http.MethodGet, scopePath(tenant)+"/tokens", nil, &ts); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ts, tokenCols)
		},
	}
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			return cl.Do(c.Context(), http.MethodDelete, scopePath(tenant)+"/tokens/"+args[0], nil, nil)
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
