package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/store"
)

var commandCols = []cli.Column[store.Command]{
	{Header: "ID", Value: func(c store.Command) string { return c.ID }},
	{Header: "DEVICE", Value: func(c store.Command) string { return string(c.Device) }},
	{Header: "NAME", Value: func(c store.Command) string { return c.Name }},
	{Header: "STATUS", Value: func(c store.Command) string { return string(c.Status) }},
	{Header: "OUTPUT", Value: func(c store.Command) string { return oneLine(c.Output, 60) }},
	{Header: "ERROR", Value: func(c store.Command) string { return oneLine(c.Error, 60) }},
	{Header: "CREATED", Value: func(c store.Command) string { return cli.Time(c.CreatedAt) }},
}

func oneLine(s string, n int) string {
	b := []rune(s)
	for i, r := range b {
		if r == '\n' || r == '\r' || r == '\t' {
			b[i] = ' '
		}
	}
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// errCommandFailed makes `device command --wait` exit non-zero when the
// device answered not ok.
var errCommandFailed = errors.New("the device reported the command failed")

// deviceCommandCmds are `device command` and `device commands`.
func deviceCommandCmds(e *cliEnv, f *apiFlags, run func(func(*cobra.Command, *cli.Client, string, []string) error) func(*cobra.Command, []string) error) []*cobra.Command {
	path := func(base, id string) string { return base + "/" + url.PathEscape(id) + "/commands" }
	var args string
	var ttl, wait time.Duration
	send := &cobra.Command{
		Use:   "command ID NAME",
		Short: "Send a command to a device (ping, reboot, report, or one its application registered); --wait for its outcome",
		Long: "Send a command to a device through the broker. The device answers with its outcome, shown by\n" +
			"`device commands ID`. With --wait the command polls until the device answered (or the wait ends)\n" +
			"and exits non-zero if the device reported a failure.",
		Args: cobra.ExactArgs(2),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, a []string) error {
			req := command.Request{Name: a[1], TTLSeconds: int(ttl / time.Second)}
			if args != "" {
				if !json.Valid([]byte(args)) {
					return errors.New("--args must be a JSON object")
				}
				req.Args = json.RawMessage(args)
			}
			var cmd store.Command
			if err := cl.Do(c.Context(), http.MethodPost, path(base, a[0]), req, &cmd); err != nil {
				return err
			}
			if wait > 0 {
				deadline := time.Now().Add(wait)
				for cmd.Status == store.CommandSent || cmd.Status == store.CommandOffline {
					if time.Now().After(deadline) {
						break
					}
					select {
					case <-c.Context().Done():
						return c.Context().Err()
					case <-time.After(200 * time.Millisecond):
					}
					if err := cl.Do(c.Context(), http.MethodGet, path(base, a[0])+"/"+url.PathEscape(cmd.ID), nil, &cmd); err != nil {
						return err
					}
				}
			}
			if err := cli.PrintOne(e.Stdout, f.output, cmd, commandCols); err != nil {
				return err
			}
			if cmd.Status == store.CommandFailed {
				return errCommandFailed
			}
			return nil
		}),
	}
	send.Flags().StringVar(&args, "args", "", `arguments, a JSON object, e.g. '{"precision":"10m"}'`)
	send.Flags().DurationVar(&ttl, "ttl", 0, "the device refuses the command after this long (default 5m, at most 24h)")
	send.Flags().DurationVar(&wait, "wait", 0, "wait this long for the device's answer, e.g. 30s")

	var limit int
	list := &cobra.Command{
		Use: "commands ID", Short: "List a device's commands and their outcomes, newest first", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, a []string) error {
			p := path(base, a[0])
			if limit > 0 {
				p += "?limit=" + strconv.Itoa(limit)
			}
			var out api.CommandList
			if err := cl.Do(c.Context(), http.MethodGet, p, nil, &out); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, out.Commands, commandCols)
		}),
	}
	list.Flags().IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many (server default %d)", 100))
	return []*cobra.Command{send, list}
}
