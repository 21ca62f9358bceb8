package detect

import (
	"fmt"
	"math"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// Learned usage baselines.
//
// Each mqtt.publish credits its bytes (and one message) to the time since
// the device's previous publish, so a rate is volume / covered time. A
// window opens at a publish and closes at the first publish at least W
// later that is not part of a burst (gap >= burstGap, or 2W at most);
// its covered time runs from the publish before it to its last one. A
// catch-up burst after an outage therefore lands in the same window as
// the silence it makes up for, and its rate stays normal.
//
// Rates (bytes/h, messages/h) are learned per hour of day x weekday/weekend
// (48 buckets, EW mean and variance) plus a global level. A closed window
// fires when its rate, divided by the cohort's current geometric-mean ratio
// (so that a fleet-wide shift does not fire everywhere), is at least
// MinRatio x and Z standard deviations above the bucket; a short recent
// window (10 min or 3 cadences) is checked on every publish against the
// stricter EarlyRatio, for early detection.

const burstGap = 15 // seconds

type usageWin struct {
	First, Prev, Last int64 // unix s; Prev = the publish before the window (0: none)
	Bytes             float32
	Count             uint32
	W                 int32   // window length (s), from the cadence at opening
	Max               float32 // the largest message's bytes
}

type baseline struct {
	Mean, Var [48]float32
	N         [48]uint8
	GMean     float32
	GN        uint16
}

type usageState struct {
	Win     usageWin
	Rec     usageWin // a short recent window, checked early against EarlyRatio
	LastPub int64
	Cad     float32 // learned cadence (s)
	B, M    baseline
	Fired   int64    // unix s of the last usage alert
	Pend    [2]int64 // unix s a (volume, messages) spike was first seen, awaiting confirmation
	Outage  int64    // unix s of the end of the last silence (>= 3 cadences and 10 min)
	// CatchN counts the publishes since Outage; CatchMax is how many a
	// catch-up of that silence may hold (see catchBudget). Past it, what
	// follows the silence is no longer a catch-up.
	CatchN, CatchMax uint32
	// Per-message size: EW mean and variance of ln(bytes), so that one
	// large message is judged against the sizes this device sends.
	LogL, LogV float32
	LogN       uint16
	LastZ      float32 // the previous publish's size z-score (NaN while unlearned)
	// Fast counts publishes over the last 10 minutes (one-minute buckets),
	// whatever the windows: a flood is seen in minutes even when it starts
	// inside a long recent window opened at a slow (night) cadence.
	Fast counter
}

// usageObs is what one publish produced for the usage detectors.
type usageObs struct {
	closed    usageWin
	hasClosed bool
	open      *usageWin // the recent window
	anomalous bool      // a detector fired on the closed window: do not learn it
	msgZ      float64   // z-score of this message's ln(bytes), NaN while unlearned
	prevZ     float64   // the previous publish's
	fastN     int       // publishes in the last 10 minutes
}

func windowLen(cad float32) int32 {
	w := 4 * float64(cad)
	return int32(math.Min(math.Max(w, 1800), 3*3600))
}

func (u *usageState) observe(now int64, bytes float64) usageObs {
	var o usageObs
	gap := int64(0)
	if u.LastPub != 0 {
		gap = max(0, now-u.LastPub)
		if gap >= burstGap && gap <= 6*3600 {
			g := float32(gap)
			if u.Cad == 0 {
				u.Cad = g
			} else {
				u.Cad += 0.2 * (min(max(g, u.Cad/2), 2*u.Cad) - u.Cad)
			}
		}
	}
	if u.Cad > 0 && gap >= max(600, int64(3*u.Cad)) {
		// a catch-up burst may follow, spread over minutes
		u.Outage, u.CatchN, u.CatchMax = now, 0, u.catchBudget(now-gap, now)
	}
	if u.Outage != 0 && u.CatchN < math.MaxUint32 {
		u.CatchN++
	}
	// a window is held open through a burst (gaps under burstGap) only
	// while a catch-up after a silence may be under way; a burst at any
	// other time is the device's own doing (a flood) and must not be
	// diluted by the quiet part of a window that keeps growing
	catchUp := u.catchingUp(now)
	if w := &u.Win; w.First != 0 {
		span := now - w.First
		if span >= int64(w.W) && (gap >= burstGap || span >= 2*int64(w.W) || !catchUp) {
			o.closed, o.hasClosed = *w, true
			*w = usageWin{}
		}
	}
	if w := &u.Rec; w.First != 0 {
		span := now - w.First
		if span >= int64(w.W) && (gap >= burstGap || span >= 2*int64(w.W) || !catchUp) {
			*w = usageWin{}
		}
	}
	if u.Win.First == 0 {
		u.Win = usageWin{First: now, Prev: u.LastPub, W: windowLen(u.Cad)}
	}
	if u.Rec.First == 0 {
		u.Rec = usageWin{First: now, Prev: u.LastPub, W: int32(min(max(600, 3*u.Cad), float32(u.Win.W)))}
	}
	for _, w := range []*usageWin{&u.Win, &u.Rec} {
		w.Bytes += float32(bytes)
		w.Max = max(w.Max, float32(bytes))
		w.Count++
		w.Last = max(w.Last, now)
	}
	u.LastPub = max(u.LastPub, now)
	o.open = &u.Rec
	return o
}

// sizeZ returns the z-score of a message of b bytes against the learned
// per-message sizes (NaN until 8 messages were seen), then learns it. The
// spread learns only from messages within 3 sigma and the level moves at
// most 3 sigma per message, so an attack's large messages cannot teach
// the device that they are normal before they are judged.
func (u *usageState) sizeZ(b float64) float64 {
	x := math.Log1p(math.Max(0, b))
	z := math.NaN()
	n := float64(u.LogN)
	sd := math.Sqrt(float64(u.LogV))
	if u.LogN >= 8 {
		z = (x - float64(u.LogL)) / math.Max(sd, 0.05)
	}
	a := 0.1
	if n < 10 {
		a = 1 / (n + 1)
	}
	d := x - float64(u.LogL)
	if u.LogN >= 8 {
		d = math.Max(-3*sd, math.Min(3*sd, d))
	}
	if u.LogN < 8 || math.Abs(z) <= 3 {
		// the spread learns slowly once known: a z-score of 5 read against
		// a spread that a short memory underestimates by a fifth is a
		// 4-sigma event, common in a large fleet
		av := a
		if n >= 50 {
			av = 0.02
		}
		u.LogV = float32((1 - av) * (float64(u.LogV) + av*d*d))
	}
	u.LogL += float32(a * d)
	if u.LogN < 65535 {
		u.LogN++
	}
	return z
}

// recentMin is how many messages a recent window of length w (s) must
// hold before it is judged, for a device publishing every cad seconds:
// three when the window spans six cadences or more, two from four, else
// one. A minute-cadence device with variable payloads sends a message ten
// times its mean now and then; a rate needs several messages behind it.
func recentMin(w int32, cad float32) int {
	if cad <= 0 {
		return 1
	}
	switch n := float64(w) / float64(cad); {
	case n >= 6:
		return 3
	case n >= 4:
		return 2
	}
	return 1
}

// zOf returns the z-score of a message of b bytes against the learned
// per-message sizes, without learning it (NaN until 8 were seen).
func (u *usageState) zOf(b float64) float64 {
	if u.LogN < 8 {
		return math.NaN()
	}
	return (math.Log1p(math.Max(0, b)) - float64(u.LogL)) / math.Max(math.Sqrt(float64(u.LogV)), 0.05)
}

// coverage returns the window's covered seconds and the time used for its
// hour bucket.
func (w *usageWin) coverage() (c int64, at int64) {
	if w.Prev == 0 {
		return 0, 0
	}
	c = w.Last - w.Prev
	at = w.Last
	if c <= 2*3600 {
		at = (w.Prev + w.Last) / 2
	}
	return c, at
}

func bucketOf(at int64) int {
	t := time.Unix(at, 0).UTC()
	b := t.Hour()
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		b += 24
	}
	return b
}

