package ota

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/event"
)

// Target states. A target starts pending, becomes sent when its job is
// published, then follows the device's ota/status reports
// (docs/DEVICE_PROTOCOL.md). Succeeded, failed, rolled_back, refused and
// timeout are final, except that a succeeded target may still report
// rolled_back (its new slot failed the boot check).
const (
	TargetPending     = "pending"
	TargetSent        = "sent"
	TargetReceived    = "received"
	TargetDownloading = "downloading"
	TargetVerified    = "verified"
	TargetApplying    = "applying"
	TargetSucceeded   = "succeeded"
	TargetFailed      = "failed"
	TargetRolledBack  = "rolled_back"
	TargetRefused     = "refused"
	TargetTimeout     = "timeout" // no final report before the wave's timeout
)

// inFlight reports whether a target holds a download slot.
func inFlight(s string) bool {
	switch s {
	case TargetSent, TargetReceived, TargetDownloading, TargetVerified, TargetApplying:
		return true
	}
	return false
}

func final(s string) bool {
	switch s {
	case TargetSucceeded, TargetFailed, TargetRolledBack, TargetRefused, TargetTimeout:
		return true
	}
	return false
}

// Final reports whether a target state is an outcome (nothing more will
// be sent to the device by its campaign).
func Final(state string) bool { return final(state) }

func failure(s string) bool { return s == TargetFailed || s == TargetRolledBack || s == TargetRefused }

// Errors of the campaign engine.
var (
	// ErrUnknownJob: a status report names no job of an open campaign
	// for that device.
	ErrUnknownJob = errors.New("ota: unknown job")
	// ErrBadStatus: a status report is not a valid ota/status payload.
	ErrBadStatus = errors.New("ota: malformed status report")
	// ErrCampaignState: the operation is not allowed in the campaign's
	// current state (resume a cancelled campaign, pause a completed one).
	ErrCampaignState = errors.New("ota: campaign state does not allow this")
	// ErrBadSpec: a campaign definition is invalid.
	ErrBadSpec = errors.New("ota: invalid campaign")
)

// Selector chooses a campaign's devices among the tenant's registry. Model
// is required and must be one the release targets; the other fields
// narrow the selection. Revoked, suspended and decommissioned devices are
// never targeted; quarantined devices are (an update is their way back).
type Selector struct {
	Model    string           `json:"model"`
	Group    string           `json:"group,omitempty"`
	Tag      string           `json:"tag,omitempty"`      // key or key=value
	Firmware string           `json:"firmware,omitempty"` // only devices running this version
	Devices  []event.DeviceID `json:"devices,omitempty"`  // only these devices
}

// Gate is checked when a wave ends (every target final, or the wave
// timed out) and continuously for failures.
type Gate struct {
	// MinSuccess is the share of the wave's targets that must report
	// succeeded (0..1; default 0.95).
	MinSuccess *float64 `json:"min_success,omitempty"`
	// MaxFailure is the share that may fail, roll back or refuse (0..1;
	// default 0.05). Crossing it stops the wave at once.
	MaxFailure *float64 `json:"max_failure,omitempty"`
	// MaxAlertRise is how many more security alerts the updated devices
	// of the wave may raise since the wave started than in the same span
	// before it (default 0: no rise).
	MaxAlertRise int `json:"max_alert_rise"`
	// OnFail is "pause" (default) or "abort".
	OnFail string `json:"on_fail,omitempty"`
	// WaveTimeoutS ends a wave whose targets have not all reported
	// (seconds; default the engine's). Unreported targets become timeout.
	WaveTimeoutS int `json:"wave_timeout_s,omitempty"`
}

// Window is a daily maintenance window in UTC, "HH:MM" to "HH:MM"; an end
// before the start wraps past midnight.
type Window struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// Spec is what an operator asks for when creating a campaign.
type Spec struct {
	Name     string   `json:"name,omitempty"`
	Release  string   `json:"release"` // artifact SHA-256 of a release in the catalog
	Selector Selector `json:"selector"`
	// Waves are cumulative percentages of the targets, increasing, the
	// last 100 (default [1, 10, 50, 100]).
	Waves   []float64 `json:"waves,omitempty"`
	Gate    Gate      `json:"gate"`
	Windows []Window  `json:"windows,omitempty"` // none: any time
	// MaxConcurrent caps the campaign's targets between sent and a final
	// state (downloads in progress); 0: the engine's default.
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// Emergency rolls out to every remaining target in one wave, outside
	// maintenance windows (security fixes). Gates still stop it.
	Emergency bool `json:"emergency,omitempty"`

	// Set by the engine.
	Accepted []int  `json:"accepted,omitempty"` // waves whose failed gate an operator overrode by resuming
	Version  string `json:"version,omitempty"`  // the release's version
	Targets  int    `json:"targets,omitempty"`  // how many devices were selected
}

const (
	maxWaves       = 20
	maxSpecDevices = 100_000
	maxNameLen     = 200
)

var defaultWaves = []float64{1, 10, 50, 100}

