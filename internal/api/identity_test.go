package api_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/store"
)

// events records what the identity service and the registry publish.
type events struct {
	mu sync.Mutex
	es []*event.Event
}

func (p *events) Publish(_ context.Context, e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.es = append(p.es, e)
	return nil
}

func (p *events) kinds(k event.Kind) []*event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*event.Event
	for _, e := range p.es {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

func newIdentity(t testing.TB, st store.Store, clk clock.Clock) (*identity.Service, *registry.Registry) {
	t.Helper()
	id, reg, _ := newIdentityPub(t, st, clk)
	return id, reg
}

func newIdentityPub(t testing.TB, st store.Store, clk clock.Clock) (*identity.Service, *registry.Registry, *events) {
	t.Helper()
	pub := &events{}
	sl, err := identity.NewSealer([]byte("api-test-passphrase"), identity.WithScryptCost(10, 8, 1))
	require.NoError(t, err)
	id, err := identity.New(identity.Options{Store: st, Sealer: sl, Clock: clk, Publisher: pub})
	require.NoError(t, err)
	require.NoError(t, id.Start(context.Background()))
	reg, err := registry.New(registry.Options{Store: st, Clock: clk, Publisher: pub})
	require.NoError(t, err)
	return id, reg, pub
}

var (
	factoryOnce sync.Once
	factoryPEM  string
)

// factoryCA is a self-signed CA, as a device maker's factory would have,
// valid around t0.
func factoryCA(testing.TB) string {
	factoryOnce.Do(func() {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Acme Factory CA"},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			panic(err)
		}
		factoryPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	})
	return factoryPEM
}

// identityBody is the request body of the identity and device routes in
// the RBAC walk.
func identityBody(pattern string) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/ca/import":
		b, _ := json.Marshal(api.ImportCARequest{PEM: factoryCA(nil)})
		return string(b), true
	case t + "/enrolment-tokens":
		return `{"count":5,"models":["m1"],"ttl":"1h"}`, true
	case t + "/devices":
		return `{"id":"new-device","model":"m1","imsi":"214010000000009"}`, true
	case t + "/devices/import":
		return "serial,model,imei,iccid,imsi\nSN-1,m1,356938035643809,8944100000000000001,214010000000001\n", true
	case t + "/devices/revoke":
		return `{"selector":"model=m1","reason":"key_compromise"}`, true
	case t + "/devices/{id}/state":
		return `{"state":"quarantined","reason":"test"}`, true
	case t + "/devices/{id}/sim":
		return `{"iccid":"8944100000000000002","imsi":"214010000000002","imei":"356938035643810"}`, true
	case t + "/devices/{id}/revoke":
		return `{}`, true
	}
	return "", false
}

// bodyType is the Content-Type header a route's body needs.
func bodyType(rt api.Route) []string {
	if rt.Body != "" {
		return []string{"Content-Type", rt.Body}
	}
	return nil
}

// https is the API behind a real TLS listener, and a client for it.
type https struct {
	*env
	srv *httptest.Server
	id  *identity.Service
	reg *registry.Registry
	pub *events
}

func newHTTPS(t *testing.T) *https {
	t.Helper()
	e := newEnv(t)
	id, reg, pub := newIdentityPub(t, e.st, e.clk)
	srv, err := api.New(api.Options{Store: e.st, Clock: e.clk, MaxBodyBytes: 64 << 10, Identity: id, Devices: reg})
	require.NoError(t, err)
	e.srv = srv
	h := &https{env: e, srv: httptest.NewTLSServer(srv), id: id, reg: reg, pub: pub}
	t.Cleanup(h.srv.Close)
	factoryCA(t)
	return h
}

