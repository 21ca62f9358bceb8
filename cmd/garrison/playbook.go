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
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

var playbookCols = []cli.Column[respond.PlaybookInfo]{
	{Header: "NAME", Value: func(p respond.PlaybookInfo) string { return p.Name }},
	{Header: "VERSION", Value: func(p respond.PlaybookInfo) string { return strconv.Itoa(p.Version) }},
	{Header: "ENABLED", Value: func(p respond.PlaybookInfo) string { return strconv.FormatBool(p.Enabled) }},
	{Header: "SOURCE", Value: func(p respond.PlaybookInfo) string { return p.Source }},
	{Header: "MODE", Value: func(p respond.PlaybookInfo) string { return string(p.Mode) }},
	{Header: "KINDS", Value: func(p respond.PlaybookInfo) string {
		ks := make([]string, len(p.Kinds))
		for i, k := range p.Kinds {
			ks[i] = string(k)
		}
		return oneLineMax(strings.Join(ks, ","), 60)
	}},
	{Header: "STEPS", Value: func(p respond.PlaybookInfo) string {
		ss := make([]string, len(p.Steps))
		for i, s := range p.Steps {
			ss[i] = string(s)
		}
		return strings.Join(ss, ",")
	}},
}

var playbookVersionCols = []cli.Column[store.PlaybookVersion]{
	{Header: "VERSION", Value: func(v store.PlaybookVersion) string { return strconv.Itoa(v.Version) }},
	{Header: "ACTOR", Value: func(v store.PlaybookVersion) string { return v.Actor }},
	{Header: "CREATED", Value: func(v store.PlaybookVersion) string { return cli.Time(v.CreatedAt) }},
	{Header: "BYTES", Value: func(v store.PlaybookVersion) string { return strconv.Itoa(len(v.YAML)) }},
}

var approvalCols = []cli.Column[store.Action]{
	{Header: "ID", Value: func(a store.Action) string { return a.ID }},
	{Header: "DEVICE", Value: func(a store.Action) string { return string(a.Device) }},
	{Header: "KIND", Value: func(a store.Action) string { return a.Kind }},
	{Header: "PLAYBOOK", Value: func(a store.Action) string { return a.Playbook }},
	{Header: "STATE", Value: func(a store.Action) string { return string(a.State) }},
	{Header: "CREATED", Value: func(a store.Action) string { return cli.Time(a.CreatedAt) }},
	{Header: "REASON", Value: func(a store.Action) string { return oneLineMax(a.Reason, 80) }},
}

// approvalDetailCols are the columns of `approval show`: the whole reason,
// and who decided.
var approvalDetailCols = []cli.Column[store.Action]{
	{Header: "ID", Value: func(a store.Action) string { return a.ID }},
	{Header: "DEVICE", Value: func(a store.Action) string { return string(a.Device) }},
	{Header: "KIND", Value: func(a store.Action) string { return a.Kind }},
	{Header: "ALERT", Value: func(a store.Action) string { return a.AlertID }},
	{Header: "PLAYBOOK", Value: func(a store.Action) string { return a.Playbook }},
	{Header: "STATE", Value: func(a store.Action) string { return string(a.State) }},
	{Header: "ACTOR", Value: func(a store.Action) string { return a.Actor }},
	{Header: "UPDATED", Value: func(a store.Action) string { return cli.Time(a.UpdatedAt) }},
	{Header: "REASON", Value: func(a store.Action) string { return oneLineMax(a.Reason, 600) }},
}

// oneLineMax flattens s to one line of at most n runes.
func oneLineMax(s string, n int) string {
	r := []rune(strings.Join(strings.Fields(s), " "))
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return string(r)
}

// tenantCall is one API request under the tenant's prefix.
type tenantCall func(c *cobra.Command, method, path string, in, out any) error

// tenantCmd builds a command group with the API flags and a required
// --tenant, and the call its subcommands use.
func tenantCmd(e *cliEnv, f *apiFlags, use, short string) (*cobra.Command, tenantCall) {
	var tenant string
	cmd := &cobra.Command{Use: use, Short: short}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	call := func(c *cobra.Command, method, path string, in, out any) error {
		b, err := tenantBase(tenant)
		if err != nil {
			return err
		}
		cl, err := f.client(e)
		if err != nil {
			return err
		}
		return cl.Do(c.Context(), method, b+path, in, out)
	}
	return cmd, call
}

func newPlaybookCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd, call := tenantCmd(e, &f, "playbook", "List, show, upload (versioned), enable and disable the tenant's response playbooks")
	pbPath := func(name string) string { return "/playbooks/" + url.PathEscape(name) }
	one := func(c *cobra.Command, method, path string, in any) error {
		var p respond.PlaybookInfo
		if err := call(c, method, path, in, &p); err != nil {
			return err
		}
		p.YAML = ""
		return cli.PrintOne(e.Stdout, f.output, p, playbookCols)
	}

	list := &cobra.Command{
		Use: "list", Short: "List the playbooks: the built-in defaults (as replaced or disabled) and the tenant's own", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var ps []respond.PlaybookInfo
			if err := call(c, http.MethodGet, "/playbooks", nil, &ps); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ps, playbookCols)
		},
	}

	var version int
	show := &cobra.Command{
		Use: "show NAME [--version N]", Short: "Show a playbook and its YAML (the current version, or --version N; 0 is the built-in default)",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if c.Flags().Changed("version") {
				var v store.PlaybookVersion
				if err := call(c, http.MethodGet, pbPath(args[0])+"/versions/"+strconv.Itoa(version), nil, &v); err != nil {
					return err
				}
				if f.output == "json" {
					return cli.PrintOne(e.Stdout, f.output, v, nil)
				}
				if err := cli.PrintOne(e.Stdout, f.output, v, playbookVersionCols); err != nil {
					return err
				}
				_, err := fmt.Fprintf(e.Stdout, "\n%s", keepLines(withNewline(v.YAML)))
				return err
			}
			var p respond.PlaybookInfo
			if err := call(c, http.MethodGet, pbPath(args[0]), nil, &p); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, p, nil)
			}
			doc := p.YAML
			p.YAML = ""
			if err := cli.PrintOne(e.Stdout, f.output, p, playbookCols); err != nil {
				return err
			}
			_, err := fmt.Fprintf(e.Stdout, "\n%s", keepLines(withNewline(doc)))
			return err
		},
	}
	show.Flags().IntVar(&version, "version", 0, "show this version (0: the built-in default)")

	put := &cobra.Command{
		Use:   "put NAME FILE.yaml",
		Short: "Upload a playbook (YAML: trigger, mode, steps; - for stdin) as its next version; every problem is reported with its line",
		Long: "Upload one playbook as the next version of NAME. The document holds one playbook:\n\n" +
			"  trigger:\n    kinds: [sim.imei_mismatch]\n    min_severity: medium\n  mode: auto\n  steps:\n    - quarantine\n    - notify: {channel: soc}\n\n" +
			"An invalid document is refused with every problem and its line, and nothing is stored.",
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			doc, err := readDoc(args[1], respond.MaxPlaybookBytes)
			if err != nil {
				return err
			}
			var p respond.PlaybookInfo
			err = call(c, http.MethodPut, pbPath(args[0]), api.PutPlaybookRequest{YAML: string(doc)}, &p)
			var ae *cli.APIError
			if errors.As(err, &ae) && ae.Code == api.CodeInvalid {
				if problems, ok := strings.CutPrefix(ae.Message, "invalid playbooks: "); ok {
					fmt.Fprintf(e.Stderr, "%s: playbook %s refused, nothing stored:\n", args[1], args[0])
					lines := splitProblems(problems)
					for _, l := range lines {
						fmt.Fprintf(e.Stderr, "  %s:%s\n", args[1], cli.Sanitize(strings.TrimPrefix(l, "line ")))
					}
					return fmt.Errorf("invalid playbook: %d problem(s)", len(lines))
				}
			}
			if err != nil {
				return err
			}
			p.YAML = ""
			return cli.PrintOne(e.Stdout, f.output, p, playbookCols)
		},
	}

	versions := &cobra.Command{
		Use: "versions NAME", Short: "List a playbook's versions, oldest first (0 is the built-in default)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var vs []store.PlaybookVersion
			if err := call(c, http.MethodGet, pbPath(args[0])+"/versions", nil, &vs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, vs, playbookVersionCols)
		},
	}
	enable := &cobra.Command{
		Use: "enable NAME", Short: "Enable a playbook", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return one(c, http.MethodPost, pbPath(args[0])+"/enable", nil)
		},
	}
	disable := &cobra.Command{
		Use: "disable NAME", Short: "Disable a playbook (a built-in default included)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return one(c, http.MethodPost, pbPath(args[0])+"/disable", nil)
		},
	}
	cmd.AddCommand(list, show, put, versions, enable, disable)
	return cmd
}

// splitProblems splits "line 3: a; line 7: b" into its problems (a
// problem's own text may hold "; ").
func splitProblems(s string) []string {
	var out []string
	for {
		i := strings.Index(s, "; line ")
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+2:]
	}
}

func withNewline(s string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}

func newApprovalCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd, call := tenantCmd(e, &f, "approval", "List the response actions waiting for a human, and approve or reject them")
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List actions waiting for approval, oldest first", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := "/approvals"
			if limit > 0 {
				path += "?limit=" + strconv.Itoa(limit)
			}
			var as []store.Action
			if err := call(c, http.MethodGet, path, nil, &as); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, as, approvalCols)
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100)")
	decide := func(decision, use, short string) *cobra.Command {
		var reason string
		d := &cobra.Command{
			Use: use + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				if decision == "reject" && strings.TrimSpace(reason) == "" {
					return errors.New("--reason is required to reject: say why the action must not run")
				}
				var a store.Action
				if err := call(c, http.MethodPost, "/approvals", api.ApprovalRequest{Action: args[0], Decision: decision, Reason: reason}, &a); err != nil {
					return err
				}
				return cli.PrintOne(e.Stdout, f.output, a, approvalCols)
			},
		}
		help := "why (optional; kept on the action and in the audit log)"
		if decision == "reject" {
			help = "why the action must not run (required; one line, at most 500 bytes; kept on the action and in the audit log)"
		}
		d.Flags().StringVar(&reason, "reason", "", help)
		return d
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show one action, waiting or decided, with who decided and why", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var a store.Action
			if err := call(c, http.MethodGet, "/actions/"+url.PathEscape(args[0]), nil, &a); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, a, approvalDetailCols)
		},
	}
	cmd.AddCommand(list, show,
		decide("approve", "approve", "Approve an action (it runs now, as you; a wait_approval step runs the playbook's remaining steps)"),
		decide("reject", "reject", "Reject an action with --reason (it never runs)"))
	return cmd
}
