package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// TestDevicePasswordCLI: serve with the legacy password listener enabled;
// `garrison device password set` shows a password once, Debian's
// mosquitto_pub logs in with it over server-only TLS and publishes; a wrong
// password and a factory credential are refused; a rotation closes the
// live password session (a command to the device then finds it offline);
// a cleared password is refused; guessing raises auth.bruteforce.
func TestDevicePasswordCLI(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		t.Skip("mosquitto_pub not installed (Debian package mosquitto-clients; .ci/run installs it)")
	}
	data := t.TempDir()
	s, out := startServeEnv(t, data, "GARRISON_BROKER_PASSWORD_ENABLED=true", "GARRISON_BROKER_PASSWORD_ADDR=127.0.0.1:0")
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin)
	_, e, code := garrison(t, s, admin, "tenant", "create", "acme")
	require.Equal(t, 0, code, e)
	secret := func(role string) string {
		o, e, code := garrison(t, s, admin, "token", "create", role+"-bot", "--tenant", "acme", "--role", role, "-o", "json")
		require.Equal(t, 0, code, e)
		var ct struct{ Secret string }
		require.NoError(t, json.Unmarshal([]byte(o), &ct))
		return ct.Secret
	}
	operator, viewer := secret("operator"), secret("viewer")
	dev := func(tok string, args ...string) (string, string, int) {
		return garrison(t, s, tok, append([]string{"device", "--tenant", "acme"}, args...)...)
	}
	for _, id := range []string{"gw-0001", "gw-0002"} {
		_, e, code = dev(operator, "create", id, "--model", "legacy-gw")
		require.Equal(t, 0, code, e)
		_, e, code = dev(operator, "set-state", id, "active")
		require.Equal(t, 0, code, e)
	}

	o, e, code := dev(viewer, "password", "show", "gw-0001")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `gw-0001\s+false\s+-`, o)
	_, _, code = dev(viewer, "password", "set", "gw-0001")
	require.NotEqual(t, 0, code, "a viewer set a password")

	o, e, code = dev(operator, "password", "set", "gw-0001", "-o", "json")
	require.Equal(t, 0, code, e)
	var g registry.PasswordGrant
	require.NoError(t, json.Unmarshal([]byte(o), &g))
	require.Equal(t, "acme/gw-0001", g.Username)
	require.GreaterOrEqual(t, len(g.Password), 22)
	o, e, code = dev(operator, "password", "set", "gw-0002")
	require.Equal(t, 0, code, e)
	require.Contains(t, e, "shown this once")
	require.Contains(t, o, "acme/gw-0002")

	addr, err := os.ReadFile(filepath.Join(data, "run", "mqtt-password.addr"))
	require.NoError(t, err)
	mqttAddr, err := os.ReadFile(filepath.Join(data, "run", "mqtt.addr"))
	require.NoError(t, err)
	require.NotEqual(t, string(mqttAddr), string(addr), "the password listener has its own address")
	_, port, ok := strings.Cut(strings.TrimSpace(string(addr)), "127.0.0.1:")
	require.True(t, ok, string(addr))
	ca := filepath.Join(data, "tls", tlsutil.CertFile)
	mosq := func(prog, user, pass, client string, extra ...string) *exec.Cmd {
		return exec.Command(prog, append([]string{"-h", "127.0.0.1", "-p", port, "--cafile", ca, "-u", user, "-P", pass, "-i", client, "-q", "1"}, extra...)...)
	}
	pub := func(user, pass, client, topic string) error {
		b, err := mosq("mosquitto_pub", user, pass, client, "-t", topic, "-m", `{"temp":21}`).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, b)
		}
		return nil
	}
	require.NoError(t, pub("acme/gw-0001", g.Password, "gw-0001", "devices/gw-0001/telemetry"), "right password")
	require.Error(t, pub("acme/gw-0001", g.Password+"x", "gw-0001", "devices/gw-0001/telemetry"), "wrong password")
	require.Error(t, pub("root", "xc3511", "gw-0001", "devices/gw-0001/telemetry"), "factory credential")
	require.Error(t, pub("acme/gw-0002", g.Password, "gw-0002", "devices/gw-0002/telemetry"), "another device's password")

	// A live password session gets its commands; rotating the password
	// closes it, so the next command finds the device offline.
	sub := mosq("mosquitto_sub", "acme/gw-0001", g.Password, "gw-0001", "-t", "devices/gw-0001/commands")
	require.NoError(t, sub.Start())
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	status := func() store.CommandStatus {
		o, e, code := dev(operator, "command", "gw-0001", "ping", "-o", "json")
		require.Equal(t, 0, code, e)
		var c store.Command
		require.NoError(t, json.Unmarshal([]byte(o), &c))
		return c.Status
	}
	require.Eventually(t, func() bool { return status() == store.CommandSent }, 30*time.Second, 200*time.Millisecond, "password session live")
	_, e, code = dev(operator, "password", "set", "gw-0001")
	require.Equal(t, 0, code, e)
	require.Eventually(t, func() bool { return status() == store.CommandOffline }, 30*time.Second, 200*time.Millisecond, "rotation closed the session")
	_ = sub.Process.Kill() // it would retry with the old password
	require.Error(t, pub("acme/gw-0001", g.Password, "gw-0001", "devices/gw-0001/telemetry"), "the old password after a rotation")

	// A cleared password is refused.
	o, e, code = dev(operator, "password", "clear", "gw-0002")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "cleared")
	_, _, code = dev(operator, "password", "clear", "gw-0002")
	require.NotEqual(t, 0, code, "clearing twice")
	o, e, code = dev(viewer, "password", "show", "gw-0002")
	require.Equal(t, 0, code, e)
	require.Regexp(t, `gw-0002\s+false`, o)

	// Guessing: every refusal is an mqtt.auth_failed event; past 10 from
	// one host a minute they are refused unverified, and still counted.
	for i := range 20 {
		_ = pub("acme/gw-0002", "guess-"+string(rune('a'+i)), "gw-0002", "devices/gw-0002/telemetry")
	}
	require.Eventually(t, func() bool {
		o, _, code := garrison(t, s, viewer, "alert", "list", "--tenant", "acme", "-o", "json")
		if code != 0 {
			return false
		}
		var as []alert.Alert
		require.NoError(t, json.Unmarshal([]byte(o), &as))
		kinds := map[alert.Kind]bool{}
		for _, a := range as {
			if a.Device == "gw-0002" || a.Device == "gw-0001" {
				kinds[a.Kind] = true
			}
		}
		return kinds[alert.Bruteforce]
	}, 30*time.Second, 200*time.Millisecond, "auth.bruteforce raised")

	// The audit log records every change, never a password.
	o, e, code = garrison(t, s, admin, "audit", "list", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	require.Equal(t, 4, strings.Count(o, `"device.password"`), o)
	require.NotContains(t, o, g.Password)
}
