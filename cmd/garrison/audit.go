package main

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/store"
)

var auditCols = []cli.Column[store.AuditRecord]{
	{Header: "SEQ", Value: func(r store.AuditRecord) string { return strconv.FormatInt(r.Seq, 10) }},
	{Header: "TIME", Value: func(r store.AuditRecord) string { return cli.Time(r.Time) }},
	{Header: "ACTOR", Value: func(r store.AuditRecord) string { return r.Actor }},
	{Header: "ACTION", Value: func(r store.AuditRecord) string { return r.Action }},
	{Header: "TARGET", Value: func(r store.AuditRecord) string { return r.Target }},
}

var reportCols = []cli.Column[audit.Report]{
	{Header: "CHAIN", Value: func(r audit.Report) string { return string(r.Tenant) }},
	{Header: "OK", Value: func(r audit.Report) string { return strconv.FormatBool(r.OK) }},
	{Header: "RECORDS", Value: func(r audit.Report) string { return strconv.FormatInt(r.Checked, 10) }},
	{Header: "HEAD", Value: func(r audit.Report) string { return fmt.Sprintf("%d %.16x", r.HeadSeq, r.HeadHash) }},
	{Header: "FIRST BAD", Value: func(r audit.Report) string {
		if r.OK {
			return "-"
		}
		return fmt.Sprintf("record %d %s: %s", r.BadSeq, r.Problem, r.Detail)
	}},
}

func newAuditCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (empty: the platform chain)")

	var after int64
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List audit records", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			var rs []store.AuditRecord
			path := fmt.Sprintf("%s/audit?after=%d&limit=%d", scopePath(tenant), after, limit)
			if err := cl.Do(c.Context(), http.MethodGet, path, nil, &rs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, rs, auditCols)
		},
	}
	list.Flags().Int64Var(&after, "after", 0, "only records with a sequence number above this")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many records (1-1000)")

	var all bool
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the hash chain; exits 3 naming the first bad record",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			scopes := []string{tenant}
			if all {
				var ts []store.Tenant
				if err := cl.Do(c.Context(), http.MethodGet, "/api/v1/tenants", nil, &ts); err != nil {
					return err
				}
				scopes = []string{""}
				for _, t := range ts {
					scopes = append(scopes, string(t.ID))
				}
			}
			var reps []audit.Report
			var bad *audit.Report
			for _, s := range scopes {
				var rep audit.Report
				if err := cl.Do(c.Context(), http.MethodGet, scopePath(s)+"/audit/verify", nil, &rep); err != nil {
					return err
				}
				reps = append(reps, rep)
				if !rep.OK && bad == nil {
					bad = &reps[len(reps)-1]
				}
			}
			if err := cli.Print(e.Stdout, f.output, reps, reportCols); err != nil {
				return err
			}
			if bad != nil {
				return &exitError{code: 3, err: fmt.Errorf("audit chain %s is broken at record %d (%s): %s", bad.Tenant, bad.BadSeq, bad.Problem, bad.Detail)}
			}
			return nil
		},
	}
	verify.Flags().BoolVar(&all, "all", false, "verify the platform chain and every tenant's")
	cmd.AddCommand(list, verify)
	return cmd
}
