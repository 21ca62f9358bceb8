package export_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
)

// freePort returns a port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// socat starts Debian's socat listening on 127.0.0.1 with the given
// listener address type and options, writing what it receives on its
// stdout, which the returned function reads to the end (socat exits when
// the sender closes its connection).
func socat(t *testing.T, listen string) (addr string, output func() []byte) {
	t.Helper()
	path, err := exec.LookPath("socat")
	if err != nil {
		t.Fatalf("socat is required (apt-get install socat; .ci/run installs it): %v", err)
	}
	port := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, path, "-d", "-d", "-u", fmt.Sprintf(listen, port), "STDOUT")
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	listening := make(chan struct{})
	var log bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "listening on") {
				once = true
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(20 * time.Second):
		t.Fatalf("socat did not listen: %s", log.String())
	}
	return fmt.Sprintf("127.0.0.1:%d", port), func() []byte {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("socat: %v\n%s", err, log.String())
		}
		return out.Bytes()
	}
}

// rfc5424 is the header of an RFC 5424 message: PRI, VERSION 1,
// TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID, STRUCTURED-DATA (NILVALUE
// or elements), then MSG.
var rfc5424 = regexp.MustCompile(`(?s)^<([0-9]{1,3})>1 (\S+) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) (-|\[[^\]]*\]) (.*)$`)

type syslogMsg struct {
	pri                      int
	ts                       time.Time
	host, app, procid, msgid string
	msg                      []byte
}

// parseFrames splits octet-counted frames (RFC 6587 3.4.1) and parses each
// message strictly.
func parseFrames(t *testing.T, b []byte) []syslogMsg {
	t.Helper()
	var out []syslogMsg
	for len(b) > 0 {
		sp := bytes.IndexByte(b, ' ')
		require.Positive(t, sp, "frame starts with its length: %q", b)
		n, err := strconv.Atoi(string(b[:sp]))
		require.NoError(t, err)
		require.NotEqual(t, '0', b[0], "no leading zero in MSG-LEN")
		require.LessOrEqual(t, sp+1+n, len(b), "frame of %d octets is complete", n)
		raw := b[sp+1 : sp+1+n]
		b = b[sp+1+n:]
		m := rfc5424.FindSubmatch(raw)
		require.NotNil(t, m, "RFC 5424 message: %q", raw)
		var sm syslogMsg
		sm.pri, _ = strconv.Atoi(string(m[1]))
		require.LessOrEqual(t, sm.pri, 191)
		sm.ts, err = time.Parse(time.RFC3339Nano, string(m[2]))
		require.NoError(t, err, "timestamp %s", m[2])
		sm.host, sm.app, sm.procid, sm.msgid, sm.msg = string(m[3]), string(m[4]), string(m[5]), string(m[6]), m[8]
		out = append(out, sm)
	}
	return out
}

func syslogAlerts() []alert.Alert {
	a1 := testAlert("al-s1")
	a1.Evidence.Values = map[string]any{"bound_imei": "356938035643809", "imei": "490154203237518"}
	a2 := testAlert("al-s2")
	a2.Kind, a2.Severity, a2.Count, a2.State, a2.Device = alert.TelnetScan, alert.Critical, 3, alert.Acknowledged, "cam-0002"
	a2.Evidence.Summary = "contacted 412 hosts on 23/tcp; \"quoted\" and ünïcode"
	a3 := testAlert("al-s3")
	a3.Tenant, a3.Kind, a3.Severity = event.TenantID("globex"), alert.GeofenceExit, alert.Low
	return []alert.Alert{a1, a2, a3}
}

func checkReceived(t *testing.T, frames []syslogMsg, sent []alert.Alert) {
	t.Helper()
	require.Len(t, frames, len(sent))
	wantSev := map[alert.Severity]int{alert.Info: 6, alert.Low: 5, alert.Medium: 4, alert.High: 3, alert.Critical: 2}
	for i, f := range frames {
		a := sent[i]
		require.Equal(t, 10*8+wantSev[a.Severity], f.pri, "facility authpriv, severity from the alert")
		require.Equal(t, "gw-test", f.host)
		require.Equal(t, "garrison", f.app)
		require.Equal(t, "alert", f.msgid)
		require.Equal(t, t0, f.ts)
		var fnd map[string]any
		require.NoError(t, json.Unmarshal(f.msg, &fnd), "MSG is JSON: %s", f.msg)
		require.EqualValues(t, 2004, fnd["class_uid"])
		require.EqualValues(t, 2, fnd["category_uid"])
		require.EqualValues(t, int(a.Severity), fnd["severity_id"])
		var typed export.DetectionFinding
		require.NoError(t, json.Unmarshal(f.msg, &typed))
		require.Equal(t, a.ID, typed.FindingInfo.UID)
		require.Equal(t, []string{string(a.Kind)}, typed.FindingInfo.Types)
		require.Equal(t, string(a.Device), typed.Device.UID)
		require.Equal(t, string(a.Tenant), typed.Metadata.TenantUID)
		require.Equal(t, a.Evidence.Summary, typed.Message)
		require.Equal(t, export.OCSFClassDetectionFinding*100+typed.ActivityID, typed.TypeUID)
	}
	require.Equal(t, 2, int(mustFinding(t, frames[1].msg).ActivityID), "a repeated alert is an Update")
	require.Equal(t, "In Progress", mustFinding(t, frames[1].msg).Status)
	require.Equal(t, "490154203237518", mustFinding(t, frames[0].msg).Evidences[0].Data["imei"])
}

