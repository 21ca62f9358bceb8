package api_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
)

// Deterministic OTA keys of every test tenant.
var (
	otaRoot    = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	otaRelease = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32))
	otaOther   = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
)

type noJobs struct{}

func (noJobs) PublishJob(context.Context, event.TenantID, event.DeviceID, []byte) error { return nil }

func newOTA(t testing.TB, st store.Store, clk clock.Clock) (*ota.Catalog, *ota.Engine) {
	t.Helper()
	cat, err := ota.New(ota.Options{Store: st, Clock: clk, DataDir: t.TempDir(), MaxArtifactSize: 1 << 20})
	require.NoError(t, err)
	eng, err := ota.NewEngine(ota.EngineOptions{Store: st, Clock: clk, Catalog: cat, Publisher: noJobs{}, ArtifactBase: "https://x"})
	require.NoError(t, err)
	return cat, eng
}

// otaWorld is a tenant's firmware state: root and keys set, release 1.2.0
// of m1 in the catalog, one running and one paused campaign.
type otaWorld struct {
	keysDoc, release13 string
	running, paused    string
}

func (o otaWorld) campaign(pattern string) string {
	if strings.HasSuffix(pattern, "/resume") {
		return o.paused
	}
	return o.running
}

func (o otaWorld) body(pattern string) (string, bool) {
	const t = "/api/v1/tenants/{tenant}"
	switch pattern {
	case t + "/firmware/root":
		return `{"public_key":"` + hex.EncodeToString(otaRoot.Public().(ed25519.PublicKey)) + `"}`, true
	case t + "/firmware/keys":
		return o.keysDoc, true
	case t + "/firmware/releases":
		return o.release13, true
	case t + "/firmware/min-version":
		return `{"model":"m1","version":"1.1.0"}`, true
	case t + "/campaigns":
		return `{"release":"` + digestOf(artifact("1.2.0")) + `","selector":{"model":"m1"},"waves":[50,100]}`, true
	case t + "/campaigns/{id}/pause", t + "/campaigns/{id}/cancel":
		return `{"reason":"test"}`, true
	}
	return "", false
}

