package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// Control is an operator action the run performs at a point of the stream,
// before any later event is published.
type Control struct {
	Time time.Time
	// RevokeDevice is the device whose certificate the operator revokes.
	RevokeDevice event.DeviceID
}

// item is one entry of a device's agenda: an event to emit, an action to run
// (which may push more items, never earlier than its own time) or a control.
type item struct {
	t   int64 // unix nanoseconds
	seq uint64
	ev  *event.Event
	act func(now int64)
	ctl *Control
}

// Generator produces a scenario's events in non-decreasing time order over
// the whole fleet. Each device is a small discrete-event simulation with its
// own agenda and random source (derived from the seed and its id); a heap
// merges the devices. Memory is proportional to the fleet, not to the
// duration. A Generator is not safe for concurrent use.
type Generator struct {
	sc       *Scenario
	tenant   event.TenantID
	devices  []*Device
	states   []*dstate
	heap     []*dstate
	end      int64
	start    int64
	c2       netip.Addr
	feed     []byte
	rollback map[string][]string // model -> old signed versions to register
	// PlatformRevokes: when true the revocation events (identity.cert_revoked,
	// device.state) are left to the platform and not emitted.
	PlatformRevokes bool
}

// NewGenerator builds the fleet of sc. tenant is set on every event.
func NewGenerator(sc *Scenario, tenant event.TenantID) *Generator {
	g := &Generator{
		sc:       sc,
		tenant:   tenant,
		devices:  buildFleet(sc),
		start:    sc.Start.UnixNano(),
		end:      sc.Start.Add(sc.Duration.D).UnixNano(),
		rollback: map[string][]string{},
	}
	cohorts := map[string]*Cohort{}
	pools := map[string][]Endpoint{}
	for i := range sc.Fleet {
		c := &sc.Fleet[i]
		cohorts[c.Name] = c
		pools[c.Name] = cohortPool(sc.Seed, c)
	}
	g.c2, g.feed = threatFeed(sc.Seed)
	byID := map[string]*dstate{}
	for _, d := range g.devices {
		s := newDState(g, d, cohorts[d.Cohort], pools[d.Cohort])
		g.states = append(g.states, s)
		byID[string(d.ID)] = s
	}
	for i := range sc.Attacks {
		a := &sc.Attacks[i]
		if s := byID[a.Device]; s != nil {
			s.protect = append(s.protect, [2]int64{g.at(a.At.D) - int64(7*time.Hour), g.at(a.At.D) + int64(attackFor(a)) + int64(time.Hour)})
		}
	}
	for _, s := range g.states {
		s.schedule(s.bootAt(), s.boot)
	}
	for i := range sc.Attacks {
		a := &sc.Attacks[i]
		if s := byID[a.Device]; s != nil {
			s.inject(a)
		}
	}
	for i := range sc.Events {
		e := &sc.Events[i]
		for _, s := range g.states {
			if s.d.Cohort == e.Cohort {
				s.campaign(e)
			}
		}
	}
	for _, s := range g.states {
		if len(s.q) > 0 {
			g.push(s)
		}
	}
	return g
}

// Devices returns the simulated fleet.
func (g *Generator) Devices() []*Device { return g.devices }

// C2 returns the command-and-control address of the scenario's threat feed.
func (g *Generator) C2() netip.Addr { return g.c2 }

// ThreatFeed returns the feed (one address or CIDR per line, # comments)
// that lists the C2 address among a few hundred others.
func (g *Generator) ThreatFeed() []byte { return g.feed }

// NeedsThreatFeed reports whether the scenario injects a c2_beacon.
func (g *Generator) NeedsThreatFeed() bool {
	for _, a := range g.sc.Attacks {
		if a.Kind == "c2_beacon" {
			return true
		}
	}
	return false
}

func (g *Generator) at(d time.Duration) int64 { return g.start + int64(d) }