// expect returns the expected rate and its spread for a window covering
// [from, to]: the highest learned bucket among the hours it spans, so that
// a window over a morning ramp is not read as a spike. An hour never
// observed compares with the cohort's shape for that hour (cohort > 0: the
// cohort's learned level of the hour relative to a device's global level)
// when there is one, else with the device's peak learned level.
func (bl *baseline) expect(from, to int64, floorFrac, minCV, cohort float64) (mean, std float64, learned, ok bool) {
	if bl.GN < 8 {
		return 0, 0, false, false
	}
	found := false
	for t, n := from-from%3600, 0; t <= to && n < 10; t, n = t+3600, n+1 {
		b := bucketOf(t)
		if bl.N[b] == 0 || float64(bl.Mean[b]) < mean {
			continue
		}
		mean, found = float64(bl.Mean[b]), true
		std = math.Sqrt(float64(bl.Var[b]))
		if bl.N[b] < 2 {
			std = mean * 0.5 // one sample says little about the spread
		}
		if bl.N[b] < 2 {
			// one sample of an hour may have been a quiet one: until the
			// hour is seen again, its neighbours (a usage curve is
			// smooth) bound it from below
			if nb := bl.neighbours(b); nb > mean {
				std *= nb / mean
				mean = nb
			}
		}
	}
	if bl.N[bucketOf(to)] == 0 {
		found = false // this hour never observed: neighbours may understate it
		mean = 0
	}
	if !found {
		// hours not learned yet (e.g. first weekend): compare with the
		// device's peak learned level, which is conservative, or, when the
		// cohort has seen the hour and found it busier (a fleet first seen
		// on a weekend meets its first Monday morning), with the device's
		// own level scaled by the cohort's shape of the hour
		for i := range bl.Mean {
			if bl.N[i] > 0 {
				mean = math.Max(mean, float64(bl.Mean[i]))
			}
		}
		mean = math.Max(mean, cohort*float64(bl.GMean))
		std = mean * 0.5
	}
	mean = math.Max(mean, floorFrac*float64(bl.GMean))
	std = math.Max(std, minCV*mean)
	return mean, std, found, mean > 0
}