// call sends one request over HTTPS; body is JSON unless ctype says
// otherwise.
func (h *https) call(t *testing.T, method, path, token string, body io.Reader, ctype string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, body)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := h.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NotNil(t, resp.TLS, "the API is served over TLS")
	require.GreaterOrEqual(t, resp.TLS.Version, uint16(tls.VersionTLS12))
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func (h *https) json(t *testing.T, method, path, token, body string, out any) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	code, b := h.call(t, method, path, token, r, "application/json")
	if out != nil && code < 300 {
		require.NoError(t, json.Unmarshal(b, out), string(b))
	}
	return code, strings.ReplaceAll(string(b), `\u003e`, ">")
}

func (h *https) count(t *testing.T, tenant event.TenantID) int {
	t.Helper()
	var n int
	require.NoError(t, h.st.View(context.Background(), func(tx store.Tx) (err error) {
		n, err = tx.Devices().Count(context.Background(), tenant, store.DeviceFilter{})
		return err
	}))
	return n
}

func fingerprint(pemText string) string {
	b, _ := pem.Decode([]byte(pemText))
	sum := sha256.Sum256(b.Bytes)
	var parts []string
	for _, c := range sum {
		parts = append(parts, fmt.Sprintf("%02X", c))
	}
	return strings.Join(parts, ":")
}

