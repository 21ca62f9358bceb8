package sim

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const validYAML = `name: small
description: test fleet
seed: 3
start: 2026-01-05T00:00:00Z
duration: 12h
fleet:
  - name: gw
    count: 5
    model: edge-gw-1
    firmware: 3.0.2
    home: {lat: 45.46, lon: 9.19, radius_km: 5}
    mobility: static
    report_every: 5m
    uplink_bytes: 2500
    pattern: flat
    destinations: 2
    apn: gw.example.private
    geofence_km: 10
  - name: van
    count: 3
    model: trackr-lte
    firmware: 1.9.0
    home: {lat: 41.38, lon: 2.17, radius_km: 20}
    mobility: vehicle
    report_every: 1m
    uplink_bytes: 300
    pattern: flat
    destinations: 3
    apn: fleet.example.private
    variability: 0.3
    outages: 0.5
events:
  - kind: firmware_campaign
    cohort: gw
    to: 3.1.0
    at: 2h
attacks:
  - kind: firmware_rollback
    device: gw-0002
    at: 6h
    params: {to: 2.0.0}
expect:
  - device: gw-0002
    alert: firmware.rollback
    within: 10m
    response: quarantine
max_false_alerts: 0
`

func TestParseValid(t *testing.T) {
	sc, err := Parse([]byte(validYAML))
	require.NoError(t, err)
	require.Equal(t, "small", sc.Name)
	require.Equal(t, "12h0m0s", sc.Duration.D.String())
	require.Len(t, sc.Fleet, 2)
	require.Equal(t, 0.3, sc.Fleet[0].CV(), "default variability")
	require.Equal(t, 10.0, sc.Fleet[0].Fence())
	require.Equal(t, "2.0.0", sc.Attacks[0].Params.To.Version)
	require.Equal(t, 2026, sc.Start.Year())
}

func TestParseLibraries(t *testing.T) {
	var files []string
	for _, dir := range []string{"../../scenarios", sharedDir} {
		f, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		files = append(files, f...)
	}
	require.NotEmpty(t, files)
	for _, f := range files {
		_, err := Load(f)
		require.NoError(t, err, f)
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name, from, to string
		want           []string
	}{
		{"name", "name: small", "name: Small Name", []string{"name:"}},
		{"start", "start: 2026-01-05T00:00:00Z", "start: yesterday", []string{"start:"}},
		{"duration", "duration: 12h", "duration: 12 hours", []string{"duration:"}},
		{"count", "count: 5", "count: 0", []string{"fleet[0].count"}},
		{"mobility", "mobility: static", "mobility: flying", []string{"fleet[0].mobility"}},
		{"pattern", "pattern: flat\n    destinations: 2", "pattern: weekly\n    destinations: 2", []string{"fleet[0].pattern"}},
		{"report_every", "report_every: 5m", "report_every: often", []string{"fleet[0].report_every"}},
		{"uplink", "uplink_bytes: 2500", "uplink_bytes: -1", []string{"fleet[0].uplink_bytes"}},
		{"destinations", "destinations: 3", "destinations: 0", []string{"fleet[1].destinations"}},
		{"variability", "variability: 0.3", "variability: 7", []string{"fleet[1].variability"}},
		{"outages", "outages: 0.5", "outages: 2", []string{"fleet[1].outages"}},
		{"lat", "lat: 45.46", "lat: 95", []string{"fleet[0].home.lat"}},
		{"campaign cohort", "cohort: gw", "cohort: nope", []string{"events[0].cohort"}},
		{"campaign version", "to: 3.1.0", "to: 1.0.0", []string{"events[0].to"}},
		{"attack kind", "kind: firmware_rollback", "kind: teleport", []string{"attacks[0].kind"}},
		{"attack device", "device: gw-0002\n    at: 6h", "device: gw-0099\n    at: 6h", []string{"attacks[0].device"}},
		{"attack at", "at: 6h", "at: 13h", []string{"attacks[0].at"}},
		{"rollback newer", "params: {to: 2.0.0}", "params: {to: 4.0.0}", []string{"attacks[0].params.to"}},
		{"expect alert", "alert: firmware.rollback", "alert: Rollback", []string{"expect[0].alert"}},
		{"expect within", "within: 10m", "within: soon", []string{"expect[0].within"}},
		{"max false", "max_false_alerts: 0", "max_false_alerts: -1", []string{"max_false_alerts"}},
		{"unknown top key", "seed: 3", "seed: 3\ncolour: red", []string{"colour"}},
		{"unknown cohort key", "apn: gw.example.private", "apn: gw.example.private\n    colour: red", []string{"colour"}},
		{"unknown param", "params: {to: 2.0.0}", "params: {to: 2.0.0, speed: 3}", []string{"speed"}},
		{"several at once", "count: 5", "count: 0\n    colour: red", []string{"colour"}},
		{"every error at once", "mobility: static\n    report_every: 5m", "mobility: hover\n    report_every: never", []string{"fleet[0].mobility", "fleet[0].report_every"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Contains(t, validYAML, tc.from)
			_, err := Parse([]byte(strings.Replace(validYAML, tc.from, tc.to, 1)))
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalid), err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestParseGeofenceNeedsFence(t *testing.T) {
	y := strings.Replace(validYAML, "kind: firmware_rollback\n    device: gw-0002", "kind: geofence_exit\n    device: van-0002", 1)
	y = strings.Replace(y, "params: {to: 2.0.0}", "params: {to: {lat: 48, lon: 2}}", 1)
	_, err := Parse([]byte(y))
	require.ErrorContains(t, err, "attacks[0].device: geofence_exit needs cohort")
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(validYAML))
	f.Add([]byte("name: x\n"))
	f.Add([]byte("fleet: [{count: 1000000000}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := Parse(b)
		if err != nil {
			if sc != nil {
				t.Fatal("scenario returned with an error")
			}
			return
		}
		// a valid scenario must have a fleet and a positive duration
		if len(sc.Fleet) == 0 || sc.Duration.D <= 0 {
			t.Fatalf("accepted invalid scenario: %+v", sc)
		}
	})
}