func (s *Spec) normalize() error {
	if !firmware.IsHex(s.Release, 32) {
		return fmt.Errorf("%w: release must be the 64-hex SHA-256 of a catalog release", ErrBadSpec)
	}
	if len(s.Name) > maxNameLen {
		return fmt.Errorf("%w: name longer than %d", ErrBadSpec, maxNameLen)
	}
	if err := firmware.ValidModel(s.Selector.Model); err != nil {
		return fmt.Errorf("%w: selector: %w", ErrBadSpec, err)
	}
	if len(s.Selector.Devices) > maxSpecDevices {
		return fmt.Errorf("%w: more than %d devices listed", ErrBadSpec, maxSpecDevices)
	}
	if len(s.Waves) == 0 {
		s.Waves = append([]float64(nil), defaultWaves...)
	}
	if len(s.Waves) > maxWaves {
		return fmt.Errorf("%w: more than %d waves", ErrBadSpec, maxWaves)
	}
	prev := 0.0
	for _, w := range s.Waves {
		if math.IsNaN(w) || w <= prev || w > 100 {
			return fmt.Errorf("%w: waves must be increasing percentages in (0, 100], got %v", ErrBadSpec, s.Waves)
		}
		prev = w
	}
	if prev != 100 {
		return fmt.Errorf("%w: the last wave must be 100, got %v", ErrBadSpec, s.Waves)
	}
	for _, p := range []*float64{s.Gate.MinSuccess, s.Gate.MaxFailure} {
		if p != nil && (math.IsNaN(*p) || *p < 0 || *p > 1) {
			return fmt.Errorf("%w: gate ratios must be within 0..1", ErrBadSpec)
		}
	}
	if s.Gate.MinSuccess == nil {
		v := 0.95
		s.Gate.MinSuccess = &v
	}
	if s.Gate.MaxFailure == nil {
		v := 0.05
		s.Gate.MaxFailure = &v
	}
	if s.Gate.MaxAlertRise < 0 || s.Gate.WaveTimeoutS < 0 || s.MaxConcurrent < 0 {
		return fmt.Errorf("%w: max_alert_rise, wave_timeout_s and max_concurrent must not be negative", ErrBadSpec)
	}
	switch s.Gate.OnFail {
	case "":
		s.Gate.OnFail = "pause"
	case "pause", "abort":
	default:
		return fmt.Errorf("%w: gate on_fail must be pause or abort", ErrBadSpec)
	}
	for _, w := range s.Windows {
		if _, err := minuteOfDay(w.Start); err != nil {
			return err
		}
		if _, err := minuteOfDay(w.End); err != nil {
			return err
		}
	}
	return nil
}

func minuteOfDay(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(h) != 2 || len(m) != 2 || hh < 0 || hh > 23 || mm < 0 || mm > 59 {
		return 0, fmt.Errorf("%w: window time %q is not HH:MM", ErrBadSpec, s)
	}
	return hh*60 + mm, nil
}

// inWindow reports whether t falls in one of ws (always true without
// windows).
func inWindow(ws []Window, t time.Time) bool {
	if len(ws) == 0 {
		return true
	}
	t = t.UTC()
	now := t.Hour()*60 + t.Minute()
	for _, w := range ws {
		a, _ := minuteOfDay(w.Start)
		b, _ := minuteOfDay(w.End)
		if a <= b && now >= a && now < b || a > b && (now >= a || now < b) {
			return true
		}
	}
	return false
}

// waveSizes splits n targets into cumulative percentage waves: wave i
// ends at ceil(n*p_i/100) targets, and every wave gets at least one target
// while targets remain.
func waveSizes(n int, waves []float64) []int {
	out := make([]int, len(waves))
	prev := 0
	for i, p := range waves {
		end := int(math.Ceil(float64(n) * p / 100))
		if end <= prev && prev < n {
			end = prev + 1
		}
		end = min(end, n)
		out[i] = end - prev
		prev = end
	}
	return out
}

// Status is a device's ota/status report.
type Status struct {
	Job      string  `json:"job"`
	State    string  `json:"state"`
	Version  string  `json:"version,omitempty"`
	Digest   string  `json:"digest,omitempty"`
	Progress float64 `json:"progress,omitempty"`
	Reason   string  `json:"reason,omitempty"`
}

const maxReasonLen = 500

// gatePrefix starts the reason of a campaign stopped by a gate.
const gatePrefix = "gate of wave "

// ParseStatus decodes an ota/status payload: one JSON object, unknown
// fields ignored, state one of the protocol's.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	if len(b) > firmware.MaxManifestSize {
		return s, fmt.Errorf("%w: %d bytes", ErrBadStatus, len(b))
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%w: %v", ErrBadStatus, err)
	}
	switch s.State {
	case TargetReceived, TargetDownloading, TargetVerified, TargetApplying,
		TargetSucceeded, TargetFailed, TargetRolledBack, TargetRefused:
	default:
		return s, fmt.Errorf("%w: state %q", ErrBadStatus, s.State)
	}
	if s.Job == "" || len(s.Job) > 300 {
		return s, fmt.Errorf("%w: job is required", ErrBadStatus)
	}
	if len(s.Reason) > maxReasonLen {
		s.Reason = s.Reason[:maxReasonLen]
	}
	if len(s.Version) > 64 || len(s.Digest) > 64 {
		return s, fmt.Errorf("%w: version or digest too long", ErrBadStatus)
	}
	return s, nil
}

// JobID is the job id of a device in a campaign: "<campaign>:<device>".
// Campaign ids never contain ':'.
func JobID(campaign string, device event.DeviceID) string { return campaign + ":" + string(device) }

func splitJob(job string) (string, event.DeviceID, bool) {
	c, d, ok := strings.Cut(job, ":")
	return c, event.DeviceID(d), ok && c != "" && d != ""
}

// Job is the payload of devices/{id}/ota/job.
type Job struct {
	Job       string          `json:"job"`
	Campaign  string          `json:"campaign"`
	Manifest  json.RawMessage `json:"manifest"`
	Keys      json.RawMessage `json:"keys"`
	URL       string          `json:"url"`
	Emergency bool            `json:"emergency"`
}

func newCampaignID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "c-" + hex.EncodeToString(b[:])
}
