package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"
)

// otaKeys is a tenant's OTA trust: an offline root and release keys.
type otaKeys struct {
	root, release, other ed25519.PrivateKey
}

func newOTAKeys(t testing.TB) otaKeys {
	gen := func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		return k
	}
	return otaKeys{root: gen(), release: gen(), other: gen()}
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// keysDoc signs a keys document listing keys (each valid until keyExp).
func keysDoc(t testing.TB, root ed25519.PrivateKey, version uint64, keyExp time.Time, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	set := firmware.KeySet{Expires: time.Now().Add(365 * 24 * time.Hour), Threshold: 1, Version: version}
	for _, k := range keys {
		set.Keys = append(set.Keys, firmware.NewTrustedKey(pub(k), keyExp))
	}
	b, err := firmware.SignKeys(set, root)
	require.NoError(t, err)
	return b
}

type release struct {
	version, minVersion string
	models              []string
	expires             time.Time
}

func manifestFor(t testing.TB, artifact []byte, r release, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	if r.minVersion == "" {
		r.minVersion = "1.0.0"
	}
	if r.models == nil {
		r.models = []string{"m1"}
	}
	if r.expires.IsZero() {
		r.expires = time.Now().Add(30 * 24 * time.Hour)
	}
	rel, err := firmware.NewRelease(bytes.NewReader(artifact), r.models, r.version, r.minVersion, r.expires, "test release")
	require.NoError(t, err)
	m := &firmware.Manifest{Signed: rel}
	for _, k := range keys {
		require.NoError(t, m.Sign(k))
	}
	b, err := m.Marshal()
	require.NoError(t, err)
	return b
}

func jobJSON(t testing.TB, id string, manifest, keys []byte, url string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"job": id, "campaign": "c1", "manifest": json.RawMessage(manifest),
		"keys": json.RawMessage(keys), "url": url, "emergency": false})
	require.NoError(t, err)
	return b
}

// artifactServer serves artifacts over HTTPS to clients whose certificate
// chains to clientCAs, with Range support, like the platform's
// /api/v1/firmware/artifacts/{sha256}.
type artifactServer struct {
	srv *httptest.Server
	mu  sync.Mutex
	// body returns what to serve for a path (nil: 404).
	body func(path string) []byte
	// cutAfter, when positive, aborts the first response after that many
	// bytes (an interrupted download).
	cutAfter int
	// chunked sends the body with no length (chunked encoding).
	chunked bool
	ranges  []string // Range header of every request
	clients []string // CN of every client certificate
}

func newArtifactServer(t *testing.T, clientCAs *x509.CertPool) *artifactServer {
	a := &artifactServer{}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.ranges = append(a.ranges, r.Header.Get("Range"))
		if len(r.TLS.PeerCertificates) > 0 {
			a.clients = append(a.clients, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		body, cut, chunked := a.body(r.URL.Path), a.cutAfter, a.chunked
		a.cutAfter = 0
		a.mu.Unlock()
		if body == nil {
			http.NotFound(w, r)
			return
		}
		if cut > 0 && r.Header.Get("Range") == "" {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		if chunked {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			_, _ = w.Write(body)
			return
		}
		http.ServeContent(w, r, "fw.bin", time.Time{}, bytes.NewReader(body))
	}))
	a.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *artifactServer) url(sum string) string {
	return a.srv.URL + "/api/v1/firmware/artifacts/" + sum
}

// recorder is a live session that records what the agent publishes.
type recorder struct {
	mu   sync.Mutex
	msgs []msg
}

func (r *recorder) send(_ context.Context, topic string, payload []byte) error {
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		return err
	}
	r.mu.Lock()
	r.msgs = append(r.msgs, msg{topic, m})
	r.mu.Unlock()
	return nil
}

func (r *recorder) states(job string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.msgs {
		if strings.HasSuffix(m.Topic, "/ota/status") && m.Payload["job"] == job {
			out = append(out, m.Payload["state"].(string))
		}
	}
	return out
}

func (r *recorder) last(job string) map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.msgs) - 1; i >= 0; i-- {
		if strings.HasSuffix(r.msgs[i].Topic, "/ota/status") && r.msgs[i].Payload["job"] == job {
			return r.msgs[i].Payload
		}
	}
	return nil
}

// otaRig is an agent prepared for firmware jobs without a broker: a
// self-issued device certificate, a recording session, an artifact server
// that trusts that certificate.
type otaRig struct {
	a    *Agent
	rec  *recorder
	srv  *artifactServer
	keys otaKeys
}