// Next returns the next event or control in time order; ok is false at the
// end of the scenario.
func (g *Generator) Next() (ev *event.Event, ctl *Control, ok bool) {
	for len(g.heap) > 0 {
		s := g.heap[0]
		it := s.pop()
		if it.t >= g.end {
			g.popHeap()
			continue
		}
		if it.act != nil {
			s.now = it.t
			it.act(it.t)
		}
		if len(s.q) == 0 || s.q[0].t >= g.end {
			g.popHeap()
		} else {
			g.fix(0)
		}
		switch {
		case it.ev != nil:
			return it.ev, nil, true
		case it.ctl != nil:
			return nil, it.ctl, true
		}
	}
	return nil, nil, false
}

// heap of devices ordered by (next item time, index).
func (g *Generator) less(a, b *dstate) bool {
	ta, tb := a.q[0].t, b.q[0].t
	if ta != tb {
		return ta < tb
	}
	return a.d.Index < b.d.Index
}

func (g *Generator) push(s *dstate) {
	g.heap = append(g.heap, s)
	g.up(len(g.heap) - 1)
}

func (g *Generator) popHeap() {
	n := len(g.heap) - 1
	g.heap[0] = g.heap[n]
	g.heap = g.heap[:n]
	if n > 0 {
		g.fix(0)
	}
}

func (g *Generator) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !g.less(g.heap[i], g.heap[p]) {
			return
		}
		g.heap[i], g.heap[p] = g.heap[p], g.heap[i]
		i = p
	}
}

func (g *Generator) fix(i int) {
	n := len(g.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && g.less(g.heap[r], g.heap[l]) {
			m = r
		}
		if !g.less(g.heap[m], g.heap[i]) {
			return
		}
		g.heap[i], g.heap[m] = g.heap[m], g.heap[i]
		i = m
	}
}

// threatFeed returns the C2 address and a feed of a few hundred
// documentation-range entries containing it. Legitimate destinations use
// 198.51.100.1-199 and 203.0.113.1-199 only, so the feed never lists them.
func threatFeed(seed int64) (netip.Addr, []byte) {
	r := newRand(seed, "threat-feed")
	c2 := addr4(203, 0, 113, byte(200+r.IntN(55)))
	b := []byte("# garrison simulator threat feed: known command-and-control and scanning infrastructure\n# one address or CIDR per line\n")
	for i := 200; i <= 254; i++ {
		b = fmt.Appendf(b, "203.0.113.%d\n", i)
	}
	b = append(b, "# scanners\n"...)
	for i := 200; i <= 254; i++ {
		b = fmt.Appendf(b, "198.51.100.%d\n", i)
	}
	b = append(b, "192.0.2.128/25\n# IPv6 infrastructure\n"...)
	for i := range 200 {
		b = fmt.Appendf(b, "2001:db8:bad:%x::/64\n", i)
	}
	return c2, b
}

// dstate is one device's simulation state.
type dstate struct {
	g     *Generator
	d     *Device
	c     *Cohort
	r     *rand.Rand
	q     []item
	seq   uint64
	evSeq uint64
	now   int64 // time of the running action: nothing is queued before it

	every     int64 // report_every in ns
	endpoints []Endpoint
	srcPorts  []int
	tz        int // hours east of UTC, from the longitude

	online  bool
	dead    bool // stopped producing its own traffic (SIM pulled, revoked)
	fw      string
	digest  string
	volF    float64
	ports   []int
	protect [][2]int64

	// mobility
	pos, center, target Point
	roamKm              float64
	speed               float64 // km/h of the current leg
	dwellUntil          int64
	lastMove            int64
	lastLoc             int64
	transit             *transit

	// connectivity
	radSession   string
	radN         int
	mqttSession  string
	mqttN        int
	accUp        float64 // bytes since the last interim
	accFlow      float64 // bytes since the last flow export
	interimEvery int64
	outageEnd    int64
	buffered     []float64

	exfil []window

	// cached method values and strings (no allocation per event)
	fnReport, fnInterim, fnMetrics, fnFlows, fnStaticLocation, fnDay func(int64)
	ipStr                                                            string
	dstStr                                                           []string
}

type window struct {
	from, to int64
	factor   float64
}

type transit struct {
	from, to Point
	start    int64
	speed    float64
}

