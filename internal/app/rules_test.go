package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/event"
)

func metricsText(t *testing.T, s *served) string {
	t.Helper()
	req, err := http.NewRequest("GET", "https://"+s.APIAddr().String()+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := s.c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	return string(b)
}

func flowTo(t *testing.T, ctx context.Context, a *app.App, tenant event.TenantID, dev event.DeviceID, at time.Time, port float64) {
	t.Helper()
	require.NoError(t, a.Bus().Publish(ctx, &event.Event{ID: fmt.Sprintf("fl-%d", at.UnixNano()), Tenant: tenant, Device: dev, Kind: event.NetFlow,
		Time: at, Source: "flows", Attrs: map[string]any{"dst_ip": "203.0.113.7", "dst_port": port, "proto": 6.0, "bytes": 300.0}}))
}

// TestServeRules: a rule created through the API raises on the next event
// (no restart), is loaded again after a restart, and stops raising once
// deleted. A SIM swap on another tenant marks that the events published
// before it were processed (one consumer reads the stream in order).
func TestServeRules(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := testConfig(t)
	s := serve(t, ctx, cfg)
	defer func() { _ = s.Stop(context.Background()) }()
	addSwapDevice(t, ctx, s.App, "acme", "meter-1")
	addSwapDevice(t, ctx, s.App, "globex", "meter-1")
	const kind = alert.Kind("rule.telnet_out")
	rule := `{"id":"telnet-out","name":"Telnet out","severity":"high","events":["net.flow"],"enabled":true,
		"expr":"event.attrs.dst_port in [23, 2323] && device.model == 'acme-meter-2' && device.group == 'meters'"}`
	require.Equal(t, http.StatusBadRequest, doJSON(t, s.c, s.App, "POST", "/api/v1/tenants/acme/rules", s.token, `{"id":"x","name":"x","severity":"low","expr":"event.port =="}`, nil))
	require.Equal(t, http.StatusCreated, doJSON(t, s.c, s.App, "POST", "/api/v1/tenants/acme/rules", s.token, rule, nil))

	now := time.Now().UTC()
	flowTo(t, ctx, s.App, "acme", "meter-1", now, 443)
	flowTo(t, ctx, s.App, "acme", "meter-1", now.Add(time.Second), 23)
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "acme", kind)) == 1 }, 20*time.Second, 50*time.Millisecond)
	a := alertsOf(t, ctx, s.App, "acme", kind)[0]
	require.Equal(t, "rule:telnet-out", a.Detector)
	require.Equal(t, alert.High, a.Severity)
	require.Equal(t, "telnet-out", a.Evidence.Values["rule"])
	require.Contains(t, metricsText(t, s), "garrison_detect_rules_enabled 1\n")
	s.stop(t)

	token := s.token // printed on the first start only
	s = serve(t, ctx, cfg)
	s.token = token
	defer func() { _ = s.Stop(context.Background()) }()
	flowTo(t, ctx, s.App, "acme", "meter-1", now.Add(3*time.Hour), 2323)
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "acme", kind)) == 2 }, 20*time.Second, 50*time.Millisecond,
		"the rule was not loaded at start")

	require.Equal(t, http.StatusNoContent, doJSON(t, s.c, s.App, "DELETE", "/api/v1/tenants/acme/rules/telnet-out", s.token, "", nil))
	flowTo(t, ctx, s.App, "acme", "meter-1", now.Add(6*time.Hour), 23)
	swap(t, ctx, s.App, "globex", "meter-1", now.Add(6*time.Hour))
	require.Eventually(t, func() bool { return len(alertsOf(t, ctx, s.App, "globex", alert.SIMIMEIMismatch)) == 1 }, 20*time.Second, 50*time.Millisecond)
	require.Len(t, alertsOf(t, ctx, s.App, "acme", kind), 2, "a deleted rule raised")
}
