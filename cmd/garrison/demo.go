package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/scenarios"
)

// plain says what an alert kind means, for people who have not read the
// detector docs.
var plain = map[alert.Kind]string{
	alert.SIMIMEIMismatch:       "its SIM card turned up in another device",
	alert.ImpossibleTravel:      "it moved faster than any vehicle can",
	alert.GeofenceExit:          "it left the area it must stay in",
	alert.DataSpike:             "it is uploading far more data than it ever does",
	alert.MessageRateSpike:      "it is flooding the broker with messages",
	alert.Bruteforce:            "someone is guessing its credentials",
	alert.DefaultCredentials:    "someone tried factory default passwords on it",
	alert.TelnetScan:            "it is scanning the network for telnet victims, like Mirai",
	alert.PortScan:              "it is scanning ports and hosts",
	alert.ThreatIntelHit:        "it talks to a known command-and-control address",
	alert.DestinationUnapproved: "it talks to an endpoint it never used",
	alert.CloneSuspected:        "its certificate is in use from two places at once",
	alert.RevokedCertUse:        "a revoked identity tried to connect",
	alert.FirmwareUnapproved:    "it runs firmware that no signed release has",
	alert.FirmwareRollback:      "it was flashed back to an old, vulnerable version",
	alert.UnexpectedListener:    "it opened a new listening port",
}

func newDemoCmd(e *cliEnv) *cobra.Command {
	var (
		devices       int
		speed         float64
		exit          bool
		dataDir, addr string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start the platform on embedded defaults and watch it defend a simulated fleet under attack",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, e, demoOptions{devices: devices, speed: speed, exit: exit, dataDir: dataDir, addr: addr})
		},
	}
	cmd.Flags().IntVar(&devices, "devices", 0, "fleet size (default: the demo scenario's, 300)")
	cmd.Flags().Float64Var(&speed, "speed", 80, "simulated seconds per wall-clock second while the attacks unfold")
	cmd.Flags().BoolVar(&exit, "exit", false, "exit after the scoreboard, non-zero if anything was missed (for CI)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory (default: a fresh temporary one, removed at exit)")
	cmd.Flags().StringVar(&addr, "api-addr", "127.0.0.1:8443", "HTTPS API address (a free port is used if this one is taken)")
	return cmd
}

type demoOptions struct {
	devices       int
	speed         float64
	exit          bool
	dataDir, addr string
}

