package app_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/config"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// served is one started app with its bootstrap (platform admin) token.
type served struct {
	*app.App
	token string
	c     *http.Client
}

func serve(t *testing.T, ctx context.Context, cfg config.Config) *served {
	t.Helper()
	var out bytes.Buffer
	a, err := app.New(cfg, nil, app.Options{Out: &out, KeyPassphrase: testPass, Clock: clock.Real{}})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	s := &served{App: a, c: client(t, a)}
	s.token = tokenRE.FindString(out.String())
	return s
}

func (s *served) stop(t *testing.T) {
	t.Helper()
	s.c.CloseIdleConnections()
	require.NoError(t, s.Stop(context.Background()))
}

// swapFleet is one device per tenant whose SIM is bound to it.
const swapIMSI, swapIMEI, foreignIMEI = "214017536736625", "356039801863042", "357517049431432"

func addSwapDevice(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID, dev event.DeviceID) {
	t.Helper()
	now := time.Now().UTC()
	require.NoError(t, a.Store().Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Tenants().Get(ctx, tenant); err != nil {
			if err := tx.Tenants().Create(ctx, store.Tenant{ID: tenant, Name: string(tenant), CreatedAt: now}); err != nil {
				return err
			}
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: tenant, ID: dev, Model: "acme-meter-2", State: store.StateActive,
			IMSI: swapIMSI, IMEI: swapIMEI, CreatedAt: now, UpdatedAt: now, Tags: map[string]string{"cohort": "meters"}})
	}))
}

// swap publishes a session of the device's SIM from a foreign IMEI.
func swap(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID, dev event.DeviceID, at time.Time) {
	t.Helper()
	require.NoError(t, a.Bus().Publish(ctx, &event.Event{Tenant: tenant, Device: dev, Kind: event.NetSession, Time: at, Source: "radius",
		Attrs: map[string]any{"status": "start", "session_id": "s-" + at.Format(time.RFC3339Nano), "imsi": swapIMSI, "imei": foreignIMEI, "ip": "10.64.0.17"}}))
}

func alertsOf(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID, kind alert.Kind) []alert.Alert {
	t.Helper()
	var out []alert.Alert
	require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
		var err error
		out, err = tx.Alerts().List(ctx, tenant, store.AlertFilter{Kind: kind})
		return err
	}))
	return out
}

// TestServeDetectorSettings: a detector disabled for one tenant's group
// through the API stops raising for that tenant at once (no restart), and
// still does after a restart (settings are loaded from the store), while
// another tenant is unaffected. The other tenant's alert marks that the
// events published before it were processed (one consumer reads the
// stream in order).
func TestServeDetectorSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t)
	s := serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	addSwapDevice(t, ctx, s.App, "acme", "meter-1")
	addSwapDevice(t, ctx, s.App, "globex", "meter-1")

	var info struct {
		Disabled bool `json:"disabled"`
	}
	require.Equal(t, http.StatusBadRequest, doJSON(t, s.c, s.App, "PUT", "/api/v1/tenants/acme/detectors/sim.swap/settings?group=meters", s.token, `{"disable":true}`, nil))
	require.Equal(t, http.StatusOK, doJSON(t, s.c, s.App, "PUT", "/api/v1/tenants/acme/detectors/sim.swap/settings?group=meters", s.token, `{"disabled":true}`, &info))
	require.True(t, info.Disabled)

	now := time.Now().UTC()
	swap(t, ctx, s.App, "acme", "meter-1", now)
	swap(t, ctx, s.App, "globex", "meter-1", now)
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "globex", alert.SIMIMEIMismatch)) == 1 }, 20*time.Second, 50*time.Millisecond)
	require.Empty(t, alertsOf(t, ctx, s.App, "acme", alert.SIMIMEIMismatch), "the disabled detector raised")
	s.stop(t)

	token := s.token // printed on the first start only
	s = serve(t, ctx, cfg)
	s.token = token
	defer func() { _ = s.Stop(context.Background()) }()
	swap(t, ctx, s.App, "acme", "meter-1", now.Add(3*time.Hour))
	swap(t, ctx, s.App, "globex", "meter-1", now.Add(3*time.Hour))
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "globex", alert.SIMIMEIMismatch)) == 2 }, 20*time.Second, 50*time.Millisecond)
	require.Empty(t, alertsOf(t, ctx, s.App, "acme", alert.SIMIMEIMismatch), "the setting was lost in the restart")

	// Enabled again, live.
	require.Equal(t, http.StatusOK, doJSON(t, s.c, s.App, "PUT", "/api/v1/tenants/acme/detectors/sim.swap/settings?group=meters", s.token, `{}`, &info))
	require.False(t, info.Disabled)
	swap(t, ctx, s.App, "acme", "meter-1", now.Add(6*time.Hour))
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "acme", alert.SIMIMEIMismatch)) == 1 }, 20*time.Second, 50*time.Millisecond)
	s.stop(t)
}