func newDState(g *Generator, d *Device, c *Cohort, pool []Endpoint) *dstate {
	s := &dstate{
		g: g, d: d, c: c,
		r:      newRand(g.sc.Seed, "device", string(d.ID)),
		every:  int64(c.ReportEvery.D),
		fw:     d.Firmware,
		digest: Digest(d.Model, d.Firmware),
		volF:   1,
		ports:  append([]int(nil), d.ListeningPorts...),
		pos:    d.Home,
		center: d.Home,
		target: d.Home,
		tz:     int(math.Round(d.Home.Lon / 15)),
	}
	// the device uses `destinations` endpoints of the cohort pool: the first
	// (the platform broker) always, the others drawn from the pool
	perm := s.r.Perm(len(pool) - 1)
	s.endpoints = append(s.endpoints, pool[0])
	for _, i := range perm[:c.Destinations-1] {
		s.endpoints = append(s.endpoints, pool[i+1])
	}
	for range s.endpoints {
		s.srcPorts = append(s.srcPorts, 32768+s.r.IntN(28000))
	}
	s.fnReport, s.fnInterim, s.fnMetrics, s.fnFlows = s.report, s.interim, s.metrics, s.flows
	s.fnStaticLocation, s.fnDay = s.staticLocation, s.day
	s.ipStr = d.IP.String()
	for _, e := range s.endpoints {
		s.dstStr = append(s.dstStr, e.Addr.String())
	}
	s.interimEvery = int64(15*time.Minute) + s.r.Int64N(int64(45*time.Minute))
	switch c.Mobility {
	case MobilityVehicle:
		s.roamKm = math.Max(2*c.Home.RadiusKm, 5)
	case MobilityWearable:
		s.roamKm = math.Max(2*c.Home.RadiusKm, 3)
	}
	if f := c.Fence(); f > 0 && s.roamKm > 0.8*f {
		s.roamKm = 0.8 * f
	}
	return s
}

// ---- agenda ----

func (s *dstate) lessItem(i, j int) bool {
	if s.q[i].t != s.q[j].t {
		return s.q[i].t < s.q[j].t
	}
	return s.q[i].seq < s.q[j].seq
}

func (s *dstate) pushItem(it item) {
	s.seq++
	it.seq = s.seq
	s.q = append(s.q, it)
	i := len(s.q) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s.lessItem(i, p) {
			break
		}
		s.q[i], s.q[p] = s.q[p], s.q[i]
		i = p
	}
}

func (s *dstate) pop() item {
	top := s.q[0]
	n := len(s.q) - 1
	s.q[0] = s.q[n]
	s.q[n] = item{}
	s.q = s.q[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s.lessItem(r, l) {
			m = r
		}
		if !s.lessItem(m, i) {
			break
		}
		s.q[i], s.q[m] = s.q[m], s.q[i]
		i = m
	}
	return top
}

func (s *dstate) schedule(t int64, f func(now int64)) {
	t = max(t, s.now, s.g.start)
	if t < s.g.end {
		s.pushItem(item{t: t, act: f})
	}
}

// emit queues an event at t (t is never earlier than the running action).
func (s *dstate) emit(t int64, kind event.Kind, source string, attrs map[string]any) {
	t = max(t, s.now, s.g.start)
	if t >= s.g.end {
		return
	}
	s.evSeq++
	ev := &event.Event{
		ID:     string(s.d.ID) + "-" + strconv.FormatUint(s.evSeq, 36),
		Tenant: s.g.tenant,
		Device: s.d.ID,
		Kind:   kind,
		Time:   time.Unix(0, t).UTC(),
		Source: source,
		Attrs:  attrs,
	}
	s.pushItem(item{t: t, ev: ev})
}

func (s *dstate) jitter(d int64, frac float64) int64 {
	return d + int64((s.r.Float64()*2-1)*frac*float64(d))
}

func (s *dstate) bootAt() int64 {
	return s.g.start + s.r.Int64N(min(s.every, int64(5*time.Minute)))
}

// ---- time of day ----

func (s *dstate) local(t int64) time.Time {
	return time.Unix(0, t).UTC().Add(time.Duration(s.tz) * time.Hour)
}