func newOTARig(t *testing.T, mutate func(*Config)) *otaRig {
	t.Helper()
	ca, caKey := selfSignedCA(t, "device CA")
	dev := leafCert(t, ca, caKey, "d1")
	caPool := x509.NewCertPool()
	caPool.AddCert(ca)
	srv := newArtifactServer(t, caPool)
	roots := x509.NewCertPool()
	roots.AddCert(srv.srv.Certificate())
	keys := newOTAKeys(t)
	cfg := Config{Tenant: "acme", Device: "d1", Model: "m1", StateDir: filepath.Join(t.TempDir(), "state"),
		URL: "https://127.0.0.1:1", MQTTAddr: "127.0.0.1:1", ServerCA: roots, OTARoot: pub(keys.root),
		FirmwareVersion: "1.0.0", FirmwareDigest: strings.Repeat("0", 64),
		Backoff: Backoff{Base: time.Millisecond, Max: time.Millisecond}, Logger: testLogger(t)}
	if mutate != nil {
		mutate(&cfg)
	}
	a, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, a.prepare())
	a.setIdentity(&devIdentity{cert: dev, leaf: dev.Leaf})
	rec := &recorder{}
	a.sender = rec
	return &otaRig{a: a, rec: rec, srv: srv, keys: keys}
}

// serve makes the artifact server answer every path with body.
func (r *otaRig) serve(body []byte) {
	r.srv.mu.Lock()
	r.srv.body = func(string) []byte { return body }
	r.srv.mu.Unlock()
}

// requireNothingApplied: still on slot a with the factory version, no
// slot image written, no partial download left.
func (r *otaRig) requireNothingApplied(t *testing.T) {
	t.Helper()
	slot, run := r.a.Firmware()
	require.Equal(t, "a", slot)
	require.Equal(t, "1.0.0", run.Version)
	ents, err := os.ReadDir(filepath.Join(r.a.cfg.StateDir, "slots"))
	require.NoError(t, err)
	require.Empty(t, ents, "no slot written")
	ents, err = os.ReadDir(filepath.Join(r.a.cfg.StateDir, "download"))
	require.NoError(t, err)
	require.Empty(t, ents, "no partial artifact kept")
	st, err := loadState(r.a.cfg.StateDir, Slot{})
	require.NoError(t, err)
	require.Nil(t, st.Trial)
	require.Equal(t, "a", st.Active)
}

