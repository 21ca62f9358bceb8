package sim

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/stretchr/testify/require"
)

// attackScenario is a small fleet with one attack of kind on device at 30h.
func attackScenario(t *testing.T, kind, device, params string) *Scenario {
	t.Helper()
	y := fmt.Sprintf(`name: attack-%s
seed: 42
start: 2026-03-02T00:00:00Z
duration: 36h
fleet:
  - name: gw
    count: 4
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
attacks:
  - kind: %s
    device: %s
    at: 30h
    params: %s
`, strings.ReplaceAll(kind, "_", "-"), kind, device, params)
	sc, err := Parse([]byte(y))
	require.NoError(t, err)
	return sc
}

type stream struct {
	evs  []*event.Event
	ctls []*Control
	g    *Generator
}

func genAll(t *testing.T, sc *Scenario) stream {
	t.Helper()
	evs, ctls := collect(t, sc)
	return stream{evs: evs, ctls: ctls, g: NewGenerator(sc, "sim")}
}

func (s stream) of(dev string, kind event.Kind, from, to time.Time) []*event.Event {
	var out []*event.Event
	for _, e := range s.evs {
		if string(e.Device) == dev && e.Kind == kind && !e.Time.Before(from) && e.Time.Before(to) {
			out = append(out, e)
		}
	}
	return out
}

func (s stream) device(id string) *Device {
	for _, d := range s.g.Devices() {
		if string(d.ID) == id {
			return d
		}
	}
	return nil
}

func sumBytes(evs []*event.Event) float64 {
	var n float64
	for _, e := range evs {
		f, _ := e.Float("bytes")
		n += f
	}
	return n
}