// TestCAShowRotateImport: show, rotate (old CA kept trusted) and import
// through the API over HTTPS; no private key ever in an answer; bad PEM,
// keys, non-CA certificates, duplicates, other roles and other tenants are
// refused and change nothing.
func TestCAShowRotateImport(t *testing.T) {
	h := newHTTPS(t)
	w := h.world(t)
	admin, viewer := w.tokens[store.RoleAdmin], w.tokens[store.RoleViewer]
	base := "/api/v1/tenants/" + string(w.tenant)
	ctx := context.Background()

	var cas []api.CAInfo
	code, body := h.json(t, "GET", base+"/ca", viewer, "", &cas)
	require.Equal(t, 200, code, body)
	require.Empty(t, cas)

	// An issued certificate before the rotation keeps verifying after it.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	before, err := h.id.Issue(ctx, w.tenant, w.deviceID, csr, identity.IssueOptions{})
	require.NoError(t, err)

	var rotated api.CAInfo
	code, body = h.json(t, "POST", base+"/ca/rotate", admin, "", &rotated)
	require.Equal(t, 201, code, body)
	require.True(t, rotated.Active)
	require.NotEqual(t, before.Record.Issuer, rotated.ID)
	code, body = h.json(t, "GET", base+"/ca", viewer, "", &cas)
	require.Equal(t, 200, code, body)
	require.Len(t, cas, 2)
	byID := map[string]api.CAInfo{}
	for _, c := range cas {
		byID[c.ID] = c
		require.Equal(t, fingerprint(c.CertPEM), c.Fingerprint)
		require.Equal(t, "issuing", c.Role)
		require.True(t, c.Trusted)
		require.True(t, c.NotAfter.After(t0))
	}
	require.False(t, byID[before.Record.Issuer].Active, "the old CA is retired")
	require.True(t, byID[before.Record.Issuer].Trusted, "and still trusted")
	require.True(t, byID[rotated.ID].Active)
	_, err = h.id.Verify(ctx, w.tenant, []*x509.Certificate{before.Cert})
	require.NoError(t, err, "a certificate of the retired CA still verifies")
	after, err := h.id.Issue(ctx, w.tenant, w.deviceID, csr, identity.IssueOptions{})
	require.NoError(t, err)
	require.Equal(t, rotated.ID, after.Record.Issuer, "new certificates come from the new CA")
	require.NotContains(t, strings.ToLower(body), "private")
	require.NotContains(t, body, "key_enc")

	// Ending the roll-over: distrusting the retired CA stops its
	// certificates verifying; the active one cannot be distrusted; trusting
	// it again restores them. Viewers may not; unknown ids are 404.
	old := base + "/ca/" + before.Record.Issuer
	code, body = h.json(t, "POST", old+"/distrust", viewer, "", nil)
	require.Equal(t, 403, code, body)
	var ci api.CAInfo
	code, body = h.json(t, "POST", old+"/distrust", admin, "", &ci)
	require.Equal(t, 200, code, body)
	require.False(t, ci.Trusted)
	_, err = h.id.Verify(ctx, w.tenant, []*x509.Certificate{before.Cert})
	require.Error(t, err, "a certificate of a distrusted CA no longer verifies")
	_, err = h.id.Verify(ctx, w.tenant, []*x509.Certificate{after.Cert})
	require.NoError(t, err, "the active CA's certificates still verify")
	code, body = h.json(t, "POST", base+"/ca/"+rotated.ID+"/distrust", admin, "", nil)
	require.Equal(t, 409, code, body)
	require.Contains(t, body, "rotate first")
	code, body = h.json(t, "POST", base+"/ca/"+strings.Repeat("0", 64)+"/distrust", admin, "", nil)
	require.Equal(t, 404, code, body)
	code, body = h.json(t, "POST", old+"/trust", admin, "", &ci)
	require.Equal(t, 200, code, body)
	require.True(t, ci.Trusted)
	_, err = h.id.Verify(ctx, w.tenant, []*x509.Certificate{before.Cert})
	require.NoError(t, err, "trusted again")

	// Import the factory CA.
	req, _ := json.Marshal(api.ImportCARequest{PEM: factoryCA(t)})
	var imported api.CAInfo
	code, body = h.json(t, "POST", base+"/ca/import", admin, string(req), &imported)
	require.Equal(t, 201, code, body)
	require.Equal(t, "external", imported.Role)
	require.Equal(t, "CN=Acme Factory CA", imported.Subject)
	require.Equal(t, fingerprint(factoryCA(t)), imported.Fingerprint)
	code, _ = h.json(t, "GET", base+"/ca", viewer, "", &cas)
	require.Equal(t, 200, code)
	require.Len(t, cas, 3)

	// Refusals change nothing.
	headBefore := h.head(t, w.tenant)
	keyPEM := func() string {
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}()
	leafPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: before.Cert.Raw}))
	for name, tc := range map[string]struct {
		token, body string
		code        int
		msg         string
	}{
		"duplicate":    {admin, string(req), 409, "conflict"},
		"private key":  {admin, mustJSON(api.ImportCARequest{PEM: keyPEM}), 400, "PRIVATE KEY"},
		"not a CA":     {admin, mustJSON(api.ImportCARequest{PEM: leafPEM}), 400, "not a CA"},
		"garbage":      {admin, `{"pem":"hello"}`, 400, "PEM CERTIFICATE"},
		"two certs":    {admin, mustJSON(api.ImportCARequest{PEM: factoryCA(t) + leafPEM}), 400, "exactly one"},
		"bad role":     {admin, mustJSON(api.ImportCARequest{PEM: factoryCA(t), Role: "root"}), 400, "role"},
		"viewer":       {viewer, string(req), 403, "forbidden"},
		"other tenant": {w.foreign, string(req), 404, "not_found"},
	} {
		code, body := h.json(t, "POST", base+"/ca/import", tc.token, tc.body, nil)
		require.Equal(t, tc.code, code, "%s: %s", name, body)
		require.Contains(t, body, tc.msg, name)
	}
	code, _ = h.json(t, "POST", base+"/ca/rotate", viewer, "", nil)
	require.Equal(t, 403, code)
	code, _ = h.json(t, "POST", base+"/ca/rotate", w.foreign, "", nil)
	require.Equal(t, 404, code)
	require.Equal(t, headBefore, h.head(t, w.tenant), "refusals write nothing")
	code, _ = h.json(t, "GET", base+"/ca", viewer, "", &cas)
	require.Equal(t, 200, code)
	require.Len(t, cas, 3)

	// Every change is in the tenant's audit log.
	var recs []store.AuditRecord
	code, _ = h.json(t, "GET", base+"/audit?limit=1000", admin, "", &recs)
	require.Equal(t, 200, code)
	var actions []string
	for _, r := range recs {
		actions = append(actions, r.Action)
	}
	require.Contains(t, actions, "ca.rotate")
	require.Contains(t, actions, "ca.import")
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// manifest streams a CSV manifest of n rows, calling bad(i) to spoil rows.
func manifest(n, offset int, bad func(i int) string) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		bw := &bytes.Buffer{}
		bw.WriteString("serial,model,imei,iccid,imsi\n")
		for i := 0; i < n; i++ {
			k := i + offset
			if bad != nil {
				if row := bad(i); row != "" {
					bw.WriteString(row + "\n")
					continue
				}
			}
			fmt.Fprintf(bw, "SN-%07d,acme-meter-2,35%013d,8944%015d,21401%010d\n", k, k, k, k)
			if bw.Len() > 64<<10 {
				if _, err := pw.Write(bw.Bytes()); err != nil {
					return
				}
				bw.Reset()
			}
		}
		_, _ = pw.Write(bw.Bytes())
		pw.Close()
	}()
	return pr
}

