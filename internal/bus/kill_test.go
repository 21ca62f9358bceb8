package bus

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

const childDirEnv = "GARRISON_BUS_KILL_CHILD_DIR"

// TestKill9KeepsAcknowledgedEvents starts a child process that publishes
// to both streams of an embedded bus and prints each acknowledged id, kills
// it with SIGKILL mid-burst, reopens the data directory and checks that
// every acknowledged event is there.
func TestKill9KeepsAcknowledgedEvents(t *testing.T) {
	if os.Getenv(childDirEnv) != "" {
		t.Skip("running as the child")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[Stream]int{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var st, n int
		if _, err := fmt.Sscanf(sc.Text(), "acked %d %d", &st, &n); err != nil {
			continue
		}
		acked[Stream(st)] = n
		if acked[Events] >= 300 && acked[Security] >= 30 {
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if acked[Events] < 300 || acked[Security] < 30 {
		t.Fatalf("child stopped early: acked %v", acked)
	}

	b := mustOpen(t, Options{DataDir: dir})
	ctx := ctxT(t)
	for st, n := range acked {
		info, err := b.StreamInfo(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs < uint64(n) {
			t.Errorf("stream %s holds %d events after kill -9, but %d were acknowledged", st, info.State.Msgs, n)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bus", "security")); err != nil {
		t.Errorf("SECURITY store not in its own directory: %v", err)
	}
}

// TestKill9Child is the child of TestKill9KeepsAcknowledgedEvents; it
// publishes until killed.
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(childDirEnv)
	if dir == "" {
		t.Skip("only runs as the child of TestKill9KeepsAcknowledgedEvents")
	}
	b, err := Open(context.Background(), Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w := bufio.NewWriter(os.Stdout)
	n := map[Stream]int{}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		k := event.NetFlow
		if i%10 == 0 {
			k = event.CertRevoked
		}
		e := ev(i, "d-"+strconv.Itoa(i%20), k)
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		st := b.StreamFor(k)
		n[st]++
		fmt.Fprintf(w, "acked %d %d\n", st, n[st])
		_ = w.Flush()
	}
}
