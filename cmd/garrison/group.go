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
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

var groupCols = []cli.Column[registry.Group]{
	{Header: "NAME", Value: func(g registry.Group) string { return g.Name }},
	{Header: "KIND", Value: func(g registry.Group) string { return string(g.Kind) }},
	{Header: "SELECTOR", Value: func(g registry.Group) string { return g.Selector }},
	{Header: "DESCRIPTION", Value: func(g registry.Group) string { return g.Description }},
	{Header: "UPDATED", Value: func(g registry.Group) string { return cli.Time(g.UpdatedAt) }},
}

var groupInfoCols = []cli.Column[registry.GroupInfo]{
	{Header: "NAME", Value: func(g registry.GroupInfo) string { return g.Group.Name }},
	{Header: "KIND", Value: func(g registry.GroupInfo) string { return string(g.Group.Kind) }},
	{Header: "SELECTOR", Value: func(g registry.GroupInfo) string { return g.Group.Selector }},
	{Header: "MEMBERS", Value: func(g registry.GroupInfo) string { return strconv.Itoa(g.Members) }},
	{Header: "DESCRIPTION", Value: func(g registry.GroupInfo) string { return g.Group.Description }},
	{Header: "UPDATED", Value: func(g registry.GroupInfo) string { return cli.Time(g.Group.UpdatedAt) }},
}

func newGroupCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Manage device groups of a tenant: static (members by id) or dynamic (a selector)",
		Long: "A static group's members are added and removed by device id. A dynamic group's members are the devices its\n" +
			"selector matches when they are selected (terms: model=M, firmware=V, state=S, group=G, tag=K or tag=K:V,\n" +
			"imsi^=PREFIX). The selector term group=G, in mass actions, revocations and campaigns too, matches both.",
	}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	run := tenantRun(e, &f, &tenant, "/groups")
	groupPath := func(base, name string) string { return base + "/" + url.PathEscape(name) }

	list := &cobra.Command{
		Use: "list", Short: "List the tenant's groups by name", Args: cobra.NoArgs,
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			var gs []registry.Group
			if err := cl.Do(c.Context(), http.MethodGet, base, nil, &gs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, gs, groupCols)
		}),
	}

	show := &cobra.Command{
		Use: "show NAME", Short: "Show a group with its current number of members", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var g registry.GroupInfo
			if err := cl.Do(c.Context(), http.MethodGet, groupPath(base, args[0]), nil, &g); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, g, groupInfoCols)
		}),
	}

	var cr api.CreateGroupRequest
	create := &cobra.Command{
		Use: "create NAME [--selector S]", Short: "Create a group: dynamic with --selector, static without", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			cr.Name, cr.Kind = args[0], string(store.GroupStatic)
			if cr.Selector != "" {
				cr.Kind = string(store.GroupDynamic)
			}
			var g registry.Group
			if err := cl.Do(c.Context(), http.MethodPost, base, cr, &g); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, g, groupCols)
		}),
	}
	create.Flags().StringVar(&cr.Selector, "selector", "", `makes a dynamic group, e.g. "model=acme-meter-2,tag=site:north"`)
	create.Flags().StringVar(&cr.Description, "description", "", "what the group is for")

	var desc, sel string
	update := &cobra.Command{
		Use: "update NAME [--description D] [--selector S]", Short: "Change a group's description or (dynamic groups) its selector",
		Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var req api.UpdateGroupRequest
			if c.Flags().Changed("description") {
				req.Description = &desc
			}
			if c.Flags().Changed("selector") {
				req.Selector = &sel
			}
			if req.Description == nil && req.Selector == nil {
				return errors.New("give --description or --selector")
			}
			var g registry.Group
			if err := cl.Do(c.Context(), http.MethodPatch, groupPath(base, args[0]), req, &g); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, g, groupCols)
		}),
	}
	update.Flags().StringVar(&desc, "description", "", "new description")
	update.Flags().StringVar(&sel, "selector", "", "new selector (dynamic groups)")

	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a group; its name is removed from every device", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var d api.GroupDeleted
			if err := cl.Do(c.Context(), http.MethodDelete, groupPath(base, args[0]), nil, &d); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, d, nil)
			}
			_, err := fmt.Fprintf(e.Stdout, "deleted group %s (removed from %d devices)\n", d.Group, len(d.RemovedFrom))
			return err
		}),
	}

	var after string
	var limit int
	members := &cobra.Command{
		Use: "members NAME", Short: "List a group's members by id (a dynamic group's selector is evaluated now)", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			q := url.Values{}
			if after != "" {
				q.Set("after", after)
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			path := groupPath(base, args[0]) + "/members"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var ds []store.Device
			if err := cl.Do(c.Context(), http.MethodGet, path, nil, &ds); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ds, deviceCols)
		}),
	}
	members.Flags().StringVar(&after, "after", "", "ids after this one (paging)")
	members.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100, max 1000)")

	change := func(verb, sub, done string) *cobra.Command {
		return &cobra.Command{
			Use:   verb + " NAME DEVICE...",
			Short: strings.ToUpper(verb[:1]) + verb[1:] + " devices " + sub + " a static group by id: all or none",
			Args:  cobra.MinimumNArgs(2),
			RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
				req := api.GroupMembersRequest{}
				for _, id := range args[1:] {
					req.Devices = append(req.Devices, event.DeviceID(id))
				}
				var m registry.Membership
				if err := cl.Do(c.Context(), http.MethodPost, groupPath(base, args[0])+"/members/"+verb, req, &m); err != nil {
					return err
				}
				if f.output == "json" {
					return cli.PrintOne(e.Stdout, f.output, m, nil)
				}
				_, err := fmt.Fprintf(e.Stdout, "%s: %d %s, %d unchanged\n", m.Group, len(m.Changed), done, len(m.Unchanged))
				return err
			}),
		}
	}

	cmd.AddCommand(list, show, create, update, del, members, change("add", "to", "added"), change("remove", "from", "removed"))
	return cmd
}