// TestManifestImport100k imports 100,000 rows in one streamed HTTPS request,
// then shows that a manifest with bad rows, or rows that clash with devices
// already registered, is refused as a whole with every bad row named.
func TestManifestImport100k(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 rows")
	}
	h := newHTTPS(t)
	w := h.world(t)
	op := w.tokens[store.RoleOperator]
	path := "/api/v1/tenants/" + string(w.tenant) + "/devices/import"
	const n = 100_000
	base := h.count(t, w.tenant)

	code, body := h.call(t, "POST", path, op, manifest(n, 0, nil), "text/csv")
	require.Equal(t, 200, code, string(body))
	var res registry.ImportResult
	require.NoError(t, json.Unmarshal(body, &res))
	require.Equal(t, n, res.Imported)
	require.Len(t, res.SHA256, 64)
	require.Equal(t, base+n, h.count(t, w.tenant))
	d, err := h.reg.Get(context.Background(), w.tenant, "SN-0099999")
	require.NoError(t, err)
	require.Equal(t, "214010000099999", d.IMSI)
	require.Equal(t, store.StateRegistered, d.State)
	var head store.AuditRecord
	require.NoError(t, h.st.View(context.Background(), func(tx store.Tx) (err error) {
		head, err = tx.Audit().Head(context.Background(), w.tenant)
		return err
	}))
	require.Equal(t, "device.import", head.Action)
	require.Contains(t, string(head.Details), res.SHA256)

	// 100,000 fresh rows, three of them bad: nothing is imported.
	before, seq := h.count(t, w.tenant), h.head(t, w.tenant)
	code, body = h.call(t, "POST", path, op, manifest(n, n, func(i int) string {
		switch i {
		case 10:
			return "SN-X1,acme-meter-2,12345,8944000000000000000001,214019999999991" // short IMEI
		case 500:
			return "SN-X2,acme-meter-2,356938035643809" // missing fields
		case 99_998:
			return fmt.Sprintf("SN-X3,acme-meter-2,350000000000077,8944999999999999977,21401%010d", n+5) // repeats row 5's IMSI
		}
		return ""
	}), "text/csv")
	require.Equal(t, 400, code, string(body))
	var ref api.ManifestRefused
	require.NoError(t, json.Unmarshal(body, &ref))
	require.Equal(t, api.CodeInvalid, ref.Error.Code)
	require.Equal(t, 3, ref.BadRows)
	require.Len(t, ref.Rows, 3)
	require.Equal(t, 12, ref.Rows[0].Line)
	require.Contains(t, ref.Rows[0].Msg, "imei")
	require.Equal(t, 502, ref.Rows[1].Line)
	require.Contains(t, ref.Rows[2].Msg, "repeats line 7")
	require.Equal(t, before, h.count(t, w.tenant), "nothing half-applied")
	require.Equal(t, seq, h.head(t, w.tenant))

	// Rows that clash with registered devices: 409, nothing applied.
	code, body = h.call(t, "POST", path, op, manifest(3, n-1, nil), "text/csv")
	require.Equal(t, 409, code, string(body))
	require.NoError(t, json.Unmarshal(body, &ref))
	require.Equal(t, api.CodeConflict, ref.Error.Code)
	require.Equal(t, 1, ref.BadRows)
	require.Equal(t, before, h.count(t, w.tenant))
	require.Equal(t, seq, h.head(t, w.tenant))

	// A malformed file, the wrong media type, a viewer, another tenant.
	for _, tc := range []struct {
		token, ctype, body string
		code               int
		msg                string
	}{
		{op, "text/csv", "serial,model\nA,b\n", 400, `missing column`},
		{op, "text/csv", "", 400, "empty manifest"},
		{op, "text/csv", "serial,model,imei,iccid,imsi,colour\n", 400, `unknown column`},
		{op, "application/json", `{}`, 415, "text/csv"},
		{w.tokens[store.RoleViewer], "text/csv", "serial,model,imei,iccid,imsi\n", 403, "forbidden"},
		{w.foreign, "text/csv", "serial,model,imei,iccid,imsi\n", 404, "not_found"},
	} {
		code, body := h.call(t, "POST", path, tc.token, strings.NewReader(tc.body), tc.ctype)
		require.Equal(t, tc.code, code, string(body))
		require.Contains(t, string(body), tc.msg)
	}
	require.Equal(t, before, h.count(t, w.tenant))
	require.Equal(t, seq, h.head(t, w.tenant))
}

