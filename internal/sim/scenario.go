package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Scenario is one parsed and validated scenario file (format:
// ../shared/scenarios/README.md and docs/SIMULATOR.md).
type Scenario struct {
	Name           string        `yaml:"name"`
	Description    string        `yaml:"description"`
	Seed           int64         `yaml:"seed"`
	StartRaw       string        `yaml:"start"`
	Duration       Duration      `yaml:"duration"`
	Fleet          []Cohort      `yaml:"fleet"`
	Events         []LifeEvent   `yaml:"events"`
	Attacks        []Attack      `yaml:"attacks"`
	Expect         []Expectation `yaml:"expect"`
	MaxFalseAlerts int           `yaml:"max_false_alerts"`

	// Start is StartRaw parsed (RFC 3339), set by validation.
	Start time.Time `yaml:"-"`
}

// Duration is a Go duration written as a string ("15m", "72h"). Raw keeps
// the text so that validation can name the field of a bad value.
type Duration struct {
	D   time.Duration
	Raw string
}

// UnmarshalYAML keeps the scalar text; validation parses it.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a duration must be a string like 15m", n.Line)}}
	}
	d.Raw = n.Value
	return nil
}

// Set reports whether the duration was given.
func (d Duration) Set() bool { return d.Raw != "" }

// Point is a position in degrees.
type Point struct {
	Lat float64 `yaml:"lat"`
	Lon float64 `yaml:"lon"`
}

// Home is a cohort's home area.
type Home struct {
	Lat      float64 `yaml:"lat"`
	Lon      float64 `yaml:"lon"`
	RadiusKm float64 `yaml:"radius_km"`
}

// Cohort is one group of identical devices.
type Cohort struct {
	Name         string   `yaml:"name"`
	Count        int      `yaml:"count"`
	Model        string   `yaml:"model"`
	Firmware     string   `yaml:"firmware"`
	Home         Home     `yaml:"home"`
	Mobility     string   `yaml:"mobility"`
	ReportEvery  Duration `yaml:"report_every"`
	UplinkBytes  float64  `yaml:"uplink_bytes"`
	Pattern      string   `yaml:"pattern"`
	Destinations int      `yaml:"destinations"`
	APN          string   `yaml:"apn"`
	GeofenceKm   *float64 `yaml:"geofence_km"`
	Variability  *float64 `yaml:"variability"`
	Outages      float64  `yaml:"outages"`
}

// CV returns the coefficient of variation of per-report volume (default 0.3).
func (c *Cohort) CV() float64 {
	if c.Variability == nil {
		return 0.3
	}
	return *c.Variability
}

// Fence returns the geofence radius, 0 when none is declared.
func (c *Cohort) Fence() float64 {
	if c.GeofenceKm == nil {
		return 0
	}
	return *c.GeofenceKm
}

// LifeEvent is a legitimate change during the run.
type LifeEvent struct {
	Kind   string   `yaml:"kind"`
	Cohort string   `yaml:"cohort"`
	To     string   `yaml:"to"`
	At     Duration `yaml:"at"`
}

// Attack is one injected attack.
type Attack struct {
	Kind   string   `yaml:"kind"`
	Device string   `yaml:"device"`
	At     Duration `yaml:"at"`
	Params Params   `yaml:"params"`
}

// Params are an attack's optional parameters; which apply depends on the
// kind, absent ones take the defaults documented in docs/SIMULATOR.md.
type Params struct {
	Factor   float64  `yaml:"factor"`
	For      Duration `yaml:"for"`
	Attempts int      `yaml:"attempts"`
	Targets  int      `yaml:"targets"`
	Every    Duration `yaml:"every"`
	Port     int      `yaml:"port"`
	To       Target   `yaml:"to"`
}

// Target is params.to: a position ({lat, lon}) for location attacks or a
// version string for firmware_rollback.
type Target struct {
	Point   *Point
	Version string
}

// UnmarshalYAML accepts a mapping {lat, lon} or a scalar version.
func (t *Target) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		t.Version = n.Value
		return nil
	case yaml.MappingNode:
		var p Point
		dec := n.Decode
		if err := dec(&p); err != nil {
			return err
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i].Value; k != "lat" && k != "lon" {
				return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: field %s not found in params.to (want lat, lon)", n.Content[i].Line, k)}}
			}
		}
		t.Point = &p
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: params.to must be {lat, lon} or a version", n.Line)}}
}

// Expectation is one alert the platform must raise.
type Expectation struct {
	Device   string   `yaml:"device"`
	Alert    string   `yaml:"alert"`
	Within   Duration `yaml:"within"`
	Response string   `yaml:"response"`
}