func runDemo(ctx context.Context, e *cliEnv, o demoOptions) (err error) {
	out := e.Stdout
	raw, err := scenarios.FS.ReadFile("demo.yaml")
	if err != nil {
		return err
	}
	sc, err := sim.Parse(raw)
	if err != nil {
		return err
	}
	if o.devices > 0 {
		if err := scaleFleet(sc, o.devices); err != nil {
			return &exitError{code: 2, err: err}
		}
	}
	if o.speed <= 0 {
		return &exitError{code: 2, err: errors.New("--speed must be positive")}
	}
	dir := o.dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "garrison-demo-*"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	fmt.Fprintf(out, "\nGarrison demo: the platform on its embedded defaults (SQLite + NATS JetStream in-process)\n")
	fmt.Fprintf(out, "defending a simulated fleet of %d devices.\n\n", fleetSize(sc))

	// The platform itself: store, bus, HTTPS API, MQTT broker.
	var first bytes.Buffer
	rig, err := startSimRig(ctx, dir, o.addr, sc.Start, &first, newLogger(io.Discard, "error", ""))
	if err != nil {
		return err
	}
	defer func() {
		if serr := rig.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	a := rig.app
	token := regexp.MustCompile(`gar_[0-9a-f]+_[0-9a-f]+`).FindString(first.String())
	fmt.Fprintf(out, "  data directory  %s\n  API             https://%s/api/v1 (certificate %s/tls/server.crt)\n", dir, a.APIAddr(), dir)
	fmt.Fprintf(out, "  MQTT broker     mqtts://%s (mutual TLS: every device holds a session with its own certificate)\n\n", a.MQTTAddr())

	var (
		mu       sync.Mutex
		alerts   = map[string]alert.Alert{}
		actions  = map[string]struct{}{}
		nAlerts  atomic.Int64
		bar      *progressbar.ProgressBar
		enrolled int
		simNow   atomic.Int64
	)
	stamp := func() string {
		return time.Unix(0, simNow.Load()).UTC().Format("Mon 15:04")
	}
	tty := isTerminal(out)
	firstAttack, lastAttack := attackWindow(sc)
	pace := &pacer{speed: o.speed, from: firstAttack.Add(-10 * time.Minute), to: lastAttack.Add(40 * time.Minute)}
	opts := platform.ScenarioOptions{
		Tenant: "demo", Clock: rig.clk, MQTT: rig.fleet,
		OnRegister: func(ctx context.Context, d sim.Device) error {
			if bar == nil {
				if !tty {
					fmt.Fprintf(out, "  enrolling %d devices (key on device, CSR, certificate from the tenant CA)\n", fleetSize(sc))
				}
				bar = progressbar.NewOptions(fleetSize(sc), progressbar.OptionSetWriter(out), progressbar.OptionSetVisibility(tty),
					progressbar.OptionSetDescription("  enrolling devices (key on device, CSR, certificate from the tenant CA)"),
					progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionClearOnFinish())
			}
			if err := rig.enrol(ctx, "demo", d.ID); err != nil {
				return err
			}
			enrolled++
			return bar.Add(1)
		},
		Ready: func(p *platform.Platform) error {
			if bar != nil {
				_ = bar.Finish()
			}
			fmt.Fprintf(out, "  %d devices enrolled with their own certificates; SIM bindings registered.\n\n", enrolled)
			fmt.Fprintf(out, "  Streaming: each device connects to the broker over mutual TLS with its own key and\n")
			fmt.Fprintf(out, "  publishes its telemetry, positions, metrics and boot reports; the APN gateway's\n")
			fmt.Fprintf(out, "  RADIUS accounting and flow records enter their collectors. A quiet day replays at\n")
			fmt.Fprintf(out, "  full speed so detectors learn each device's normal; then the attacks unfold at %gx.\n\n", o.speed)
			return nil
		},
		Progress: func(t time.Time, n int) {
			simNow.Store(t.UnixNano())
		},
		Pace: func(ctx context.Context, t time.Time) error {
			simNow.Store(t.UnixNano())
			return pace.wait(ctx, t)
		},
		Observe: func(al alert.Alert) {
			mu.Lock()
			defer mu.Unlock()
			key := string(al.Device) + "/" + string(al.Kind)
			if _, seen := alerts[key]; seen {
				return // a repeat or a later alert of the same kind
			}
			alerts[key] = al
			nAlerts.Add(1)
			what := plain[al.Kind]
			if what == "" {
				what = string(al.Kind)
			}
			fmt.Fprintf(out, "  [%s] ALERT    %-11s %s: %s\n", al.FirstSeen.UTC().Format("Mon 15:04"), al.Device, al.Kind, what)
			if s := al.Evidence.Summary; s != "" {
				fmt.Fprintf(out, "                      evidence: %s\n", s)
			}
		},
		OnAction: func(ev *event.Event) {
			if ev.Str("outcome") == "skipped" {
				return // a step with no back-end configured here (webhooks)
			}
			mu.Lock()
			key := string(ev.Device) + "/" + ev.Str("action") + "/" + ev.Str("outcome")
			_, seen := actions[key]
			actions[key] = struct{}{}
			mu.Unlock()
			if seen {
				return // a second alert of the same device ran the same step again (idempotent)
			}
			fmt.Fprintf(out, "  [%s] RESPONSE %-11s %s: %s (playbook %s)\n", ev.Time.UTC().Format("Mon 15:04"), ev.Device, ev.Str("action"), ev.Str("outcome"), ev.Str("playbook"))
		},
	}
	p, err := platform.Build(ctx, a.Store(), a.Bus(), sc.Start, opts)
	if err != nil {
		return err
	}
	defer p.Close()

	done := make(chan struct{})
	go func() { // live progress while nothing else prints
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if simNow.Load() > 0 && !pace.active() {
					fmt.Fprintf(out, "  ... simulated %s, %d alerts so far\n", stamp(), nAlerts.Load())
				}
			}
		}
	}()
	rep, err := p.Run(ctx, sc, opts)
	close(done)
	if err != nil {
		return err
	}
	printScoreboard(out, rep)
	bs, fs := a.Broker().Stats(), rig.fleet.Stats()
	fmt.Fprintf(out, "  Over MQTT the devices opened %d mutual-TLS sessions and sent %d publishes: the broker accepted\n  %d, dropped %d from quarantined devices and refused %d over its limits.\n", fs.Connects, fs.Publishes, bs.Published, bs.Dropped, bs.Violations)

	if o.exit {
		if !rep.Passed {
			return &exitError{code: 1, err: errors.New("the demo missed an attack or raised a false alert")}
		}
		return nil
	}
	fmt.Fprintf(out, "\nThe platform stays up for exploring until Ctrl-C. The admin token is shown once:\n\n")
	fmt.Fprintf(out, "  export GARRISON_URL=https://%s GARRISON_TOKEN=%s\n", a.APIAddr(), token)
	fmt.Fprintf(out, "  garrison tenant list --data-dir %s\n", dir)
	fmt.Fprintf(out, "  garrison audit verify --all --data-dir %s\n\n", dir)
	<-ctx.Done()
	fmt.Fprintln(out, "\nstopping")
	return nil
}

