package identity

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestESTThirdPartyClient drives the EST handlers with the estclient of
// github.com/globalsign/est, a client nobody here wrote. Its path comes
// from GARRISON_TEST_ESTCLIENT or PATH. Build it with:
//
//	mkdir /tmp/estcli && cd /tmp/estcli && printf 'module estcli\ngo 1.26\nrequire github.com/globalsign/est v1.0.6\n' > go.mod
//	GOFLAGS=-mod=mod go build github.com/globalsign/est/cmd/estclient
func TestESTThirdPartyClient(t *testing.T) {
	bin := os.Getenv("GARRISON_TEST_ESTCLIENT")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("estclient"); err != nil {
			t.Skip("estclient (github.com/globalsign/est) not found: set GARRISON_TEST_ESTCLIENT or put it on PATH")
		}
	}
	ctx := context.Background()
	st := newMemStore()
	f := newFixture(t, st)
	srv := estServer(t, f.svc)
	register(t, st, "acme", "meter-1", "m100")
	tok, _, err := f.svc.CreateToken(ctx, "acme", TokenSpec{Device: "meter-1"}, "op-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	host := strings.TrimPrefix(srv.URL, "https://")
	run := func(args ...string) string {
		t.Helper()
		args = append(args, "-server", host, "-aps", "acme", "-insecure")
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("estclient %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	readCerts := func(p string) []*x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var out []*x509.Certificate
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		return out
	}

	run("cacerts", "-out", filepath.Join(dir, "ca.pem"))
	chain, _ := f.svc.Chain(ctx, "acme")
	if got := readCerts(filepath.Join(dir, "ca.pem")); len(got) != 2 || !got[0].Equal(chain[0]) {
		t.Fatalf("cacerts: %d certs", len(got))
	}
	key := newKey(t)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPath := filepath.Join(dir, "key.pem")
	_ = os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	run("enroll", "-key", keyPath, "-cn", "meter-1", "-user", "meter-1", "-pass", tok, "-out", filepath.Join(dir, "cert.pem"))
	cert := readCerts(filepath.Join(dir, "cert.pem"))
	if len(cert) != 1 || cert[0].URIs[0].String() != "garrison://acme/devices/meter-1" {
		t.Fatalf("enrolled %v", cert)
	}
	if _, err := f.svc.Verify(ctx, "acme", cert); err != nil {
		t.Fatal(err)
	}
	// A replay with the same token is refused.
	out, err := exec.Command(bin, "enroll", "-key", keyPath, "-cn", "meter-1", "-user", "meter-1", "-pass", tok,
		"-server", host, "-aps", "acme", "-insecure").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "enrolment token already used") {
		t.Fatalf("replayed token accepted or unclear: %v\n%s", err, out)
	}

	run("reenroll", "-key", keyPath, "-certs", filepath.Join(dir, "cert.pem"), "-out", filepath.Join(dir, "cert2.pem"))
	next := readCerts(filepath.Join(dir, "cert2.pem"))
	if len(next) != 1 || next[0].Subject.CommonName != "meter-1" || next[0].SerialNumber.Cmp(cert[0].SerialNumber) == 0 {
		t.Fatalf("re-enrolled %v", next)
	}
	run("csrattrs")
}
