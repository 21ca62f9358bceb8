package respond_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

const kickDoc = `# kick port scanners
trigger:
  kinds: [net.port_scan]
mode: auto
steps:
  - disconnect
`

func TestPutPlaybookVersionsEnableAndTenancy(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, func(o *respond.Options) { o.Disconnecter = nil })
	f.eng = mustEngine(t, f, func(o *respond.Options) { o.Disconnecter = f.rec })
	f.fleet(t, "acme", 3)
	f.fleet(t, "beta", 3)

	in, err := f.eng.PutPlaybook(ctx, "acme", "kick-scanners", []byte(kickDoc), "alice")
	require.NoError(t, err)
	require.Equal(t, 1, in.Version)
	require.True(t, in.Enabled)
	require.Equal(t, respond.SourceTenant, in.Source)
	in, err = f.eng.PutPlaybook(ctx, "acme", "kick-scanners", []byte(kickDoc+"  - notify: {channel: soc}\n"), "bob")
	require.NoError(t, err)
	require.Equal(t, 2, in.Version)
	require.Equal(t, []respond.StepKind{respond.StepDisconnect, respond.StepNotify}, in.Steps)

	vs, err := f.eng.PlaybookVersions(ctx, "acme", "kick-scanners")
	require.NoError(t, err)
	require.Len(t, vs, 2)
	require.Equal(t, "alice", vs[0].Actor)
	v1, err := f.eng.PlaybookVersion(ctx, "acme", "kick-scanners", 1)
	require.NoError(t, err)
	require.Equal(t, kickDoc, v1.YAML)
	_, err = f.eng.PlaybookVersion(ctx, "acme", "kick-scanners", 3)
	require.ErrorIs(t, err, store.ErrNotFound)

	// The running engine uses the tenant's version 2: disconnect, then notify.
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-1", "dev-00001", alert.PortScan, t0)))
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/kick-scanners/0").State)
	require.Equal(t, store.ActionDone, f.action(t, "acme", "al-1/kick-scanners/1").State)
	// beta has only the defaults: a port scan only notifies.
	require.NoError(t, f.eng.Handle(ctx, mkAlert("beta", "al-1", "dev-00001", alert.PortScan, t0)))
	require.Len(t, f.actions(t, "beta", store.ActionFilter{Kind: "disconnect"}), 0)
	_, err = f.eng.GetPlaybook(ctx, "beta", "kick-scanners")
	require.ErrorIs(t, err, store.ErrNotFound, "another tenant's playbook is not found")

	// Disabling stops it; the versions stay.
	in, err = f.eng.SetPlaybookEnabled(ctx, "acme", "kick-scanners", false, "alice")
	require.NoError(t, err)
	require.False(t, in.Enabled)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-2", "dev-00002", alert.PortScan, t0)))
	require.Len(t, f.actions(t, "acme", store.ActionFilter{Kind: "disconnect"}), 1)
	// A new version of a disabled playbook stays disabled.
	in, err = f.eng.PutPlaybook(ctx, "acme", "kick-scanners", []byte(kickDoc), "bob")
	require.NoError(t, err)
	require.False(t, in.Enabled)

	// Defaults can be disabled per tenant too.
	_, err = f.eng.SetPlaybookEnabled(ctx, "acme", "quarantine-compromised", false, "alice")
	require.NoError(t, err)
	require.NoError(t, f.eng.Handle(ctx, mkAlert("acme", "al-3", "dev-00000", alert.TelnetScan, t0)))
	require.Equal(t, store.StateActive, f.state(t, "acme", "dev-00000"))
	require.NoError(t, f.eng.Handle(ctx, mkAlert("beta", "al-3", "dev-00000", alert.TelnetScan, t0)))
	require.Equal(t, store.StateQuarantined, f.state(t, "beta", "dev-00000"), "beta's default still runs")
	_, err = f.eng.SetPlaybookEnabled(ctx, "acme", "no-such", false, "alice")
	require.ErrorIs(t, err, store.ErrNotFound)

	infos, err := f.eng.ListPlaybooks(ctx, "acme")
	require.NoError(t, err)
	require.Len(t, infos, 3)
	require.Equal(t, "kick-scanners", infos[0].Name)

	var actions []string
	for _, r := range f.audit(t, "acme") {
		actions = append(actions, r.Action)
	}
	require.Contains(t, actions, "playbook.put")
	require.Contains(t, actions, "playbook.disable")
}

func TestParseOneErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"kick", "trigger:\n  kinds: [net.port_scan]\nsteps:\n  - disconnect\n  - reboot\n", `line 5: unknown step "reboot"`},
		{"kick", "name: other\ntrigger: {kinds: [a.b]}\nsteps: [notify]\n", `line 1: playbook name "other" differs from "kick"`},
		{"kick", "trigger: {kinds: [a.b]}\nmode: sometimes\nsteps: [notify]\n", `line 2: mode "sometimes" must be auto or approve`},
		{"kick", "trigger: {kinds: [a.b], selector: \"state=sleepy\"}\nsteps: [notify]\n", `line 1: selector: invalid selector`},
		{"kick", "steps: [suspend_sim, quarantine]\ntrigger: {kinds: [a.b]}\n", `disable the device before suspending its SIM`},
		{"kick", "trigger: [\n", `line 1: yaml: line 1: did not find expected node content`},
		{"kick", "", `empty document`},
		{"Bad Name", "trigger: {kinds: [a.b]}\nsteps: [notify]\n", `name "Bad Name"`},
		{"kick", "playbooks:\n  - name: a\n    trigger: {kinds: [a.b]}\n    steps: [notify]\n  - name: b\n    trigger: {kinds: [a.b]}\n    steps: [notify]\n", `line 1: playbooks: want exactly one playbook`},
	} {
		_, err := respond.ParseOne([]byte(tc.doc), tc.name)
		require.ErrorIs(t, err, respond.ErrPlaybook, tc.doc)
		require.Contains(t, err.Error(), tc.want, tc.doc)
	}
	pb, err := respond.ParseOne([]byte("playbooks:\n  - name: kick\n    trigger: {kinds: [a.b]}\n    steps: [notify]\n"), "kick")
	require.NoError(t, err)
	require.Equal(t, "kick", pb.Name)
}

func TestPutPlaybookInvalidChangesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	_, err := f.eng.PutPlaybook(ctx, "acme", "kick", []byte("trigger: {kinds: [a.b]}\nsteps: [explode]\n"), "op")
	require.ErrorIs(t, err, respond.ErrPlaybook)
	require.Contains(t, err.Error(), "line 2")
	require.Empty(t, f.audit(t, "acme"))
	_, err = f.eng.PlaybookVersions(ctx, "acme", "kick")
	require.ErrorIs(t, err, store.ErrNotFound)
}