// pacer replays the window [from, to] of simulated time at speed simulated
// seconds per wall second, and everything else as fast as possible.
type pacer struct {
	speed    float64
	from, to time.Time

	mu        sync.Mutex
	on        bool
	wall0     time.Time
	sim0      time.Time
	activeNow atomic.Bool
}

func (p *pacer) active() bool { return p.activeNow.Load() }

func (p *pacer) wait(ctx context.Context, t time.Time) error {
	p.mu.Lock()
	if t.Before(p.from) || t.After(p.to) {
		p.on = false
		p.activeNow.Store(false)
		p.mu.Unlock()
		return nil
	}
	if !p.on {
		p.on, p.wall0, p.sim0 = true, time.Now(), t
		p.activeNow.Store(true)
	}
	due := p.wall0.Add(time.Duration(float64(t.Sub(p.sim0)) / p.speed))
	p.mu.Unlock()
	if d := time.Until(due); d > 2*time.Millisecond {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	return nil
}

func attackWindow(sc *sim.Scenario) (first, last time.Time) {
	for i, a := range sc.Attacks {
		at := sc.Start.Add(a.At.D)
		if i == 0 || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	return first, last
}

func fleetSize(sc *sim.Scenario) int {
	n := 0
	for _, c := range sc.Fleet {
		n += c.Count
	}
	return n
}

// scaleFleet resizes the cohorts to about n devices in all, keeping every
// device an attack or expectation names.
func scaleFleet(sc *sim.Scenario, n int) error {
	total := fleetSize(sc)
	if n < 10 || n > 100000 {
		return fmt.Errorf("--devices must be between 10 and 100000, got %d", n)
	}
	need := map[string]int{}
	for _, a := range sc.Attacks {
		name, num, _ := strings.Cut(a.Device, "-")
		var k int
		fmt.Sscanf(num, "%d", &k)
		need[name] = max(need[name], k)
	}
	for i := range sc.Fleet {
		c := &sc.Fleet[i]
		c.Count = max(1, c.Count*n/total, need[c.Name])
	}
	return nil
}

func printScoreboard(out io.Writer, rep *sim.Report) {
	fmt.Fprintf(out, "\nScoreboard: %d devices, %s simulated, %d events in %.0fs of wall time\n\n", rep.Devices, rep.Simulated, rep.Events, rep.WallSeconds)
	fmt.Fprintf(out, "  %-11s %-28s %-16s %s\n", "device", "attack detected as", "time to detect", "automatic response")
	exps := append([]sim.ExpectationResult(nil), rep.Expectations...)
	sort.SliceStable(exps, func(i, j int) bool { return exps[i].Device < exps[j].Device })
	for _, x := range exps {
		ttd := "MISSED"
		if x.Detected {
			ttd = fmt.Sprintf("%.0fs", *x.TimeToDetectSeconds)
		}
		resp := "-"
		if x.Response != "" {
			resp = x.Response + ": not taken"
			if x.ResponseOK != nil && *x.ResponseOK {
				resp = x.Response + ": done"
			}
		}
		fmt.Fprintf(out, "  %-11s %-28s %-16s %s\n", x.Device, x.Alert, ttd, resp)
	}
	fmt.Fprintf(out, "\n  false alerts on the rest of the fleet: %d\n", len(rep.FalseAlerts))
	for _, f := range rep.FalseAlerts {
		fmt.Fprintf(out, "    %s %s at %s\n", f.Device, f.Alert, f.At)
	}
	if rep.Passed {
		fmt.Fprintln(out, "\n  Every attack was detected in time and answered; nothing else fired.")
	} else {
		fmt.Fprintln(out, "\n  Not everything was caught: see above.")
	}
}

// isTerminal reports whether w is a terminal (progress bars only there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// demoPassphrase makes the demo's own key passphrase (the demo needs no
// operator secret): random, kept in the demo's data directory so a reused
// --data-dir opens its CA keys again.
func demoPassphrase(dir string) ([]byte, error) {
	path := filepath.Join(dir, "demo-key-passphrase")
	if b, err := os.ReadFile(path); err == nil && len(b) >= 12 {
		return b, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	pass := []byte(rand.Text())
	return pass, os.WriteFile(path, pass, 0o600)
}