// active reports whether the device is in its active hours.
func (s *dstate) active(t int64) bool {
	lt := s.local(t)
	h := lt.Hour()
	switch s.c.Pattern {
	case PatternBusinessHours:
		wd := lt.Weekday()
		return wd != time.Saturday && wd != time.Sunday && h >= 8 && h < 18
	case PatternDiurnal:
		if s.c.Mobility == MobilityStatic {
			return true
		}
		return h >= 6 && h < 22
	}
	return true
}

// shape is the diurnal volume factor (0.6 before dawn, 1.4 in the evening).
func (s *dstate) shape(t int64) float64 {
	if s.c.Pattern != PatternDiurnal {
		return 1
	}
	lt := s.local(t)
	h := float64(lt.Hour()) + float64(lt.Minute())/60
	return 1 + 0.4*math.Cos(2*math.Pi*(h-19)/24)
}

// lognormal draws a volume with the given mean and coefficient of variation.
func (s *dstate) lognormal(mean, cv float64) float64 {
	if cv <= 0 {
		return mean
	}
	sig2 := math.Log(1 + cv*cv)
	mu := math.Log(mean) - sig2/2
	return math.Max(1, math.Round(math.Exp(mu+math.Sqrt(sig2)*s.r.NormFloat64())))
}

func (s *dstate) exfilFactor(t int64) float64 {
	for _, w := range s.exfil {
		if t >= w.from && t < w.to {
			return w.factor
		}
	}
	return 0
}

// ---- normal life ----

func (s *dstate) boot(now int64) {
	s.online = true
	s.sessionStart(now)
	s.mqttConnect(now + int64(2*time.Second))
	s.emit(now+int64(3*time.Second), event.FirmwareReport, "agent", map[string]any{"version": s.fw, "digest": s.digest})
	s.emitLocation(now + int64(4*time.Second))
	s.schedule(now+int64(5*time.Second), s.fnReport)
	s.schedule(now+s.interimEvery, s.fnInterim)
	s.schedule(now+int64(10*time.Second), s.fnMetrics)
	s.schedule(now+int64(time.Hour)+s.r.Int64N(int64(5*time.Minute)), s.fnFlows)
	if s.c.Mobility == MobilityStatic {
		s.schedule(now+int64(6*time.Hour), s.fnStaticLocation)
	}
	if s.c.Outages > 0 {
		s.schedule(now, s.fnDay)
	}
}

func (s *dstate) report(now int64) {
	if s.dead {
		return
	}
	act := s.active(now)
	every := s.every
	var bytes float64
	if act {
		bytes = s.lognormal(s.c.UplinkBytes*s.shape(now)*s.volF, s.c.CV())
	} else {
		// idle: rare small heartbeats
		every = max(every, int64(15*time.Minute))
		bytes = s.lognormal(s.c.UplinkBytes*0.3*s.volF, s.c.CV())
	}
	if f := s.exfilFactor(now); f > 0 {
		// exfiltration rides on the usual messages: same cadence, each
		// carrying factor times the active mean
		bytes = s.lognormal(s.c.UplinkBytes*f, s.c.CV())
	}
	s.schedule(now+s.jitter(every, 0.02), s.fnReport)
	if !s.online {
		s.buffered = append(s.buffered, bytes)
		return
	}
	s.publish(now, bytes)
	if s.c.Mobility != MobilityStatic || s.transit != nil {
		s.emitLocation(now)
	}
}

func (s *dstate) publish(t int64, bytes float64) {
	s.accUp += bytes
	s.accFlow += bytes
	s.emit(t, event.MQTTPublish, "broker", map[string]any{"topic_class": "telemetry", "bytes": bytes, "qos": float64(1)})
}

func (s *dstate) staticLocation(now int64) {
	s.schedule(now+int64(6*time.Hour), s.fnStaticLocation)
	if s.online && !s.dead {
		s.emitLocation(now)
	}
}

func (s *dstate) emitLocation(t int64) {
	s.move(t)
	acc := 5 + s.r.Float64()*10
	p := destination(s.pos, s.r.Float64()*2*math.Pi, s.r.Float64()*acc/1000)
	s.lastLoc = t
	s.emit(t, event.Location, "agent", map[string]any{"lat": p.Lat, "lon": p.Lon, "accuracy_m": math.Round(acc), "source": "device"})
}