func artifact(version string) []byte { return []byte("firmware image " + version) }

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func testManifest(version string, art []byte, keys ...ed25519.PrivateKey) []byte {
	m := &firmware.Manifest{Signed: firmware.Release{Expires: t0.Add(90 * 24 * time.Hour), MinVersion: "1.0.0", Models: []string{"m1"},
		SHA256: digestOf(art), Size: int64(len(art)), Version: version}}
	for _, k := range keys {
		if err := m.Sign(k); err != nil {
			panic(err)
		}
	}
	b, err := m.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

func otaKeysDoc(version uint64, keys ...ed25519.PrivateKey) []byte {
	set := firmware.KeySet{Expires: t0.Add(365 * 24 * time.Hour), Version: version}
	for _, k := range keys {
		set.Keys = append(set.Keys, firmware.NewTrustedKey(k.Public().(ed25519.PublicKey), t0.Add(180*24*time.Hour)))
	}
	b, err := firmware.SignKeys(set, otaRoot)
	if err != nil {
		panic(err)
	}
	return b
}

func releaseBody(manifest, art []byte) string { return string(manifest) + "\n" + string(art) }

func (e *env) otaWorld(t testing.TB, w *world) {
	t.Helper()
	if e.cat == nil { // an env built for one concern (the PostgreSQL ack race) has no catalog
		return
	}
	ctx := context.Background()
	require.NoError(t, e.cat.SetRoot(ctx, w.tenant, "setup", otaRoot.Public().(ed25519.PublicKey)))
	doc := otaKeysDoc(1, otaRelease)
	_, err := e.cat.SetKeys(ctx, w.tenant, "setup", doc)
	require.NoError(t, err)
	art := artifact("1.2.0")
	_, err = e.cat.AddRelease(ctx, w.tenant, "setup", testManifest("1.2.0", art, otaRelease), bytes.NewReader(art))
	require.NoError(t, err)
	spec := ota.Spec{Release: digestOf(art), Selector: ota.Selector{Model: "m1"}}
	run, err := e.eng.Create(ctx, w.tenant, "setup", spec)
	require.NoError(t, err)
	p, err := e.eng.Create(ctx, w.tenant, "setup", spec)
	require.NoError(t, err)
	_, err = e.eng.Pause(ctx, w.tenant, "setup", p.ID, "setup")
	require.NoError(t, err)
	w.ota = otaWorld{keysDoc: string(doc), running: run.ID, paused: p.ID,
		release13: releaseBody(testManifest("1.3.0", artifact("1.3.0"), otaRelease), artifact("1.3.0"))}
}

func TestReleaseUploadRefusals(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	admin := w.tokens[store.RoleAdmin]
	path := "/api/v1/tenants/" + string(w.tenant) + "/firmware/releases"
	up := func(body string) (int, string) {
		rec := e.do("POST", path, admin, body, "Content-Type", api.ReleaseContentType)
		return rec.Code, rec.Body.String()
	}
	art := artifact("1.4.0")
	good := testManifest("1.4.0", art, otaRelease)
	tampered := append([]byte(nil), art...)
	tampered[0] ^= 1
	var mm firmware.Manifest
	require.NoError(t, json.Unmarshal(good, &mm))
	mm.Signed.Notes = "edited after signing"
	edited, _ := mm.Marshal()
	old := testManifest("1.0.5", artifact("1.0.5"), otaRelease)

	before := e.head(t, w.tenant)
	for name, tc := range map[string]struct {
		body string
		code int
		msg  string
	}{
		"tampered artifact":        {releaseBody(good, tampered), 400, "digest mismatch"},
		"unsigned":                 {releaseBody(testManifest("1.4.0", art), art), 400, "not signed"},
		"untrusted key":            {releaseBody(testManifest("1.4.0", art, otaOther), art), 400, "not trusted"},
		"edited manifest":          {releaseBody(edited, art), 400, "invalid"},
		"truncated artifact":       {releaseBody(good, art[:5]), 400, "truncated"},
		"oversized artifact":       {releaseBody(good, append(append([]byte(nil), art...), "more"...)), 400, "larger than the manifest"},
		"no newline":               {string(good), 400, "newline"},
		"garbage manifest":         {"{nope}\n" + string(art), 400, "malformed"},
		"already in catalog (1.2)": {releaseBody(testManifest("1.2.0", artifact("1.2.0"), otaRelease), artifact("1.2.0")), 409, "already"},
	} {
		code, body := up(tc.body)
		require.Equal(t, tc.code, code, "%s: %s", name, body)
		require.Contains(t, body, tc.msg, name)
	}
	rec := e.do("POST", path, admin, releaseBody(good, art))
	require.Equal(t, http.StatusUnsupportedMediaType, rec.Code, "JSON content type is refused")
	// A downgrade below the tenant's minimum.
	rec = e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/firmware/min-version", admin, `{"model":"m1","version":"1.1.0"}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	before = e.head(t, w.tenant)
	code, body := up(releaseBody(old, artifact("1.0.5")))
	require.Equal(t, 400, code)
	require.Contains(t, body, "downgrade")
	require.Equal(t, before, e.head(t, w.tenant), "refusals write nothing")

	// A revoked key: the keys document v2 drops otaRelease.
	rec = e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/firmware/keys", admin, string(otaKeysDoc(2, otaOther)))
	require.Equal(t, 200, rec.Code, rec.Body.String())
	code, body = up(releaseBody(good, art))
	require.Equal(t, 400, code)
	require.Contains(t, body, "unknown or revoked")
	// Rolling the keys document back is refused.
	rec = e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/firmware/keys", admin, string(otaKeysDoc(1, otaRelease)))
	require.Equal(t, 400, rec.Code)
	require.Contains(t, rec.Body.String(), "rollback")
	// Signed by the new key: accepted and listed.
	code, body = up(releaseBody(testManifest("1.4.0", art, otaOther), art))
	require.Equal(t, 201, code, body)
	rec = e.do("GET", path, w.tokens[store.RoleViewer], "")
	require.Equal(t, 200, rec.Code)
	var list []api.ReleaseInfo
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list))
	var versions []string
	for _, r := range list {
		versions = append(versions, r.Version)
	}
	require.ElementsMatch(t, []string{"1.2.0", "1.4.0"}, versions)
}

func TestRootAsPEMAndCampaignThroughAPI(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	admin := w.tokens[store.RoleAdmin]
	der, err := x509.MarshalPKIXPublicKey(otaRoot.Public())
	require.NoError(t, err)
	pemKey, _ := json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	rec := e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/firmware/root", admin, `{"public_key":`+string(pemKey)+`}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	require.Contains(t, rec.Body.String(), firmware.KeyID(otaRoot.Public().(ed25519.PublicKey)))
	rec = e.do("POST", "/api/v1/tenants/"+string(w.tenant)+"/firmware/root", admin, `{"public_key":"abc"}`)
	require.Equal(t, 400, rec.Code)

	base := "/api/v1/tenants/" + string(w.tenant) + "/campaigns"
	rec = e.do("POST", base, w.tokens[store.RoleOperator], `{"release":"`+digestOf(artifact("1.2.0"))+`","selector":{"model":"m1"},"waves":[100],"windows":[{"start":"01:00","end":"02:00"}]}`)
	require.Equal(t, 201, rec.Code, rec.Body.String())
	var c api.CampaignInfo
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &c))
	require.Equal(t, store.CampaignRunning, c.State)
	require.Equal(t, 1, c.Spec.Targets)
	rec = e.do("POST", base, admin, `{"release":"`+digestOf(artifact("1.2.0"))+`","selector":{"model":"m1"},"waves":[10,5]}`)
	require.Equal(t, 400, rec.Code)
	require.Contains(t, rec.Body.String(), "increasing")
	rec = e.do("GET", base+"/"+c.ID, w.tokens[store.RoleViewer], "")
	require.Equal(t, 200, rec.Code)
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &c))
	require.Equal(t, []store.TargetCount{{Wave: 1, State: "pending", N: 1}}, c.Counts)
	rec = e.do("POST", base+"/"+c.ID+"/resume", admin, "")
	require.Equal(t, 409, rec.Code, "a running campaign cannot be resumed")
	rec = e.do("GET", base+"/c-nope", admin, "")
	require.Equal(t, 404, rec.Code)
}