// TestDeviceRegistryRoutes: create, state changes with the lifecycle
// enforced, SIM binding audited, and refusals that change nothing.
func TestDeviceRegistryRoutes(t *testing.T) {
	h := newHTTPS(t)
	w := h.world(t)
	op := w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant) + "/devices"

	var d store.Device
	code, body := h.json(t, "POST", base, op, `{"id":"gw-1","model":"gw","serial":"S1","imei":"356938035643809","iccid":"8944100000000000001","imsi":"214010000000001","tags":{"site":"north"}}`, &d)
	require.Equal(t, 201, code, body)
	require.Equal(t, store.StateRegistered, d.State)
	code, body = h.json(t, "POST", base, op, `{"id":"gw-2","model":"gw"}`, &d)
	require.Equal(t, 201, code, body)

	seq := h.head(t, w.tenant)
	for _, tc := range []struct {
		path, body string
		code       int
		msg        string
	}{
		{base, `{"id":"gw-1","model":"gw"}`, 409, "conflict"},
		{base, `{"id":"gw-3","model":"gw","imsi":"214010000000001"}`, 409, "conflict"},
		{base, `{"id":"gw 4","model":"gw"}`, 400, "device id"},
		{base, `{"id":"gw-4","model":"gw","imsi":"12"}`, 400, "imsi"},
		{base, `{"id":"gw-4","model":"gw","colour":"red"}`, 400, "unknown field"},
		{base + "/gw-1/state", `{"state":"revoked"}`, 409, "registered -> revoked"},
		{base + "/gw-1/state", `{"state":"quarantined"}`, 409, "registered -> quarantined"},
		{base + "/gw-1/state", `{"state":"lost"}`, 400, "unknown state"},
		{base + "/nope/state", `{"state":"active"}`, 404, "not_found"},
		{base + "/gw-2/sim", `{"imsi":"214010000000001"}`, 409, "bound to device gw-1"},
		{base + "/gw-2/sim", `{"imsi":"21401x"}`, 400, "imsi"},
		{base + "/nope/sim", `{"imsi":"214010000000077"}`, 404, "not_found"},
		{base + "/nope/revoke", `{}`, 404, "not_found"},
		{base + "/gw-1/revoke", `{"reason":"because"}`, 400, "unknown reason"},
	} {
		code, body := h.json(t, "POST", tc.path, op, tc.body, nil)
		require.Equal(t, tc.code, code, "%s %s: %s", tc.path, tc.body, body)
		require.Contains(t, body, tc.msg, tc.path)
	}
	require.Equal(t, seq, h.head(t, w.tenant), "refusals write nothing")

	var ch api.StateChange
	code, body = h.json(t, "POST", base+"/gw-1/state", op, `{"state":"active","reason":"installed"}`, &ch)
	require.Equal(t, 200, code, body)
	require.True(t, ch.Changed)
	require.Equal(t, store.StateRegistered, ch.From)
	require.Equal(t, store.StateActive, ch.Device.State)
	require.Len(t, h.pub.kinds(event.DeviceState), 3, "two registrations and one change")
	code, body = h.json(t, "POST", base+"/gw-1/state", op, `{"state":"registered"}`, nil)
	require.Equal(t, 409, code, body)

	// SIM swap: the new binding, audited with the old one.
	code, body = h.json(t, "POST", base+"/gw-1/sim", op, `{"iccid":"8944100000000000009","imsi":"214010000000009","imei":"356938035643809"}`, &d)
	require.Equal(t, 200, code, body)
	require.Equal(t, "214010000000009", d.IMSI)
	var recs []store.AuditRecord
	code, _ = h.json(t, "GET", "/api/v1/tenants/"+string(w.tenant)+"/audit?limit=1000", w.tokens[store.RoleAdmin], "", &recs)
	require.Equal(t, 200, code)
	last := recs[len(recs)-1]
	require.Equal(t, "device.bind_sim", last.Action)
	require.Contains(t, string(last.Details), `"imsi":"214010000000001"`)
	require.Contains(t, string(last.Details), `"imsi":"214010000000009"`)
	require.Equal(t, "device.state", recs[len(recs)-2].Action)

	// Foreign tenant: 404 for everything, its own tenant path included.
	seq = h.head(t, w.tenant)
	for _, p := range []string{base + "/gw-1/state", base + "/gw-1/sim", base + "/gw-1/revoke", base} {
		code, body := h.json(t, "POST", p, w.foreign, `{"state":"suspended"}`, nil)
		require.Equal(t, 404, code, body)
	}
	require.Equal(t, seq, h.head(t, w.tenant))
	got, err := h.reg.Get(context.Background(), w.tenant, "gw-1")
	require.NoError(t, err)
	require.Equal(t, store.StateActive, got.State)
}

