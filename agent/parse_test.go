package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestReadSocketsAndProcesses(t *testing.T) {
	s, err := readSockets("testdata/proc")
	require.NoError(t, err, "a missing udp6 table (no IPv6) is not an error")
	require.Equal(t, []int{22, 23, 443}, s.TCPListening)
	require.Equal(t, []int{68, 2021}, s.UDPBound, "bound, unconnected UDP sockets; a connected one is not listening")
	require.Equal(t, 3, s.Established, "IPv4 and IPv6 ESTABLISHED; TIME_WAIT does not count")
	n, err := countProcesses("testdata/proc")
	require.NoError(t, err)
	require.Equal(t, 2, n, "only numeric directories are processes")

	// The live /proc of this machine parses too.
	if _, err := os.Stat("/proc/net/tcp"); err == nil {
		s, err := readSockets("/proc")
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(s.TCPListening)+len(s.UDPBound)+s.Established, 0)
		n, err := countProcesses("/proc")
		require.NoError(t, err)
		require.Greater(t, n, 0)
	}
}

func TestParseProcNetSkipsGarbage(t *testing.T) {
	in := "  sl  local_address rem_address   st\n" +
		"   0: 00000000:0016 00000000:0000 0A x\n" +
		"   1: 0000000:0016 00000000:0000 0A x\n" + // 7-digit address
		"   2: 00000000:10000 00000000:0000 0A x\n" + // port out of range
		"   3: 00000000:0016 00000000:0000 ZZ x\n" +
		"garbage\n\n"
	e, bad, err := parseProcNet(strings.NewReader(in))
	require.NoError(t, err)
	require.Equal(t, []socketEntry{{LocalPort: 22, RemotePort: 0, State: tcpListen}}, e)
	require.Equal(t, 4, bad)
}

// FuzzParseProcNet: any bytes parse without panicking, every entry has
// ports in range, and every line is either an entry, counted bad, the
// header or blank.
func FuzzParseProcNet(f *testing.F) {
	for _, name := range []string{"tcp", "tcp6", "udp"} {
		b, err := os.ReadFile(filepath.Join("testdata/proc/net", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("   0: 00000000:FFFF 00000000:0000 0A\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, bad, err := parseProcNet(bytes.NewReader(b))
		if err != nil {
			return // a line longer than the scanner's buffer
		}
		for _, x := range e {
			if x.LocalPort < 0 || x.LocalPort > 65535 || x.RemotePort < 0 || x.RemotePort > 65535 || x.State < 0 || x.State > 255 {
				t.Fatalf("entry out of range: %+v", x)
			}
		}
		if lines := bytes.Count(b, []byte("\n")) + 1; len(e)+bad > lines {
			t.Fatalf("%d entries and %d bad from %d lines", len(e), bad, lines)
		}
	})
}

// certsOnly builds a certs-only PKCS#7 as RFC 7030 servers send it.
func certsOnly(t testing.TB, certs ...[]byte) []byte {
	t.Helper()
	type signedData struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		ContentInfo      struct{ ContentType asn1.ObjectIdentifier }
		Certificates     asn1.RawValue `asn1:"tag:0"`
		SignerInfos      asn1.RawValue
	}
	sd := signedData{Version: 1,
		DigestAlgorithms: asn1.RawValue{Class: 0, Tag: 17, IsCompound: true, Bytes: nil},
		Certificates:     asn1.RawValue{Class: 2, Tag: 0, IsCompound: true, Bytes: bytes.Join(certs, nil)},
		SignerInfos:      asn1.RawValue{Class: 0, Tag: 17, IsCompound: true, Bytes: nil}}
	sd.ContentInfo.ContentType = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	inner, err := asn1.Marshal(sd)
	require.NoError(t, err)
	der, err := asn1.Marshal(struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue
	}{oidSignedData, asn1.RawValue{Class: 2, Tag: 0, IsCompound: true, Bytes: inner}})
	require.NoError(t, err)
	return der
}

func testCertDER(t testing.TB, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	return der
}