func mustFinding(t *testing.T, b []byte) export.DetectionFinding {
	var f export.DetectionFinding
	require.NoError(t, json.Unmarshal(b, &f))
	return f
}

// TestSyslogTCPToSocat sends alerts over TCP to a real socat receiver and
// parses what it wrote as RFC 5424 frames carrying OCSF findings.
func TestSyslogTCPToSocat(t *testing.T) {
	addr, output := socat(t, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr")
	s, err := export.NewSyslog(export.SyslogOptions{Addr: addr, Hostname: "gw-test", Clock: clock.NewManual(t0)})
	require.NoError(t, err)
	sent := syslogAlerts()
	for _, a := range sent {
		require.NoError(t, s.SendAlert(context.Background(), a))
	}
	require.NoError(t, s.Close())
	checkReceived(t, parseFrames(t, output()), sent)
}

// TestSyslogTLSToSocat does the same over TLS (RFC 5425), verifying the
// receiver's certificate.
func TestSyslogTLSToSocat(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	addr, output := socat(t, "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,cert="+certFile+",key="+keyFile+",verify=0")
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(certPEM))
	s, err := export.NewSyslog(export.SyslogOptions{Addr: addr, Hostname: "gw-test", Clock: clock.NewManual(t0),
		TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
	require.NoError(t, err)
	sent := syslogAlerts()
	for _, a := range sent {
		require.NoError(t, s.SendAlert(context.Background(), a))
	}
	require.NoError(t, s.Close())
	checkReceived(t, parseFrames(t, output()), sent)
}

// TestSyslogRefusesUntrustedTLS: a collector whose certificate is not
// trusted gets nothing.
func TestSyslogRefusesUntrustedTLS(t *testing.T) {
	certPEM, keyPEM := selfSigned(t)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	s, err := export.NewSyslog(export.SyslogOptions{Addr: ln.Addr().String(), TLS: &tls.Config{MinVersion: tls.VersionTLS12}})
	require.NoError(t, err)
	err = s.SendAlert(context.Background(), testAlert("al-x"))
	var uerr *tls.CertificateVerificationError
	require.True(t, errors.As(err, &uerr), "got %v", err)
}

func TestSyslogReconnects(t *testing.T) {
	// The collector reads one frame from the first connection and closes
	// it; the sender must redial and deliver the next alerts on a new one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	first, second := make(chan []byte, 1), make(chan []byte, 1)
	accepted := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b := make([]byte, 4096)
		n, _ := c.Read(b)
		first <- b[:n]
		c.Close()
		c, err = ln.Accept()
		if err != nil {
			return
		}
		close(accepted)
		b, _ = io.ReadAll(c)
		second <- b
	}()
	s, err := export.NewSyslog(export.SyslogOptions{Addr: ln.Addr().String(), Hostname: "gw-test", Clock: clock.NewManual(t0)})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, s.SendAlert(ctx, testAlert("al-1")))
	require.Len(t, parseFrames(t, <-first), 1)
	// A write into the closed socket may succeed once locally (TCP reports
	// the reset on a later write), so send until the sender has redialled.
	require.Eventually(t, func() bool {
		_ = s.SendAlert(ctx, testAlert("al-2"))
		select {
		case <-accepted:
			return true
		default:
			return false
		}
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, s.SendAlert(ctx, testAlert("al-3")))
	require.NoError(t, s.Close())
	frames := parseFrames(t, <-second)
	require.NotEmpty(t, frames)
	require.Equal(t, "al-3", mustFinding(t, frames[len(frames)-1].msg).FindingInfo.UID)
}

func TestNewSyslogRejectsBadOptions(t *testing.T) {
	_, err := export.NewSyslog(export.SyslogOptions{Addr: "no-port"})
	require.Error(t, err)
	_, err = export.NewSyslog(export.SyslogOptions{Addr: "127.0.0.1:514", Facility: 24})
	require.Error(t, err)
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "collector"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}
