package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/store"
)

var webhookCols = []cli.Column[store.Webhook]{
	{Header: "ID", Value: func(w store.Webhook) string { return w.ID }},
	{Header: "NAME", Value: func(w store.Webhook) string { return w.Name }},
	{Header: "URL", Value: func(w store.Webhook) string { return w.URL }},
	{Header: "EVENTS", Value: func(w store.Webhook) string {
		if len(w.Events) == 0 {
			return "all"
		}
		return strings.Join(w.Events, ",")
	}},
	{Header: "CHANNEL", Value: func(w store.Webhook) string { return w.Channel }},
}

var deliveryCols = []cli.Column[store.Delivery]{
	{Header: "ID", Value: func(d store.Delivery) string { return d.ID }},
	{Header: "WEBHOOK", Value: func(d store.Delivery) string { return d.Webhook }},
	{Header: "TYPE", Value: func(d store.Delivery) string { return d.Type }},
	{Header: "STATE", Value: func(d store.Delivery) string { return string(d.State) }},
	{Header: "ATTEMPTS", Value: func(d store.Delivery) string { return strconv.Itoa(d.Attempts) }},
	{Header: "LAST ERROR", Value: func(d store.Delivery) string { return d.LastError }},
	{Header: "CREATED", Value: func(d store.Delivery) string { return cli.Time(d.CreatedAt) }},
}

func newWebhookCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "webhook", Short: "Manage a tenant's webhook endpoints and their dead-letter list"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	call := func(c *cobra.Command, method, path string, in, out any) error {
		if tenant == "" {
			return errors.New("--tenant is required")
		}
		cl, err := f.client(e)
		if err != nil {
			return err
		}
		return cl.Do(c.Context(), method, "/api/v1/tenants/"+url.PathEscape(tenant)+path, in, out)
	}

	list := &cobra.Command{
		Use: "list", Short: "List webhook endpoints", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var ws []store.Webhook
			if err := call(c, http.MethodGet, "/webhooks", nil, &ws); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ws, webhookCols)
		},
	}
	var req api.CreateWebhookRequest
	create := &cobra.Command{
		Use: "create NAME URL", Short: "Create a webhook endpoint; prints a generated signing secret once", Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			req.Name, req.URL = args[0], args[1]
			req.Secret = e.getenv("GARRISON_WEBHOOK_SECRET")
			var out api.WebhookCreated
			if err := call(c, http.MethodPost, "/webhooks", req, &out); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, out, nil)
			}
			if err := cli.PrintOne(e.Stdout, f.output, out.Webhook, webhookCols); err != nil {
				return err
			}
			if out.Secret != "" {
				fmt.Fprintf(e.Stdout, "\nSigning secret (shown once): %s\n", out.Secret)
			}
			return nil
		},
	}
	create.Flags().StringSliceVar(&req.Events, "events", nil, "event types to receive (default all): alert.raised, action.taken, alert.state_changed, incident.opened, incident.updated, incident.state, notification")
	create.Flags().StringVar(&req.Channel, "channel", "", "notify channel of playbooks this endpoint serves (default \"default\")")
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a webhook endpoint and its queued deliveries", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return call(c, http.MethodDelete, "/webhooks/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	var state string
	deliveries := &cobra.Command{
		Use: "deliveries", Short: "List deliveries, newest first (--state dead is the dead-letter list)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := "/deliveries"
			if state != "" {
				path += "?state=" + url.QueryEscape(state)
			}
			var ds []store.Delivery
			if err := call(c, http.MethodGet, path, nil, &ds); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ds, deliveryCols)
		},
	}
	deliveries.Flags().StringVar(&state, "state", "", "pending, delivered or dead")
	redrive := &cobra.Command{
		Use: "redrive ID", Short: "Send a dead-lettered delivery again", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var d store.Delivery
			if err := call(c, http.MethodPost, "/deliveries/"+url.PathEscape(args[0])+"/redrive", nil, &d); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, d, deliveryCols)
		},
	}
	cmd.AddCommand(list, create, del, deliveries, redrive)
	return cmd
}