func TestParseCertsOnly(t *testing.T) {
	a, b := testCertDER(t, "a"), testCertDER(t, "b")
	der := certsOnly(t, a, b)
	for _, body := range [][]byte{der, []byte(base64.StdEncoding.EncodeToString(der)), base64Lines(der)} {
		certs, err := parseCertsOnly(body)
		require.NoError(t, err)
		require.Len(t, certs, 2)
		require.Equal(t, "a", certs[0].Subject.CommonName)
		require.Equal(t, "b", certs[1].Subject.CommonName)
	}
	for _, bad := range [][]byte{nil, []byte("not base64 !"), []byte(base64.StdEncoding.EncodeToString([]byte("hello"))), certsOnly(t), a} {
		_, err := parseCertsOnly(bad)
		require.ErrorIs(t, err, ErrBadResponse)
	}
}

func base64Lines(b []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(b)
	var out bytes.Buffer
	for len(enc) > 64 {
		out.WriteString(enc[:64] + "\r\n")
		enc = enc[64:]
	}
	out.WriteString(enc + "\r\n")
	return out.Bytes()
}

// FuzzParseCertsOnly: an EST answer from a hostile or broken server never
// panics, and a success always yields at least one certificate.
func FuzzParseCertsOnly(f *testing.F) {
	der := certsOnly(f, testCertDER(f, "seed"))
	f.Add(der)
	f.Add(base64Lines(der))
	f.Add([]byte("MIIB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := parseCertsOnly(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("success without a certificate")
		}
	})
}

func TestParseCommand(t *testing.T) {
	c, err := parseCommand([]byte(`{"id":"cmd-1","name":"ping","args":{"x":1},"expires":"2026-11-24T12:00:00Z","future":true}`))
	require.NoError(t, err, "unknown fields are ignored")
	require.Equal(t, "cmd-1", c.ID)
	require.Equal(t, "ping", c.Name)
	require.JSONEq(t, `{"x":1}`, string(c.Args))
	require.Equal(t, time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC), c.Expires)
	for _, bad := range []string{``, `[]`, `"x"`, `{"name":"ping"}`, `{"id":1}`, `{"id":"a"} {"id":"b"}`, `{"id":"a"`,
		`{"id":"` + strings.Repeat("x", 200) + `"}`} {
		_, err := parseCommand([]byte(bad))
		require.ErrorIs(t, err, ErrBadCommand, bad)
	}
}

func FuzzParseCommand(f *testing.F) {
	f.Add([]byte(`{"id":"cmd-1","name":"ping"}`))
	f.Add([]byte(`{"id":"cmd-2","name":"reboot","args":null,"expires":"2026-11-24T12:00:00Z"}`))
	f.Add([]byte(`{"id":"x","name":"report","args":{"a":[1,2,{"b":"c"}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseCommand(b)
		if err == nil && (c.ID == "" || len(c.ID) > maxCommandID) {
			t.Fatalf("accepted command with id %q", c.ID)
		}
	})
}

func TestParseJob(t *testing.T) {
	j, err := parseJob([]byte(`{"job":"j1","campaign":"c1","manifest":{"a":1},"keys":{"b":2},"url":"https://h/x","emergency":true,"new":1}`))
	require.NoError(t, err)
	require.Equal(t, "j1", j.Job)
	require.NoError(t, j.validate())
	for _, bad := range []string{``, `[]`, `{"manifest":{}}`, `{"job":""}`, `{"job":"a"}{}`} {
		_, err := parseJob([]byte(bad))
		require.ErrorIs(t, err, ErrBadJob, bad)
	}
	for _, bad := range []string{`{"job":"j","keys":{},"url":"https://h/x"}`, `{"job":"j","manifest":{},"url":"https://h/x"}`,
		`{"job":"j","manifest":{},"keys":{},"url":"http://h/x"}`} {
		j, err := parseJob([]byte(bad))
		require.NoError(t, err)
		require.ErrorIs(t, j.validate(), ErrBadJob, bad)
	}
}

func FuzzParseJob(f *testing.F) {
	f.Add([]byte(`{"job":"j1","campaign":"c","manifest":{"signatures":[],"signed":{}},"keys":{"signatures":[],"signed":{}},"url":"https://h:8443/api/v1/firmware/artifacts/ab","emergency":false}`))
	f.Add([]byte(`{"job":"j2"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := parseJob(b)
		if err != nil {
			return
		}
		if j.Job == "" {
			t.Fatal("accepted a job without id")
		}
		_ = j.validate()
	})
}
