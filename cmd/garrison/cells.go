package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/connectivity"
)

// newCellsCmd is `garrison cells`: the platform's cell table, which turns
// the cells in RADIUS accounting records and provider webhooks into
// positions.
func newCellsCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{Use: "cells", Short: "Manage the cell table (cell positions for network-side locations)"}
	f.bind(cmd)
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import cells from a CSV in the OpenCellID layout (radio,mcc,net,area,cell[,unit],lon,lat,range,...); needs a platform-admin token",
		Long: "Streams FILE to the server, which imports it in batches as it reads. Rows that do not parse or are out of\n" +
			"range are skipped and reported with their line number; the others are imported (a cell already in the\n" +
			"table is replaced).",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := f.client(e)
			if err != nil {
				return err
			}
			fh, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer fh.Close()
			code, body, err := cl.Send(c.Context(), http.MethodPost, "/api/v1/platform/cells/import", "text/csv", fh)
			if err != nil {
				return err
			}
			if code/100 != 2 {
				var eb api.ErrorBody
				if json.Unmarshal(body, &eb) != nil || eb.Error.Code == "" {
					return &cli.APIError{Status: code, Code: "http", Message: cli.Sanitize(strings.TrimSpace(string(body)))}
				}
				return &cli.APIError{Status: code, Code: eb.Error.Code, Message: cli.Sanitize(eb.Error.Message)}
			}
			var res connectivity.ImportResult
			if err := json.Unmarshal(body, &res); err != nil {
				return fmt.Errorf("cells import: unexpected answer: %w", err)
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, res, nil)
			}
			for i, r := range res.Errors {
				if i == 50 {
					fmt.Fprintf(e.Stderr, "... and %d more bad rows (use -o json to see the first %d)\n", res.Rejected-50, connectivity.MaxRowErrors)
					break
				}
				fmt.Fprintf(e.Stderr, "line %d: %s\n", r.Line, cli.Sanitize(r.Error))
			}
			_, err = fmt.Fprintf(e.Stdout, "imported %d cells from %d rows (%d rejected)\n", res.Imported, res.Rows, res.Rejected)
			return err
		},
	}
	cmd.AddCommand(imp)
	return cmd
}
