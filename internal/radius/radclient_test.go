package radius

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// radclient runs FreeRADIUS's radclient (Debian freeradius-utils) as the
// real peer: it reads the attribute list from stdin.
func radclient(t *testing.T, addr, command, attrs string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "radclient", "-x", "-r", "1", "-t", "2", addr, command, string(testSecret))
	cmd.Stdin = strings.NewReader(attrs)
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Access-Reject") {
		t.Fatalf("radclient %s: %v\n%s", command, err, out)
	}
	return string(out)
}

func startUDP(t *testing.T, serve func(context.Context, net.PacketConn) error) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return pc.LocalAddr().String()
}

func TestRadclientAccounting(t *testing.T) {
	if _, err := exec.LookPath("radclient"); err != nil {
		t.Skip("radclient not installed (apt-get install freeradius-utils): real-peer RADIUS test not run")
	}
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeMonitor)
	addr := startUDP(t, s.ServeAccounting)
	common := `Acct-Session-Id = "rc-1"
Framed-IP-Address = 10.9.8.7
Calling-Station-Id = "34600000017"
3GPP-IMSI = "` + imsiMeter + `"
3GPP-IMEISV = "` + imeisvMeter + `"
3GPP-User-Location-Info = 0x8212f4101a2b12f41000abcdef
3GPP-RAT-Type = EUTRAN
`
	steps := []struct {
		attrs    string
		status   string
		up, down float64
	}{
		{"Acct-Status-Type = Start\n", "start", 0, 0},
		{"Acct-Status-Type = Interim-Update\nAcct-Input-Octets = 1200\nAcct-Output-Octets = 3400\n", "interim", 1200, 3400},
		{"Acct-Status-Type = Interim-Update\nAcct-Input-Octets = 100\nAcct-Input-Gigawords = 1\nAcct-Output-Octets = 3400\n", "interim", 1<<32 + 100 - 1200, 0},
		{"Acct-Status-Type = Stop\nAcct-Input-Octets = 200\nAcct-Input-Gigawords = 1\nAcct-Output-Octets = 4400\n", "stop", 100, 1000},
	}
	for i, st := range steps {
		out := radclient(t, addr, "acct", common+st.attrs)
		if !strings.Contains(out, "Accounting-Response") {
			t.Fatalf("step %d: no Accounting-Response:\n%s", i, out)
		}
		evs := pub.events()
		e := evs[len(evs)-1]
		if e.Kind == event.Location {
			e = evs[len(evs)-2]
		}
		up, _ := e.Float("bytes_up")
		down, _ := e.Float("bytes_down")
		if e.Kind != event.NetSession || e.Str("status") != st.status || up != st.up || down != st.down {
			t.Fatalf("step %d: event %+v", i, e)
		}
		if e.Device != "meter-0017" || e.Str("imei") != imeiMeter || e.Str("cell") != "214-01-0x1a2b-0x00abcdef" || e.Str("ip") != "10.9.8.7" || e.Str("rat") != "eutran" {
			t.Fatalf("step %d: attrs %+v", i, e.Attrs)
		}
	}
	if n := s.Stats().Accounting; n != 4 {
		t.Fatalf("accounted %d records, want 4", n)
	}
}

func TestRadclientAccess(t *testing.T) {
	if _, err := exec.LookPath("radclient"); err != nil {
		t.Skip("radclient not installed (apt-get install freeradius-utils): real-peer RADIUS test not run")
	}
	pub := &fakePub{}
	s, _ := newTestServer(t, pub, ModeEnforce)
	s.o.RequireMessageAuthenticator = true
	addr := startUDP(t, s.ServeAuth)
	tests := []struct {
		name, imsi, imeisv, want string
	}{
		{"bound", imsiMeter, imeisvMeter, "Access-Accept"},
		{"foreign imei", imsiMeter, "3569380356438091", "Access-Reject"},
		{"suspended", "214010000000018", imeisvMeter, "Access-Reject"},
		{"unknown", "214019999999999", imeisvMeter, "Access-Reject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := radclient(t, addr, "auth", `User-Name = "`+tt.imsi+`"
User-Password = "x"
Message-Authenticator = 0x00
3GPP-IMSI = "`+tt.imsi+`"
3GPP-IMEISV = "`+tt.imeisv+`"
`)
			if !strings.Contains(out, "Received "+tt.want) {
				t.Fatalf("want %s:\n%s", tt.want, out)
			}
		})
	}
}
