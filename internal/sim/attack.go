package sim

import (
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/event"
)

// Defaults of attack parameters absent from a scenario.
const (
	defaultExfilFactor    = 10
	defaultExfilFor       = time.Hour
	defaultFloodFactor    = 20
	defaultFloodFor       = 30 * time.Minute
	defaultBruteAttempts  = 100
	defaultBruteFor       = 10 * time.Minute
	defaultFactoryAttempt = 10
	defaultFactoryFor     = 5 * time.Minute
	defaultMiraiTargets   = 200
	defaultMiraiFor       = 30 * time.Minute
	defaultScanTargets    = 500
	defaultScanFor        = 15 * time.Minute
	defaultBeaconEvery    = 5 * time.Minute
	defaultBeaconFor      = 2 * time.Hour
	defaultUnapprovedFor  = time.Hour
	defaultCloneFor       = 30 * time.Minute
	defaultRevokedFor     = 2 * time.Hour
	defaultOpenPort       = 23
)

// factoryUsernames are the well-known default logins Mirai-style bots try.
var factoryUsernames = []string{"root", "admin", "support", "user", "guest", "default", "ubnt", "service", "supervisor", "888888", "666666", "tech", "Administrator"}

// attackFor returns how long an attack lasts (its params.for or default).
func attackFor(a *Attack) time.Duration {
	if a.Params.For.D > 0 {
		return a.Params.For.D
	}
	switch a.Kind {
	case "data_exfiltration":
		return defaultExfilFor
	case "message_flood":
		return defaultFloodFor
	case "credential_bruteforce":
		return defaultBruteFor
	case "default_credentials":
		return defaultFactoryFor
	case "mirai_scan":
		return defaultMiraiFor
	case "port_scan":
		return defaultScanFor
	case "c2_beacon":
		return defaultBeaconFor
	case "unapproved_destination":
		return defaultUnapprovedFor
	case "clone":
		return defaultCloneFor
	case "revoked_cert_use":
		return defaultRevokedFor
	}
	return time.Hour
}

func orF(v, d float64) float64 {
	if v > 0 {
		return v
	}
	return d
}