// TestServeThreatIntelFeeds: feeds listed in the feeds file (one over
// HTTP, one a local file) are loaded after start, listed by the API with
// their entry counts, and a flow to a listed address raises
// net.threat_intel_hit with the feed's name as evidence.
func TestServeThreatIntelFeeds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("# c2 servers\n203.0.113.0/24\n198.51.100.7\n"))
	}))
	defer hs.Close()
	dir := t.TempDir()
	local := filepath.Join(dir, "local.csv")
	require.NoError(t, os.WriteFile(local, []byte("indicator,type\n192.0.2.66,scanner\n"), 0o600))
	feeds := filepath.Join(dir, "feeds.yaml")
	require.NoError(t, os.WriteFile(feeds, []byte("feeds:\n  - name: c2-list\n    url: "+hs.URL+"/c2.txt\n    refresh: 1h\n  - name: local\n    file: "+local+"\n"), 0o600))
	cfg := testConfig(t)
	cfg.Detect.FeedsFile = feeds
	s := serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	addSwapDevice(t, ctx, s.App, "acme", "meter-1")

	var list []struct {
		Name        string `json:"name"`
		Entries     int    `json:"entries"`
		LastRefresh string `json:"last_refresh"`
	}
	require.Eventually(t, func() bool {
		require.Equal(t, http.StatusOK, doJSON(t, s.c, s.App, "GET", "/api/v1/platform/intel/feeds", s.token, "", &list))
		return len(list) == 2 && list[0].Entries == 2 && list[1].Entries == 1
	}, 20*time.Second, 50*time.Millisecond, "feeds: %+v", list)
	require.Equal(t, "c2-list", list[0].Name)
	require.NotEmpty(t, list[0].LastRefresh)
	require.Equal(t, http.StatusOK, doJSON(t, s.c, s.App, "GET", "/api/v1/tenants/acme/intel/feeds", s.token, "", &list))
	require.Len(t, list, 2)

	require.NoError(t, s.Bus().Publish(ctx, &event.Event{Tenant: "acme", Device: "meter-1", Kind: event.NetFlow, Time: time.Now().UTC(), Source: "flows",
		Attrs: map[string]any{"src_ip": "10.64.0.17", "dst_ip": "203.0.113.9", "dst_port": float64(443), "proto": "tcp", "bytes": float64(4000)}}))
	var hits []alert.Alert
	require.Eventually(t, func() bool {
		hits = alertsOf(t, ctx, s.App, "acme", alert.ThreatIntelHit)
		return len(hits) == 1
	}, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, "c2-list", hits[0].Evidence.Values["feed"])
	s.stop(t)
}

// releaseM1 gives tenant a root key, a keys document and a signed release
// 1.2.0 of model m1; it returns the release's digest.
func releaseM1(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID) string {
	t.Helper()
	return app.TrustFirmwareKeys(t, ctx, a, tenant).AddRelease(t, ctx, a, tenant, bytes.Repeat([]byte("garrison firmware 1.2.0 "), 100), "1.2.0")
}

