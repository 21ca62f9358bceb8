package detect

import (
	"fmt"
	"net/netip"
	"strings"

	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/event"
)

// ---- sim.imei_mismatch ----

// SIMSwapSettings tunes sim.swap.
type SIMSwapSettings struct {
	// IMEIDigits is how many leading digits must match (14: the IMEI
	// without check digit, so IMEI and IMEISV of one device agree).
	IMEIDigits int `json:"imei_digits"`
}

var simSwapDetector = &Detector{
	Name: "sim.swap", Kind: alert.SIMIMEIMismatch, Severity: alert.High,
	Description: "A SIM (IMSI/ICCID) bound to a device opens a data session from a device with another IMEI.",
	Events:      []event.Kind{event.NetSession},
	defaults:    func() any { return &SIMSwapSettings{IMEIDigits: 14} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*SIMSwapSettings)
		imei, imsi, iccid := digits(c.ev.Str("imei")), c.ev.Str("imsi"), c.ev.Str("iccid")
		if imei == "" {
			imei = digits(c.ev.Str("imeisv")) // same first 14 digits
		}
		if imei == "" {
			return
		}
		p, ok := c.prof, c.hasProf
		if imsi != "" && c.e.opt.Directory != nil {
			if q, found := c.e.opt.Directory.ByIMSI(c.key.t, imsi); found {
				p, ok = q, true
			}
		}
		if !ok || p.IMEI == "" {
			return
		}
		if iccid != "" && p.ICCID != "" && iccid != p.ICCID && (imsi == "" || imsi != p.IMSI) {
			return // a different SIM altogether: not this binding
		}
		bound := digits(p.IMEI)
		n := min(s.IMEIDigits, len(imei), len(bound))
		if n > 0 && imei[:n] == bound[:n] {
			return
		}
		c.raiseFor(p.ID, d,
			fmt.Sprintf("SIM %s (bound to %s, IMEI %s) is in a device with IMEI %s", imsi, p.ID, p.IMEI, c.ev.Str("imei")),
			map[string]any{"imsi": imsi, "iccid": iccid, "bound_imei": p.IMEI, "seen_imei": c.ev.Str("imei"), "cell": c.ev.Str("cell"), "status": c.ev.Str("status")},
			*c.ev)
	},
}

func digits(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// ---- identity.clone_suspected ----

// CloneSettings tunes identity.clone.
type CloneSettings struct{}

type sess struct {
	ID   uint32
	Host netip.Addr
	At   int64
	Ev   string // remote as seen, for evidence
}

type sessState struct {
	S        [2]sess
	NetStart int64 // latest RADIUS start/stop of the device (unix s)
}

var cloneDetector = &Detector{
	Name: "identity.clone", Kind: alert.CloneSuspected, Severity: alert.Critical,
	Description: "A second broker session with the same certificate/client id from another address while the first is up (no disconnect, no new data session in between).",
	Events:      []event.Kind{event.MQTTConnect, event.MQTTDisconnect, event.NetSession},
	defaults:    func() any { return &CloneSettings{} },
	run: func(c *call, d *Detector, _ any) {
		ss := &c.st.Sess
		switch c.ev.Kind {
		case event.NetSession:
			if st := c.ev.Str("status"); st == "start" || st == "stop" {
				ss.NetStart = max(ss.NetStart, c.now)
			}
		case event.MQTTDisconnect:
			id := hash32(c.ev.Str("session_id"))
			for i := range ss.S {
				if ss.S[i].At != 0 && (ss.S[i].ID == id || c.ev.Str("session_id") == "") {
					ss.S[i] = sess{}
					break
				}
			}
		case event.MQTTConnect:
			remote := c.ev.Str("remote")
			host, _ := parseIP(hostOf(remote))
			id := hash32(c.ev.Str("session_id"))
			slot := -1
			for i := range ss.S {
				s := &ss.S[i]
				if s.At == 0 {
					if slot < 0 {
						slot = i
					}
					continue
				}
				if s.ID == id || s.Host == host || s.At < ss.NetStart {
					*s = sess{} // same session, takeover from the same place, or stale after re-attach
					if slot < 0 {
						slot = i
					}
					continue
				}
				c.raise(d,
					fmt.Sprintf("device %s connected from %s while its session from %s (since %s) is still up", c.key.d, remote, s.Ev, unixUTC(s.At)),
					map[string]any{"first_remote": s.Ev, "second_remote": remote, "cert_serial": c.ev.Str("cert_serial"), "client_id": c.ev.Str("client_id"), "first_since": unixUTC(s.At)},
					*c.ev)
			}
			if slot < 0 { // both slots busy: replace the older
				slot = 0
				if ss.S[1].At < ss.S[0].At {
					slot = 1
				}
			}
			ss.S[slot] = sess{ID: id, Host: host, At: c.now, Ev: remote}
		}
	},
}

// ---- identity.revoked_cert_use ----

// RevokedSettings tunes identity.revoked.
type RevokedSettings struct {
	// Reasons are mqtt.auth_failed reasons that mean a revoked identity.
	Reasons []string `json:"reasons"`
}

var revokedDetector = &Detector{
	Name: "identity.revoked", Kind: alert.RevokedCertUse, Severity: alert.High,
	Description: "A refused connect with a revoked certificate, or a connect by a device whose certificate or registry state is revoked.",
	Events:      []event.Kind{event.MQTTAuthFailed, event.MQTTConnect, event.CertRevoked, event.DeviceState},
	defaults:    func() any { return &RevokedSettings{Reasons: []string{"revoked_cert"}} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*RevokedSettings)
		a := &c.st.Auth
		switch c.ev.Kind {
		case event.CertRevoked:
			a.Revoked = true
		case event.DeviceState:
			switch c.ev.Str("to") {
			case "revoked", "retired", "decommissioned":
				a.Revoked = true
			case "active":
				a.Revoked = false
			}
		case event.MQTTAuthFailed:
			r := c.ev.Str("reason")
			for _, want := range s.Reasons {
				if r == want {
					c.raise(d, fmt.Sprintf("device %s tried to connect with a revoked certificate (serial %s) from %s", c.key.d, c.ev.Str("cert_serial"), c.ev.Str("remote")),
						map[string]any{"reason": r, "cert_serial": c.ev.Str("cert_serial"), "remote": c.ev.Str("remote")}, *c.ev)
					return
				}
			}
		case event.MQTTConnect:
			if a.Revoked || (c.hasProf && c.prof.State == "revoked") {
				c.raise(d, fmt.Sprintf("device %s connected although its identity is revoked", c.key.d),
					map[string]any{"cert_serial": c.ev.Str("cert_serial"), "remote": c.ev.Str("remote"), "registry_state": c.prof.State}, *c.ev)
			}
		}
	},
}

