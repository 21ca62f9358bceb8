package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/store"
)

var ruleCols = []cli.Column[store.Rule]{
	{Header: "ID", Value: func(r store.Rule) string { return r.ID }},
	{Header: "NAME", Value: func(r store.Rule) string { return r.Name }},
	{Header: "ENABLED", Value: func(r store.Rule) string { return strconv.FormatBool(r.Enabled) }},
	{Header: "SEVERITY", Value: func(r store.Rule) string { return r.Severity }},
	{Header: "ALERT KIND", Value: func(r store.Rule) string {
		if r.Kind == "" {
			return "rule." + strings.ReplaceAll(r.ID, "-", "_")
		}
		return string(r.Kind)
	}},
	{Header: "EVENTS", Value: func(r store.Rule) string {
		ks := make([]string, len(r.Events))
		for i, k := range r.Events {
			ks[i] = string(k)
		}
		if len(ks) == 0 {
			return "*"
		}
		return strings.Join(ks, ",")
	}},
	{Header: "VERSION", Value: func(r store.Rule) string { return strconv.Itoa(r.Version) }},
	{Header: "UPDATED", Value: func(r store.Rule) string { return cli.Time(r.UpdatedAt) }},
}

var matchCols = []cli.Column[api.RuleTestMatch]{
	{Header: "LINE", Value: func(m api.RuleTestMatch) string { return strconv.Itoa(m.Line) }},
	{Header: "DEVICE", Value: func(m api.RuleTestMatch) string { return string(m.Device) }},
	{Header: "KIND", Value: func(m api.RuleTestMatch) string { return string(m.Kind) }},
	{Header: "TIME", Value: func(m api.RuleTestMatch) string { return cli.Time(m.Time) }},
	{Header: "ALERT", Value: func(m api.RuleTestMatch) string { return m.AlertID }},
	{Header: "COUNT", Value: func(m api.RuleTestMatch) string { return strconv.Itoa(m.Count) }},
}

// maxRuleFile bounds what the CLI reads from a rule or events file; the
// server's body limit (api.max_body_bytes) applies besides.
const maxRuleFile = 64 << 20

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRuleFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxRuleFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxRuleFile)
	}
	return b, nil
}

