package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// bigFleet is how many devices TestResponseCLI gives its second tenant.
const bigFleet = 60

// TestResponseCLI drives `garrison playbook`, `approval` and `mass` against
// a real serve: a bad playbook is refused with its line and stores nothing,
// a good one is versioned, disabled and enabled; actions waiting for a
// human are approved (the device is quarantined) and rejected; a mass
// quarantine is previewed (nothing changes) then run at a set rate and
// followed; following is interrupted and resumed; a job is cancelled; a
// command to a device with no live session is recorded offline.
func TestResponseCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	secret := func(role string) string {
		o, e, code := garrison(t, s, admin, "token", "create", role+"-bot", "--tenant", "acme", "--role", role, "-o", "json")
		require.Equal(t, 0, code, e)
		var ct struct{ Secret string }
		require.NoError(t, json.Unmarshal([]byte(o), &ct))
		return ct.Secret
	}
	acmeAdmin, op := secret("admin"), secret("operator")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	acme := func(token string, args ...string) (string, string, int) {
		t.Helper()
		return garrison(t, s, token, append(args, "--tenant", "acme")...)
	}
	state := func(id string) store.DeviceState {
		t.Helper()
		o, e, code := acme(op, "device", "show", id, "-o", "json")
		require.Equal(t, 0, code, e)
		var d store.Device
		require.NoError(t, json.Unmarshal([]byte(o), &d))
		return d.State
	}

	// Playbooks: a bad upload names its line and stores nothing.
	bad := "# kick port scanners\ntrigger:\n  kinds: [net.port_scan]\nmode: auto\nsteps:\n  - quarantine\n  - reboot\n"
	_, e, code = acme(acmeAdmin, "playbook", "put", "kick-scanners", write("bad.yaml", bad))
	require.Equal(t, 1, code)
	require.Contains(t, e, "bad.yaml:7: unknown step \"reboot\"")
	require.Contains(t, e, "nothing stored")
	_, e, code = acme(acmeAdmin, "playbook", "versions", "kick-scanners")
	require.Equal(t, 1, code, "a refused upload stores no version")
	require.Contains(t, e, "not_found")
	good := strings.TrimSuffix(bad, "  - reboot\n")
	o, e, code := acme(acmeAdmin, "playbook", "put", "kick-scanners", write("good.yaml", good))
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "kick-scanners")
	_, e, code = acme(acmeAdmin, "playbook", "put", "kick-scanners", write("good2.yaml", good+"  - notify: {channel: soc}\n"))
	require.Equal(t, 0, code, e)
	_, e, code = acme(op, "playbook", "put", "kick-scanners", write("good.yaml", good))
	require.Equal(t, 1, code, "an operator may not change playbooks")
	require.Contains(t, e, "forbidden")
	o, e, code = acme(op, "playbook", "versions", "kick-scanners", "-o", "json")
	require.Equal(t, 0, code, e)
	var vs []store.PlaybookVersion
	require.NoError(t, json.Unmarshal([]byte(o), &vs))
	require.Len(t, vs, 2)
	require.Equal(t, []int{1, 2}, []int{vs[0].Version, vs[1].Version})
	o, e, code = acme(op, "playbook", "show", "kick-scanners", "--version", "1")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "  - quarantine\n")
	require.NotContains(t, o, "notify")
	o, e, code = acme(op, "playbook", "show", "kick-scanners")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "notify: {channel: soc}")
	o, e, code = acme(acmeAdmin, "playbook", "disable", "kick-scanners", "-o", "json")
	require.Equal(t, 0, code, e)
	var pb respond.PlaybookInfo
	require.NoError(t, json.Unmarshal([]byte(o), &pb))
	require.False(t, pb.Enabled)
	o, e, code = acme(op, "playbook", "list")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `kick-scanners\s+2\s+false`, o)
	require.Contains(t, o, "quarantine-compromised", "the built-in defaults are listed")
	o, e, code = acme(acmeAdmin, "playbook", "enable", "kick-scanners")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `kick-scanners\s+2\s+true`, o)

	// A small fleet, all active.
	for _, id := range []string{"cam-1", "cam-2", "cam-3", "meter-1", "meter-2"} {
		model, _, _ := strings.Cut(id, "-")
		_, e, code = acme(op, "device", "create", id, "--model", model)
		require.Equal(t, 0, code, e)
		_, e, code = acme(op, "device", "set-state", id, "active")
		require.Equal(t, 0, code, e)
	}

	// Approvals: two actions wait for a human (put there as the guard would).
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(data, "garrison.db"))
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		// And a second tenant's fleet, large enough that a job over it at
		// one device a second is still running when it is cancelled, on
		// however loaded a machine.
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "beta", Name: "Beta", CreatedAt: now}); err != nil {
			return err
		}
		for i := range bigFleet {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: "beta", ID: storeDevice(fmt.Sprintf("node-%03d", i)), Model: "node",
				State: store.StateActive, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		for _, m := range []string{"meter-1", "meter-2"} {
			al := alert.Alert{ID: "al-" + m, Tenant: "acme", Device: "cam-x", Kind: alert.TelnetScan, Severity: alert.Critical,
				Detector: "net", FirstSeen: now, LastSeen: now, Count: 1, State: alert.Open}
			al.Device = storeDevice(m)
			if err := tx.Alerts().Put(ctx, al); err != nil {
				return err
			}
			if err := tx.Actions().Put(ctx, store.Action{Tenant: "acme", ID: al.ID + "/quarantine-compromised/0", Device: al.Device,
				Kind: "quarantine", AlertID: al.ID, Playbook: "quarantine-compromised", Actor: respond.Automation,
				State: store.ActionApproval, Reason: "blast-radius guard: test", CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, st.Close())
	o, e, code = acme(op, "approval", "list")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "al-meter-1/quarantine-compromised/0")
	require.Contains(t, o, "al-meter-2/quarantine-compromised/0")
	o, e, code = acme(op, "approval", "approve", "al-meter-1/quarantine-compromised/0")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "approved by")
	_, e, code = acme(op, "approval", "reject", "al-meter-2/quarantine-compromised/0")
	require.Equal(t, 1, code, "a rejection needs a reason")
	require.Contains(t, e, "--reason is required to reject")
	_, e, code = acme(op, "approval", "reject", "al-meter-2/quarantine-compromised/0", "--reason", strings.Repeat("x", 501))
	require.Equal(t, 1, code)
	require.Contains(t, e, "at most 500", "the server refuses a reason too long")
	o, e, code = acme(op, "approval", "show", "al-meter-2/quarantine-compromised/0")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `approval\s+automation`, o, "refused rejections changed nothing")
	o, e, code = acme(op, "approval", "reject", "al-meter-2/quarantine-compromised/0", "--reason", "meter-2 is on the test bench")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "rejected by operator:")
	o, e, code = acme(op, "approval", "show", "al-meter-2/quarantine-compromised/0")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "meter-2 is on the test bench", "show prints the whole reason")
	o, e, code = acme(op, "approval", "show", "al-meter-2/quarantine-compromised/0", "-o", "json")
	require.Equal(t, 0, code, e)
	var rejected store.Action
	require.NoError(t, json.Unmarshal([]byte(o), &rejected))
	require.Equal(t, store.ActionRejected, rejected.State)
	require.Equal(t, "rejected by "+rejected.Actor+": meter-2 is on the test bench", rejected.Reason)
	o, e, code = acme(acmeAdmin, "audit", "list", "--limit", "1000", "-o", "json")
	require.Equal(t, 0, code, e)
	var recs []store.AuditRecord
	require.NoError(t, json.Unmarshal([]byte(o), &recs))
	var rejectAudited bool
	for _, r := range recs {
		rejectAudited = rejectAudited || (r.Action == "action.rejected" && r.Actor == rejected.Actor &&
			strings.Contains(string(r.Details), "meter-2 is on the test bench"))
	}
	require.True(t, rejectAudited, "the rejection is audited with its reason")
	_, e, code = acme(op, "approval", "reject", "al-meter-2/quarantine-compromised/0", "--reason", "again")
	require.Equal(t, 1, code, "decided once")
	require.Contains(t, e, "conflict")
	require.Equal(t, store.StateQuarantined, state("meter-1"), "the approved quarantine ran")
	require.Equal(t, store.StateActive, state("meter-2"))
	o, e, code = acme(op, "approval", "list", "-o", "json")
	require.Equal(t, 0, code, e)
	require.JSONEq(t, "[]", o)

	// Resolving the approved quarantine's alert as a false positive from
	// the CLI: alert.state_changed reaches serve's response engine, which
	// releases meter-1 (the default playbook restores on false positives).
	o, e, code = acme(op, "alert", "resolve", "al-meter-1", "--false-positive", "--note", "bench test")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "false_positive")
	require.Eventually(t, func() bool { return state("meter-1") == store.StateActive }, 30*time.Second, 100*time.Millisecond,
		"the device is restored")

	// Mass quarantine: preview changes nothing, bad input names the term,
	// off a terminal --yes is required, then the job runs and is followed.
	o, e, code = acme(op, "mass", "preview", "--model", "cam", "--state", "active", "-o", "json")
	require.Equal(t, 0, code, e)
	var p respond.MassPreview
	require.NoError(t, json.Unmarshal([]byte(o), &p))
	require.Equal(t, 3, p.Count)
	require.Len(t, p.Sample, 3)
	require.Equal(t, "model=cam,state=active", p.Selector)
	require.Equal(t, store.StateActive, state("cam-1"), "a preview changes nothing")
	_, e, code = acme(op, "mass", "preview", "--selector", "colour=red")
	require.Equal(t, 1, code)
	require.Contains(t, e, `term 1 "colour=red"`)
	_, e, code = acme(op, "mass", "preview")
	require.Equal(t, 1, code)
	require.Contains(t, e, "--selector '*'")
	_, e, code = acme(op, "mass", "run", "--action", "quarantine", "--model", "cam")
	require.Equal(t, 1, code)
	require.Contains(t, e, "--yes")
	_, e, code = acme(op, "mass", "run", "--action", "reboot", "--model", "cam", "--yes")
	require.Equal(t, 1, code)
	require.Contains(t, e, "--action must be quarantine, revoke or kick")
	o, e, code = acme(op, "mass", "run", "--action", "quarantine", "--model", "cam", "--rate", "2", "--yes", "--reason", "mirai")
	require.Equal(t, 0, code, e)
	require.Contains(t, e, "3 device(s) selected by model=cam")
	require.Regexp(t, `quarantine \S+: 3/3 processed \(changed 3, unchanged 0, refused 0\) done`, o)
	for _, id := range []string{"cam-1", "cam-2", "cam-3"} {
		require.Equal(t, store.StateQuarantined, state(id))
	}
	require.Equal(t, store.StateActive, state("meter-2"), "outside the selector")

	// Ctrl-C stops following, not the job; `mass show --follow` resumes.
	cmd := exec.Command(binary, "mass", "run", "--action", "kick", "--selector", "*", "--rate", "1", "--yes", "--tenant", "acme", "--data-dir", s.data)
	cmd.Env = append(cleanEnv(), "GARRISON_TOKEN="+op)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr syncBuf // written by the child's copier while the test reads it
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, stderr.String())
	require.Regexp(t, `^kick \S+: \d/5 processed`, line)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	err = cmd.Wait()
	var xe *exec.ExitError
	require.True(t, errors.As(err, &xe), "%v %s", err, stderr.String())
	require.Equal(t, 130, xe.ExitCode())
	require.Contains(t, stderr.String(), "keeps running on the server")
	jobID := strings.Fields(line)[1]
	jobID = strings.TrimSuffix(jobID, ":")
	require.Contains(t, stderr.String(), "garrison mass show "+jobID+" --follow --tenant acme")
	o, e, code = acme(op, "mass", "show", jobID, "--follow")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `5/5 processed .* done`, o)

	// Cancel: a slow job is stopped after its current page. It runs over
	// beta's fleet, whose end at one device a second is far off.
	beta := func(args ...string) (string, string, int) {
		t.Helper()
		return garrison(t, s, admin, append(args, "--tenant", "beta")...)
	}
	o, e, code = beta("mass", "run", "--action", "kick", "--selector", "*", "--rate", "1", "--yes", "--no-follow", "-o", "json")
	require.Equal(t, 0, code, e)
	var j store.MassJob
	require.NoError(t, json.Unmarshal([]byte(o), &j))
	require.Equal(t, bigFleet, j.Total)
	o, e, code = beta("mass", "cancel", j.ID, "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &j))
	require.Equal(t, respond.JobCanceled, j.State)
	_, e, code = beta("mass", "show", j.ID, "--follow")
	require.Equal(t, 1, code, "following a cancelled job reports it")
	require.Contains(t, e, "ended canceled")
	o, e, code = beta("mass", "list")
	require.Equal(t, 0, code, e)
	require.Equal(t, 1, strings.Count(o, "\n")-1, o)
	require.Contains(t, o, "canceled")
	o, e, code = acme(op, "mass", "list")
	require.Equal(t, 0, code, e)
	require.Equal(t, 2, strings.Count(o, "\n")-1, "jobs are the tenant's own: %s", o)

	// On a terminal: the count is asked to be confirmed, a "no" starts
	// nothing, a "yes" starts the job and a progress bar follows it.
	for _, answer := range []string{"n", "y"} {
		o, code := onTerminal(t, s, op, answer+"\n", "mass", "run", "--action", "kick", "--model", "cam", "--tenant", "acme")
		require.Contains(t, o, "kick 3 device(s) matching model=cam? [y/N]")
		if answer == "n" {
			require.Equal(t, 1, code, o)
			require.Contains(t, o, "not started")
			continue
		}
		require.Equal(t, 0, code, o)
		require.Contains(t, o, "3/3", "the progress bar reaches the total")
		require.Regexp(t, `kick\s+done\s+3/3`, o)
	}
	o, e, code = acme(op, "mass", "list")
	require.Equal(t, 0, code, e)
	require.Equal(t, 3, strings.Count(o, "\n")-1, "one job for the yes, none for the no: %s", o)

	// A command to a device without a live session is recorded offline
	// (a live agent answering is TestAgentCLI's).
	o, e, code = acme(op, "device", "command", "meter-2", "ping", "--wait", "1s", "-o", "json")
	require.Equal(t, 0, code, e)
	var c store.Command
	require.NoError(t, json.Unmarshal([]byte(o), &c))
	require.Equal(t, store.CommandOffline, c.Status)
	o, e, code = acme(op, "device", "commands", "meter-2")
	require.Equal(t, 0, code, e)
	require.Regexp(t, c.ID+`\s+meter-2\s+ping\s+offline`, o)

	// A job survives a restart of serve: it resumes after its cursor and
	// handles every device exactly once.
	o, e, code = acme(op, "mass", "run", "--action", "revoke", "--selector", "*", "--rate", "1", "--yes", "--no-follow", "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &j))
	require.Equal(t, 5, j.Total)
	for deadline := time.Now().Add(90 * time.Second); j.Processed == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		o, e, code = acme(op, "mass", "show", j.ID, "-o", "json")
		require.Equal(t, 0, code, e)
		require.NoError(t, json.Unmarshal([]byte(o), &j))
	}
	require.Positive(t, j.Processed)
	s.stop(t)
	o, e, code = acme(op, "mass", "show", j.ID, "-o", "json")
	require.Equal(t, 1, code, "serve is down: %s", o)
	s, _ = startServe(t, data)
	o, e, code = acme(op, "mass", "show", j.ID, "--follow", "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &j), "with -o json, progress goes to stderr: %s", o)
	require.Equal(t, respond.JobDone, j.State)
	require.Equal(t, 5, j.Processed)
	require.Equal(t, 5, j.Changed+j.Unchanged+j.Refused)
	require.Equal(t, 5, j.Changed, "active and quarantined devices may all be revoked")
	for _, id := range []string{"cam-1", "cam-2", "cam-3", "meter-1", "meter-2"} {
		require.Equal(t, store.StateRevoked, state(id))
	}

	o, e, code = acme(acmeAdmin, "audit", "list", "--limit", "1000")
	require.Equal(t, 0, code, e)
	for _, a := range []string{"playbook.put", "mass.submit", "mass.done"} {
		require.Contains(t, o, a)
	}
}