// TestServeFirmwareCatalog: serve's detection knows the firmware catalog:
// a device reporting the signed release's digest raises nothing, one
// reporting an unknown digest below the minimum version raises
// firmware.unapproved and firmware.rollback; after a restart the catalog
// is loaded from the store, so the signed device still raises nothing.
func TestServeFirmwareCatalog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t)
	s := serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	now := time.Now().UTC()
	require.NoError(t, s.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		for _, id := range []event.DeviceID{"good", "bad-1", "bad-2"} {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: id, Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	digest := releaseM1(t, ctx, s.App, "acme")
	require.NoError(t, s.Firmware().SetMinVersion(ctx, "acme", "test", "m1", "1.1.0"))
	report := func(a *app.App, dev event.DeviceID, version, digest string, at time.Time) {
		require.NoError(t, a.Bus().Publish(ctx, &event.Event{Tenant: "acme", Device: dev, Kind: event.FirmwareReport, Time: at, Source: "broker",
			Attrs: map[string]any{"version": version, "digest": digest}}))
	}
	devAlerts := func(a *app.App, dev event.DeviceID) map[alert.Kind]bool {
		out := map[alert.Kind]bool{}
		require.NoError(t, a.Store().View(ctx, func(tx store.Tx) error {
			as, err := tx.Alerts().List(ctx, "acme", store.AlertFilter{Device: dev})
			for _, al := range as {
				out[al.Kind] = true
			}
			return err
		}))
		return out
	}
	unknown := strings.Repeat("ab", 32)
	report(s.App, "good", "1.2.0", digest, now)
	report(s.App, "bad-1", "1.0.0", unknown, now)
	require.Eventually(t, func() bool {
		got := devAlerts(s.App, "bad-1")
		return got[alert.FirmwareUnapproved] && got[alert.FirmwareRollback]
	}, 20*time.Second, 50*time.Millisecond)
	require.Empty(t, devAlerts(s.App, "good"), "a signed release raised")
	s.stop(t)

	s = serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	report(s.App, "good", "1.2.0", digest, now.Add(time.Hour))
	report(s.App, "bad-2", "1.0.5", unknown, now.Add(time.Hour))
	require.Eventually(t, func() bool {
		got := devAlerts(s.App, "bad-2")
		return got[alert.FirmwareUnapproved] && got[alert.FirmwareRollback]
	}, 20*time.Second, 50*time.Millisecond, "the minimum version was not loaded at start")
	require.Empty(t, devAlerts(s.App, "good"), "the signed releases were not loaded at start")
	s.stop(t)
}

// TestServeKeepsLearnedState: what detection learned survives a clean
// restart. A device's listening port learned during its warm-up day is
// known after the restart, so only the new port fires; without the
// snapshot the device would be new again, in warm-up, and nothing would
// fire. A snapshot that cannot be read does not stop the start.
func TestServeKeepsLearnedState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t)
	cfg.Detect.SnapshotInterval = 0 // only at stop
	s := serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	now := time.Now().UTC()
	require.NoError(t, s.Store().Update(ctx, func(tx store.Tx) error {
		if err := tx.Tenants().Create(ctx, store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now}); err != nil {
			return err
		}
		return tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: "gw-1", Model: "m1", State: store.StateActive, CreatedAt: now, UpdatedAt: now})
	}))
	metrics := func(a *app.App, at time.Time, ports ...string) {
		require.NoError(t, a.Bus().Publish(ctx, &event.Event{Tenant: "acme", Device: "gw-1", Kind: event.DeviceMetrics, Time: at, Source: "broker",
			Attrs: map[string]any{"listening_ports": ports}}))
	}
	t0 := now.Add(-30 * time.Hour)
	metrics(s.App, t0, "22")
	require.NoError(t, s.Detection().Drain(ctx))
	s.stop(t)
	require.FileExists(t, filepath.Join(s.DataDir(), "detect", "snapshot"))

	s = serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	metrics(s.App, t0.Add(25*time.Hour), "22", "4444")
	var got []alert.Alert
	require.Eventually(t, func() bool {
		got = alertsOf(t, ctx, s.App, "acme", alert.UnexpectedListener)
		return len(got) == 1
	}, 20*time.Second, 50*time.Millisecond, "the learned state was lost in the restart")
	require.EqualValues(t, 4444, got[0].Evidence.Values["port"])
	require.Equal(t, []any{float64(22)}, got[0].Evidence.Values["learned_ports"])
	s.stop(t)

	// A damaged snapshot is moved aside; serve starts and learns again.
	snap := filepath.Join(s.DataDir(), "detect", "snapshot")
	require.NoError(t, os.WriteFile(snap, []byte("not a snapshot"), 0o600))
	s = serve(t, ctx, cfg)
	require.FileExists(t, snap+".bad")
	s.stop(t)
	require.FileExists(t, snap)
}
