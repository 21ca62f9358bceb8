package connectivity

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakePlatform is an in-test connectivity platform with the API shape of
// a typical SIM portal: a status resource per ICCID, usage by IMSI.
type fakePlatform struct {
	mu     sync.Mutex
	status map[string]string
	calls  []string
}

func (f *fakePlatform) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	if r.Header.Get("X-Api-Key") != "k-123" {
		http.Error(w, `{"error":"no key"}`, http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v2/sims/") && strings.HasSuffix(r.URL.Path, "/status"):
		iccid := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v2/sims/"), "/status")
		if _, ok := f.status[iccid]; !ok {
			http.NotFound(w, r)
			return
		}
		var body struct{ Status, ICCID string }
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &body) != nil || body.ICCID != iccid {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		f.status[iccid] = body.Status
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/sims/"):
		iccid := strings.TrimPrefix(r.URL.Path, "/v2/sims/")
		if iccid == "89440000000000000666" {
			_, _ = w.Write([]byte(`{"sim":{"device":{"imei":"not-an-imei"}}}`))
			return
		}
		_, _ = w.Write([]byte(`{"sim":{"iccid":"` + iccid + `","device":{"imei":"356938035643809"}}}`))
	case r.Method == http.MethodGet && r.URL.Path == "/v2/usage":
		_, _ = w.Write([]byte(`{"items":[{"imsi":"` + r.URL.Query().Get("imsi") + `","up":"1200","down":987654321012}]}`))
	default:
		http.NotFound(w, r)
	}
}

func testProvider(t *testing.T) (*HTTPProvider, *fakePlatform) {
	t.Helper()
	fp := &fakePlatform{status: map[string]string{"89440000000000000017": "active"}}
	srv := httptest.NewServer(fp)
	t.Cleanup(srv.Close)
	p, err := ParsePeers([]byte(`
providers:
  - tenant: acme
    base_url: ` + srv.URL + `/v2
    headers: {X-Api-Key: k-123}
    timeout: 5s
    suspend:    {method: PUT, url: "/sims/{iccid}/status", body: '{"iccid":"{iccid}","status":"suspended"}'}
    reactivate: {method: PUT, url: "/sims/{iccid}/status", body: '{"iccid":"{iccid}","status":"active"}'}
    imei:       {url: "/sims/{iccid}", fields: {imei: sim.device.imei}}
    usage:      {url: "/usage?imsi={imsi}", fields: {bytes_up: items.0.up, bytes_down: items.0.down}}
`))
	require.NoError(t, err)
	hp, err := NewHTTPProvider(p.Providers[0], srv.Client())
	require.NoError(t, err)
	return hp, fp
}

func TestHTTPProvider(t *testing.T) {
	p, fp := testProvider(t)
	ctx := context.Background()
	sim := SIM{ICCID: "89440000000000000017", IMSI: "214010000000017"}

	require.NoError(t, p.SuspendSIM(ctx, sim))
	require.Equal(t, "suspended", fp.status[sim.ICCID])
	require.NoError(t, p.ReactivateSIM(ctx, sim))
	require.Equal(t, "active", fp.status[sim.ICCID])

	imei, err := p.IMEI(ctx, sim)
	require.NoError(t, err)
	require.Equal(t, "356938035643809", imei)
	u, err := p.Usage(ctx, sim)
	require.NoError(t, err)
	require.Equal(t, Usage{BytesUp: 1200, BytesDown: 987654321012}, u)

	// Refusals and unusable answers are ErrProvider, with the status only.
	err = p.SuspendSIM(ctx, SIM{ICCID: "89440000000000000099"})
	require.ErrorIs(t, err, ErrProvider)
	require.Contains(t, err.Error(), "status 404")
	_, err = p.IMEI(ctx, SIM{ICCID: "89440000000000000666"})
	require.ErrorIs(t, err, ErrProvider)
	// Identifiers are checked before they reach a URL.
	err = p.SuspendSIM(ctx, SIM{ICCID: "../admin"})
	require.Error(t, err)
	require.NotContains(t, strings.Join(fp.calls, ","), "admin")
	_, err = p.Usage(ctx, SIM{ICCID: "89440000000000000017"})
	require.ErrorContains(t, err, "no SIM identifier")
}