func (s *dstate) interim(now int64) {
	s.schedule(now+s.interimEvery, s.fnInterim)
	if !s.online || s.dead || s.radSession == "" {
		return
	}
	s.session(now, "interim")
}

func (s *dstate) metrics(now int64) {
	s.schedule(now+s.jitter(int64(time.Hour), 0.05), s.fnMetrics)
	if !s.online || s.dead {
		return
	}
	s.emitMetrics(now)
}

func (s *dstate) emitMetrics(t int64) {
	ports := make([]any, len(s.ports))
	for i, p := range s.ports {
		ports[i] = float64(p)
	}
	s.emit(t, event.DeviceMetrics, "agent", map[string]any{
		"listening_ports": ports,
		"connections":     float64(len(s.endpoints) + s.r.IntN(2)),
		"processes":       float64(40 + int(hash64(s.d.Model)%60) + s.r.IntN(3)),
		"fw_version":      s.fw,
		"fw_digest":       s.digest,
	})
}

// flows exports the hour's traffic as one flow per endpoint.
func (s *dstate) flows(now int64) {
	s.schedule(now+int64(time.Hour), s.fnFlows)
	if s.accFlow <= 0 || s.dead {
		s.accFlow = 0
		return
	}
	total := s.accFlow * 1.1
	s.accFlow = 0
	n := len(s.endpoints)
	for i, e := range s.endpoints {
		share := 0.3 / float64(max(n-1, 1))
		if i == 0 {
			share = 0.7
			if n == 1 {
				share = 1
			}
		}
		b := math.Max(60, math.Round(total*share))
		s.emit(now+int64(i)*int64(time.Second), event.NetFlow, "flows", map[string]any{
			"src_ip": s.ipStr, "src_port": float64(s.srcPorts[i]),
			"dst_ip": s.dstStr[i], "dst_port": float64(e.Port), "proto": float64(e.Proto),
			"bytes": b, "packets": math.Ceil(b / 400), "direction": "out",
		})
	}
}

// ---- connectivity ----

func (s *dstate) cell() (Point, string) {
	la, lo := math.Floor(s.pos.Lat*50), math.Floor(s.pos.Lon*50)
	return Point{(la + 0.5) / 50, (lo + 0.5) / 50}, "214-01-" + strconv.Itoa(int(la)) + "-" + strconv.Itoa(int(lo))
}

func (s *dstate) sessionStart(t int64) {
	s.radN++
	s.radSession = fmt.Sprintf("%08x%04x", s.d.Index, s.radN)
	s.accUp = 0
	s.session(t, "start")
}

