package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// binary is the garrison binary built once for the tests of this package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "garrison-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "garrison")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build garrison: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a `garrison serve` child process.
type server struct {
	cmd    *exec.Cmd
	data   string
	addr   string
	stdout *bytes.Buffer
	done   chan struct{}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServe runs serve on random ports with data dir data and waits until
// the API answers.
func startServe(t *testing.T, data string) (*server, *syncBuf) {
	t.Helper()
	return startServeEnv(t, data)
}

// startServeEnv is startServe with extra environment (GARRISON_* keys).
func startServeEnv(t *testing.T, data string, env ...string) (*server, *syncBuf) {
	t.Helper()
	addrFile := filepath.Join(data, "run", "api.addr")
	os.Remove(addrFile) // a kill -9 leaves the old one behind
	_, statErr := os.Stat(filepath.Join(data, "garrison.db"))
	first := os.IsNotExist(statErr)
	out, errb := &syncBuf{}, &syncBuf{}
	cmd := serveCmd(data, append([]string{"GARRISON_KEY_PASSPHRASE=" + testPassphrase}, env...)...)
	cmd.Stdout, cmd.Stderr = out, errb
	require.NoError(t, cmd.Start())
	s := &server{cmd: cmd, data: data, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { s.kill() })
	// Generous deadlines on conditions: on a loaded machine (the whole
	// tree's tests under -race on two cores) a start can take long.
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(addrFile); err == nil && strings.HasSuffix(string(b), "\n") {
			s.addr = strings.TrimSpace(string(b))
			break
		}
		select {
		case <-s.done:
			t.Fatalf("serve exited early: %s\n%s", out.String(), errb.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	require.NotEmpty(t, s.addr, "serve did not write its address: %s", errb.String())
	// The first-start message is printed after the listener is up.
	if _, err := os.Stat(filepath.Join(data, "tls", "server.crt")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	// A first start prints the bootstrap token after its listeners: on a
	// loaded machine that can take longer than the sleep above.
	for deadline := time.Now().Add(90 * time.Second); first && !tokenRE.MatchString(out.String()) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return s, out
}

// testPassphrase seals the CA keys of the servers these tests start.
const testPassphrase = "e2e-test-passphrase-not-secret"

// serveCmd is serve on random ports with a clean environment plus env.
func serveCmd(data string, env ...string) *exec.Cmd {
	cmd := exec.Command(binary, "serve", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--broker-addr", "127.0.0.1:0", "--log-level", "warn")
	cmd.Env = append(cleanEnv(), env...)
	return cmd
}

func (s *server) kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.done:
		require.True(t, s.cmd.ProcessState.Success(), "clean exit on SIGTERM: %v", s.cmd.ProcessState)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GARRISON_") {
			env = append(env, kv)
		}
	}
	return env
}

var tokenRE = regexp.MustCompile(`gar_[0-9a-f]{16}_[0-9a-f]{64}`)

// garrison runs the CLI against s with token and returns stdout and the
// exit code.
func garrison(t *testing.T, s *server, token string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, append(args, "--data-dir", s.data)...)
	cmd.Env = append(cleanEnv(), "GARRISON_TOKEN="+token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var xe *exec.ExitError
	if errors.As(err, &xe) {
		code = xe.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return out.String(), errb.String(), code
}

func TestServeAndCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin, "first start prints the bootstrap token: %s", out.String())
	require.Contains(t, out.String(), data)
	require.Contains(t, out.String(), s.addr[strings.LastIndex(s.addr, ":"):], "the message names the real port")

	o, e, code := garrison(t, s, admin, "tenant", "create", "acme", "--name", "Acme Corp")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "Acme Corp")
	o, e, code = garrison(t, s, admin, "tenant", "list", "-o", "json")
	require.Equal(t, 0, code, e)
	var ts []map[string]any
	require.NoError(t, json.Unmarshal([]byte(o), &ts))
	require.Len(t, ts, 1)
	require.Equal(t, "acme", ts[0]["id"])

	o, e, code = garrison(t, s, admin, "token", "create", "ci", "--tenant", "acme", "--role", "auditor", "-o", "json")
	require.Equal(t, 0, code, e)
	var ct struct {
		Token  struct{ ID, Role string }
		Secret string
	}
	require.NoError(t, json.Unmarshal([]byte(o), &ct))
	require.Equal(t, "auditor", ct.Token.Role)
	require.Regexp(t, tokenRE, ct.Secret)

	// The tenant's auditor reads its tenant and audit log, not the tenant list.
	_, e, code = garrison(t, s, ct.Secret, "tenant", "get", "acme")
	require.Equal(t, 0, code, e)
	_, e, code = garrison(t, s, ct.Secret, "tenant", "list")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	o, e, code = garrison(t, s, ct.Secret, "audit", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "token.create")

	o, e, code = garrison(t, s, admin, "audit", "verify", "--all")
	require.Equal(t, 0, code, e+o)
	require.Contains(t, o, "_platform")
	require.Contains(t, o, "acme")

	o, e, code = garrison(t, s, admin, "token", "list", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, ct.Token.ID)
	require.NotContains(t, o, ct.Secret)
	_, e, code = garrison(t, s, admin, "token", "revoke", ct.Token.ID, "--tenant", "acme")
	require.Equal(t, 0, code, e)
	_, e, code = garrison(t, s, ct.Secret, "tenant", "get", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "unauthenticated")

	// Restart: no new token is printed; the same certificate is reused.
	cert1, err := os.ReadFile(filepath.Join(data, "tls", "server.crt"))
	require.NoError(t, err)
	s.stop(t)
	s, out = startServe(t, data)
	require.NotRegexp(t, tokenRE, out.String())
	cert2, err := os.ReadFile(filepath.Join(data, "tls", "server.crt"))
	require.NoError(t, err)
	require.Equal(t, cert1, cert2)
	_, e, code = garrison(t, s, admin, "tenant", "get", "acme")
	require.Equal(t, 0, code, e)

	// Tamper with one audit row in plain SQL: verify names it and exits 3.
	s.stop(t)
	db, err := sql.Open("sqlite", filepath.Join(data, "garrison.db"))
	require.NoError(t, err)
	res, err := db.Exec(`UPDATE audit SET actor = 'someone-else' WHERE tenant = 'acme' AND seq = 2`)
	require.NoError(t, err)
	n, _ := res.RowsAffected()
	require.EqualValues(t, 1, n)
	require.NoError(t, db.Close())
	s, _ = startServe(t, data)
	o, _, code = garrison(t, s, admin, "audit", "verify", "--tenant", "acme")
	require.Equal(t, 3, code, o)
	require.Contains(t, o, "record 2 altered")
	_, e, code = garrison(t, s, admin, "audit", "verify")
	require.Equal(t, 0, code, "the platform chain is untouched: %s", e)
}

