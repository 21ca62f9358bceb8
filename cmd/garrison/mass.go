package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

var massCols = []cli.Column[store.MassJob]{
	{Header: "ID", Value: func(j store.MassJob) string { return j.ID }},
	{Header: "KIND", Value: func(j store.MassJob) string { return j.Kind }},
	{Header: "STATE", Value: func(j store.MassJob) string { return j.State }},
	{Header: "PROGRESS", Value: func(j store.MassJob) string { return fmt.Sprintf("%d/%d", j.Processed, j.Total) }},
	{Header: "CHANGED", Value: func(j store.MassJob) string { return strconv.Itoa(j.Changed) }},
	{Header: "UNCHANGED", Value: func(j store.MassJob) string { return strconv.Itoa(j.Unchanged) }},
	{Header: "REFUSED", Value: func(j store.MassJob) string { return strconv.Itoa(j.Refused) }},
	{Header: "RATE", Value: func(j store.MassJob) string {
		if j.Rate == 0 {
			return "max"
		}
		return strconv.Itoa(j.Rate) + "/s"
	}},
	{Header: "SELECTOR", Value: func(j store.MassJob) string { return oneLineMax(j.Selector, 60) }},
	{Header: "ACTOR", Value: func(j store.MassJob) string { return j.Actor }},
	{Header: "CREATED", Value: func(j store.MassJob) string { return cli.Time(j.CreatedAt) }},
}

// massSelector is the selector flags of the mass commands. They spell the
// terms of respond.ParseMassSelector (registry selector terms plus
// last_seen and alert) and are joined to --selector; the server validates
// and names a bad term.
type massSelector struct {
	raw                             string
	model, firmware, state, group   string
	tag, imsiPrefix                 string
	seenOver, seenWithin, openAlert string
}

func (s *massSelector) bind(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&s.raw, "selector", "", `selector text, e.g. "model=acme-meter-2,tag=site:north,last_seen>7d" ("*": every device)`)
	fl.StringVar(&s.model, "model", "", "devices of this model (model=)")
	fl.StringVar(&s.firmware, "firmware", "", "devices on this firmware version (firmware=)")
	fl.StringVar(&s.state, "state", "", "devices in this state (state=): registered, active, quarantined, suspended, revoked, decommissioned")
	fl.StringVar(&s.group, "group", "", "devices of this group (group=)")
	fl.StringVar(&s.tag, "tag", "", "devices with this tag, KEY or KEY:VALUE (tag=)")
	fl.StringVar(&s.imsiPrefix, "imsi-prefix", "", "devices whose IMSI starts with these digits (imsi^=)")
	fl.StringVar(&s.seenOver, "last-seen-over", "", "devices not seen for longer than this, or never, e.g. 24h or 7d (last_seen>)")
	fl.StringVar(&s.seenWithin, "last-seen-within", "", "devices seen within this, e.g. 15m (last_seen<)")
	fl.StringVar(&s.openAlert, "alert", "", "devices with an open or acknowledged alert of this kind, e.g. net.telnet_scan (alert=)")
}

// text is the selector the flags spell; it refuses an empty one so that
// "every device" is always written out as --selector '*'.
func (s *massSelector) text() (string, error) {
	var terms []string
	if r := strings.TrimSpace(s.raw); r != "" && r != "*" {
		terms = append(terms, r)
	}
	for _, t := range []struct{ key, v string }{
		{"model=", s.model}, {"firmware=", s.firmware}, {"state=", s.state}, {"group=", s.group},
		{"tag=", s.tag}, {"imsi^=", s.imsiPrefix}, {"last_seen>", s.seenOver}, {"last_seen<", s.seenWithin}, {"alert=", s.openAlert},
	} {
		if t.v != "" {
			terms = append(terms, t.key+t.v)
		}
	}
	if len(terms) == 0 {
		if strings.TrimSpace(s.raw) == "*" {
			return "*", nil
		}
		return "", errors.New(`no devices selected: give --selector or selector flags (--selector '*' for every device of the tenant)`)
	}
	return strings.Join(terms, ","), nil
}

func newMassCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	cmd, call := tenantCmd(e, &f, "mass", "Mass actions (quarantine, revoke, kick) over the devices a selector picks: preview, run at a set rate with progress, follow, cancel")
	var tenant string
	cmd.PersistentPreRun = func(c *cobra.Command, _ []string) { tenant, _ = c.Flags().GetString("tenant") }

	var sel massSelector
	var sample int
	preview := &cobra.Command{
		Use: "preview", Short: "Dry run: how many devices the selector picks, and a sample; nothing changes", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := massPreview(c, call, &sel, sample)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, p, nil)
			}
			fmt.Fprintf(e.Stdout, "%d device(s) match %s (nothing was changed)\n", p.Count, cli.Sanitize(p.Selector))
			if len(p.Sample) == 0 {
				return nil
			}
			fmt.Fprintf(e.Stdout, "\nSample of %d:\n", len(p.Sample))
			return cli.Print(e.Stdout, f.output, p.Sample, deviceCols)
		},
	}
	sel.bind(preview)
	preview.Flags().IntVar(&sample, "sample", 10, "devices to show (0-100)")

	var runSel massSelector
	var req api.MassRequest
	var yes, noFollow bool
	runCmd := &cobra.Command{
		Use:   "run --action quarantine|revoke|kick --selector S [--rate N] [--yes]",
		Short: "Start a mass action and follow its progress (Ctrl-C stops following, not the job)",
		Long: "Start a mass action over the devices the selector picks, then follow it until it is done or\n" +
			"cancelled. The job runs on the server: it survives a restart of the server (it resumes after the\n" +
			"last device handled) and of this command (follow it again with `garrison mass show ID --follow`).\n" +
			"Without --yes the count is shown and confirmation asked on a terminal; off a terminal --yes is required.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch req.Kind {
			case respond.MassQuarantine, respond.MassRevoke, respond.MassKick:
			default:
				return fmt.Errorf("--action must be quarantine, revoke or kick, got %q", req.Kind)
			}
			if req.Rate < 0 || req.Rate > respond.MaxMassRate {
				return fmt.Errorf("--rate must be 0 (as fast as possible) to %d devices per second", respond.MaxMassRate)
			}
			s, err := runSel.text()
			if err != nil {
				return err
			}
			req.Selector = s
			if !yes {
				if !isTerminal(os.Stdin) || !isTerminal(e.Stdout) {
					return errors.New("not on a terminal: give --yes to start a mass action (run `garrison mass preview` first to see what it picks)")
				}
				p, err := massPreview(c, call, &runSel, 5)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.Stdout, "%s %d device(s) matching %s", req.Kind, p.Count, cli.Sanitize(p.Selector))
				if req.Rate > 0 {
					fmt.Fprintf(e.Stdout, " at %d/s", req.Rate)
				}
				fmt.Fprint(e.Stdout, "? [y/N] ")
				line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					return errors.New("not started")
				}
			}
			var j store.MassJob
			if err := call(c, http.MethodPost, "/mass", req, &j); err != nil {
				return err
			}
			if noFollow {
				return cli.PrintOne(e.Stdout, f.output, j, massCols)
			}
			fmt.Fprintf(e.Stderr, "mass %s job %s started: %d device(s) selected by %s\n", j.Kind, j.ID, j.Total, cli.Sanitize(j.Selector))
			return followMass(c.Context(), e, call, c, tenant, f.output, j)
		},
	}
	runSel.bind(runCmd)
	runCmd.Flags().StringVar(&req.Kind, "action", "", "quarantine, revoke or kick (required)")
	runCmd.Flags().IntVar(&req.Rate, "rate", 0, "devices per second (0: as fast as the store allows)")
	runCmd.Flags().StringVar(&req.Reason, "reason", "", "why (kept in the audit log)")
	runCmd.Flags().BoolVar(&yes, "yes", false, "start without asking (required off a terminal)")
	runCmd.Flags().BoolVar(&noFollow, "no-follow", false, "print the job and return at once")

	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List mass-action jobs, newest first", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			path := "/mass"
			if limit > 0 {
				path += "?limit=" + strconv.Itoa(limit)
			}
			var js []store.MassJob
			if err := call(c, http.MethodGet, path, nil, &js); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, js, massCols)
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (server default 100)")

	var follow bool
	show := &cobra.Command{
		Use: "show ID [--follow]", Short: "Show a job and its progress; --follow until it ends", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var j store.MassJob
			if err := call(c, http.MethodGet, "/mass/"+url.PathEscape(args[0]), nil, &j); err != nil {
				return err
			}
			if follow {
				return followMass(c.Context(), e, call, c, tenant, f.output, j)
			}
			return printJob(e, f.output, j)
		},
	}
	show.Flags().BoolVar(&follow, "follow", false, "follow the job's progress until it is done or cancelled")

	cancel := &cobra.Command{
		Use: "cancel ID", Short: "Stop a running job after its current page (devices already handled stay as they are)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var j store.MassJob
			if err := call(c, http.MethodPost, "/mass/"+url.PathEscape(args[0])+"/cancel", nil, &j); err != nil {
				return err
			}
			return printJob(e, f.output, j)
		},
	}
	cmd.AddCommand(preview, runCmd, list, show, cancel)
	return cmd
}