// TestFirmwareRefusals: each way a job can be forged, replayed or aimed
// wrong is refused by the agent itself with a clear reason, and nothing
// is applied.
func TestFirmwareRefusals(t *testing.T) {
	fw := bytes.Repeat([]byte("firmware 2.0.0 "), 4000)
	past := time.Now().Add(-time.Hour)
	future := time.Now().Add(180 * 24 * time.Hour)
	cases := []struct {
		name   string
		setup  func(t *testing.T, r *otaRig) []byte // returns the job
		reason string
		is     error
	}{
		{"tampered artifact", func(t *testing.T, r *otaRig) []byte {
			bad := bytes.Clone(fw)
			bad[100] ^= 0xff
			r.serve(bad)
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "digest", firmware.ErrDigest},
		{"oversized artifact", func(t *testing.T, r *otaRig) []byte {
			r.serve(append(bytes.Clone(fw), "more"...))
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "manifest says", firmware.ErrSize},
		{"oversized artifact without a length", func(t *testing.T, r *otaRig) []byte {
			r.serve(append(bytes.Clone(fw), "more"...))
			r.srv.chunked = true
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "more than the manifest", firmware.ErrSize},
		{"truncated artifact", func(t *testing.T, r *otaRig) []byte {
			r.serve(fw[:len(fw)-10])
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "manifest says", firmware.ErrSize},
		{"unsigned manifest", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"})
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "not signed", firmware.ErrSignature},
		{"signed by an untrusted key", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.other)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "not trusted", firmware.ErrSignature},
		{"altered after signing", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			m = bytes.Replace(m, []byte("test release"), []byte("evil release"), 1)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "invalid", firmware.ErrSignature},
		{"expired release key", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, past, r.keys.release), r.srv.url("x"))
		}, "expired", firmware.ErrSignature},
		{"revoked release key", func(t *testing.T, r *otaRig) []byte {
			// The device has seen keys v2, which no longer lists the key.
			require.NoError(t, r.a.updateState(func(p *persisted) { p.KeysVersion = 2 }))
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 2, future, r.keys.other), r.srv.url("x"))
		}, "unknown or revoked", firmware.ErrSignature},
		{"keys document rolled back", func(t *testing.T, r *otaRig) []byte {
			require.NoError(t, r.a.updateState(func(p *persisted) { p.KeysVersion = 3 }))
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 2, future, r.keys.release), r.srv.url("x"))
		}, "older than 3", firmware.ErrRollback},
		{"keys signed by another root", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.other, 1, future, r.keys.release), r.srv.url("x"))
		}, "root key", firmware.ErrSignature},
		{"other model", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0", models: []string{"m2"}}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "another model", firmware.ErrWrongModel},
		{"downgrade", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "0.9.0", minVersion: "0.1.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "not newer", firmware.ErrDowngrade},
		{"same version replayed", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "1.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "not newer", firmware.ErrDowngrade},
		{"below min_version", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "3.0.0", minVersion: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "min_version", firmware.ErrDowngrade},
		{"expired manifest", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0", expires: past}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "expired", firmware.ErrExpired},
		{"plain http url", func(t *testing.T, r *otaRig) []byte {
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), "http://127.0.0.1/x")
		}, "https", ErrBadJob},
		{"no OTA root provisioned", func(t *testing.T, r *otaRig) []byte {
			r.a.cfg.OTARoot = nil
			m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
			return jobJSON(t, "j", m, keysDoc(t, r.keys.root, 1, future, r.keys.release), r.srv.url("x"))
		}, "no OTA root", ErrNoRoot},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newOTARig(t, nil)
			r.serve(fw)
			job := c.setup(t, r)
			r.a.handleJob(context.Background(), job)
			st := r.rec.states("j")
			require.NotEmpty(t, st)
			require.Equal(t, StateReceived, st[0])
			last := r.rec.last("j")
			require.Equal(t, StateRefused, last["state"], "%v", st)
			require.Contains(t, last["reason"], c.reason)
			require.NotContains(t, st, StateVerified)
			require.NotContains(t, st, StateApplying)
			r.requireNothingApplied(t)
			select {
			case <-r.a.reboot:
				t.Fatal("a refused job must not reboot the device")
			default:
			}
			// The reason is the error the firmware package (or the agent)
			// names: check through the same verification path.
			if c.is != firmware.ErrDigest && c.is != firmware.ErrSize {
				var j Job
				require.NoError(t, json.Unmarshal(job, &j))
				_, err := r.a.verifyJob(&j)
				require.True(t, errors.Is(err, c.is), "%v is not %v", err, c.is)
			}
		})
	}
}