// readRule reads a rule file: YAML (or JSON) with the fields of
// api.RuleRequest (id, name, description, expr, alert_kind, severity,
// events, enabled, version); unknown fields are refused.
func readRule(path string) (api.RuleRequest, error) {
	b, err := readLimited(path)
	if err != nil {
		return api.RuleRequest{}, err
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return api.RuleRequest{}, fmt.Errorf("%s: %w", path, err)
	}
	if _, ok := doc.(map[string]any); !ok {
		return api.RuleRequest{}, fmt.Errorf("%s: a rule is a mapping (id, name, expr, severity, ...)", path)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return api.RuleRequest{}, fmt.Errorf("%s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	var r api.RuleRequest
	if err := dec.Decode(&r); err != nil {
		return api.RuleRequest{}, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

func newRulesCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "rules", Short: "Write, try and manage a tenant's detection rules (CEL)"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	base := func() (string, error) {
		if tenant == "" {
			return "", errors.New("--tenant is required")
		}
		return "/api/v1/tenants/" + url.PathEscape(tenant) + "/rules", nil
	}
	do := func(c *cobra.Command, method, sub string, in, out any) error {
		path, err := base()
		if err != nil {
			return err
		}
		cl, err := f.client(e)
		if err != nil {
			return err
		}
		return cl.Do(c.Context(), method, path+sub, in, out)
	}

	list := &cobra.Command{
		Use: "list", Short: "List the tenant's rules", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var rs []store.Rule
			if err := do(c, http.MethodGet, "", nil, &rs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, rs, ruleCols)
		},
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show a rule with its expression", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var r store.Rule
			if err := do(c, http.MethodGet, "/"+url.PathEscape(args[0]), nil, &r); err != nil {
				return err
			}
			if err := cli.PrintOne(e.Stdout, f.output, r, ruleCols); err != nil || f.output == "json" {
				return err
			}
			_, err := fmt.Fprintf(e.Stdout, "\nExpression:\n%s\n", cli.Sanitize(r.Expr))
			return err
		},
	}

	var ruleFile string
	create := &cobra.Command{
		Use: "create --rule FILE", Short: "Create a rule from a YAML or JSON file (disabled unless it says enabled: true)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := readRule(ruleFile)
			if err != nil {
				return err
			}
			var out store.Rule
			if err := do(c, http.MethodPost, "", r, &out); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, out, ruleCols)
		},
	}
	create.Flags().StringVar(&ruleFile, "rule", "", "rule file (YAML or JSON)")
	_ = create.MarkFlagRequired("rule")

	update := &cobra.Command{
		Use: "update ID --rule FILE", Short: "Replace a rule with the file's content as its next version", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := readRule(ruleFile)
			if err != nil {
				return err
			}
			var out store.Rule
			if err := do(c, http.MethodPut, "/"+url.PathEscape(args[0]), r, &out); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, out, ruleCols)
		},
	}
	update.Flags().StringVar(&ruleFile, "rule", "", "rule file (YAML or JSON)")
	_ = update.MarkFlagRequired("rule")

	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a rule", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := do(c, http.MethodDelete, "/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			_, err := fmt.Fprintf(e.Stdout, "deleted rule %s\n", cli.Sanitize(args[0]))
			return err
		},
	}

	var eventsFile, savedID string
	test := &cobra.Command{
		Use:   "test (--rule FILE | --id ID) --events FILE",
		Short: "Evaluate a rule against recorded events (JSON lines) without changing anything",
		Long: "Evaluate a rule, from a file or a saved one, against events given as JSON lines (one event envelope per line)\n" +
			"and show which lines match and the alerts the rule would raise. Nothing is stored.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var r api.RuleRequest
			switch {
			case (ruleFile == "") == (savedID == ""):
				return errors.New("give exactly one of --rule FILE and --id ID")
			case ruleFile != "":
				var err error
				if r, err = readRule(ruleFile); err != nil {
					return err
				}
			default:
				var s store.Rule
				if err := do(c, http.MethodGet, "/"+url.PathEscape(savedID), nil, &s); err != nil {
					return err
				}
				r = api.RuleRequest{ID: s.ID, Name: s.Name, Description: s.Description, Expr: s.Expr, AlertKind: s.Kind,
					Severity: s.Severity, Events: s.Events, Enabled: s.Enabled}
			}
			evs, err := readLimited(eventsFile)
			if err != nil {
				return err
			}
			var res api.RuleTestResponse
			if err := do(c, http.MethodPost, "/test", api.RuleTestRequest{Rule: r, Events: string(evs)}, &res); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, res, nil)
			}
			w := e.Stdout
			fmt.Fprintf(w, "rule %s (alert %s): %d events, %d evaluated, %d matched, %d failed\n", cli.Sanitize(res.Rule),
				cli.Sanitize(string(res.AlertKind)), res.Events, res.Evaluated, res.Matched, res.ErrorCount)
			if len(res.Matches) > 0 {
				fmt.Fprintln(w)
				if err := cli.Print(w, f.output, res.Matches, matchCols); err != nil {
					return err
				}
			}
			if len(res.Errors) > 0 {
				fmt.Fprintln(w, "\nFailed evaluations (count as no match):")
				for _, x := range res.Errors {
					fmt.Fprintf(w, "  line %d: %s\n", x.Line, cli.Sanitize(x.Error))
				}
			}
			if len(res.Alerts) > 0 {
				fmt.Fprintln(w, "\nAlerts it would raise:")
				if err := cli.Print(w, f.output, res.Alerts, alertCols); err != nil {
					return err
				}
			}
			return nil
		},
	}
	test.Flags().StringVar(&ruleFile, "rule", "", "rule file (YAML or JSON)")
	test.Flags().StringVar(&savedID, "id", "", "a saved rule instead of a file")
	test.Flags().StringVar(&eventsFile, "events", "", "events file, JSON lines")
	_ = test.MarkFlagRequired("events")

	cmd.AddCommand(list, show, create, update, del, test)
	return cmd
}