// Mobility and pattern values.
const (
	MobilityStatic   = "static"
	MobilityVehicle  = "vehicle"
	MobilityWearable = "wearable"

	PatternFlat          = "flat"
	PatternDiurnal       = "diurnal"
	PatternBusinessHours = "business_hours"
)

// AttackAlert maps every attack kind to the alert kind it must raise.
var attackAlert = map[string]string{
	"sim_swap":               "sim.imei_mismatch",
	"impossible_travel":      "location.impossible_travel",
	"geofence_exit":          "location.geofence_exit",
	"data_exfiltration":      "usage.data_spike",
	"message_flood":          "usage.message_rate_spike",
	"credential_bruteforce":  "auth.bruteforce",
	"default_credentials":    "auth.default_credentials",
	"mirai_scan":             "net.telnet_scan",
	"port_scan":              "net.port_scan",
	"c2_beacon":              "net.threat_intel_hit",
	"unapproved_destination": "net.destination_unapproved",
	"clone":                  "identity.clone_suspected",
	"revoked_cert_use":       "identity.revoked_cert_use",
	"rogue_firmware":         "firmware.unapproved",
	"firmware_rollback":      "firmware.rollback",
	"open_port":              "device.unexpected_listener",
}

// AttackKinds returns every supported attack kind, sorted.
func AttackKinds() []string {
	out := make([]string, 0, len(attackAlert))
	for k := range attackAlert {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}

// AlertFor returns the alert kind an attack kind must raise ("" if unknown).
func AlertFor(attackKind string) string { return attackAlert[attackKind] }

// ErrInvalid wraps every scenario validation failure.
var ErrInvalid = errors.New("sim: invalid scenario")

// Load reads and parses a scenario file.
func Load(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sim: load scenario: %w", err)
	}
	sc, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// maxDevices bounds a scenario's fleet so that a hostile file cannot make
// the simulator allocate without limit.
const maxDevices = 1_000_000

// Parse decodes a scenario strictly (unknown keys are errors) and validates
// it, reporting every problem at once, each naming its field.
func Parse(b []byte) (*Scenario, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var sc Scenario
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	if errs := sc.validate(); len(errs) > 0 {
		return nil, fmt.Errorf("%w:\n  %s", ErrInvalid, strings.Join(errs, "\n  "))
	}
	return &sc, nil
}

var (
	kebab   = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	alertRe = regexp.MustCompile(`^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$`)
	version = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,3}([-+][0-9A-Za-z.-]+)?$`)
	wordRe  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

func (sc *Scenario) validate() []string {
	var errs []string
	bad := func(field, format string, a ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, a...))
	}
	dur := func(field string, d *Duration, required bool) {
		if !d.Set() {
			if required {
				bad(field, "required")
			}
			return
		}
		v, err := time.ParseDuration(d.Raw)
		if err != nil {
			bad(field, "invalid duration %q (Go syntax: 90s, 15m, 72h)", d.Raw)
			return
		}
		if v <= 0 {
			bad(field, "must be positive, got %s", d.Raw)
			return
		}
		d.D = v
	}
	if !kebab.MatchString(sc.Name) || len(sc.Name) > 63 {
		bad("name", "required, kebab-case, at most 63 characters (got %q)", sc.Name)
	}
	if sc.StartRaw == "" {
		bad("start", "required (RFC 3339)")
	} else if t, err := time.Parse(time.RFC3339, sc.StartRaw); err != nil {
		bad("start", "invalid RFC 3339 time %q", sc.StartRaw)
	} else {
		sc.Start = t.UTC()
	}
	dur("duration", &sc.Duration, true)
	if sc.Duration.D > 366*24*time.Hour {
		bad("duration", "at most one year")
	}
	if len(sc.Fleet) == 0 {
		bad("fleet", "at least one cohort is required")
	}
	cohorts := map[string]*Cohort{}
	total := 0
	for i := range sc.Fleet {
		c := &sc.Fleet[i]
		f := fmt.Sprintf("fleet[%d]", i)
		if !kebab.MatchString(c.Name) {
			bad(f+".name", "required, kebab-case (got %q)", c.Name)
		} else if cohorts[c.Name] != nil {
			bad(f+".name", "duplicate cohort %q", c.Name)
		} else {
			cohorts[c.Name] = c
		}
		if c.Count < 1 || c.Count > maxDevices {
			bad(f+".count", "must be 1..%d, got %d", maxDevices, c.Count)
		}
		total += max(c.Count, 0)
		if c.Model == "" {
			bad(f+".model", "required")
		}
		if !version.MatchString(c.Firmware) {
			bad(f+".firmware", "required, a version like 2.4.1 (got %q)", c.Firmware)
		}
		if c.Home.Lat < -90 || c.Home.Lat > 90 || c.Home.Lat == 0 && c.Home.Lon == 0 {
			bad(f+".home.lat", "must be within -90..90 (and home must be given), got %v", c.Home.Lat)
		}
		if c.Home.Lon < -180 || c.Home.Lon > 180 {
			bad(f+".home.lon", "must be within -180..180, got %v", c.Home.Lon)
		}
		if c.Home.RadiusKm < 0 || c.Home.RadiusKm > 2000 || math.IsNaN(c.Home.RadiusKm) {
			bad(f+".home.radius_km", "must be 0..2000, got %v", c.Home.RadiusKm)
		}
		switch c.Mobility {
		case MobilityStatic, MobilityVehicle, MobilityWearable:
		default:
			bad(f+".mobility", "must be static, vehicle or wearable, got %q", c.Mobility)
		}
		dur(f+".report_every", &c.ReportEvery, true)
		if c.ReportEvery.D > 0 && c.ReportEvery.D < time.Second {
			bad(f+".report_every", "at least 1s")
		}
		if !(c.UplinkBytes > 0 && c.UplinkBytes <= 1e9) {
			bad(f+".uplink_bytes", "must be 1..1e9, got %v", c.UplinkBytes)
		}
		switch c.Pattern {
		case PatternFlat, PatternDiurnal, PatternBusinessHours:
		default:
			bad(f+".pattern", "must be flat, diurnal or business_hours, got %q", c.Pattern)
		}
		if c.Destinations < 1 || c.Destinations > 50 {
			bad(f+".destinations", "must be 1..50, got %d", c.Destinations)
		}
		if c.APN == "" {
			bad(f+".apn", "required")
		}
		if c.GeofenceKm != nil && !(*c.GeofenceKm > 0 && *c.GeofenceKm <= 20000) {
			bad(f+".geofence_km", "must be positive, got %v", *c.GeofenceKm)
		}
		if c.Variability != nil && !(*c.Variability >= 0 && *c.Variability <= 3) {
			bad(f+".variability", "must be 0..3, got %v", *c.Variability)
		}
		if !(c.Outages >= 0 && c.Outages <= 1) {
			bad(f+".outages", "must be a probability 0..1, got %v", c.Outages)
		}
	}
	if total > maxDevices {
		bad("fleet", "at most %d devices in total, got %d", maxDevices, total)
	}
	within := func(field string, d Duration) {
		if d.D >= sc.Duration.D && sc.Duration.D > 0 {
			bad(field, "%s is not before the end of the scenario (%s)", d.Raw, sc.Duration.Raw)
		}
	}
	for i := range sc.Events {
		e := &sc.Events[i]
		f := fmt.Sprintf("events[%d]", i)
		if e.Kind != "firmware_campaign" {
			bad(f+".kind", "must be firmware_campaign, got %q", e.Kind)
		}
		c := cohorts[e.Cohort]
		if c == nil {
			bad(f+".cohort", "unknown cohort %q", e.Cohort)
		}
		if !version.MatchString(e.To) {
			bad(f+".to", "required, a version like 2.5.0 (got %q)", e.To)
		} else if c != nil && compareVersions(e.To, c.Firmware) <= 0 {
			bad(f+".to", "%s is not newer than the cohort's firmware %s", e.To, c.Firmware)
		}
		dur(f+".at", &e.At, true)
		within(f+".at", e.At)
	}
	devIdx := func(id string) *Cohort {
		i := strings.LastIndexByte(id, '-')
		if i < 0 {
			return nil
		}
		c := cohorts[id[:i]]
		n, err := strconv.Atoi(id[i+1:])
		if c == nil || err != nil || n < 1 || n > c.Count || id != deviceName(c.Name, n) {
			return nil
		}
		return c
	}
	for i := range sc.Attacks {
		a := &sc.Attacks[i]
		f := fmt.Sprintf("attacks[%d]", i)
		if attackAlert[a.Kind] == "" {
			bad(f+".kind", "unknown attack kind %q (want one of %s)", a.Kind, strings.Join(AttackKinds(), ", "))
		}
		c := devIdx(a.Device)
		if c == nil {
			bad(f+".device", "unknown device %q (ids are COHORT-0001..COHORT-COUNT)", a.Device)
		}
		dur(f+".at", &a.At, true)
		within(f+".at", a.At)
		p := &a.Params
		dur(f+".params.for", &p.For, false)
		dur(f+".params.every", &p.Every, false)
		if p.Factor < 0 || p.Factor > 10000 || math.IsNaN(p.Factor) || (p.Factor > 0 && p.Factor <= 1) {
			bad(f+".params.factor", "must be greater than 1 (at most 10000), got %v", p.Factor)
		}
		if p.Attempts < 0 || p.Attempts > 100000 {
			bad(f+".params.attempts", "must be 1..100000, got %d", p.Attempts)
		}
		if p.Targets < 0 || p.Targets > 65535 {
			bad(f+".params.targets", "must be 1..65535, got %d", p.Targets)
		}
		if p.Port < 0 || p.Port > 65535 {
			bad(f+".params.port", "must be 1..65535, got %d", p.Port)
		}
		if p.For.D > 7*24*time.Hour {
			bad(f+".params.for", "at most 168h")
		}
		if p.Every.D > 0 && p.Every.D < time.Second {
			bad(f+".params.every", "at least 1s")
		}
		switch a.Kind {
		case "impossible_travel", "geofence_exit":
			if p.To.Version != "" {
				bad(f+".params.to", "must be a position {lat, lon} for %s", a.Kind)
			} else if pt := p.To.Point; pt != nil && (pt.Lat < -90 || pt.Lat > 90 || pt.Lon < -180 || pt.Lon > 180) {
				bad(f+".params.to", "position out of range: %v, %v", pt.Lat, pt.Lon)
			}
			if a.Kind == "geofence_exit" && c != nil {
				if c.Fence() <= 0 {
					bad(f+".device", "geofence_exit needs cohort %q to declare geofence_km", c.Name)
				} else if pt := p.To.Point; pt != nil && haversineKm(Point{c.Home.Lat, c.Home.Lon}, *pt) <= c.Fence()+c.Home.RadiusKm {
					bad(f+".params.to", "is not certainly outside the geofence (%v km around a home of radius %v km)", c.Fence(), c.Home.RadiusKm)
				}
			}
		case "firmware_rollback":
			if p.To.Point != nil {
				bad(f+".params.to", "must be a version for firmware_rollback")
			} else if p.To.Version != "" {
				if !version.MatchString(p.To.Version) {
					bad(f+".params.to", "invalid version %q", p.To.Version)
				} else if c != nil && compareVersions(p.To.Version, c.Firmware) >= 0 {
					bad(f+".params.to", "%s is not older than the cohort's firmware %s", p.To.Version, c.Firmware)
				}
			}
		default:
			if p.To.Point != nil || p.To.Version != "" {
				bad(f+".params.to", "does not apply to %s", a.Kind)
			}
		}
	}
	for i := range sc.Expect {
		e := &sc.Expect[i]
		f := fmt.Sprintf("expect[%d]", i)
		if devIdx(e.Device) == nil {
			bad(f+".device", "unknown device %q", e.Device)
		}
		if !alertRe.MatchString(e.Alert) {
			bad(f+".alert", "must be an alert kind domain.name, got %q", e.Alert)
		}
		dur(f+".within", &e.Within, true)
		if e.Response != "" && !wordRe.MatchString(e.Response) {
			bad(f+".response", "must be an action kind like quarantine, got %q", e.Response)
		}
	}
	if sc.MaxFalseAlerts < 0 {
		bad("max_false_alerts", "must be >= 0, got %d", sc.MaxFalseAlerts)
	}
	return errs
}

// deviceName returns COHORT-NNNN.
func deviceName(cohort string, n int) string {
	return fmt.Sprintf("%s-%04d", cohort, n)
}

// compareVersions compares dotted numeric versions (suffixes after - or +
// are ignored): -1, 0 or 1.
func compareVersions(a, b string) int {
	pa, pb := versionParts(a), versionParts(b)
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

func versionParts(v string) []int {
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	var out []int
	for _, s := range strings.Split(v, ".") {
		n, _ := strconv.Atoi(s)
		out = append(out, n)
	}
	return out
}

// onset returns when the condition an expectation checks began: the time of
// the attack on that device whose kind raises that alert, else the earliest
// attack on the device, else the scenario start.
func (sc *Scenario) onset(e *Expectation) time.Time {
	var best *Attack
	for i := range sc.Attacks {
		a := &sc.Attacks[i]
		if a.Device != e.Device {
			continue
		}
		if attackAlert[a.Kind] == e.Alert {
			return sc.Start.Add(a.At.D)
		}
		if best == nil || a.At.D < best.At.D {
			best = a
		}
	}
	if best != nil {
		return sc.Start.Add(best.At.D)
	}
	return sc.Start
}
