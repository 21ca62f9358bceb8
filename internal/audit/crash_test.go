package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// Environment of the child process of TestKill9KeepsAcknowledgedWrites.
const (
	envChildSQLite = "GARRISON_AUDIT_CRASH_SQLITE" // database path
	envChildSchema = "GARRISON_AUDIT_CRASH_SCHEMA" // PostgreSQL schema
)

// TestCrashChild is the child process: it writes audited changes as fast as
// it can and prints "ack <seq>" after each Update returned nil, until killed.
func TestCrashChild(t *testing.T) {
	path, schema := os.Getenv(envChildSQLite), os.Getenv(envChildSchema)
	if path == "" && schema == "" {
		t.Skip("helper process for TestKill9KeepsAcknowledgedWrites")
	}
	ctx := context.Background()
	var s store.Store
	var err error
	if path != "" {
		s, err = sqlite.Open(ctx, path)
	} else {
		s, err = postgres.Open(ctx, os.Getenv(pgtest.EnvURL), postgres.WithSchema(schema))
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		var seq int64
		err := s.Update(ctx, func(tx store.Tx) error {
			id := event.DeviceID(fmt.Sprintf("d%07d", i))
			if err := tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: id, Model: "m", State: store.StateRegistered, CreatedAt: t0}); err != nil {
				return err
			}
			r, err := Append(ctx, tx, Entry{Tenant: "acme", Time: t0, Actor: "child", Action: "device.create", Target: "device/" + string(id)})
			seq = r.Seq
			return err
		})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Printf("ack %d %d\n", seq, i)
	}
}

// TestKill9KeepsAcknowledgedWrites kills a writing process with SIGKILL and
// checks that every write it saw acknowledged survived and the chain
// verifies.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	for _, b := range []struct {
		name string
		env  func(t *testing.T) (string, store.Store)
	}{
		{"sqlite", func(t *testing.T) (string, store.Store) {
			path := filepath.Join(t.TempDir(), "crash.db")
			return envChildSQLite + "=" + path, nil
		}},
		{"postgres", func(t *testing.T) (string, store.Store) {
			db := pgtest.Open(t)
			return envChildSchema + "=" + db.Schema, db
		}},
	} {
		t.Run(b.name, func(t *testing.T) {
			env, s := b.env(t)
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), env)
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			var lastSeq int64
			var lastI int
			sc := bufio.NewScanner(out)
			deadline := time.Now().Add(10 * time.Second)
			for acks := 0; acks < 150 && time.Now().Before(deadline) && sc.Scan(); {
				f := strings.Fields(sc.Text())
				if len(f) != 3 || f[0] != "ack" {
					continue // test framework noise, or an error reported below
				}
				lastSeq, _ = strconv.ParseInt(f[1], 10, 64)
				lastI, _ = strconv.Atoi(f[2])
				acks++
			}
			require.NoError(t, cmd.Process.Kill()) // SIGKILL: no cleanup runs
			_ = cmd.Wait()
			require.Positive(t, lastSeq, "child acknowledged nothing")
			if s == nil {
				db, err := sqlite.Open(context.Background(), strings.TrimPrefix(env, envChildSQLite+"="))
				require.NoError(t, err)
				t.Cleanup(func() { _ = db.Close() })
				s = db
			}
			rep, err := Verify(context.Background(), s, "acme")
			require.NoError(t, err)
			require.True(t, rep.OK, rep.String())
			require.GreaterOrEqual(t, rep.HeadSeq, lastSeq, "an acknowledged audit record was lost")
			require.NoError(t, s.View(context.Background(), func(tx store.Tx) error {
				_, err := tx.Devices().Get(context.Background(), "acme", event.DeviceID(fmt.Sprintf("d%07d", lastI)))
				return err
			}), "the last acknowledged change was lost")
			t.Logf("killed after ack of seq %d; chain head after restart %d", lastSeq, rep.HeadSeq)
		})
	}
}