// ---- auth.bruteforce ----

// BruteforceSettings tunes auth.bruteforce.
type BruteforceSettings struct {
	Window    Duration `json:"window"`
	Threshold int      `json:"threshold"` // failures against one identity within Window
	// SourceThreshold is failures from one remote host within Window
	// (raised on the targeted device).
	SourceThreshold int `json:"source_threshold"`
	// Ignore lists reasons that are not guessing (identity state problems
	// and factory credentials, which auth.default_credentials reports).
	Ignore []string `json:"ignore_reasons"`
}

// counter counts events in a sliding window of 10 buckets.
type counter struct {
	N     [10]uint16
	Stamp [10]int32 // bucket number (unix s / width)
}

func (k *counter) add(now, width int64) int {
	if width <= 0 {
		width = 60
	}
	b := now / width
	i := b % 10
	if int64(k.Stamp[i]) != b {
		k.Stamp[i], k.N[i] = int32(b), 0
	}
	if k.N[i] < 65535 {
		k.N[i]++
	}
	sum := 0
	for j := range k.N {
		if d := b - int64(k.Stamp[j]); d >= 0 && d < 10 {
			sum += int(k.N[j])
		}
	}
	return sum
}

type authState struct {
	Fail    counter
	Revoked bool
	Users   [4]uint32 // distinct factory usernames tried recently
	UsersAt [4]int64
}

// srcWindow bounds how long an idle source counter is kept.
const srcWindow = time.Hour

type srcState struct {
	C    counter
	Last int64
}

const maxSources = 100_000

func ignored(reason string, ignore []string) bool {
	for _, r := range ignore {
		if r == reason {
			return true
		}
	}
	return false
}

var bruteforceDetector = &Detector{
	Name: "auth.bruteforce", Kind: alert.Bruteforce, Severity: alert.High,
	Description: "Many failed authentications against one identity, or from one source, within a window.",
	Events:      []event.Kind{event.MQTTAuthFailed},
	defaults: func() any {
		return &BruteforceSettings{Window: Duration(10 * time.Minute), Threshold: 8, SourceThreshold: 20,
			Ignore: []string{"default_credentials", "revoked_cert", "expired_cert", "unknown_cert", "state", "connect_rate"}}
	},
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*BruteforceSettings)
		if ignored(c.ev.Str("reason"), s.Ignore) {
			return
		}
		n := c.st.Auth.Fail.add(c.now, secs(s.Window)/10)
		if n >= s.Threshold {
			c.raise(d, fmt.Sprintf("%d failed logins against %s within %s", n, c.key.d, s.Window.D()),
				map[string]any{"failures": n, "threshold": s.Threshold, "window": s.Window.D().String(), "reason": c.ev.Str("reason"), "remote": c.ev.Str("remote")}, *c.ev)
		}
	},
}

