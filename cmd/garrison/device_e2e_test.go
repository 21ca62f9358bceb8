package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestCAAndDeviceCLI drives `garrison ca` and `garrison device` against a
// real serve over HTTPS.
func TestCAAndDeviceCLI(t *testing.T) {
	data := t.TempDir()
	s, out := startServe(t, data)
	// The first-start message comes after the listeners; give a loaded
	// machine time to print it.
	var admin string
	for deadline := time.Now().Add(15 * time.Second); admin == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		admin = tokenRE.FindString(out.String())
	}
	require.NotEmpty(t, admin)
	for _, tn := range []string{"acme", "globex"} {
		_, e, code := garrison(t, s, admin, "tenant", "create", tn)
		require.Equal(t, 0, code, e)
	}
	secret := func(tenant, role string) string {
		o, e, code := garrison(t, s, admin, "token", "create", role+"-bot", "--tenant", tenant, "--role", role, "-o", "json")
		require.Equal(t, 0, code, e)
		var ct struct{ Secret string }
		require.NoError(t, json.Unmarshal([]byte(o), &ct))
		return ct.Secret
	}
	acmeAdmin, operator, viewer, globex := secret("acme", "admin"), secret("acme", "operator"), secret("acme", "viewer"), secret("globex", "admin")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}

	// CAs: rotate twice, the old ones stay trusted; import a factory CA.
	for range 2 {
		_, e, code := garrison(t, s, acmeAdmin, "ca", "rotate", "--tenant", "acme")
		require.Equal(t, 0, code, e)
	}
	o, e, code := garrison(t, s, viewer, "ca", "show", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	var cas []api.CAInfo
	require.NoError(t, json.Unmarshal([]byte(o), &cas))
	require.Len(t, cas, 3, "the first issuing CA and two rotations")
	active := 0
	for _, c := range cas {
		require.True(t, c.Trusted)
		if c.Active {
			active++
		}
	}
	require.Equal(t, 1, active)
	require.NotContains(t, o, "PRIVATE")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Acme Factory"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)
	caFile := write("factory.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	kder, _ := x509.MarshalPKCS8PrivateKey(k)
	keyFile := write("factory.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})))
	o, e, code = garrison(t, s, acmeAdmin, "ca", "import", caFile, "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "CN=Acme Factory")
	require.Contains(t, o, "external")
	_, e, code = garrison(t, s, acmeAdmin, "ca", "import", keyFile, "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "PRIVATE KEY")
	_, e, code = garrison(t, s, operator, "ca", "rotate", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "forbidden")
	o, e, code = garrison(t, s, viewer, "ca", "show", "--tenant", "acme", "--pem")
	require.Equal(t, 0, code, e)
	require.Equal(t, 4, strings.Count(o, "BEGIN CERTIFICATE"))

	// A manifest of 2,000 devices; a bad one is refused with its lines.
	var b strings.Builder
	b.WriteString("serial,model,imei,iccid,imsi\n")
	for i := range 2000 {
		model := "meter"
		if i%4 == 0 {
			model = "cam"
		}
		fmt.Fprintf(&b, "SN-%05d,%s,35%013d,8944%015d,21401%010d\n", i, model, i, i, i)
	}
	o, e, code = garrison(t, s, operator, "device", "import", write("good.csv", b.String()), "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "imported 2000 devices")
	bad := "serial,model,imei,iccid,imsi\nSN-A,cam,123,8944000000000000001,214019999999991\nSN-B,cam\n"
	_, e, code = garrison(t, s, operator, "device", "import", write("bad.csv", bad), "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "line 2: imei must be 14-16 digits")
	require.Contains(t, e, "line 3: want 5 fields, got 2")
	require.Contains(t, e, "nothing imported: 2 bad row(s)")
	o, e, code = garrison(t, s, viewer, "device", "list", "--tenant", "acme", "--model", "cam", "--limit", "1000", "-o", "json")
	require.Equal(t, 0, code, e)
	var ds []store.Device
	require.NoError(t, json.Unmarshal([]byte(o), &ds))
	require.Len(t, ds, 500)
	o, e, code = garrison(t, s, viewer, "device", "show", "SN-00001", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "214010000000001")

	// Lifecycle and SIM binding.
	o, e, code = garrison(t, s, operator, "device", "set-state", "SN-00001", "active", "--tenant", "acme", "--reason", "installed")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "registered -> active")
	_, e, code = garrison(t, s, operator, "device", "set-state", "SN-00001", "registered", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "transition not allowed")
	o, e, code = garrison(t, s, operator, "device", "bind-sim", "SN-00001", "--tenant", "acme",
		"--iccid", "8944100000000099999", "--imsi", "214019999999999", "--imei", "356938035643809")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "214019999999999")
	_, e, code = garrison(t, s, operator, "device", "bind-sim", "SN-00002", "--tenant", "acme", "--imsi", "214019999999999")
	require.Equal(t, 1, code)
	require.Contains(t, e, "conflict")

	// Revoke by selector: dry run, then for real.
	o, e, code = garrison(t, s, operator, "device", "revoke", "--selector", "model=cam", "--dry-run", "--tenant", "acme", "-o", "json")
	require.Equal(t, 0, code, e)
	var rv identity.Revocation
	require.NoError(t, json.Unmarshal([]byte(o), &rv))
	require.True(t, rv.DryRun)
	require.Equal(t, 500, rv.Devices)
	require.Len(t, rv.Sample, 10)
	_, e, code = garrison(t, s, operator, "device", "revoke", "--selector", "colour=red", "--tenant", "acme")
	require.Equal(t, 1, code)
	require.Contains(t, e, "colour")
	_, e, code = garrison(t, s, operator, "device", "set-state", "SN-00004", "active", "--tenant", "acme")
	require.Equal(t, 0, code, e)
	o, e, code = garrison(t, s, operator, "device", "revoke", "--selector", "model=cam", "--tenant", "acme", "--reason", "key_compromise", "-o", "json")
	require.Equal(t, 0, code, e)
	rv = identity.Revocation{}
	require.NoError(t, json.Unmarshal([]byte(o), &rv))
	require.Equal(t, 500, rv.Devices)
	require.Equal(t, 1, rv.StateChanged, "only the active one may move to revoked")
	require.Equal(t, 499, rv.StateKept)
	o, e, code = garrison(t, s, viewer, "device", "list", "--tenant", "acme", "--state", "revoked")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "SN-00004")

	// Enrolment token.
	o, e, code = garrison(t, s, operator, "device", "enrol-token", "--tenant", "acme", "--count", "100", "--model", "meter", "--ttl", "72h")
	require.Equal(t, 0, code, e)
	require.Contains(t, o, "get_")
	_, e, code = garrison(t, s, operator, "device", "enrol-token", "--tenant", "acme", "--device", "ghost")
	require.Equal(t, 1, code)
	require.Contains(t, e, "not_found")

	// Another tenant's admin sees nothing of acme.
	for _, args := range [][]string{{"device", "show", "SN-00001"}, {"device", "set-state", "SN-00001", "suspended"}, {"ca", "show"}, {"ca", "rotate"}} {
		_, e, code = garrison(t, s, globex, append(args, "--tenant", "acme")...)
		require.Equal(t, 1, code)
		require.Contains(t, e, "not_found", args)
	}

	o, e, code = garrison(t, s, acmeAdmin, "audit", "list", "--tenant", "acme", "--limit", "1000")
	require.Equal(t, 0, code, e)
	for _, a := range []string{"ca.rotate", "ca.import", "device.import", "device.state", "device.bind_sim", "device.revoke.bulk", "enrol.token_create"} {
		require.Contains(t, o, a)
	}
}