func (s *dstate) session(t int64, status string) {
	s.move(t)
	c, id := s.cell()
	up := math.Round(s.accUp * 1.15)
	if status == "start" {
		up = 0
	}
	s.accUp = 0
	s.emit(t, event.NetSession, "radius", map[string]any{
		"status": status, "session_id": s.radSession,
		"imsi": s.d.IMSI, "iccid": s.d.ICCID, "imei": s.d.IMEI,
		"ip": s.ipStr, "apn": s.d.APN, "cell": id,
		"lat": c.Lat, "lon": c.Lon, "accuracy_m": float64(2000),
		"bytes_up": up, "bytes_down": math.Round(up*0.2) + 200*float64(boolInt(status != "start")),
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *dstate) mqttConnect(t int64) {
	s.mqttN++
	s.mqttSession = fmt.Sprintf("%s/%d", s.d.ID, s.mqttN)
	s.emit(t, event.MQTTConnect, "broker", map[string]any{
		"remote":    netip.AddrPortFrom(s.d.IP, uint16(40000+s.r.IntN(20000))).String(),
		"client_id": string(s.d.ID), "cert_serial": s.d.CertSerial,
		"session_id": s.mqttSession, "protocol": "5",
	})
}

func (s *dstate) mqttDisconnect(t int64, reason string) {
	s.emit(t, event.MQTTDisconnect, "broker", map[string]any{"reason": reason, "session_id": s.mqttSession,
		"remote": netip.AddrPortFrom(s.d.IP, 40000).String()})
}

// day decides whether the device has an outage during the next 24 h.
func (s *dstate) day(now int64) {
	s.schedule(now+int64(24*time.Hour), s.fnDay)
	if s.r.Float64() >= s.c.Outages {
		return
	}
	start := now + s.r.Int64N(int64(24*time.Hour))
	dur := int64(time.Hour) + s.r.Int64N(int64(5*time.Hour))
	for _, p := range s.protect {
		if start < p[1] && start+dur > p[0] {
			return
		}
	}
	if start < s.outageEnd+int64(time.Hour) {
		return
	}
	s.outageEnd = start + dur
	s.schedule(start, func(t int64) { s.outageStart(t, start+dur) })
}

func (s *dstate) outageStart(now, until int64) {
	if !s.online || s.dead {
		return
	}
	s.session(now, "stop")
	s.radSession = ""
	s.mqttDisconnect(now+int64(90*time.Second), "keepalive_timeout")
	s.online = false
	s.schedule(until, s.outageEndAct)
}

func (s *dstate) outageEndAct(now int64) {
	if s.dead {
		return
	}
	s.online = true
	s.sessionStart(now)
	s.mqttConnect(now + int64(3*time.Second))
	// catch-up: what was buffered goes out in a burst of about a minute
	n := len(s.buffered)
	if n > 0 {
		step := max(int64(60*time.Second)/int64(n), int64(50*time.Millisecond))
		for i, b := range s.buffered {
			s.publish(now+int64(5*time.Second)+int64(i)*step, b)
		}
	}
	s.buffered = s.buffered[:0]
	s.emitLocation(now + int64(4*time.Second))
}

// ---- mobility ----

// move advances the position to t.
func (s *dstate) move(t int64) {
	if s.lastMove == 0 || t <= s.lastMove {
		if s.lastMove == 0 {
			s.lastMove = t
		}
		return
	}
	cur := s.lastMove
	s.lastMove = t
	if tr := s.transit; tr != nil {
		dist := haversineKm(tr.from, tr.to)
		need := int64(dist / tr.speed * float64(time.Hour))
		if t-tr.start >= need {
			s.pos = tr.to
			s.center, s.target = tr.to, tr.to
			s.roamKm = math.Min(s.roamKm, 3)
			s.transit = nil
		} else {
			s.pos = interpolate(tr.from, tr.to, float64(t-tr.start)/float64(need))
		}
		return
	}
	if s.c.Mobility == MobilityStatic || !s.active(t) {
		return
	}
	for cur < t {
		if cur < s.dwellUntil {
			cur = min(t, s.dwellUntil)
			continue
		}
		d := haversineKm(s.pos, s.target)
		if d < 0.01 {
			s.newLeg(cur)
			continue
		}
		need := int64(d / s.speed * float64(time.Hour))
		if cur+need <= t {
			s.pos = s.target
			cur += need
			s.newLeg(cur)
			continue
		}
		s.pos = interpolate(s.pos, s.target, float64(t-cur)/float64(need))
		cur = t
	}
}

// newLeg parks for a while and picks the next destination and speed.
func (s *dstate) newLeg(now int64) {
	if s.c.Mobility == MobilityVehicle {
		s.dwellUntil = now + int64(time.Minute) + s.r.Int64N(int64(15*time.Minute))
		s.speed = 20 + 110*math.Pow(s.r.Float64(), 1.5)
		s.target = s.roamPoint(s.roamKm)
		return
	}
	s.dwellUntil = now + int64(5*time.Minute) + s.r.Int64N(int64(55*time.Minute))
	if s.r.Float64() < 0.15 {
		s.speed = 30 + 50*s.r.Float64()
		s.target = s.roamPoint(s.roamKm)
		return
	}
	s.speed = 3 + 3*s.r.Float64()
	for range 10 {
		p := destination(s.pos, s.r.Float64()*2*math.Pi, 0.2+1.3*s.r.Float64())
		if haversineKm(p, s.center) <= s.roamKm {
			s.target = p
			return
		}
	}
	s.target = s.center
}

func (s *dstate) roamPoint(r float64) Point {
	return destination(s.center, s.r.Float64()*2*math.Pi, r*math.Sqrt(s.r.Float64()))
}