func massPreview(c *cobra.Command, call tenantCall, sel *massSelector, sample int) (respond.MassPreview, error) {
	s, err := sel.text()
	if err != nil {
		return respond.MassPreview{}, err
	}
	q := url.Values{"selector": {s}, "sample": {strconv.Itoa(sample)}}
	var p respond.MassPreview
	err = call(c, http.MethodGet, "/mass/preview?"+q.Encode(), nil, &p)
	return p, err
}

func printJob(e *cliEnv, format string, j store.MassJob) error {
	if err := cli.PrintOne(e.Stdout, format, j, massCols); err != nil {
		return err
	}
	if j.Error != "" && format != "json" {
		fmt.Fprintf(e.Stdout, "\nerror: %s\n", cli.Sanitize(j.Error))
	}
	return nil
}

// Follow timings: how often the job is read, and how often a plain
// progress line is written off a terminal.
const (
	followPoll = 500 * time.Millisecond
	followLine = 2 * time.Second
)

// followMass polls the job until it leaves running, showing a progress bar
// on a terminal and a line every few seconds otherwise. Ctrl-C stops the
// following only; the job keeps running on the server.
func followMass(ctx context.Context, e *cliEnv, call tenantCall, c *cobra.Command, tenant, format string, j store.MassJob) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	c.SetContext(ctx)
	// Progress goes to stdout, or to stderr when stdout carries JSON.
	w := e.Stdout
	if format == "json" {
		w = e.Stderr
	}
	tty := isTerminal(w)
	var bar *progressbar.ProgressBar
	if tty {
		bar = progressbar.NewOptions(max(j.Total, 1), progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(fmt.Sprintf("%s %s", j.Kind, j.ID)), progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetPredictTime(true))
	}
	lastLine := time.Time{}
	lastProcessed := -1
	show := func(j store.MassJob) {
		if bar != nil {
			_ = bar.Set(j.Processed)
			return
		}
		if j.Processed != lastProcessed && time.Since(lastLine) >= followLine || j.State != respond.JobRunning {
			fmt.Fprintf(w, "%s %s: %d/%d processed (changed %d, unchanged %d, refused %d) %s\n",
				j.Kind, j.ID, j.Processed, j.Total, j.Changed, j.Unchanged, j.Refused, j.State)
			lastLine, lastProcessed = time.Now(), j.Processed
		}
	}
	for {
		show(j)
		if j.State != respond.JobRunning {
			break
		}
		select {
		case <-ctx.Done():
			if bar != nil {
				_, _ = io.WriteString(w, "\n")
			}
			resume := fmt.Sprintf("garrison mass show %s --follow --tenant %s", j.ID, tenant)
			fmt.Fprintf(e.Stderr, "stopped following; job %s keeps running on the server (%d/%d). Follow it again: %s\n",
				j.ID, j.Processed, j.Total, resume)
			return &exitError{code: 130, err: errors.New("interrupted")}
		case <-time.After(followPoll):
		}
		var next store.MassJob
		if err := call(c, http.MethodGet, "/mass/"+url.PathEscape(j.ID), nil, &next); err != nil {
			if ctx.Err() != nil {
				continue
			}
			return err
		}
		j = next
	}
	if bar != nil {
		_ = bar.Finish()
		_, _ = io.WriteString(w, "\n")
	}
	if err := printJob(e, format, j); err != nil {
		return err
	}
	switch {
	case j.Error != "":
		return fmt.Errorf("mass job %s %s: %s", j.ID, j.State, cli.Sanitize(j.Error))
	case j.State == respond.JobDone:
		return nil
	}
	return fmt.Errorf("mass job %s ended %s after %d of %d device(s)", j.ID, j.State, j.Processed, j.Total)
}
