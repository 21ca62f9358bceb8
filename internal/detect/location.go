package detect

import (
	"fmt"
	"math"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

type locState struct {
	Lat, Lon float64
	Acc      float32 // metres
	T        int64   // unix s; 0 = no position yet
	Out      uint8   // consecutive reports outside the geofence
}

// position reads a location event; accuracy defaults by source.
func position(ev *event.Event) (lat, lon, accKm float64, ok bool) {
	lat, ok1 := ev.Float("lat")
	lon, ok2 := ev.Float("lon")
	if !ok1 || !ok2 || math.IsNaN(lat) || math.IsNaN(lon) || math.Abs(lat) > 90 || math.Abs(lon) > 180 {
		return 0, 0, 0, false
	}
	acc, ok3 := ev.Float("accuracy_m")
	if !ok3 || acc < 0 || math.IsNaN(acc) {
		acc = 50
		if ev.Str("source") == "network" {
			acc = 2000
		}
	}
	return lat, lon, math.Min(acc, 100_000) / 1000, true
}

// TravelSettings tunes location.travel.
type TravelSettings struct {
	MaxSpeedKmh   float64 `json:"max_speed_kmh"`
	MinDistanceKm float64 `json:"min_distance_km"` // after subtracting both accuracies
}

var travelDetector = &Detector{
	Name: "location.travel", Kind: alert.ImpossibleTravel, Severity: alert.High,
	Description: "Consecutive positions imply a speed no vehicle reaches: max(0, distance - accuracy1 - accuracy2) / elapsed time above the limit, beyond a minimum distance.",
	Events:      []event.Kind{event.Location},
	defaults:    func() any { return &TravelSettings{MaxSpeedKmh: 1000, MinDistanceKm: 50} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*TravelSettings)
		lat, lon, acc, ok := position(c.ev)
		if !ok {
			return
		}
		l := &c.st.Loc
		if l.T != 0 && c.now < l.T {
			return // late position: keep the newest as reference
		}
		if l.T != 0 {
			dist := haversineKm(l.Lat, l.Lon, lat, lon)
			eff := math.Max(0, dist-float64(l.Acc)/1000-acc)
			dt := float64(c.now - l.T)
			speed := math.Inf(1)
			if dt > 0 {
				speed = eff / (dt / 3600)
			}
			if eff >= s.MinDistanceKm && speed > s.MaxSpeedKmh {
				c.raise(d,
					fmt.Sprintf("moved %.0f km in %s (%.0f km/h after accuracy; limit %.0f km/h)", dist, time.Duration(dt)*time.Second, math.Min(speed, 1e9), s.MaxSpeedKmh),
					map[string]any{"from": []float64{l.Lat, l.Lon}, "to": []float64{lat, lon}, "distance_km": round(dist, 1), "effective_km": round(eff, 1),
						"accuracy_m": []float64{float64(l.Acc), acc * 1000}, "elapsed_s": dt, "speed_kmh": round(math.Min(speed, 1e9), 0), "max_speed_kmh": s.MaxSpeedKmh},
					*c.ev)
			}
		}
		l.Lat, l.Lon, l.Acc, l.T = lat, lon, float32(acc*1000), c.now
	},
}

// GeofenceSettings tunes location.geofence.
type GeofenceSettings struct {
	MarginKm float64 `json:"margin_km"` // added to radius and accuracy
	Confirm  int     `json:"confirm"`   // consecutive reports outside
	// FarFactor: one report beyond FarFactor x radius (+ accuracy) is
	// enough.
	FarFactor float64 `json:"far_factor"`
}

var geofenceDetector = &Detector{
	Name: "location.geofence", Kind: alert.GeofenceExit, Severity: alert.Medium,
	Description: "Positions outside the declared geofence (radius + accuracy + margin), confirmed by consecutive reports or one far beyond.",
	Events:      []event.Kind{event.Location},
	defaults:    func() any { return &GeofenceSettings{MarginKm: 0.5, Confirm: 2, FarFactor: 2} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*GeofenceSettings)
		if !c.hasProf || c.prof.Geofence == nil || c.prof.Geofence.RadiusKm <= 0 {
			return
		}
		lat, lon, acc, ok := position(c.ev)
		if !ok {
			return
		}
		f := c.prof.Geofence
		dist := haversineKm(f.Center.Lat, f.Center.Lon, lat, lon)
		l := &c.st.Loc
		if dist <= f.RadiusKm+acc+s.MarginKm {
			l.Out = 0
			return
		}
		if l.Out < 255 {
			l.Out++
		}
		far := dist > f.RadiusKm*s.FarFactor+acc+s.MarginKm
		if int(l.Out) >= s.Confirm || far {
			c.raise(d,
				fmt.Sprintf("%.1f km from the geofence centre (radius %.1f km, accuracy %.2f km)", dist, f.RadiusKm, acc),
				map[string]any{"distance_km": round(dist, 2), "radius_km": f.RadiusKm, "accuracy_km": acc, "margin_km": s.MarginKm, "consecutive_outside": int(l.Out), "position": []float64{lat, lon}},
				*c.ev)
		}
	},
}