// TestFirmwareApplyResumeAndBoot: an interrupted download resumes with
// Range, the artifact is verified and written to slot b, the reboot boots
// it, the boot check passes and succeeded is reported with the new
// version and digest, then a boot event from slot b.
func TestFirmwareApplyResumeAndBoot(t *testing.T) {
	r := newOTARig(t, nil)
	fw := bytes.Repeat([]byte("firmware 2.1.0 "), 10000)
	r.serve(fw)
	r.srv.cutAfter = len(fw) / 3
	m := manifestFor(t, fw, release{version: "2.1.0"}, r.keys.release)
	r.a.handleJob(context.Background(), jobJSON(t, "j1", m, keysDoc(t, r.keys.root, 4, time.Now().Add(time.Hour), r.keys.release), r.srv.url("x")))

	require.Equal(t, []string{StateReceived, StateDownloading, StateDownloading, StateVerified, StateApplying}, r.rec.states("j1"))
	require.Equal(t, []string{"", fmt.Sprintf("bytes=%d-", len(fw)/3)}, r.srv.ranges, "resumed where it stopped")
	require.Equal(t, []string{"d1", "d1"}, r.srv.clients, "downloaded with the device certificate")
	select {
	case <-r.a.reboot:
	default:
		t.Fatal("an applied update reboots")
	}
	st, err := loadState(r.a.cfg.StateDir, Slot{})
	require.NoError(t, err)
	require.Equal(t, "b", st.Active)
	require.NotNil(t, st.Trial, "booting into b on trial")
	require.Equal(t, uint64(4), st.KeysVersion, "the keys version is remembered (anti-rollback)")
	img, err := os.ReadFile(filepath.Join(r.a.cfg.StateDir, "slots", "b.img"))
	require.NoError(t, err)
	require.Equal(t, fw, img)

	r.a.boot(context.Background())
	last := r.rec.last("j1")
	require.Equal(t, StateSucceeded, last["state"])
	require.Equal(t, "2.1.0", last["version"])
	mm, err := firmware.ParseManifest(m)
	require.NoError(t, err)
	require.Equal(t, mm.Signed.SHA256, last["digest"])
	slot, run := r.a.Firmware()
	require.Equal(t, "b", slot)
	require.Equal(t, Slot{Version: "2.1.0", Digest: mm.Signed.SHA256}, run)
	var boot map[string]any
	for _, m := range r.rec.msgs {
		if m.Payload["type"] == "boot" {
			boot = m.Payload
		}
	}
	require.Equal(t, "b", boot["slot"])
	require.Equal(t, "2.1.0", boot["fw_version"])

	// A redelivered job is answered with its outcome, not applied again.
	n := len(r.rec.states("j1"))
	r.a.handleJob(context.Background(), jobJSON(t, "j1", m, keysDoc(t, r.keys.root, 4, time.Now().Add(time.Hour), r.keys.release), r.srv.url("x")))
	require.Equal(t, StateSucceeded, r.rec.last("j1")["state"])
	require.Len(t, r.rec.states("j1"), n+1)
	require.Len(t, r.srv.ranges, 2, "not downloaded again")

	// The next update goes to the other slot, a.
	fw3 := bytes.Repeat([]byte("firmware 2.2.0 "), 100)
	r.serve(fw3)
	m3 := manifestFor(t, fw3, release{version: "2.2.0"}, r.keys.release)
	r.a.handleJob(context.Background(), jobJSON(t, "j2", m3, keysDoc(t, r.keys.root, 4, time.Now().Add(time.Hour), r.keys.release), r.srv.url("x")))
	<-r.a.reboot
	r.a.boot(context.Background())
	slot, run = r.a.Firmware()
	require.Equal(t, "a", slot)
	require.Equal(t, "2.2.0", run.Version)
}

// TestFirmwareBootCheckFailsRollsBack: the new slot fails its boot check;
// the device returns to the previous slot and reports rolled_back.
func TestFirmwareBootCheckFailsRollsBack(t *testing.T) {
	r := newOTARig(t, func(c *Config) {
		c.BootCheck = func(_ context.Context, b BootInfo) error {
			if b.Version == "2.0.0" {
				return errors.New("watchdog: application did not start")
			}
			return nil
		}
	})
	fw := bytes.Repeat([]byte("broken 2.0.0 "), 1000)
	r.serve(fw)
	m := manifestFor(t, fw, release{version: "2.0.0"}, r.keys.release)
	r.a.handleJob(context.Background(), jobJSON(t, "j1", m, keysDoc(t, r.keys.root, 1, time.Now().Add(time.Hour), r.keys.release), r.srv.url("x")))
	<-r.a.reboot
	r.a.boot(context.Background())
	last := r.rec.last("j1")
	require.Equal(t, StateRolledBack, last["state"])
	require.Contains(t, last["reason"], "watchdog")
	require.Equal(t, "1.0.0", last["version"], "reports the version it runs after the rollback")
	slot, run := r.a.Firmware()
	require.Equal(t, "a", slot)
	require.Equal(t, "1.0.0", run.Version)
	st, err := loadState(r.a.cfg.StateDir, Slot{})
	require.NoError(t, err)
	require.Nil(t, st.Trial)
	require.Equal(t, StateRolledBack, st.LastState)

	// A crash between apply and boot check (the agent restarted) ends the
	// same way: the check runs at the next start.
	r2 := newOTARig(t, func(c *Config) {
		c.BootCheck = func(context.Context, BootInfo) error { return errors.New("kernel panic") }
	})
	r2.serve(fw)
	m2 := manifestFor(t, fw, release{version: "2.0.0"}, r2.keys.release)
	r2.a.handleJob(context.Background(), jobJSON(t, "j9", m2, keysDoc(t, r2.keys.root, 1, time.Now().Add(time.Hour), r2.keys.release), r2.srv.url("x")))
	cfg := r2.a.cfg
	a3, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, a3.prepare())
	rec := &recorder{}
	a3.sender = rec
	a3.boot(context.Background())
	require.Equal(t, StateRolledBack, rec.last("j9")["state"])
	slot, _ = a3.Firmware()
	require.Equal(t, "a", slot)
}