// trackSource counts failures per remote host across identities and raises
// auth.bruteforce on the targeted device when one source crosses the
// threshold. Failures without a device are counted but cannot be raised.
func (e *Engine) trackSource(ev *event.Event, out []pending) []pending {
	host := hostOf(ev.Str("remote"))
	if host == "" {
		return out
	}
	b := e.bundleFor(ev.Tenant, "")
	s := b.cfg[indexOf(bruteforceDetector)].(*BruteforceSettings)
	if b.off[indexOf(bruteforceDetector)] || ignored(ev.Str("reason"), s.Ignore) {
		return out
	}
	now := ev.Time.Unix()
	k := string(ev.Tenant) + "\x00" + host
	e.srcMu.Lock()
	st := e.srcs[k]
	if st == nil {
		if len(e.srcs) >= maxSources {
			e.srcMu.Unlock()
			return out
		}
		st = &srcState{}
		e.srcs[k] = st
	}
	n := st.C.add(now, secs(s.Window)/10)
	st.Last = max(st.Last, now)
	e.srcMu.Unlock()
	if n >= s.SourceThreshold && ev.Device != "" {
		out = append(out, pending{det: bruteforceDetector, tenant: ev.Tenant, device: ev.Device, at: ev.Time, ev: Evidence{
			Summary: fmt.Sprintf("%d failed logins from %s within %s", n, host, s.Window.D()),
			Values:  map[string]any{"source": host, "failures_from_source": n, "threshold": s.SourceThreshold, "window": s.Window.D().String()},
			Events:  []event.Event{*ev},
		}})
	}
	return out
}

func indexOf(d *Detector) int {
	for i, b := range builtins {
		if b == d {
			return i
		}
	}
	return -1
}

// ---- auth.default_credentials ----

// DefaultCredsSettings tunes auth.default_credentials.
type DefaultCredsSettings struct {
	// DistinctUsers: this many distinct factory usernames failing against
	// one device within Window also count as a factory-credentials attack
	// (0, the default, disables it: a password dictionary attack does the
	// same and is auth.bruteforce's).
	DistinctUsers int      `json:"distinct_users"`
	Window        Duration `json:"window"`
}

var defaultCredsDetector = &Detector{
	Name: "auth.default_credentials", Kind: alert.DefaultCredentials, Severity: alert.High,
	Description: "Login attempts with well-known factory credentials (the Mirai list): reason default_credentials, a listed username/password pair, or several factory usernames in a row.",
	Events:      []event.Kind{event.MQTTAuthFailed},
	defaults:    func() any { return &DefaultCredsSettings{DistinctUsers: 0, Window: Duration(30 * time.Minute)} },
	run: func(c *call, d *Detector, cfg any) {
		s := cfg.(*DefaultCredsSettings)
		user, reason := c.ev.Str("username"), c.ev.Str("reason")
		vals := map[string]any{"username": user, "reason": reason, "remote": c.ev.Str("remote"), "list": "mirai-factory", "list_size": c.e.creds.Len()}
		if reason == "default_credentials" || (c.ev.Attrs["password"] != nil && c.e.creds.Pair(user, c.ev.Str("password"))) {
			c.raise(d, fmt.Sprintf("login to %s with factory credentials (user %q) from %s", c.key.d, user, c.ev.Str("remote")), vals, *c.ev)
			return
		}
		if s.DistinctUsers <= 0 || user == "" || !c.e.creds.User(user) {
			return
		}
		a := &c.st.Auth
		h := hash32(user)
		oldest, distinct := 0, 1
		for i := range a.Users {
			if a.UsersAt[i] < a.UsersAt[oldest] {
				oldest = i
			}
		}
		seen := false
		for i := range a.Users {
			if c.now-a.UsersAt[i] > secs(s.Window) || a.UsersAt[i] == 0 {
				continue
			}
			if a.Users[i] == h {
				a.UsersAt[i], seen = c.now, true
			} else {
				distinct++
			}
		}
		if !seen {
			a.Users[oldest], a.UsersAt[oldest] = h, c.now
		}
		if distinct >= s.DistinctUsers {
			vals["distinct_factory_users"] = distinct
			c.raise(d, fmt.Sprintf("%d factory usernames tried against %s within %s", distinct, c.key.d, s.Window.D()), vals, *c.ev)
		}
	},
}

func (c *call) raiseFor(dev event.DeviceID, d *Detector, summary string, values map[string]any, evs ...event.Event) {
	n := len(c.out)
	c.raise(d, summary, values, evs...)
	c.out[n].device = dev
}
