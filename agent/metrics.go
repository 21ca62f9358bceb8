package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// SocketStats is what the socket tables of /proc/net say.
type SocketStats struct {
	TCPListening []int // TCP ports in LISTEN, sorted, unique
	UDPBound     []int // UDP ports bound and not connected, sorted, unique
	Established  int   // TCP connections in ESTABLISHED
}

// Socket states of include/net/tcp_states.h used here.
const (
	tcpEstablished = 0x01
	tcpClose       = 0x07 // an unconnected UDP socket
	tcpListen      = 0x0A
)

// maxProcNetBytes bounds how much of one /proc/net table is read.
const maxProcNetBytes = 16 << 20

// socketEntry is one parsed row of /proc/net/{tcp,tcp6,udp,udp6}.
type socketEntry struct {
	LocalPort  int
	RemotePort int
	State      int
}

// parseProcNet parses a /proc/net/{tcp,tcp6,udp,udp6} table: a header
// line, then rows "sl: LOCAL_HEX:PORT_HEX REMOTE_HEX:PORT_HEX ST ...".
// Rows that do not parse are skipped and counted in bad; it never fails on
// content, only on a read error.
func parseProcNet(r io.Reader) (entries []socketEntry, bad int, err error) {
	sc := bufio.NewScanner(io.LimitReader(r, maxProcNetBytes))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	first := true
	for sc.Scan() {
		line := sc.Bytes()
		if first {
			first = false
			if bytes.Contains(line, []byte("local_address")) {
				continue
			}
		}
		f := bytes.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 4 || !bytes.HasSuffix(f[0], []byte(":")) {
			bad++
			continue
		}
		lp, ok1 := hexPort(f[1])
		rp, ok2 := hexPort(f[2])
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if !ok1 || !ok2 || err != nil {
			bad++
			continue
		}
		entries = append(entries, socketEntry{LocalPort: lp, RemotePort: rp, State: int(st)})
	}
	if err := sc.Err(); err != nil {
		return entries, bad, fmt.Errorf("agent: /proc/net: %w", err)
	}
	return entries, bad, nil
}

// hexPort reads the port of "ADDRHEX:PORTHEX" (an IPv4 address is 8 hex
// digits, IPv6 32).
func hexPort(b []byte) (int, bool) {
	i := bytes.LastIndexByte(b, ':')
	if i < 0 {
		return 0, false
	}
	addr, port := b[:i], b[i+1:]
	if len(addr) != 8 && len(addr) != 32 {
		return 0, false
	}
	for _, c := range addr {
		if !isHex(c) {
			return 0, false
		}
	}
	if len(port) == 0 || len(port) > 4 {
		return 0, false
	}
	p, err := strconv.ParseUint(string(port), 16, 16)
	if err != nil {
		return 0, false
	}
	return int(p), true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// readSockets reads the four socket tables under procRoot/net. A missing
// table (no IPv6) counts as empty.
func readSockets(procRoot string) (SocketStats, error) {
	var s SocketStats
	var errs []error
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(filepath.Join(procRoot, "net", name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		entries, _, err := parseProcNet(f)
		f.Close()
		if err != nil {
			errs = append(errs, err)
		}
		udp := name[0] == 'u'
		for _, e := range entries {
			switch {
			case !udp && e.State == tcpListen:
				s.TCPListening = append(s.TCPListening, e.LocalPort)
			case !udp && e.State == tcpEstablished:
				s.Established++
			case udp && e.State == tcpClose && e.RemotePort == 0 && e.LocalPort != 0:
				s.UDPBound = append(s.UDPBound, e.LocalPort)
			}
		}
	}
	slices.Sort(s.TCPListening)
	s.TCPListening = slices.Compact(s.TCPListening)
	slices.Sort(s.UDPBound)
	s.UDPBound = slices.Compact(s.UDPBound)
	return s, errors.Join(errs...)
}

// countProcesses counts the numeric directories of procRoot (one per
// process visible in this PID namespace).
func countProcesses(procRoot string) (int, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, fmt.Errorf("agent: count processes: %w", err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && isPID(e.Name()) {
			n++
		}
	}
	return n, nil
}

func isPID(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Metrics is the payload of devices/{id}/metrics (DEVICE_PROTOCOL.md).
type Metrics struct {
	TS             string `json:"ts"`
	FWVersion      string `json:"fw_version"`
	FWDigest       string `json:"fw_digest"`
	Slot           string `json:"slot"`
	ListeningPorts []int  `json:"listening_ports"` // TCP listening and UDP bound ports, sorted, unique
	Connections    int    `json:"connections"`     // established TCP connections
	Processes      int    `json:"processes"`
	UptimeS        int64  `json:"uptime_s"` // since the agent's last (simulated) boot
}

// metrics assembles the metrics payload from /proc and the running slot.
func (a *Agent) metrics() (Metrics, error) {
	st := a.snapshot()
	run := st.running()
	now := a.cfg.Clock.Now()
	m := Metrics{TS: now.UTC().Format(timeFormat), FWVersion: run.Version, FWDigest: run.Digest, Slot: st.Active,
		UptimeS: int64(now.Sub(a.bootTime()).Seconds()), ListeningPorts: []int{}}
	socks, err1 := readSockets(a.cfg.ProcRoot)
	m.ListeningPorts = append(m.ListeningPorts, socks.TCPListening...)
	m.ListeningPorts = append(m.ListeningPorts, socks.UDPBound...)
	slices.Sort(m.ListeningPorts)
	m.ListeningPorts = slices.Compact(m.ListeningPorts)
	m.Connections = socks.Established
	n, err2 := countProcesses(a.cfg.ProcRoot)
	m.Processes = n
	return m, errors.Join(err1, err2)
}