func TestEveryAttackProducesItsSignal(t *testing.T) {
	onset := time.Date(2026, 3, 3, 6, 0, 0, 0, time.UTC) // start + 30h
	day := 24 * time.Hour
	cases := map[string]struct {
		device, params string
		check          func(t *testing.T, s stream)
	}{
		"sim_swap": {"gw-0002", "{}", func(t *testing.T, s stream) {
			d := s.device("gw-0002")
			var foreign []*event.Event
			for _, e := range s.of("gw-0002", event.NetSession, onset, onset.Add(time.Hour)) {
				if e.Str("imsi") == d.IMSI && e.Str("imei") != d.IMEI {
					foreign = append(foreign, e)
				}
			}
			require.NotEmpty(t, foreign)
			require.Equal(t, "start", foreign[0].Str("status"))
			require.Equal(t, onset, foreign[0].Time)
			require.True(t, luhnValid(foreign[0].Str("imei")))
			require.Empty(t, s.of("gw-0002", event.MQTTPublish, onset, onset.Add(day)), "the victim goes silent")
		}},
		"impossible_travel": {"van-0002", "{to: {lat: 59.33, lon: 18.07}}", func(t *testing.T, s stream) {
			locs := s.of("van-0002", event.Location, onset.Add(-10*time.Minute), onset.Add(10*time.Minute))
			fast := false
			for i := 1; i < len(locs); i++ {
				if speedKmh(locs[i-1], locs[i]) > 1000 && !locs[i].Time.Before(onset) {
					fast = true
				}
			}
			require.True(t, fast, "a jump faster than 1000 km/h at the onset")
		}},
		"geofence_exit": {"gw-0003", "{}", func(t *testing.T, s stream) {
			d := s.device("gw-0003")
			locs := s.of("gw-0003", event.Location, onset.Add(-day), onset.Add(6*time.Hour))
			var firstOut time.Time
			for i, e := range locs {
				if i > 0 {
					require.Less(t, speedKmh(locs[i-1], e), 140.0, "plausible speed while leaving")
				}
				if firstOut.IsZero() && haversineKm(pt(e), d.Home) > d.GeofenceKm {
					firstOut = e.Time
				}
			}
			require.False(t, firstOut.IsZero())
			require.False(t, firstOut.Before(onset.Add(-time.Minute)), "outside only from the onset: %s", firstOut)
			require.True(t, firstOut.Before(onset.Add(5*time.Minute)), "outside at the onset: %s", firstOut)
			last := locs[len(locs)-1]
			require.Greater(t, haversineKm(pt(last), d.Home), d.GeofenceKm, "stays outside")
		}},
		"data_exfiltration": {"gw-0001", "{factor: 10, for: 2h}", func(t *testing.T, s stream) {
			now := sumBytes(s.of("gw-0001", event.MQTTPublish, onset, onset.Add(2*time.Hour)))
			before := sumBytes(s.of("gw-0001", event.MQTTPublish, onset.Add(-day), onset.Add(-day+2*time.Hour)))
			require.Greater(t, now/before, 7.0)
			require.NotEmpty(t, s.of("gw-0001", event.MQTTPublish, onset, onset.Add(time.Second)), "first upload at the onset")
		}},
		"message_flood": {"gw-0001", "{factor: 30, for: 20m}", func(t *testing.T, s stream) {
			now := len(s.of("gw-0001", event.MQTTPublish, onset, onset.Add(20*time.Minute)))
			before := len(s.of("gw-0001", event.MQTTPublish, onset.Add(-day), onset.Add(-day+20*time.Minute)))
			require.Greater(t, float64(now)/float64(before), 20.0)
			vb := sumBytes(s.of("gw-0001", event.MQTTPublish, onset, onset.Add(20*time.Minute)))
			bb := sumBytes(s.of("gw-0001", event.MQTTPublish, onset.Add(-day), onset.Add(-day+20*time.Minute)))
			require.Less(t, vb/bb, 2.5, "a flood of small messages, not an exfiltration")
		}},
		"credential_bruteforce": {"gw-0001", "{attempts: 200, for: 15m}", func(t *testing.T, s stream) {
			fails := s.of("gw-0001", event.MQTTAuthFailed, onset, onset.Add(20*time.Minute))
			require.Len(t, fails, 200)
			require.Equal(t, onset, fails[0].Time)
			for _, e := range fails {
				require.Equal(t, "bad_password", e.Str("reason"))
				require.Equal(t, "gw-0001", e.Str("username"))
			}
			require.Empty(t, s.of("gw-0001", event.MQTTAuthFailed, onset.Add(-day), onset))
		}},
		"default_credentials": {"gw-0001", "{attempts: 12, for: 10m}", func(t *testing.T, s stream) {
			fails := s.of("gw-0001", event.MQTTAuthFailed, onset, onset.Add(15*time.Minute))
			require.Len(t, fails, 12)
			for _, e := range fails {
				require.Equal(t, "default_credentials", e.Str("reason"))
				require.Contains(t, factoryUsernames, e.Str("username"))
			}
		}},
		"mirai_scan": {"gw-0001", "{targets: 400, for: 30m}", func(t *testing.T, s stream) {
			dst := map[string]bool{}
			for _, e := range s.of("gw-0001", event.NetFlow, onset, onset.Add(35*time.Minute)) {
				if p := e.Int("dst_port"); p == 23 || p == 2323 {
					dst[e.Str("dst_ip")] = true
				}
			}
			require.Len(t, dst, 400)
		}},
		"port_scan": {"gw-0001", "{targets: 1000, for: 20m}", func(t *testing.T, s stream) {
			ports := map[int64]bool{}
			for _, e := range s.of("gw-0001", event.NetFlow, onset, onset.Add(25*time.Minute)) {
				ports[e.Int("dst_port")] = true
			}
			require.GreaterOrEqual(t, len(ports), 1000)
			require.False(t, ports[23] || ports[2323], "a port scan is not a telnet scan")
		}},
		"c2_beacon": {"gw-0001", "{every: 5m, for: 2h}", func(t *testing.T, s stream) {
			c2 := s.g.C2().String()
			n := 0
			for _, e := range s.of("gw-0001", event.NetFlow, onset, onset.Add(2*time.Hour+time.Minute)) {
				if e.Str("dst_ip") == c2 {
					n++
				}
			}
			require.InDelta(t, 24, n, 2)
			require.Contains(t, strings.Split(string(s.g.ThreatFeed()), "\n"), c2)
			require.True(t, s.g.NeedsThreatFeed())
		}},
		"unapproved_destination": {"gw-0001", "{}", func(t *testing.T, s stream) {
			d := s.device("gw-0001")
			var novel []string
			for _, e := range s.of("gw-0001", event.NetFlow, onset, onset.Add(time.Hour)) {
				a := netip.MustParseAddr(e.Str("dst_ip"))
				if !slices.ContainsFunc(d.Destinations, func(p netip.Prefix) bool { return p.Contains(a) }) {
					novel = append(novel, a.String())
				}
			}
			require.GreaterOrEqual(t, len(novel), 3)
			require.NotContains(t, string(s.g.ThreatFeed()), novel[0]+"\n", "not an intel hit")
		}},
		"clone": {"gw-0001", "{}", func(t *testing.T, s stream) {
			d := s.device("gw-0001")
			conns := s.of("gw-0001", event.MQTTConnect, onset.Add(-2*day), onset.Add(time.Minute))
			require.GreaterOrEqual(t, len(conns), 2)
			last := conns[len(conns)-1]
			require.Equal(t, onset, last.Time)
			require.Equal(t, d.CertSerial, last.Str("cert_serial"))
			ap := netip.MustParseAddrPort(last.Str("remote"))
			require.NotEqual(t, d.IP, ap.Addr())
			prev := conns[len(conns)-2]
			for _, e := range s.of("gw-0001", event.MQTTDisconnect, prev.Time, onset.Add(time.Minute)) {
				require.NotEqual(t, prev.Str("session_id"), e.Str("session_id"), "the first session stays up")
			}
		}},
		"revoked_cert_use": {"gw-0001", "{}", func(t *testing.T, s stream) {
			require.Len(t, s.ctls, 1)
			require.Equal(t, event.DeviceID("gw-0001"), s.ctls[0].RevokeDevice)
			require.True(t, s.ctls[0].Time.Before(onset))
			require.Len(t, s.of("gw-0001", event.CertRevoked, onset.Add(-time.Hour), onset), 1)
			fails := s.of("gw-0001", event.MQTTAuthFailed, onset, onset.Add(time.Hour))
			require.NotEmpty(t, fails)
			require.Equal(t, onset, fails[0].Time)
			require.Equal(t, "revoked_cert", fails[0].Str("reason"))
			require.Empty(t, s.of("gw-0001", event.MQTTPublish, s.ctls[0].Time, onset.Add(day)))
		}},
		"rogue_firmware": {"gw-0001", "{}", func(t *testing.T, s stream) {
			reps := s.of("gw-0001", event.FirmwareReport, onset, onset.Add(time.Minute))
			require.Len(t, reps, 1)
			require.NotEqual(t, Digest("edge-gw-1", reps[0].Str("version")), reps[0].Str("digest"))
			for _, e := range s.of("gw-0001", event.FirmwareReport, onset.Add(-day), onset) {
				require.Equal(t, Digest("edge-gw-1", e.Str("version")), e.Str("digest"), "signed before")
			}
		}},
		"firmware_rollback": {"gw-0001", "{to: 2.0.0}", func(t *testing.T, s stream) {
			reps := s.of("gw-0001", event.FirmwareReport, onset, onset.Add(time.Minute))
			require.Len(t, reps, 1)
			require.Equal(t, "2.0.0", reps[0].Str("version"))
			require.Equal(t, Digest("edge-gw-1", "2.0.0"), reps[0].Str("digest"), "an old but signed release")
		}},
		"open_port": {"gw-0001", "{port: 23}", func(t *testing.T, s stream) {
			has := func(e *event.Event) bool { return slices.Contains(e.Strings("listening_ports"), "23") }
			now := s.of("gw-0001", event.DeviceMetrics, onset, onset.Add(time.Second))
			require.Len(t, now, 1)
			require.True(t, has(now[0]))
			for _, e := range s.of("gw-0001", event.DeviceMetrics, onset.Add(-day), onset) {
				require.False(t, has(e))
				require.Equal(t, []string{"22"}, e.Strings("listening_ports"))
			}
		}},
	}
	require.Len(t, cases, len(AttackKinds()), "every attack kind is tested")
	for kind, tc := range cases {
		t.Run(kind, func(t *testing.T) {
			s := genAll(t, attackScenario(t, kind, tc.device, tc.params))
			tc.check(t, s)
			// no other device shows attack traffic
			for _, e := range s.evs {
				if e.Device != event.DeviceID(tc.device) {
					require.NotEqual(t, event.MQTTAuthFailed, e.Kind)
					require.NotEqual(t, event.CertRevoked, e.Kind)
				}
			}
		})
	}
}