// TestRevokeBySelector: a dry run counts and samples without changing
// anything; the real run revokes every certificate in one operation (CRL
// and OCSP follow, events are published) and moves the devices to revoked.
func TestRevokeBySelector(t *testing.T) {
	h := newHTTPS(t)
	w := h.world(t)
	op := w.tokens[store.RoleOperator]
	ctx := context.Background()
	base := "/api/v1/tenants/" + string(w.tenant) + "/devices"
	var serials []string
	for i := range 30 {
		model := "cam"
		if i%3 == 0 {
			model = "meter"
		}
		id := event.DeviceID(fmt.Sprintf("d-%02d", i))
		_, err := h.reg.Register(ctx, store.Device{Tenant: w.tenant, ID: id, Model: model, State: store.StateActive}, "test")
		require.NoError(t, err)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		iss, err := h.id.Issue(ctx, w.tenant, id, csr, identity.IssueOptions{})
		require.NoError(t, err)
		if model == "meter" {
			serials = append(serials, iss.Record.Serial)
		}
	}
	seq := h.head(t, w.tenant)
	var rv identity.Revocation
	code, body := h.json(t, "POST", base+"/revoke", op, `{"selector":"model=meter","dry_run":true,"sample":3}`, &rv)
	require.Equal(t, 200, code, body)
	require.True(t, rv.DryRun)
	require.Equal(t, 10, rv.Devices)
	require.Equal(t, 10, rv.Certificates)
	require.Equal(t, 10, rv.StateChanged)
	require.Len(t, rv.Sample, 3)
	require.Equal(t, event.DeviceID("d-00"), rv.Sample[0].ID)
	require.Equal(t, seq, h.head(t, w.tenant), "a dry run changes nothing")
	crlBefore, err := h.id.CRL(ctx, w.tenant, mustIssuer(t, h, w.tenant))
	require.NoError(t, err)
	parsed, err := x509.ParseRevocationList(crlBefore)
	require.NoError(t, err)
	require.Empty(t, parsed.RevokedCertificateEntries)

	for _, tc := range []struct {
		body, msg string
		code      int
	}{
		{`{"selector":"colour=red"}`, "colour", 400},
		{`{"selector":"state=lost"}`, "state", 400},
		{`{"selector":""}`, "required", 400},
		{`{"selector":"model=meter","reason":"bored"}`, "unknown reason", 400},
		{`{"selector":"model=meter","sample":1000}`, "sample", 400},
	} {
		code, body := h.json(t, "POST", base+"/revoke", op, tc.body, nil)
		require.Equal(t, tc.code, code, body)
		require.Contains(t, body, tc.msg)
	}
	code, _ = h.json(t, "POST", base+"/revoke", w.foreign, `{"selector":"model=meter"}`, nil)
	require.Equal(t, 404, code)
	code, _ = h.json(t, "POST", base+"/revoke", w.tokens[store.RoleViewer], `{"selector":"model=meter"}`, nil)
	require.Equal(t, 403, code)
	require.Equal(t, seq, h.head(t, w.tenant), "refusals change nothing")

	rv = identity.Revocation{}
	code, body = h.json(t, "POST", base+"/revoke", op, `{"selector":"model=meter","reason":"key_compromise"}`, &rv)
	require.Equal(t, 200, code, body)
	require.False(t, rv.DryRun)
	require.Equal(t, 10, rv.Certificates)
	require.Equal(t, 10, rv.StateChanged)
	require.Empty(t, rv.Sample)

	crl, err := h.id.CRL(ctx, w.tenant, mustIssuer(t, h, w.tenant))
	require.NoError(t, err)
	parsed, err = x509.ParseRevocationList(crl)
	require.NoError(t, err)
	var onCRL []string
	for _, e := range parsed.RevokedCertificateEntries {
		onCRL = append(onCRL, e.SerialNumber.Text(16))
		require.Equal(t, identity.ReasonKeyCompromise, e.ReasonCode)
	}
	require.ElementsMatch(t, serials, onCRL, "exactly the selected devices' certificates are on the CRL")
	require.Len(t, h.pub.kinds(event.CertRevoked), 10)
	var revokedStates int
	for _, e := range h.pub.kinds(event.DeviceState) {
		if e.Attrs["to"] == string(store.StateRevoked) {
			revokedStates++
		}
	}
	require.Equal(t, 10, revokedStates)
	n, err := h.reg.Count(ctx, w.tenant, registry.Selector{State: store.StateRevoked})
	require.NoError(t, err)
	require.Equal(t, 10, n)
	n, err = h.reg.Count(ctx, w.tenant, registry.Selector{Model: "cam", State: store.StateActive})
	require.NoError(t, err)
	require.Equal(t, 20, n, "other devices untouched")

	// Again: nothing left to revoke.
	code, body = h.json(t, "POST", base+"/revoke", op, `{"selector":"model=meter"}`, &rv)
	require.Equal(t, 200, code, body)
	require.Equal(t, 0, rv.Certificates)
	require.Equal(t, 0, rv.StateChanged)

	// One device through set-state: its certificate is revoked too.
	code, body = h.json(t, "POST", base+"/d-01/state", op, `{"state":"revoked"}`, nil)
	require.Equal(t, 200, code, body)
	var certs []store.Certificate
	require.NoError(t, h.st.View(ctx, func(tx store.Tx) (err error) {
		certs, err = tx.Certificates().ByDevice(ctx, w.tenant, "d-01")
		return err
	}))
	require.NotNil(t, certs[0].RevokedAt)
}