// TestKill9DuringWrites SIGKILLs serve in the middle of a burst of tenant
// creations and checks that every acknowledged one survived, with an
// intact audit chain.
func TestKill9DuringWrites(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	admin := tokenRE.FindString(out.String())
	require.NotEmpty(t, admin)

	pool, err := tlsutil.Pool(filepath.Join(data, "tls", tlsutil.CertFile))
	require.NoError(t, err)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	post := func(id string) bool {
		req, _ := http.NewRequest("POST", "https://"+s.addr+"/api/v1/tenants", strings.NewReader(fmt.Sprintf(`{"id":%q}`, id)))
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusCreated
	}

	var mu sync.Mutex
	var acked []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("k-%d-%d", w, i)
				if post(id) {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}
		}()
	}
	// Kill once the burst is well under way.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 100 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.kill()
	time.Sleep(100 * time.Millisecond) // let in-flight requests fail
	cancel()
	wg.Wait()
	mu.Lock()
	got := append([]string(nil), acked...)
	mu.Unlock()
	require.GreaterOrEqual(t, len(got), 100, "the burst was acknowledged before the kill")

	s, _ = startServe(t, data)
	o, e, code := garrison(t, s, admin, "tenant", "list", "-o", "json")
	require.Equal(t, 0, code, e)
	var ts []struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(o), &ts))
	have := map[string]bool{}
	for _, tn := range ts {
		have[tn.ID] = true
	}
	for _, id := range got {
		require.True(t, have[id], "acknowledged tenant %s lost after kill -9", id)
	}
	t.Logf("%d acknowledged before kill -9, %d present after restart", len(got), len(ts))
	o, e, code = garrison(t, s, admin, "audit", "verify", "--all")
	require.Equal(t, 0, code, o+e)
	// Every tenant that exists has its audit record.
	o, e, code = garrison(t, s, admin, "audit", "list", "--limit", "1000", "-o", "json")
	require.Equal(t, 0, code, e)
	for _, tn := range ts {
		require.Contains(t, o, `"tenant:`+tn.ID+`"`)
	}
}
