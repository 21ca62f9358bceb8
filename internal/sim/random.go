package sim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Random returns the text of a scenario drawn from seed: one to three
// cohorts with random counts, models, homes, mobility, cadences, volumes,
// patterns, destinations, variability (0.1-0.5) and outages, sometimes a
// signed firmware campaign, and two to four attacks of any kind at the
// strengths the shared scenarios use, each expected with its alert and
// window. Same seed, same text. It starts on a weekday at midnight: a
// fleet first seen on a weekend meets hours it never observed on its first
// Monday, which is a known limit (docs/STATUS.md), not what this tests.
//
// Detectors are judged on scenarios nobody tuned them to; tests replay a
// range of seeds so every change meets fleets it was not written for.
func Random(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	cities := [][2]float64{{40.4168, -3.7038}, {52.52, 13.405}, {51.5072, -0.1276}, {48.8566, 2.3522}, {45.4642, 9.19},
		{41.3874, 2.1686}, {50.1109, 8.6821}, {59.3293, 18.0686}, {38.7223, -9.1393}, {52.3676, 4.9041}}
	day := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC).AddDate(0, 0, r.IntN(330))
	for day.Weekday() == time.Saturday || day.Weekday() == time.Sunday {
		day = day.AddDate(0, 0, 1)
	}
	hours := []int{72, 96, 96, 120}[r.IntN(4)]

	type cohort struct {
		name, firmware string
		count          int
		geofence       bool
		home           [2]float64
	}
	var b strings.Builder
	fmt.Fprintf(&b, "name: random-%d\ndescription: drawn by sim.Random from seed %d\nseed: %d\nstart: %s\nduration: %dh\nfleet:\n",
		seed, seed, seed, day.Format(time.RFC3339), hours)
	names := []string{"meter", "cam", "trk", "gw", "sensor", "van", "tag", "pump"}
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	var cohorts []cohort
	for i := range 1 + r.IntN(3) {
		c := cohort{name: names[i], count: 40 + r.IntN(140), home: cities[r.IntN(len(cities))],
			firmware: fmt.Sprintf("%d.%d.%d", 1+r.IntN(4), r.IntN(9), r.IntN(9))}
		mobility := pick("static", "static", "vehicle", "wearable")
		every := pick("1m", "2m", "5m", "10m", "15m")
		if mobility == "static" {
			every = pick("1m", "2m", "5m", "10m", "15m", "30m", "1h")
		}
		fmt.Fprintf(&b, "  - name: %s\n    count: %d\n    model: %s-m%d\n    firmware: %s\n", c.name, c.count, c.name, 1+r.IntN(8), c.firmware)
		fmt.Fprintf(&b, "    home: {lat: %g, lon: %g, radius_km: %d}\n    mobility: %s\n    report_every: %s\n", c.home[0], c.home[1], []int{5, 8, 10, 15, 20, 30}[r.IntN(6)], mobility, every)
		fmt.Fprintf(&b, "    uplink_bytes: %d\n    pattern: %s\n    destinations: %d\n    apn: %s.example.private\n",
			[]int{200, 400, 800, 1200, 2000, 4000}[r.IntN(6)], pick("flat", "diurnal", "business_hours"), 1+r.IntN(4), c.name)
		fmt.Fprintf(&b, "    variability: %.2f\n    outages: %g\n", 0.1+0.4*r.Float64(), []float64{0, 0.01, 0.02, 0.03}[r.IntN(4)])
		if mobility == "static" && r.IntN(5) < 2 {
			c.geofence = true
			fmt.Fprintf(&b, "    geofence_km: %d\n", 40)
		}
		cohorts = append(cohorts, c)
	}
	if r.IntN(10) < 3 {
		c := cohorts[r.IntN(len(cohorts))]
		var major, minor, patch int
		fmt.Sscanf(c.firmware, "%d.%d.%d", &major, &minor, &patch)
		fmt.Fprintf(&b, "events:\n  - kind: firmware_campaign\n    cohort: %s\n    to: %d.%d.0\n    at: %dh\n", c.name, major, minor+1, 24+r.IntN(hours-48))
	}

	type want struct{ alert, within, response string }
	expect := map[string]want{
		"sim_swap": {"sim.imei_mismatch", "5m", "quarantine"}, "impossible_travel": {"location.impossible_travel", "5m", ""},
		"geofence_exit": {"location.geofence_exit", "20m", ""}, "data_exfiltration": {"usage.data_spike", "30m", ""},
		"message_flood": {"usage.message_rate_spike", "10m", ""}, "credential_bruteforce": {"auth.bruteforce", "10m", ""},
		"default_credentials": {"auth.default_credentials", "10m", ""}, "mirai_scan": {"net.telnet_scan", "5m", "quarantine"},
		"port_scan": {"net.port_scan", "5m", ""}, "c2_beacon": {"net.threat_intel_hit", "5m", "quarantine"},
		"unapproved_destination": {"net.destination_unapproved", "10m", ""}, "clone": {"identity.clone_suspected", "5m", "quarantine"},
		"revoked_cert_use": {"identity.revoked_cert_use", "2m", ""}, "rogue_firmware": {"firmware.unapproved", "10m", "quarantine"},
		"firmware_rollback": {"firmware.rollback", "10m", ""}, "open_port": {"device.unexpected_listener", "10m", ""},
	}
	kinds := make([]string, 0, len(expect))
	for k := range expect {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	var attacks, exp strings.Builder
	used := map[string]bool{}
	for range 2 + r.IntN(3) {
		kind := kinds[r.IntN(len(kinds))]
		c := cohorts[r.IntN(len(cohorts))]
		if (kind == "geofence_exit") != c.geofence && (kind == "geofence_exit" || kind == "impossible_travel") {
			continue // a geofence exit needs a fence; a long jump out of one would also be an exit
		}
		dev := fmt.Sprintf("%s-%04d", c.name, 1+r.IntN(c.count))
		if used[dev] {
			continue
		}
		used[dev] = true
		at := max(40, hours*45/100) + r.IntN(hours*55/100-8)
		params := ""
		switch kind {
		case "data_exfiltration":
			params = fmt.Sprintf("{factor: %d, for: %s}", []int{6, 8, 10}[r.IntN(3)], pick("1h", "2h", "3h"))
		case "message_flood":
			params = fmt.Sprintf("{factor: %d, for: %s}", []int{10, 20, 30}[r.IntN(3)], pick("20m", "30m", "1h"))
		case "impossible_travel":
			to := cities[r.IntN(len(cities))]
			for to == c.home {
				to = cities[r.IntN(len(cities))]
			}
			params = fmt.Sprintf("{to: {lat: %g, lon: %g}}", to[0], to[1])
		case "credential_bruteforce":
			params = fmt.Sprintf("{attempts: %d, for: %s}", []int{40, 100, 200}[r.IntN(3)], pick("10m", "15m"))
		case "port_scan":
			params = fmt.Sprintf("{targets: %d, for: %s}", []int{200, 500, 1000}[r.IntN(3)], pick("15m", "20m"))
		case "mirai_scan":
			params = fmt.Sprintf("{targets: %d, for: 30m}", []int{100, 200, 400}[r.IntN(3)])
		case "open_port":
			params = fmt.Sprintf("{port: %d}", []int{23, 2323, 4444, 5555, 8080}[r.IntN(5)])
		}
		fmt.Fprintf(&attacks, "  - kind: %s\n    device: %s\n    at: %dh\n", kind, dev, at)
		if params != "" {
			fmt.Fprintf(&attacks, "    params: %s\n", params)
		}
		w := expect[kind]
		fmt.Fprintf(&exp, "  - device: %s\n    alert: %s\n    within: %s\n", dev, w.alert, w.within)
		if w.response != "" {
			fmt.Fprintf(&exp, "    response: %s\n", w.response)
		}
	}
	if attacks.Len() > 0 {
		b.WriteString("attacks:\n" + attacks.String() + "expect:\n" + exp.String())
	}
	b.WriteString("max_false_alerts: 0\n")
	return []byte(b.String())
}