func orI(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

func orD(v, d time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return d
}

// rollbackVersion returns params.to or a version below the cohort's.
func rollbackVersion(a *Attack, current string) string {
	if a.Params.To.Version != "" {
		return a.Params.To.Version
	}
	p := versionParts(current)
	switch {
	case len(p) > 0 && p[0] > 0:
		return fmt.Sprintf("%d.0.0", p[0]-1)
	case len(p) > 1 && p[1] > 0:
		return fmt.Sprintf("0.%d.0", p[1]-1)
	}
	return "0.0.0"
}

// attacker returns an external attacker address in 192.0.2.1-127 (never on
// the threat feed, never a legitimate destination).
func (s *dstate) attacker() netip.Addr { return addr4(192, 0, 2, byte(1+s.r.IntN(127))) }

// ticker runs f at start, start+step, ... for n calls (or until end).
func (s *dstate) ticker(start int64, step func() int64, n int, f func(now int64, i int)) {
	var run func(i int) func(now int64)
	run = func(i int) func(now int64) {
		return func(now int64) {
			f(now, i)
			if i+1 < n {
				s.schedule(now+max(step(), 1), run(i+1))
			}
		}
	}
	s.schedule(start, run(0))
}

func (s *dstate) flow(t int64, dst netip.Addr, port, proto int, bytes, packets float64) {
	s.emit(t, event.NetFlow, "flows", map[string]any{
		"src_ip": s.ipStr, "src_port": float64(32768 + s.r.IntN(28000)),
		"dst_ip": dst.String(), "dst_port": float64(port), "proto": float64(proto),
		"bytes": bytes, "packets": packets, "direction": "out",
	})
}

func (s *dstate) authFailed(t int64, reason, remote, username, serial string) {
	s.emit(t, event.MQTTAuthFailed, "broker", map[string]any{"reason": reason, "remote": remote, "username": username, "cert_serial": serial})
}

// cloneSuffix ends the session id of a clone's connection.
const cloneSuffix = "/clone"

// AttackerSession reports whether ev, an mqtt.connect or mqtt.disconnect,
// is of a session an attacker opened with the device's identity (a clone)
// rather than of the device's own. A platform that carries the devices'
// own sessions over real connections injects these at the broker's
// event path instead.
func AttackerSession(ev *event.Event) bool {
	return strings.HasSuffix(ev.Str("session_id"), cloneSuffix)
}

// reboot emits the disconnect and reconnect of a restart that ends at t.
func (s *dstate) reboot(t int64) {
	s.mqttDisconnect(t-int64(60*time.Second), "reboot")
	s.mqttConnect(t - int64(15*time.Second))
}

// inject schedules the events of attack a on this device.
func (s *dstate) inject(a *Attack) {
	g := s.g
	at := g.at(a.At.D)
	dur := int64(attackFor(a))
	p := &a.Params
	switch a.Kind {
	case "sim_swap":
		// the SIM is pulled from the device, which goes silent, and opens a
		// session from another device (another IMEI) nearby
		s.schedule(at-int64(3*time.Minute), func(now int64) {
			if s.online && !s.dead {
				s.session(now, "stop")
				s.mqttDisconnect(now+int64(60*time.Second), "keepalive_timeout")
			}
			s.dead = true
			s.online = false
		})
		thiefIMEI := imeiFor("thief-handset-"+string(s.d.ID), s.r.Uint64())
		where := destination(s.d.Home, s.r.Float64()*2*math.Pi, 2+8*s.r.Float64())
		sid := fmt.Sprintf("%08xff%02x", s.d.Index, 1)
		emit := func(now int64, status string, up float64) {
			la, lo := math.Floor(where.Lat*50), math.Floor(where.Lon*50)
			s.emit(now, event.NetSession, "radius", map[string]any{
				"status": status, "session_id": sid,
				"imsi": s.d.IMSI, "iccid": s.d.ICCID, "imei": thiefIMEI,
				"ip": s.d.IP.String(), "apn": s.d.APN, "cell": fmt.Sprintf("214-01-%d-%d", int(la), int(lo)),
				"lat": (la + 0.5) / 50, "lon": (lo + 0.5) / 50, "accuracy_m": float64(2000),
				"bytes_up": up, "bytes_down": math.Round(up * 3),
			})
		}
		s.schedule(at, func(now int64) { emit(now, "start", 0) })
		s.ticker(at+int64(15*time.Minute), func() int64 { return int64(15 * time.Minute) }, math.MaxInt32, func(now int64, _ int) {
			emit(now, "interim", math.Round(2000+s.r.Float64()*200000))
		})

	case "impossible_travel":
		to := Point{}
		if p.To.Point != nil {
			to = *p.To.Point
		} else {
			to = destination(s.d.Home, s.r.Float64()*2*math.Pi, 1500)
		}
		s.schedule(at-int64(2*time.Minute), func(now int64) {
			if !s.dead {
				s.emitLocation(now)
			}
		})
		s.schedule(at, func(now int64) {
			s.move(now)
			s.transit = nil
			s.pos, s.center, s.target = to, to, to
			if !s.dead {
				s.emitLocation(now)
			}
		})

	case "geofence_exit":
		fence := s.c.Fence()
		to := Point{}
		if p.To.Point != nil {
			to = *p.To.Point
		} else {
			to = destination(s.d.Home, s.r.Float64()*2*math.Pi, fence*3+5)
		}
		const cruise = 60.0 // km/h
		var depart func(now int64)
		depart = func(now int64) {
			s.move(now)
			from := s.pos
			// crossing point: first point of the straight line from->to
			// 3% beyond the fence
			lo, hi := 0.0, 1.0
			for range 40 {
				m := (lo + hi) / 2
				if haversineKm(interpolate(from, to, m), s.d.Home) > fence*1.03 {
					hi = m
				} else {
					lo = m
				}
			}
			dCross := haversineKm(from, interpolate(from, to, hi))
			left := float64(at-now) / float64(time.Hour)
			if left > 0 && dCross/left < cruise*0.9 {
				// too early: leave later so the crossing falls at the onset
				s.schedule(at-int64(dCross/cruise*float64(time.Hour)), depart)
				return
			}
			speed := 130.0
			if left > 0 {
				speed = math.Min(130, math.Max(20, dCross/left))
			}
			s.transit = &transit{from: from, to: to, start: now, speed: speed}
			step := int64(min(s.c.ReportEvery.D, 5*time.Minute))
			var tick func(now int64)
			tick = func(now int64) {
				if s.transit == nil || s.dead {
					return
				}
				if s.c.Mobility == MobilityStatic && s.online {
					s.emitLocation(now)
				}
				s.schedule(now+step, tick)
			}
			s.schedule(now+step, tick)
		}
		s.schedule(at-int64(2*time.Hour), depart)
		s.schedule(at, func(now int64) {
			if s.online && !s.dead {
				s.emitLocation(now)
			}
		})

	case "data_exfiltration":
		f := orF(p.Factor, defaultExfilFactor)
		s.exfil = append(s.exfil, window{from: at, to: at + dur, factor: f})
		s.schedule(at, func(now int64) {
			if s.online && !s.dead {
				s.publish(now, s.lognormal(s.c.UplinkBytes*f, s.c.CV()))
			}
		})

	case "message_flood":
		f := orF(p.Factor, defaultFloodFactor)
		step := int64(float64(s.every) / math.Max(f-1, 1))
		step = max(step, int64(50*time.Millisecond))
		n := int(dur / step)
		small := math.Max(16, s.c.UplinkBytes/(2*f))
		s.ticker(at, func() int64 { return s.jitter(step, 0.1) }, n, func(now int64, _ int) {
			if s.online && !s.dead {
				s.publish(now, s.lognormal(small, 0.2))
			}
		})

	case "credential_bruteforce", "default_credentials":
		n := orI(p.Attempts, defaultBruteAttempts)
		reason := "bad_password"
		if a.Kind == "default_credentials" {
			n = orI(p.Attempts, defaultFactoryAttempt)
			reason = "default_credentials"
		}
		step := dur / int64(n)
		src := []netip.Addr{s.attacker(), s.attacker()}
		s.ticker(at, func() int64 { return s.jitter(step, 0.3) }, n, func(now int64, i int) {
			remote := netip.AddrPortFrom(src[boolInt(i%7 == 6)], uint16(1024+s.r.IntN(60000))).String()
			user := string(s.d.ID)
			if reason == "default_credentials" {
				user = factoryUsernames[i%len(factoryUsernames)]
			}
			s.authFailed(now, reason, remote, user, "")
		})

	case "mirai_scan", "port_scan":
		n := orI(p.Targets, defaultMiraiTargets)
		if a.Kind == "port_scan" {
			n = orI(p.Targets, defaultScanTargets)
		}
		step := dur / int64(n)
		seen := map[uint32]bool{}
		host := deviceIP((s.d.Index + 1) % 4_000_000)
		s.ticker(at, func() int64 { return s.jitter(step, 0.3) }, n, func(now int64, _ int) {
			if s.dead {
				return
			}
			if a.Kind == "mirai_scan" {
				var v uint32
				for {
					v = 100<<24 | 64<<16 | uint32(s.r.IntN(1<<22))
					if !seen[v] {
						break
					}
				}
				seen[v] = true
				port := 23
				if s.r.IntN(5) == 0 {
					port = 2323
				}
				s.flow(now, addr4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)), port, 6, 60, 1)
				return
			}
			var port uint32
			for {
				port = uint32(1 + s.r.IntN(65535))
				if port != 23 && port != 2323 && !seen[port] {
					break
				}
			}
			seen[port] = true
			s.flow(now, host, int(port), 6, 44, 1)
		})

	case "c2_beacon":
		every := int64(orD(p.Every.D, defaultBeaconEvery))
		s.ticker(at, func() int64 { return s.jitter(every, 0.03) }, int(dur/every)+1, func(now int64, _ int) {
			if !s.dead {
				s.flow(now, g.c2, 443, 6, math.Round(200+600*s.r.Float64()), float64(3+s.r.IntN(4)))
			}
		})

	case "unapproved_destination":
		dst := addr4(192, 0, 2, byte(1+s.r.IntN(127)))
		every := int64(10 * time.Minute)
		s.ticker(at, func() int64 { return s.jitter(every, 0.1) }, int(dur/every)+1, func(now int64, _ int) {
			if !s.dead {
				b := math.Round(1000 + 4000*s.r.Float64())
				s.flow(now, dst, 443, 6, b, math.Ceil(b/400))
			}
		})

	case "clone":
		remote := netip.AddrPortFrom(addr4(100, 64+byte(s.r.IntN(64)), byte(s.r.IntN(256)), byte(1+s.r.IntN(254))), uint16(40000+s.r.IntN(20000))).String()
		sid := string(s.d.ID) + cloneSuffix
		s.schedule(at, func(now int64) {
			s.emit(now, event.MQTTConnect, "broker", map[string]any{
				"remote": remote, "client_id": string(s.d.ID), "cert_serial": s.d.CertSerial,
				"session_id": sid, "protocol": "3.1.1",
			})
		})
		s.schedule(at+dur, func(now int64) {
			s.emit(now, event.MQTTDisconnect, "broker", map[string]any{"reason": "client_disconnect", "session_id": sid, "remote": remote})
		})

	case "revoked_cert_use":
		lead := min(int64(10*time.Minute), (at-g.start)/2)
		rv := at - lead
		s.pushItem(item{t: rv, ctl: &Control{Time: time.Unix(0, rv).UTC(), RevokeDevice: s.d.ID}})
		s.schedule(rv, func(now int64) {
			if !g.PlatformRevokes {
				s.emit(now, event.CertRevoked, "identity", map[string]any{"serial": s.d.CertSerial, "reason": "operator"})
				s.emit(now, event.DeviceState, "registry", map[string]any{"from": "active", "to": "revoked", "reason": "operator"})
			}
			if s.online && !s.dead {
				s.mqttDisconnect(now+int64(time.Second), "revoked")
			}
			s.dead = true
		})
		backoff := int64(time.Minute)
		s.ticker(at, func() int64 {
			b := backoff
			backoff = min(2*backoff, int64(15*time.Minute))
			return s.jitter(b, 0.2)
		}, math.MaxInt32, func(now int64, _ int) {
			if now < at+dur {
				s.authFailed(now, "revoked_cert", netip.AddrPortFrom(s.d.IP, uint16(40000+s.r.IntN(20000))).String(), string(s.d.ID), s.d.CertSerial)
			}
		})

	case "rogue_firmware":
		var b [32]byte
		for i := range b {
			b[i] = byte(s.r.IntN(256))
		}
		rogue := hex.EncodeToString(b[:])
		s.schedule(at-int64(2*time.Minute), func(now int64) {
			if s.dead {
				return
			}
			s.reboot(at)
			s.schedule(at, func(now int64) {
				s.digest = rogue
				s.emit(now, event.FirmwareReport, "agent", map[string]any{"version": s.fw, "digest": rogue})
				s.emitMetrics(now + int64(5*time.Second))
			})
		})

	case "firmware_rollback":
		to := rollbackVersion(a, s.d.Firmware)
		s.schedule(at-int64(2*time.Minute), func(now int64) {
			if s.dead {
				return
			}
			s.reboot(at)
			s.schedule(at, func(now int64) {
				s.fw, s.digest = to, Digest(s.d.Model, to)
				s.emit(now, event.FirmwareReport, "agent", map[string]any{"version": s.fw, "digest": s.digest})
				s.emitMetrics(now + int64(5*time.Second))
			})
		})

	case "open_port":
		port := orI(p.Port, defaultOpenPort)
		s.schedule(at, func(now int64) {
			if s.dead {
				return
			}
			s.ports = append(s.ports, port)
			if s.online {
				s.emitMetrics(now)
			}
		})
	}
}

// campaign schedules this device's update to e.To, a few hours after e.At.
func (s *dstate) campaign(e *LifeEvent) {
	at := s.g.at(e.At.D) + s.r.Int64N(int64(3*time.Hour))
	var update func(now int64)
	update = func(now int64) {
		if s.dead {
			return
		}
		if !s.online {
			s.schedule(now+int64(10*time.Minute), update)
			return
		}
		s.mqttDisconnect(now, "reboot")
		s.mqttConnect(now + int64(40*time.Second))
		s.fw, s.digest = e.To, Digest(s.d.Model, e.To)
		s.volF = 1.05
		s.emit(now+int64(45*time.Second), event.FirmwareReport, "agent", map[string]any{"version": s.fw, "digest": s.digest})
	}
	s.schedule(at, update)
}