func pt(e *event.Event) Point {
	la, _ := e.Float("lat")
	lo, _ := e.Float("lon")
	return Point{la, lo}
}

// speedKmh is the apparent speed between two location events, after
// subtracting both accuracies.
func speedKmh(a, b *event.Event) float64 {
	d := haversineKm(pt(a), pt(b))
	aa, _ := a.Float("accuracy_m")
	ab, _ := b.Float("accuracy_m")
	d = math.Max(0, d-(aa+ab)/1000)
	h := b.Time.Sub(a.Time).Hours()
	if h <= 0 {
		if d == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return d / h
}

// An exfiltration during idle hours keeps the idle cadence: only volume
// changes, so it is not also a message-rate spike.
func TestExfiltrationKeepsCadence(t *testing.T) {
	sc := attackScenario(t, "data_exfiltration", "gw-0001", "{factor: 10, for: 2h}")
	sc.Fleet[0].Pattern = PatternBusinessHours // 30h after Monday 00:00 is Tuesday 06:00 UTC: idle
	s := genAll(t, sc)
	onset := sc.Start.Add(30 * time.Hour)
	now := len(s.of("gw-0001", event.MQTTPublish, onset, onset.Add(2*time.Hour)))
	before := len(s.of("gw-0001", event.MQTTPublish, onset.Add(-24*time.Hour), onset.Add(-22*time.Hour)))
	require.LessOrEqual(t, now, before+2, "same message count (plus the upload at the onset)")
	require.Greater(t, sumBytes(s.of("gw-0001", event.MQTTPublish, onset, onset.Add(2*time.Hour))), 5*sumBytes(s.of("gw-0001", event.MQTTPublish, onset.Add(-24*time.Hour), onset.Add(-22*time.Hour))))
}
