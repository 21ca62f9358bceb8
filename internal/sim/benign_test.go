package sim

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/stretchr/testify/require"
)

func quietScenario(t *testing.T) *Scenario {
	t.Helper()
	y := strings.Replace(validYAML, `attacks:
  - kind: firmware_rollback
    device: gw-0002
    at: 6h
    params: {to: 2.0.0}
expect:
  - device: gw-0002
    alert: firmware.rollback
    within: 10m
    response: quarantine
`, "", 1)
	y = strings.Replace(y, "duration: 12h", "duration: 72h", 1)
	y = strings.Replace(y, `max_false_alerts: 0`, `  - name: walker
    count: 4
    model: band-2
    firmware: 1.0.0
    home: {lat: 48.85, lon: 2.35, radius_km: 6}
    mobility: wearable
    report_every: 2m
    uplink_bytes: 200
    pattern: diurnal
    destinations: 1
    apn: wear.example.private
    outages: 0.3
max_false_alerts: 0`, 1)
	// move the walker cohort under fleet: (it was appended after events)
	y = strings.Replace(y, "events:\n  - kind: firmware_campaign\n    cohort: gw\n    to: 3.1.0\n    at: 2h\n", "", 1)
	y = strings.Replace(y, "max_false_alerts: 0", "events:\n  - kind: firmware_campaign\n    cohort: gw\n    to: 3.1.0\n    at: 2h\nmax_false_alerts: 0", 1)
	sc, err := Parse([]byte(y))
	require.NoError(t, err, y)
	return sc
}

func byDevice(evs []*event.Event) map[event.DeviceID][]*event.Event {
	m := map[event.DeviceID][]*event.Event{}
	for _, e := range evs {
		m[e.Device] = append(m[e.Device], e)
	}
	return m
}

func TestBenignLife(t *testing.T) {
	sc := quietScenario(t)
	require.Len(t, sc.Fleet, 3)
	evs, ctls := collect(t, sc)
	require.Empty(t, ctls)
	g := NewGenerator(sc, "sim")
	devs := map[event.DeviceID]*Device{}
	ips := map[netip.Addr]bool{}
	for _, d := range g.Devices() {
		devs[d.ID] = d
		require.True(t, luhnValid(d.IMEI), d.IMEI)
		require.Len(t, d.IMEI, 15)
		require.True(t, luhnValid(d.ICCID), d.ICCID)
		require.True(t, strings.HasPrefix(d.ICCID, "89"))
		require.True(t, strings.HasPrefix(d.IMSI, "21401"))
		require.Len(t, d.IMSI, 15)
		require.False(t, ips[d.IP], "unique IPs")
		ips[d.IP] = true
	}
	per := byDevice(evs)
	for id, list := range per {
		d := devs[id]
		require.NotNil(t, d, id)
		var c *Cohort
		for i := range sc.Fleet {
			if sc.Fleet[i].Name == d.Cohort {
				c = &sc.Fleet[i]
			}
		}
		var prevLoc *event.Event
		maxSpeed := map[string]float64{MobilityVehicle: 135, MobilityWearable: 85, MobilityStatic: 1}[c.Mobility]
		stopped := time.Time{}
		for i, e := range list {
			require.Equal(t, event.TenantID("sim"), e.Tenant)
			require.NoError(t, e.Validate())
			switch e.Kind {
			case event.MQTTAuthFailed, event.CertRevoked:
				t.Fatalf("%s: %s in quiet life", id, e.Kind)
			case event.Location:
				if prevLoc != nil {
					require.LessOrEqual(t, speedKmh(prevLoc, e), maxSpeed, "%s %s at %s", id, c.Mobility, e.Time)
				}
				prevLoc = e
				if d.GeofenceKm > 0 {
					require.Less(t, haversineKm(pt(e), d.Home), d.GeofenceKm)
				}
			case event.NetFlow:
				a := netip.MustParseAddr(e.Str("dst_ip"))
				require.True(t, slices.ContainsFunc(d.Destinations, func(p netip.Prefix) bool { return p.Contains(a) }), "only declared destinations")
				require.NotContains(t, string(g.ThreatFeed()), "\n"+a.String()+"\n")
			case event.NetSession:
				require.Equal(t, d.IMEI, e.Str("imei"))
				require.Equal(t, d.IMSI, e.Str("imsi"))
				switch e.Str("status") {
				case "stop":
					stopped = e.Time
				case "start":
					if !stopped.IsZero() {
						// catch-up: the outage's reports arrive in a burst
						gap := e.Time.Sub(stopped)
						require.GreaterOrEqual(t, gap, time.Hour)
						require.LessOrEqual(t, gap, 6*time.Hour)
						burst := 0
						for _, x := range list[i:] {
							if x.Time.After(e.Time.Add(2 * time.Minute)) {
								break
							}
							if x.Kind == event.MQTTPublish {
								burst++
							}
						}
						require.GreaterOrEqual(t, burst, 3, "%s catch-up after %s", id, gap)
						stopped = time.Time{}
					}
				}
			case event.MQTTPublish:
				require.True(t, stopped.IsZero(), "%s publishes while offline at %s", id, e.Time)
			}
		}
	}
	// the campaign moves the whole gw cohort within hours, with signed digests
	campaignAt := sc.Start.Add(2 * time.Hour)
	for id, d := range devs {
		if d.Cohort != "gw" {
			continue
		}
		var got *event.Event
		for _, e := range per[id] {
			if e.Kind == event.FirmwareReport && e.Str("version") == "3.1.0" {
				got = e
				break
			}
		}
		require.NotNil(t, got, id)
		require.Equal(t, Digest(d.Model, "3.1.0"), got.Str("digest"))
		require.True(t, got.Time.After(campaignAt) && got.Time.Before(campaignAt.Add(4*time.Hour)), got.Time)
	}
	// outages happened (probability 0.5/0.3 per day over three days)
	stops := 0
	for _, e := range evs {
		if e.Kind == event.NetSession && e.Str("status") == "stop" {
			stops++
		}
	}
	require.Greater(t, stops, 0)
}

func TestVehiclesMove(t *testing.T) {
	sc := quietScenario(t)
	evs, _ := collect(t, sc)
	var km float64
	var prev *event.Event
	for _, e := range evs {
		if e.Device == "van-0001" && e.Kind == event.Location {
			if prev != nil {
				km += haversineKm(pt(prev), pt(e))
			}
			prev = e
		}
	}
	require.Greater(t, km, 100.0, "a van drives in three days")
}

func TestDeterminism(t *testing.T) {
	sc := quietScenario(t)
	sc.Duration.D = 12 * time.Hour
	h1, n1 := streamHash(t, sc)
	h2, n2 := streamHash(t, sc)
	require.Equal(t, n1, n2)
	require.Equal(t, h1, h2)
	sc.Seed++
	h3, _ := streamHash(t, sc)
	require.NotEqual(t, h1, h3)
}
