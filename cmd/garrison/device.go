package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

var deviceCols = []cli.Column[store.Device]{
	{Header: "ID", Value: func(d store.Device) string { return string(d.ID) }},
	{Header: "MODEL", Value: func(d store.Device) string { return d.Model }},
	{Header: "STATE", Value: func(d store.Device) string { return string(d.State) }},
	{Header: "SERIAL", Value: func(d store.Device) string { return d.Serial }},
	{Header: "IMEI", Value: func(d store.Device) string { return d.IMEI }},
	{Header: "ICCID", Value: func(d store.Device) string { return d.ICCID }},
	{Header: "IMSI", Value: func(d store.Device) string { return d.IMSI }},
	{Header: "FIRMWARE", Value: func(d store.Device) string { return d.Firmware }},
	{Header: "LAST SEEN", Value: func(d store.Device) string {
		if d.LastSeen == nil {
			return "-"
		}
		return cli.Time(*d.LastSeen)
	}},
}

var revocationCols = []cli.Column[identity.Revocation]{
	{Header: "DRY RUN", Value: func(r identity.Revocation) string { return strconv.FormatBool(r.DryRun) }},
	{Header: "DEVICES", Value: func(r identity.Revocation) string { return strconv.Itoa(r.Devices) }},
	{Header: "CERTIFICATES", Value: func(r identity.Revocation) string { return strconv.Itoa(r.Certificates) }},
	{Header: "STATE CHANGED", Value: func(r identity.Revocation) string { return strconv.Itoa(r.StateChanged) }},
	{Header: "STATE KEPT", Value: func(r identity.Revocation) string { return strconv.Itoa(r.StateKept) }},
}

func newDeviceCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "device", Short: "Manage the device registry of a tenant: list, import manifests, lifecycle, SIM bindings, revocation, commands"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	run := tenantRun(e, &f, &tenant, "/devices")
	devPath := func(base, id string) string { return base + "/" + url.PathEscape(id) }

	var model, state, after string
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List devices ordered by id", Args: cobra.NoArgs,
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"model": model, "state": state, "after": after} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			if len(q) > 0 {
				base += "?" + q.Encode()
			}
			var ds []store.Device
			if err := cl.Do(c.Context(), http.MethodGet, base, nil, &ds); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, ds, deviceCols)
		}),
	}
	list.Flags().StringVar(&model, "model", "", "only this model")
	list.Flags().StringVar(&state, "state", "", "only this state")
	list.Flags().StringVar(&after, "after", "", "ids after this one (paging)")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100, max 1000)")

	show := &cobra.Command{
		Use: "show ID", Short: "Show one device", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var d store.Device
			if err := cl.Do(c.Context(), http.MethodGet, devPath(base, args[0]), nil, &d); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, d, deviceCols)
		}),
	}

	var cr api.CreateDeviceRequest
	create := &cobra.Command{
		Use: "create ID", Short: "Register one device", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			cr.ID = args[0]
			var d store.Device
			if err := cl.Do(c.Context(), http.MethodPost, base, cr, &d); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, d, deviceCols)
		}),
	}
	create.Flags().StringVar(&cr.Model, "model", "", "model (required)")
	create.Flags().StringVar(&cr.Serial, "serial", "", "hardware serial")
	create.Flags().StringVar(&cr.IMEI, "imei", "", "IMEI")
	create.Flags().StringVar(&cr.ICCID, "iccid", "", "SIM ICCID")
	create.Flags().StringVar(&cr.IMSI, "imsi", "", "SIM IMSI")
	create.Flags().StringVar(&cr.Name, "name", "", "display name")

	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a manufacturing manifest (CSV: serial,model,imei,iccid,imsi[,id]); all rows or none",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			fh, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer fh.Close()
			code, body, err := cl.Send(c.Context(), http.MethodPost, base+"/import", "text/csv", fh)
			if err != nil {
				return err
			}
			if code/100 == 2 {
				var res registry.ImportResult
				if err := json.Unmarshal(body, &res); err != nil {
					return err
				}
				if f.output == "json" {
					return cli.PrintOne(e.Stdout, f.output, res, nil)
				}
				_, err := fmt.Fprintf(e.Stdout, "imported %d devices (manifest sha256 %s)\n", res.Imported, res.SHA256)
				return err
			}
			var ref api.ManifestRefused
			if json.Unmarshal(body, &ref) != nil || ref.Error.Code == "" {
				return &cli.APIError{Status: code, Code: "http", Message: strings.TrimSpace(string(body))}
			}
			if f.output == "json" {
				_ = cli.PrintOne(e.Stdout, f.output, ref, nil)
			} else {
				for i, r := range ref.Rows {
					if i == 50 {
						fmt.Fprintf(e.Stderr, "... and %d more bad rows (use -o json for all listed)\n", ref.BadRows-50)
						break
					}
					fmt.Fprintf(e.Stderr, "line %d: %s\n", r.Line, cli.Sanitize(r.Msg))
				}
			}
			return &cli.APIError{Status: code, Code: ref.Error.Code, Message: fmt.Sprintf("manifest refused, nothing imported: %d bad row(s)", ref.BadRows)}
		}),
	}

	var bind registry.Binding
	bindSIM := &cobra.Command{
		Use: "bind-sim ID", Short: "Bind a device to a SIM (ICCID, IMSI) and IMEI; empty flags clear", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var d store.Device
			if err := cl.Do(c.Context(), http.MethodPost, devPath(base, args[0])+"/sim", bind, &d); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, d, deviceCols)
		}),
	}
	bindSIM.Flags().StringVar(&bind.ICCID, "iccid", "", "SIM ICCID")
	bindSIM.Flags().StringVar(&bind.IMSI, "imsi", "", "SIM IMSI")
	bindSIM.Flags().StringVar(&bind.IMEI, "imei", "", "device IMEI")

	var reason string
	setState := &cobra.Command{
		Use: "set-state ID STATE", Short: "Move a device to another lifecycle state (active, quarantined, suspended, revoked, decommissioned)",
		Args: cobra.ExactArgs(2),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var ch api.StateChange
			req := api.SetStateRequest{State: store.DeviceState(args[1]), Reason: reason}
			if err := cl.Do(c.Context(), http.MethodPost, devPath(base, args[0])+"/state", req, &ch); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, ch, nil)
			}
			if !ch.Changed {
				_, err := fmt.Fprintf(e.Stdout, "%s already %s\n", ch.Device.ID, ch.Device.State)
				return err
			}
			_, err := fmt.Fprintf(e.Stdout, "%s: %s -> %s\n", ch.Device.ID, ch.From, ch.Device.State)
			return err
		}),
	}
	setState.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")

	var selector, revReason string
	var dryRun bool
	var sample int
	revoke := &cobra.Command{
		Use:   "revoke [ID] [--selector S] [--dry-run]",
		Short: "Revoke a device, or every device a selector picks in one operation: certificates (CRL, OCSP, live sessions) and state",
		Long: "Revoke one device by id, or with --selector every device it picks (terms: model=M, firmware=V, state=S,\n" +
			"group=G, tag=K or tag=K:V, imsi^=PREFIX; \"*\" for all). --dry-run shows the count and a sample and changes nothing.",
		Args: cobra.MaximumNArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			if (len(args) == 1) == (selector != "") {
				return errors.New("give a device id or --selector, not both")
			}
			var rv identity.Revocation
			var err error
			if selector != "" {
				err = cl.Do(c.Context(), http.MethodPost, base+"/revoke",
					api.RevokeSelectedRequest{Selector: selector, Reason: revReason, DryRun: dryRun, Sample: sample}, &rv)
			} else {
				err = cl.Do(c.Context(), http.MethodPost, devPath(base, args[0])+"/revoke",
					api.RevokeDeviceRequest{Reason: revReason, DryRun: dryRun}, &rv)
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, rv, nil)
			}
			if err := cli.PrintOne(e.Stdout, f.output, rv, revocationCols); err != nil {
				return err
			}
			if len(rv.Sample) > 0 {
				fmt.Fprintln(e.Stdout, "\nSample (nothing was changed):")
				return cli.Print(e.Stdout, f.output, rv.Sample, deviceCols)
			}
			return nil
		}),
	}
	revoke.Flags().StringVar(&selector, "selector", "", `devices to revoke, e.g. "model=acme-meter-2,tag=site:north"`)
	revoke.Flags().StringVar(&revReason, "reason", "", "unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn")
	revoke.Flags().BoolVar(&dryRun, "dry-run", false, "count and sample what would be revoked; change nothing")
	revoke.Flags().IntVar(&sample, "sample", 0, "devices to show in a dry run (server default 10, max 100)")

	var tok api.CreateEnrolTokenRequest
	token := &cobra.Command{
		Use: "enrol-token", Short: "Create an enrolment token for one device (--device) or a batch (--count, --model); printed once",
		Args: cobra.NoArgs,
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			var ct api.CreatedEnrolToken
			if err := cl.Do(c.Context(), http.MethodPost, strings.TrimSuffix(base, "/devices")+"/enrolment-tokens", tok, &ct); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, ct, nil)
			}
			_, err := fmt.Fprintf(e.Stdout, "token %s: %d use(s), expires %s\n\nSecret (shown once, give it to the device or the factory):\n%s\n",
				ct.Token.ID, ct.Token.Count, cli.Time(ct.Token.ExpiresAt), ct.Secret)
			return err
		}),
	}
	token.Flags().StringVar(&tok.Device, "device", "", "the one device this token enrols")
	token.Flags().IntVar(&tok.Count, "count", 0, "how many devices a batch token enrols (default 1)")
	token.Flags().StringSliceVar(&tok.Models, "model", nil, "only devices of these models (repeatable)")
	token.Flags().StringVar(&tok.TTL, "ttl", "", "lifetime, e.g. 72h (default 24h)")

	cmd.AddCommand(list, show, create, imp, bindSIM, setState, revoke, token)
	cmd.AddCommand(deviceCommandCmds(e, &f, run)...) // command.go
	cmd.AddCommand(devicePasswordCmd(e, &f, run))    // password.go
	return cmd
}