// neighbours returns the average learned mean of the hours before and
// after bucket b, on the same kind of day (0 when neither is learned). On
// a smooth curve it is close to b's own level, on a slope too.
func (bl *baseline) neighbours(b int) float64 {
	day, h := b/24*24, b%24
	sum, n := 0.0, 0
	for _, x := range [2]int{day + (h+23)%24, day + (h+1)%24} {
		if bl.N[x] > 0 {
			sum += float64(bl.Mean[x])
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

func (bl *baseline) learn(b int, r float64) {
	if bl.N[b] > 0 && bl.Mean[b] > 0 {
		// winsorise: a level may at most double per sample, so a spike
		// that was not (yet) alerted cannot become the baseline at once
		r = math.Min(r, 2*float64(bl.Mean[b]))
	}
	n := float64(bl.N[b])
	a := 0.1
	if n < 10 {
		a = 1 / (n + 1)
	}
	d := r - float64(bl.Mean[b])
	bl.Mean[b] += float32(a * d)
	bl.Var[b] = float32((1 - a) * (float64(bl.Var[b]) + a*d*d))
	if bl.N[b] < 255 {
		bl.N[b]++
	}
	ga := 0.02
	if bl.GN < 50 {
		ga = 1 / (float64(bl.GN) + 1)
	}
	bl.GMean += float32(ga * (r - float64(bl.GMean)))
	if bl.GN < 65535 {
		bl.GN++
	}
}

// UsageSettings tunes usage.volume and usage.messages.
type UsageSettings struct {
	Warmup     Duration `json:"warmup"`      // observed time before alerting
	MinRatio   float64  `json:"min_ratio"`   // closed window: rate >= MinRatio x expected
	EarlyRatio float64  `json:"early_ratio"` // open window, checked on every publish
	Z          float64  `json:"z"`           // and this many std above expected
	FloorFrac  float64  `json:"floor_frac"`  // expected >= FloorFrac x the device's global level
	MinCV      float64  `json:"min_cv"`      // std >= MinCV x expected
	// CohortMin is how many recent windows the cohort needs before its
	// shift is taken into account.
	CohortMin int `json:"cohort_min"`
	// ImmediateRatio: a spike this strong over a learned hour fires at
	// once; weaker ones, and any over an hour never observed, must still be
	// there Confirm later and not be shared by the cohort (at least
	// CohortShare of its devices, and 3, starting to spike in the same
	// hours: a new schedule, a holiday, a rollout).
	ImmediateRatio float64  `json:"immediate_ratio"`
	Confirm        Duration `json:"confirm"`
	CohortShare    float64  `json:"cohort_share"`
	// PerMessageRatio (usage.volume only): the volume ratio divided by the
	// message-rate ratio must reach this, so a message flood is reported
	// once, as usage.message_rate_spike.
	PerMessageRatio float64 `json:"per_message_ratio"`
	// SingleZ: a recent window holding a single message says nothing about
	// a rate (a device with variable payloads sends a large one now and
	// then). It fires only for volume, and only when that message's size
	// is this many standard deviations above the device's learned ln(size).
	SingleZ float64 `json:"single_z"`
}

func defaultUsage() any {
	return &UsageSettings{Warmup: Duration(24 * time.Hour), MinRatio: 3, EarlyRatio: 6, Z: 5, FloorFrac: 0.05, MinCV: 0.25, CohortMin: 5, PerMessageRatio: 2, ImmediateRatio: 8, Confirm: Duration(15 * time.Minute), CohortShare: 0.1, SingleZ: 5}
}

var dataSpikeDetector = &Detector{
	Name: "usage.volume", Kind: alert.DataSpike, Severity: alert.High,
	Description: "Uplink volume (bytes/h over publish-covered time) far above the device's learned hour-of-week baseline, net of any cohort-wide shift; outage catch-up is normalised by elapsed time.",
	Events:      []event.Kind{event.MQTTPublish},
	defaults:    defaultUsage,
	run:         func(c *call, d *Detector, cfg any) { usageCheck(c, d, cfg.(*UsageSettings), false) },
}

var messageRateDetector = &Detector{
	Name: "usage.messages", Kind: alert.MessageRateSpike, Severity: alert.Medium,
	Description: "Publish rate (messages/h over publish-covered time) far above the device's learned hour-of-week baseline, net of any cohort-wide shift.",
	Events:      []event.Kind{event.MQTTPublish},
	defaults:    defaultUsage,
	run:         func(c *call, d *Detector, cfg any) { usageCheck(c, d, cfg.(*UsageSettings), true) },
}

func usageCheck(c *call, det *Detector, s *UsageSettings, msgs bool) {
	o := c.use
	if o == nil || !c.st.warm(c.now, s.Warmup) {
		return
	}
	u := &c.st.Use
	bl, unit := &u.B, "bytes/h"
	if msgs {
		bl, unit = &u.M, "msgs/h"
	}
	cohort := c.e.cohort(c.key.t, c.group())
	check := func(w *usageWin, ratioMin float64, early bool) bool {
		cov, at := w.coverage()
		if cov <= 0 {
			return false
		}
		if early && cov < min(int64(w.W)/2, int64(0.9*u.Cad)) {
			return false
		}
		if early && cov > 2*int64(w.W) {
			return false // it holds a silence and its catch-up: the long window's to judge
		}
		if early && int(w.Count) < recentMin(w.W, u.Cad) {
			return false // a fast device's recent window must hold several messages first
		}
		confirming := u.Pend[0] != 0 && c.now-u.Pend[0] <= u.pendHorizon()
		if early && w.Count == 1 && (msgs || !(o.msgZ >= s.SingleZ || confirming)) {
			// one message is no rate; see SingleZ. While a volume spike
			// awaits confirmation, though, the next message continuing it
			// is what confirms it: a device reporting every 15 minutes
			// often has a single message in its recent window then
			return false
		}
		m := 0
		if msgs {
			m = 1
		}
		if early && cov >= int64(w.W)/2 && w.Count >= 6 {
			// a recent window half full with six messages or more is a
			// rate: at MinRatio it starts a spike that must be confirmed
			ratioMin = math.Min(ratioMin, s.MinRatio)
		}
		v := float64(w.Bytes)
		if !msgs && early && w.Count > 1 {
			// two or more messages must be large together, which noise
			// rarely makes: such a window starts a spike (still to be
			// confirmed) half-way between MinRatio and EarlyRatio. This
			// holds whether its largest message is trimmed below or kept
			// because it is beyond SingleZ by its own size (more
			// evidence, not less)
			ratioMin = math.Min(ratioMin, (s.MinRatio+s.EarlyRatio)/2)
		}
		if msgs {
			v = float64(w.Count)
		} else if early && w.Count > 1 && !(u.zOf(float64(w.Max)) >= s.SingleZ) {
			// trimmed: the largest message is replaced by the mean of the
			// others. With variable payloads one message in hundreds is
			// ten times the mean; a spike of volume is carried by every
			// message, so it survives the trim and a lone outlier does not.
			// An outlier beyond SingleZ by its own size is kept: that is
			// a finding by itself
			rest := float64(w.Bytes) - float64(w.Max)
			v = rest * float64(w.Count) / float64(w.Count-1)
		}
		r := v / float64(cov) * 3600
		b := bucketOf(at)
		from := w.Prev // a long window (e.g. holding an outage and its catch-up) is compared with its busiest hour
		mean, std, learned, ok := bl.expect(from, w.Last, s.FloorFrac, s.MinCV, cohort.shape(m, bucketOf(w.Last)))
		if !ok {
			return false
		}
		shift := cohort.shift(msgs, at, s.CohortMin)
		adj := r / shift
		ratio := adj / mean
		fire := adj >= ratioMin*mean && (adj-mean)/std >= s.Z
		perMsg := 0.0
		if !msgs && fire {
			// volume explained by more messages is usage.messages' finding:
			// require the bytes per message to have grown as well
			if mm, _, _, ok := u.M.expect(from, w.Last, s.FloorFrac, s.MinCV, cohort.shape(1, bucketOf(w.Last))); ok {
				msgRatio := math.Max(1, float64(w.Count)/float64(cov)*3600/mm)
				perMsg = ratio / msgRatio
				fire = perMsg >= s.PerMessageRatio
			}
		}
		if !fire {
			return false
		}
		adj = ratio * mean
		// one message is one observation, however large: it fires at once
		// only on a device too slow for a second one to confirm it in
		// time (a cadence of Confirm or more). A faster device's next
		// messages confirm an exfiltration, which rides on all of them,
		// and not a lone large payload, which a fleet of thousands of
		// devices sends somewhere every day
		single := early && w.Count == 1 && float64(u.Cad) < float64(secs(s.Confirm))
		// two messages in a row each beyond SingleZ by its own size are
		// two independent findings (noise makes such a pair about once in
		// 10^13 messages): with the rate above the bar over a learned
		// hour, that is the confirmation, without waiting for more. A
		// device that reports every 15 minutes at night otherwise needs
		// half an hour to confirm what its first two messages showed
		sizeRun := !msgs && learned && o.msgZ >= s.SingleZ && o.prevZ >= s.SingleZ && !cohort.fleetWide(m, c.now, s.CohortShare)
		if !sizeRun && (!learned || single || adj < s.ImmediateRatio*mean) {
			p := &u.Pend[m]
			if *p == 0 || c.now-*p > u.pendHorizon() {
				*p = c.now
				cohort.pending(m, c.now)
				return false
			}
			if c.now-*p < u.confirmAfter(secs(s.Confirm)) {
				return false
			}
			if cohort.fleetWide(m, c.now, s.CohortShare) {
				*p = 0 // the cohort's new normal: learn it
				return false
			}
		}
		c.raise(det,
			fmt.Sprintf("%.0f %s over %s, %.1fx the learned %.0f %s for this hour (cohort shift %.2fx)", r, unit, time.Duration(cov)*time.Second, adj/mean, mean, unit, shift),
			map[string]any{"rate": round(r, 1), "unit": unit, "baseline_mean": round(mean, 1), "baseline_std": round(std, 1), "ratio": round(adj/mean, 2),
				"threshold_ratio": ratioMin, "z": round((adj-mean)/std, 1), "z_threshold": s.Z, "cohort_shift": round(shift, 2), "hour_bucket": b,
				"window_start": unixUTC(w.Prev), "window_end": unixUTC(w.Last), "messages": w.Count, "bytes": w.Bytes, "early": early, "per_message_ratio": round(perMsg, 2)},
			*c.ev)
		u.Fired = c.now
		return true
	}
	if o.hasClosed && check(&o.closed, s.MinRatio, false) {
		o.anomalous = true
	}
	if o.open != nil && !u.catchingUp(c.now) {
		// the short window is skipped for 30 min after a silence, while
		// what follows can be its catch-up: a catch-up burst spread over
		// minutes is normalised only by the long window that holds the
		// silence
		early := s.EarlyRatio
		m := 0
		if msgs {
			m = 1
		}
		if u.Pend[m] != 0 {
			early = s.MinRatio // confirming a spike already seen
		}
		fired := check(o.open, early, true)
		if msgs && !fired && o.fastN >= fastMin {
			// the last 10 minutes' count, judged like a recent window
			fast := usageWin{First: c.now - 600, Prev: c.now - 600, Last: c.now, Count: uint32(o.fastN), W: 600}
			check(&fast, early, true)
		}
	}
}

// fastMin is the least publishes in 10 minutes for the fast count to be
// judged: below it a ratio says little. Ten publishes (one a minute) is a
// rate on any device; a flood on a device that usually sends a few an
// hour (a slow cadence, or the idle hours of a business-hours fleet) is
// seen there in minutes, where its long recent window dilutes it.
const fastMin = 10

// confirmAfter is how long a pending spike must wait before it is
// confirmed: confirm, less a tenth of the device's cadence (at most of
// confirm). A device reporting every 15 minutes with a little jitter
// otherwise confirms a 15-minute wait only at its second report, 30
// minutes after the first.
func (u *usageState) confirmAfter(confirm int64) int64 {
	return confirm - min(int64(u.Cad), confirm)/10
}

// catchingUp reports whether a publish at now may belong to the catch-up
// of the last silence: within 30 min of its end, and no more publishes
// since than the silence can account for. A device that slows down at
// night (a minute cadence becoming a quarter-hourly one) ends such a
// "silence" at each report until its learned cadence follows; a flood
// starting then is not a catch-up once it outgrows what the silence held.
func (u *usageState) catchingUp(now int64) bool {
	return u.Outage != 0 && now-u.Outage <= 1800 && u.CatchN <= u.CatchMax
}

// catchBudget is how many publishes a catch-up of the silence [from, to]
// may hold: twice what the device sends in that time (at its learned
// cadence, or at its learned message rate of those hours, the larger; an
// hour not learned counts at the device's busiest), plus three.
func (u *usageState) catchBudget(from, to int64) uint32 {
	n := float64(to-from) / math.Max(float64(u.Cad), 1)
	peak := 0.0
	for i := range u.M.Mean {
		if u.M.N[i] > 0 {
			peak = math.Max(peak, float64(u.M.Mean[i]))
		}
	}
	e := 0.0
	if to-from > 48*3600 {
		e = peak * float64(to-from) / 3600
	} else {
		for t := from; t < to; t += 3600 {
			r := peak
			if b := bucketOf(t); u.M.N[b] > 0 {
				r = float64(u.M.Mean[b])
			}
			e += r * float64(min(3600, to-t)) / 3600
		}
	}
	return uint32(math.Min(2*math.Max(n, e)+3, 1e6))
}

// pendHorizon is how long a spike awaits confirmation: two long windows,
// at least 2h.
func (u *usageState) pendHorizon() int64 { return max(7200, 2*int64(u.Win.W)) }

// usagePrepare runs before the usage detectors, usageLearn after them.
func usagePrepare(c *call) {
	if c.ev.Kind != event.MQTTPublish {
		return
	}
	b, _ := c.ev.Float("bytes")
	c.useObs = c.st.Use.observe(c.now, math.Max(0, b))
	c.useObs.msgZ = c.st.Use.sizeZ(b)
	c.useObs.prevZ = float64(c.st.Use.LastZ)
	c.st.Use.LastZ = float32(c.useObs.msgZ)
	c.useObs.fastN = c.st.Use.Fast.add(c.now, 60)
	c.use = &c.useObs
}

func usageLearn(c *call) {
	o := c.use
	if o == nil || !o.hasClosed {
		return
	}
	u := &c.st.Use
	cov, at := o.closed.coverage()
	if cov <= 0 || cov > max(3*3600, int64(o.closed.W)*3/2) {
		return // spans an outage: mixes hours
	}
	rb := float64(o.closed.Bytes) / float64(cov) * 3600
	rm := float64(o.closed.Count) / float64(cov) * 3600
	b := bucketOf(at)
	suspicious := false
	if u.B.GN >= 8 && c.st.warm(c.now, Duration(24*time.Hour)) {
		co := c.e.cohort(c.key.t, c.group())
		for m, r := range [2]float64{rb, rm} {
			bl := &u.B
			if m == 1 {
				bl = &u.M
			}
			mean, _, learned, ok := bl.expect(o.closed.Prev, o.closed.Last, 0.3, 0.25, 0) // learning compares with the device alone
			if !ok {
				continue
			}
			co.add(m == 1, at, r/mean)
			// a learned hour more than doubling is learned only when the
			// cohort moves with it (else it may be an attack still below
			// the alert threshold)
			if learned && bl.N[b] >= 2 && r >= 2*mean && !co.fleetWide(m, c.now, 0.1) {
				suspicious = true
			}
		}
	}
	if suspicious || o.anomalous || c.now-u.Fired < 3600 || (u.Pend[0] != 0 && c.now-u.Pend[0] < u.pendHorizon()) || (u.Pend[1] != 0 && c.now-u.Pend[1] < u.pendHorizon()) {
		return // do not learn the attack, nor a spike awaiting confirmation
	}
	co := c.e.cohort(c.key.t, c.group())
	for m, bl := range [2]*baseline{&u.B, &u.M} {
		if bl.GN >= 8 && bl.GMean > 0 {
			co.learnShape(m, b, [2]float64{rb, rm}[m]/float64(bl.GMean))
		}
	}
	u.B.learn(b, rb)
	u.M.learn(b, rm)
}

// group is the cohort key of the device: its group, else its model.
func (c *call) group() string {
	if c.prof.Cohort != "" {
		return c.prof.Cohort
	}
	return c.prof.Model
}

// cohortState aggregates what a cohort's devices do, for the cohort checks.
type cohortState struct {
	Devices  int
	Slot     [2][2]int64 // [metric][slot] epoch hour
	SumLog   [2][2]float64
	N        [2][2]int32
	PendSlot [2][2]int64 // [metric][slot] epoch hour
	PendN    [2][2]int32 // devices whose usage started spiking in that hour
	// Shape[m][b]: EW mean of ln(window rate / the device's global level)
	// over the cohort's learned windows of hour bucket b; ShapeN counts them.
	Shape  [2][48]float32
	ShapeN [2][48]uint16
	Ports  map[uint16]int32 // listening port -> devices that learned it
	Dests  map[uint32]int32 // destination hash -> devices that learned it
}

func (e *Engine) cohort(t event.TenantID, group string) cohortView {
	k := groupKey{t, group}
	e.cohortMu.Lock()
	c := e.cohorts[k]
	if c == nil {
		c = &cohortState{Ports: map[uint16]int32{}, Dests: map[uint32]int32{}}
		e.cohorts[k] = c
	}
	e.cohortMu.Unlock()
	return cohortView{e: e, c: c}
}

// cohortView accesses a cohort under the engine's cohort lock.
type cohortView struct {
	e *Engine
	c *cohortState
}

func (v cohortView) add(msgs bool, at int64, ratio float64) {
	m := 0
	if msgs {
		m = 1
	}
	h := at / 3600
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	i := h % 2
	if v.c.Slot[m][i] != h {
		v.c.Slot[m][i], v.c.SumLog[m][i], v.c.N[m][i] = h, 0, 0
	}
	v.c.SumLog[m][i] += math.Max(-3, math.Min(3, math.Log(math.Max(ratio, 1e-6))))
	v.c.N[m][i]++
}

// shift returns the cohort's geometric-mean ratio over the current and
// previous hour (>= 1), or 1 when too few windows were seen.
func (v cohortView) shift(msgs bool, at int64, minN int) float64 {
	m := 0
	if msgs {
		m = 1
	}
	h := at / 3600
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	var sum float64
	var n int32
	for i := range 2 {
		if d := h - v.c.Slot[m][i]; d >= 0 && d <= 1 {
			sum += v.c.SumLog[m][i]
			n += v.c.N[m][i]
		}
	}
	if int(n) < minN {
		return 1
	}
	return math.Max(1, math.Exp(sum/float64(n)))
}

// shapeMin is how many learned windows of other devices an hour needs
// before a device that never saw it is compared with the cohort's shape.
const shapeMin = 3

// learnShape adds one learned window of hour bucket b, as its rate over
// the device's global level.
func (v cohortView) learnShape(m, b int, ratio float64) {
	x := math.Max(-5, math.Min(5, math.Log(math.Max(ratio, 1e-6))))
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	n := v.c.ShapeN[m][b]
	a := math.Max(0.05, 1/float64(n+1))
	v.c.Shape[m][b] += float32(a * (x - float64(v.c.Shape[m][b])))
	if n < 65535 {
		v.c.ShapeN[m][b]++
	}
}

// shape returns the cohort's level of hour bucket b relative to a
// device's global level, or 0 when too few windows were learned. Early in
// an hour its own windows have not closed yet: the hour before (same kind
// of day) stands in for it.
func (v cohortView) shape(m, b int) float64 {
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	for _, x := range [2]int{b, b/24*24 + (b%24+23)%24} {
		if v.c.ShapeN[m][x] >= shapeMin {
			return math.Exp(float64(v.c.Shape[m][x]))
		}
	}
	return 0
}

// pending records that a device of the cohort started spiking at now.
func (v cohortView) pending(m int, now int64) {
	h := now / 3600
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	i := h % 2
	if v.c.PendSlot[m][i] != h {
		v.c.PendSlot[m][i], v.c.PendN[m][i] = h, 0
	}
	v.c.PendN[m][i]++
}

// fleetWide reports whether enough of the cohort started spiking in the
// current or previous hour for the change to be the cohort's, not one
// device's.
func (v cohortView) fleetWide(m int, now int64, share float64) bool {
	h := now / 3600
	v.e.cohortMu.Lock()
	defer v.e.cohortMu.Unlock()
	var n int32
	for i := range 2 {
		if d := h - v.c.PendSlot[m][i]; d >= 0 && d <= 1 {
			n += v.c.PendN[m][i]
		}
	}
	return n >= 3 && float64(n) >= share*float64(v.c.Devices)
}
