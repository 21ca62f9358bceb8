package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// onTerminal runs the CLI against s with stdin, stdout and stderr on a
// pseudo-terminal, types input, and returns what the terminal showed and
// the exit code.
func onTerminal(t *testing.T, s *server, token, input string, args ...string) (string, int) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	defer master.Close()
	fd := int(master.Fd())
	require.NoError(t, unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	require.NoError(t, err)
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	cmd := exec.Command(binary, append(args, "--data-dir", s.data)...)
	cmd.Env = append(cleanEnv(), "GARRISON_TOKEN="+token, "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	require.NoError(t, cmd.Start())
	slave.Close()
	var out syncBuf
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&out, master) // ends with EIO once the child has gone
	}()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "[y/N]") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	_, err = master.WriteString(input)
	require.NoError(t, err)
	err = cmd.Wait()
	code := 0
	var xe *exec.ExitError
	if errors.As(err, &xe) {
		code = xe.ExitCode()
	} else {
		require.NoError(t, err)
	}
	select {
	case <-read:
	case <-time.After(5 * time.Second):
	}
	return out.String(), code
}
