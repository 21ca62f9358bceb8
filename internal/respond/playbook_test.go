package respond_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/respond"
)

func TestDefaultsCoverEveryBuiltInKind(t *testing.T) {
	pbs, err := respond.Defaults()
	require.NoError(t, err)
	quarantine := map[alert.Kind]bool{alert.SIMIMEIMismatch: true, alert.TelnetScan: true, alert.CloneSuspected: true,
		alert.FirmwareUnapproved: true, alert.ThreatIntelHit: true}
	kinds := []alert.Kind{alert.SIMIMEIMismatch, alert.ImpossibleTravel, alert.GeofenceExit, alert.DataSpike,
		alert.MessageRateSpike, alert.Bruteforce, alert.DefaultCredentials, alert.TelnetScan, alert.PortScan,
		alert.ThreatIntelHit, alert.DestinationUnapproved, alert.CloneSuspected, alert.RevokedCertUse,
		alert.FirmwareUnapproved, alert.FirmwareRollback, alert.UnexpectedListener, alert.BlastRadiusGuardEngaged}
	for _, k := range kinds {
		var steps []respond.StepKind
		n := 0
		for i := range pbs {
			if pbs[i].Matches(alert.Alert{Kind: k, Severity: alert.Info}) {
				n++
				for _, s := range pbs[i].Steps {
					steps = append(steps, s.Kind)
				}
				require.Equal(t, respond.ModeAuto, pbs[i].Mode)
			}
		}
		require.Equal(t, 1, n, "kind %s must match exactly one default playbook", k)
		if quarantine[k] {
			require.Equal(t, []respond.StepKind{respond.StepQuarantine, respond.StepNotify}, steps, k)
		} else {
			require.Equal(t, []respond.StepKind{respond.StepNotify}, steps, k)
		}
	}
}

func TestParseValid(t *testing.T) {
	doc := `playbooks:
  - name: sim-swap
    trigger:
      kinds: [sim.imei_mismatch, "*"]
      min_severity: high
      selector: model=acme-meter-2,state=active
    mode: approve
    restore_on_false_positive: true
    steps:
      - quarantine
      - disconnect
      - suspend_sim
      - notify: {channel: soc}
      - open_incident: {title: SIM swap}
      - wait_approval
      - revoke
`
	pbs, err := respond.Parse([]byte(doc))
	require.NoError(t, err)
	require.Len(t, pbs, 1)
	pb := pbs[0]
	require.Equal(t, "sim-swap", pb.Name)
	require.Equal(t, respond.ModeApprove, pb.Mode)
	require.True(t, pb.RestoreOnFalsePositive)
	require.Equal(t, alert.High, pb.Trigger.MinSeverity)
	require.Equal(t, "acme-meter-2", pb.Trigger.Selector.Model)
	require.Len(t, pb.Steps, 7)
	require.Equal(t, "soc", pb.Steps[3].Params["channel"])
	require.Equal(t, 13, pb.Steps[3].Line)
	require.False(t, pb.Matches(alert.Alert{Kind: alert.SIMIMEIMismatch, Severity: alert.Medium}))
	require.True(t, pb.Matches(alert.Alert{Kind: alert.PortScan, Severity: alert.Critical}))

	// wait and require are the short names of wait_approval.
	for _, short := range []string{"wait", "require"} {
		pbs, err := respond.Parse([]byte("playbooks:\n  - name: p\n    trigger: {kinds: [net.port_scan]}\n    steps: [notify, " + short + ", revoke]\n"))
		require.NoError(t, err, short)
		require.Equal(t, respond.StepWaitApproval, pbs[0].Steps[1].Kind, short)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []string // "line N: fragment", in order
	}{
		{"empty", ``, []string{"line 1: empty document"}},
		{"syntax", "playbooks:\n  - name: [x\n", []string{"did not find expected"}},
		{"not a list", "playbooks: {}\n", []string{"line 1: playbooks must be a list"}},
		{"unknown top key", "playbook: []\n", []string{"line 1: document: unknown key \"playbook\"", "line 1: missing top-level key playbooks"}},
		{"many problems", `playbooks:
  - name: Bad_Name
    trigger:
      kinds: [SIM-swap]
      min_severity: urgent
      selector: colour=red
    mode: sometimes
    steps:
      - reboot
      - notify: {channel: soc, volume: 11}
      - quarantine
    extra: 1
`, []string{
			`line 2: name "Bad_Name" must be`,
			`line 4: alert kind "SIM-swap" must be domain.name`,
			`line 5: min_severity "urgent"`,
			`line 6: selector: invalid selector: term 1 "colour=red": unknown key`,
			`line 7: mode "sometimes" must be auto or approve`,
			`line 9: unknown step "reboot"`,
			`line 10: step notify: unknown key "volume"`,
			`line 12: playbook: unknown key "extra"`,
		}},
		{"missing parts", `playbooks:
  - name: a
  - name: b
    trigger: {kinds: []}
    steps: []
`, []string{
			"line 2: playbook \"a\": trigger is required",
			"line 2: playbook \"a\": steps are required",
			"line 4: trigger: kinds is empty",
			"line 5: steps is empty",
		}},
		{"duplicate names", `playbooks:
  - name: a
    trigger: {kinds: [net.port_scan]}
    steps: [notify]
  - name: a
    trigger: {kinds: [net.port_scan]}
    steps: [notify]
`, []string{"line 5: playbook name \"a\" already used on line 2"}},
		{"sim before device", `playbooks:
  - name: a
    trigger: {kinds: [net.port_scan]}
    steps:
      - suspend_sim
      - quarantine
`, []string{"line 5: suspend_sim comes before quarantine (line 6)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := respond.Parse([]byte(tc.doc))
			require.Error(t, err)
			require.ErrorIs(t, err, respond.ErrPlaybook)
			var pe *respond.ParseError
			require.True(t, errors.As(err, &pe))
			require.Len(t, pe.Problems, len(tc.want), "%v", err)
			for i, w := range tc.want {
				require.Contains(t, pe.Problems[i].String(), w)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(respond.DefaultYAML())
	f.Add([]byte("playbooks:\n  - name: a\n    trigger: {kinds: [net.port_scan], selector: 'tag=x'}\n    steps: [quarantine, {notify: {channel: c}}]\n"))
	f.Add([]byte("playbooks: [1, 2, {name: [x]}]"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		pbs, err := respond.Parse(doc)
		if err != nil {
			var pe *respond.ParseError
			require.True(t, errors.As(err, &pe))
			require.NotEmpty(t, pe.Problems)
			for _, p := range pe.Problems {
				require.Positive(t, p.Line)
			}
			return
		}
		for _, pb := range pbs {
			require.NotEmpty(t, pb.Name)
			require.NotEmpty(t, pb.Steps)
			require.NotEmpty(t, pb.Trigger.Kinds)
		}
	})
}
