package sim

import (
	"math"
	"sort"
)

const earthKm = 6371.0

func rad(d float64) float64 { return d * math.Pi / 180 }
func deg(r float64) float64 { return r * 180 / math.Pi }

// haversineKm is the great-circle distance between a and b.
func haversineKm(a, b Point) float64 {
	dlat := rad(b.Lat - a.Lat)
	dlon := rad(b.Lon - a.Lon)
	h := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(rad(a.Lat))*math.Cos(rad(b.Lat))*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * earthKm * math.Asin(math.Min(1, math.Sqrt(h)))
}

// destination returns the point d km from p on initial bearing brg (radians).
func destination(p Point, brg, d float64) Point {
	lat1, lon1 := rad(p.Lat), rad(p.Lon)
	ad := d / earthKm
	lat2 := math.Asin(math.Sin(lat1)*math.Cos(ad) + math.Cos(lat1)*math.Sin(ad)*math.Cos(brg))
	lon2 := lon1 + math.Atan2(math.Sin(brg)*math.Sin(ad)*math.Cos(lat1), math.Cos(ad)-math.Sin(lat1)*math.Sin(lat2))
	lon := deg(lon2)
	for lon > 180 {
		lon -= 360
	}
	for lon < -180 {
		lon += 360
	}
	return Point{Lat: deg(lat2), Lon: lon}
}

// interpolate returns the point a fraction f of the way from a to b. Legs are
// short (tens of km) so a linear interpolation in degrees is close enough to
// the great circle; distances are always measured with haversineKm.
func interpolate(a, b Point, f float64) Point {
	return Point{Lat: a.Lat + (b.Lat-a.Lat)*f, Lon: a.Lon + (b.Lon-a.Lon)*f}
}

func sortStrings(s []string) { sort.Strings(s) }
