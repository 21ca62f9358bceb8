// Command garrison is the one Garrison binary: the platform (serve) and the
// operator commands that talk to its API.
//
// main only builds the command tree and runs it; every command parses its
// flags, loads what it needs and hands over to an internal package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// cliEnv is what every command reads from the outside world; tests swap it.
type cliEnv struct {
	Stdout, Stderr io.Writer
	Environ        []string
}

func (e *cliEnv) getenv(k string) string {
	for i := len(e.Environ) - 1; i >= 0; i-- {
		if n, v, ok := cutEnv(e.Environ[i]); ok && n == k {
			return v
		}
	}
	return ""
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return "", "", false
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// newRootCmd lists every subcommand in one place.
func newRootCmd(e *cliEnv) *cobra.Command {
	root := &cobra.Command{
		Use:           "garrison",
		Short:         "Garrison: security platform for fleets of cellular IoT devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(e.Stdout)
	root.SetErr(e.Stderr)
	root.AddCommand(
		newServeCmd(e),
		newConfigCmd(e),
		newTenantCmd(e),
		newTokenCmd(e),
		newAuditCmd(e),
		newAlertCmd(e),
		newRulesCmd(e),
		newDetectorCmd(e),
		newIncidentCmd(e),
		newPlaybookCmd(e),
		newApprovalCmd(e),
		newMassCmd(e),
		newWebhookCmd(e),
		newSyslogCmd(e),
		newCACmd(e),
		newDeviceCmd(e),
		newGroupCmd(e),
		newFirmwareCmd(e),
		newCampaignCmd(e),
		newCellsCmd(e),
		newSimulateCmd(e),
		newDemoCmd(e),
		newAgentCmd(e),
	)
	return root
}

func main() {
	e := &cliEnv{Stdout: os.Stdout, Stderr: os.Stderr, Environ: os.Environ()}
	os.Exit(run(context.Background(), e, os.Args[1:]))
}

func run(ctx context.Context, e *cliEnv, args []string) int {
	root := newRootCmd(e)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(e.Stderr, "garrison:", err)
		var xe *exitError
		if errors.As(err, &xe) {
			return xe.code
		}
		return 1
	}
	return 0
}

// newLogger builds the process logger: text on a terminal, JSON otherwise,
// unless format forces one.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config
	opts := &slog.HandlerOptions{Level: lv}
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