func TestHTTPProviderWrongKey(t *testing.T) {
	fp := &fakePlatform{status: map[string]string{}}
	srv := httptest.NewServer(fp)
	defer srv.Close()
	hp, err := NewHTTPProvider(ProviderConfig{Tenant: "acme", Suspend: &Endpoint{Method: "POST", URL: srv.URL + "/v2/sims/{iccid}/status"}}, nil)
	require.NoError(t, err)
	err = hp.SuspendSIM(context.Background(), SIM{ICCID: "89440000000000000017"})
	require.ErrorIs(t, err, ErrProvider)
	require.Contains(t, err.Error(), "401")
	_, err = hp.IMEI(context.Background(), SIM{ICCID: "89440000000000000017"})
	require.ErrorIs(t, err, ErrNotConfigured)
}

func TestParsePeers(t *testing.T) {
	p, err := ParsePeers([]byte(`
nas_clients:
  - {name: pgw1, tenant: acme, prefix: 192.0.2.10, secret: "0123456789"}
  - {name: lab, tenant: acme, prefix: 10.0.0.0/8, secret: "0123456789", coa_addr: "10.0.0.1:1700"}
exporters:
  - {name: pgw1, tenant: acme, prefix: 192.0.2.10/32}
`))
	require.NoError(t, err)
	cs := p.RADIUSClients()
	require.Len(t, cs, 2)
	require.True(t, cs[0].Prefix.IsSingleIP())
	require.Len(t, p.FlowExporters(), 1)
	nas, ok := p.DynamicAuth("acme", "pgw1", cs[0].Prefix.Addr())
	require.True(t, ok)
	require.Equal(t, "192.0.2.10:3799", nas.Addr)
	nas, ok = p.DynamicAuth("acme", "lab", cs[1].Prefix.Addr())
	require.True(t, ok)
	require.Equal(t, "10.0.0.1:1700", nas.Addr)
	_, ok = p.DynamicAuth("globex", "pgw1", cs[0].Prefix.Addr())
	require.False(t, ok, "another tenant's gateway is never used")

	_, err = ParsePeers([]byte(`
nas_clients:
  - {name: a, tenant: Acme, prefix: 192.0.2.10, secret: short}
  - {name: b, tenant: acme, prefix: 192.0.2.10/32, secret: "0123456789", coa_addr: nope}
  - {name: c, tenant: acme, prefix: not-an-ip, secret: "0123456789"}
exporters:
  - {name: d, tenant: acme}
providers:
  - {tenant: acme, suspend: {url: "/relative"}}
  - {tenant: acme, imei: {url: "https://x.example/{iccid}"}}
`))
	require.ErrorIs(t, err, ErrPeers)
	for _, want := range []string{"nas_clients[0] (a): tenant", "nas_clients[0] (a): secret", "nas_clients[1] (b): address 192.0.2.10 already",
		"coa_addr", "nas_clients[2] (c): prefix", "exporters[0] (d): prefix", "providers[0]", "not an absolute", "providers[1] (acme): tenant has two", "fields.imei"} {
		require.Contains(t, err.Error(), want)
	}
	_, err = ParsePeers([]byte("nas_clients:\n  - {name: a, tenant: acme, prefix: 1.2.3.4, secret: \"0123456789\", secrte: x}\n"))
	require.ErrorIs(t, err, ErrPeers, "unknown keys are errors")
	p, err = ParsePeers(nil)
	require.NoError(t, err)
	require.Empty(t, p.NASClients)
	_, err = LoadPeers("/nonexistent/peers.yaml")
	require.True(t, errors.Is(err, ErrPeers))
}
