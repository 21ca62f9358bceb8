package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// TestAgentCLI runs `garrison agent` as a device would against a real
// serve: it enrols with a one-time token over EST (which activates the
// registered device), keeps its key at 0600, connects over mutual-TLS MQTT
// and answers commands sent through the API, quarantined too. A second
// agent presenting the same, now spent, token is refused.
func TestAgentCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin)
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	o, e, code := garrison(t, s, admin, "token", "create", "ops", "--tenant", "acme", "--role", "admin", "-o", "json")
	require.Equal(t, 0, code, e)
	var ct struct{ Secret string }
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	acme := ct.Secret
	_, e, code = garrison(t, s, acme, "device", "create", "meter-0001", "--tenant", "acme", "--model", "m1")
	require.Equal(t, 0, code, e)
	o, e, code = garrison(t, s, acme, "device", "enrol-token", "--tenant", "acme", "--device", "meter-0001", "-o", "json")
	require.Equal(t, 0, code, e)
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	enrol := ct.Secret

	// Bad flags: every problem at once, exit 2, nothing started.
	bad := exec.Command(binary, "agent", "--url", "ftp://x", "--ota-root", "nope")
	bad.Env = cleanEnv()
	var badErr bytes.Buffer
	bad.Stderr = &badErr
	err := bad.Run()
	var xe *exec.ExitError
	require.ErrorAs(t, err, &xe)
	require.Equal(t, 2, xe.ExitCode())
	for _, want := range []string{"--tenant is required", "--device is required", "--state-dir is required", "--ota-root"} {
		require.Contains(t, badErr.String(), want)
	}

	mqttAddr, err := os.ReadFile(filepath.Join(data, "run", "mqtt.addr"))
	require.NoError(t, err)
	ca := filepath.Join(data, "tls", tlsutil.CertFile)
	agentCmd := func(state string) (*exec.Cmd, *syncBuf) {
		cmd := exec.Command(binary, "agent", "--tenant", "acme", "--device", "meter-0001", "--model", "m1", "--state-dir", state,
			"--url", "https://"+s.addr, "--mqtt", strings.TrimSpace(string(mqttAddr)), "--ca-file", ca, "--server-name", "localhost",
			"--metrics-interval", "2s", "--log-level", "debug")
		cmd.Env = append(cleanEnv(), "GARRISON_AGENT_TOKEN="+enrol)
		logs := &syncBuf{}
		cmd.Stdout, cmd.Stderr = logs, logs
		return cmd, logs
	}
	state := t.TempDir()
	ag, logs := agentCmd(state)
	require.NoError(t, ag.Start())
	done := make(chan error, 1)
	go func() { done <- ag.Wait() }()
	t.Cleanup(func() { _ = ag.Process.Kill() })

	// Enrolled: the identity is on disk, readable by the owner only.
	idFile := filepath.Join(state, "identity.pem")
	require.Eventually(t, func() bool { _, err := os.Stat(idFile); return err == nil }, 60*time.Second, 50*time.Millisecond, "agent did not enrol: %s", logs)
	st, err := os.Stat(idFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	// A command through the API reaches the agent over MQTT and its
	// outcome comes back.
	pool, err := tlsutil.Pool(ca)
	require.NoError(t, err)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	defer hc.CloseIdleConnections()
	call := func(method, path, body string, into any) int {
		req, err := http.NewRequest(method, "https://"+s.addr+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+acme)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		if into != nil && resp.StatusCode < 300 {
			require.NoError(t, json.NewDecoder(resp.Body).Decode(into))
		}
		return resp.StatusCode
	}
	base := "/api/v1/tenants/acme/devices/meter-0001/commands"
	var cmd store.Command
	// The agent may still be connecting: send until the broker has a live
	// session (status sent, or already answered, rather than offline), as an
	// operator would.
	require.Eventually(t, func() bool {
		cmd = store.Command{}
		return call(http.MethodPost, base, `{"name":"ping"}`, &cmd) == http.StatusAccepted && cmd.Status != store.CommandOffline
	}, 60*time.Second, 500*time.Millisecond, "no live session: %s", logs)
	require.Eventually(t, func() bool {
		var got store.Command
		call(http.MethodGet, base+"/"+cmd.ID, "", &got)
		return got.Status == store.CommandSucceeded
	}, 30*time.Second, 100*time.Millisecond, "command never succeeded: %s", logs)

	// Quarantined (by an operator here; detection does the same), the
	// device still answers commands: remediation goes through them.
	_, e, code = garrison(t, s, acme, "device", "set-state", "meter-0001", "quarantined", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	var q store.Command
	require.Eventually(t, func() bool {
		q = store.Command{}
		return call(http.MethodPost, base, `{"name":"ping"}`, &q) == http.StatusAccepted && q.Status != store.CommandOffline
	}, 30*time.Second, 500*time.Millisecond)
	require.Eventually(t, func() bool {
		var got store.Command
		call(http.MethodGet, base+"/"+q.ID, "", &got)
		return got.Status == store.CommandSucceeded
	}, 30*time.Second, 100*time.Millisecond, "a quarantined device's answer was dropped: %s", logs)

	// SIGTERM: a clean exit.
	require.NoError(t, ag.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-done:
		require.NoError(t, err, "agent exit: %s", logs)
	case <-time.After(20 * time.Second):
		t.Fatalf("agent did not stop on SIGTERM: %s", logs)
	}

	// The token is spent: a second device state enrolling with it fails.
	again, againLogs := agentCmd(t.TempDir())
	require.NoError(t, again.Start())
	againDone := make(chan error, 1)
	go func() { againDone <- again.Wait() }()
	select {
	case err := <-againDone:
		require.Error(t, err, "enrolment with a spent token must fail: %s", againLogs)
		require.Contains(t, againLogs.String(), "refused")
	case <-time.After(60 * time.Second):
		_ = again.Process.Kill()
		t.Fatalf("agent with a spent token kept running: %s", againLogs)
	}
}
