package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/sim"
)

// newSimulateCmd replays a scenario through the platform on embedded
// defaults and scores the alerts and responses it stored.
func newSimulateCmd(e *cliEnv) *cobra.Command {
	var (
		scenario, report, dataDir, logLevel string
		transport                           string
		check, quiet                        bool
	)
	cmd := &cobra.Command{
		Use:   "simulate --scenario FILE [--report OUT.json] [--check]",
		Short: "Replay a labelled fleet scenario through ingestion, detection and response, and score it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := sim.Load(scenario)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			if transport != "entry" && transport != "mqtt" {
				return &exitError{code: 2, err: fmt.Errorf("--transport must be entry or mqtt, got %q", transport)}
			}
			log := newLogger(e.Stderr, logLevel, "")
			start := time.Now()
			last := time.Time{}
			progress := func(t time.Time, n int) {
				if quiet || time.Since(last) < 2*time.Second {
					return
				}
				last = time.Now()
				fmt.Fprintf(e.Stderr, "%s: simulated %s of %s, %d events, %.0fs\n",
					sc.Name, t.Sub(sc.Start).Truncate(time.Minute), sc.Duration.D, n, time.Since(start).Seconds())
			}
			var rep *sim.Report
			if transport == "mqtt" {
				var st mqttRunStats
				rep, st, err = runScenarioMQTT(cmd.Context(), sc, dataDir, log, progress)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.Stderr, "%s: over MQTT: %d TLS handshakes, %d sessions opened (%d refused), %d publishes sent, %d accepted by the broker\n",
					sc.Name, st.Broker.Handshakes, st.Fleet.Connects, st.Fleet.ConnectFailures, st.Fleet.Publishes, st.Broker.Published)
			} else {
				rep, err = platform.RunScenario(cmd.Context(), sc, platform.ScenarioOptions{
					DataDir: dataDir, Logger: log, Progress: progress,
				})
				if err != nil {
					return err
				}
			}
			b, err := json.MarshalIndent(rep, "", "  ")
			if err != nil {
				return err
			}
			if report != "" {
				if err := os.WriteFile(report, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			printReport(e, rep)
			if check && !rep.Passed {
				return &exitError{code: 1, err: fmt.Errorf("scenario %s failed", rep.Scenario)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&scenario, "scenario", "", "scenario file (YAML)")
	cmd.Flags().StringVar(&report, "report", "", "write the JSON report here")
	cmd.Flags().BoolVar(&check, "check", false, "exit non-zero unless the scenario passed")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "keep the platform's data here (default: a temporary directory)")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "log level")
	cmd.Flags().StringVar(&transport, "transport", "entry", "how devices' MQTT traffic enters: entry (the broker's decoder and event path, fast) or mqtt (each device holds a real mutual-TLS session to the app's broker)")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no progress lines")
	_ = cmd.MarkFlagRequired("scenario")
	return cmd
}

func printReport(e *cliEnv, rep *sim.Report) {
	verdict := "PASSED"
	if !rep.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(e.Stdout, "%s %s: %d devices, %s simulated, %d events in %.1fs\n",
		verdict, rep.Scenario, rep.Devices, rep.Simulated, rep.Events, rep.WallSeconds)
	for _, x := range rep.Expectations {
		mark := "missed"
		if x.Detected {
			mark = fmt.Sprintf("detected in %.0fs", *x.TimeToDetectSeconds)
		}
		resp := ""
		if x.Response != "" {
			ok := "not taken"
			if x.ResponseOK != nil && *x.ResponseOK {
				ok = "taken"
			}
			resp = fmt.Sprintf(", %s %s", x.Response, ok)
		}
		fmt.Fprintf(e.Stdout, "  %-14s %-30s %s%s\n", x.Device, x.Alert, mark, resp)
	}
	for _, f := range rep.FalseAlerts {
		fmt.Fprintf(e.Stdout, "  false alert: %s %s at %s\n", f.Device, f.Alert, f.At)
	}
}