func mustIssuer(t *testing.T, h *https, tenant event.TenantID) string {
	t.Helper()
	cas, err := h.id.ListCAs(context.Background(), tenant)
	require.NoError(t, err)
	for _, c := range cas {
		if c.Active {
			return c.ID
		}
	}
	t.Fatal("no active CA")
	return ""
}

// TestEnrolTokenRoute: batch and per-device tokens through the API; the
// secret is shown once and works for enrolment; bad requests change
// nothing.
func TestEnrolTokenRoute(t *testing.T) {
	h := newHTTPS(t)
	w := h.world(t)
	op := w.tokens[store.RoleOperator]
	ctx := context.Background()
	path := "/api/v1/tenants/" + string(w.tenant) + "/enrolment-tokens"
	_, err := h.reg.Register(ctx, store.Device{Tenant: w.tenant, ID: "m-1", Model: "meter"}, "test")
	require.NoError(t, err)
	_, err = h.reg.Register(ctx, store.Device{Tenant: w.tenant, ID: "c-1", Model: "cam"}, "test")
	require.NoError(t, err)

	var ct api.CreatedEnrolToken
	code, body := h.json(t, "POST", path, op, `{"count":2,"models":["meter"],"ttl":"2h"}`, &ct)
	require.Equal(t, 201, code, body)
	require.True(t, strings.HasPrefix(ct.Secret, "get_"))
	require.Equal(t, 2, ct.Token.Remaining)
	require.Equal(t, t0.Add(2*time.Hour), ct.Token.ExpiresAt)
	require.NotContains(t, body, `"hash"`)

	csr := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		return der
	}
	_, err = h.id.Enrol(ctx, w.tenant, "m-1", ct.Secret, csr())
	require.NoError(t, err)
	_, err = h.id.Enrol(ctx, w.tenant, "c-1", ct.Secret, csr())
	require.ErrorIs(t, err, identity.ErrTokenScope, "the token covers model meter only")

	code, body = h.json(t, "POST", path, op, `{"device":"c-1"}`, &ct)
	require.Equal(t, 201, code, body)
	require.Equal(t, 1, ct.Token.Count)
	_, err = h.id.Enrol(ctx, w.tenant, "c-1", ct.Secret, csr())
	require.NoError(t, err)
	_, err = h.id.Enrol(ctx, w.tenant, "c-1", ct.Secret, csr())
	require.ErrorIs(t, err, identity.ErrTokenUsed)

	seq := h.head(t, w.tenant)
	for _, tc := range []struct {
		token, body, msg string
		code             int
	}{
		{op, `{"device":"ghost"}`, "not_found", 404},
		{op, `{"device":"c-1","models":["cam"]}`, "not both", 400},
		{op, `{"device":"c-1","count":3}`, "count", 400},
		{op, `{"count":-1}`, "count", 400},
		{op, `{"ttl":"forever"}`, "ttl", 400},
		{op, `{"ttl":"10000h"}`, "ttl", 400},
		{op, `{"models":["bad model"]}`, "model", 400},
		{w.tokens[store.RoleViewer], `{"count":1}`, "forbidden", 403},
		{w.foreign, `{"count":1}`, "not_found", 404},
	} {
		code, body := h.json(t, "POST", path, tc.token, tc.body, nil)
		require.Equal(t, tc.code, code, "%s: %s", tc.body, body)
		require.Contains(t, body, tc.msg)
	}
	require.Equal(t, seq, h.head(t, w.tenant))
}
