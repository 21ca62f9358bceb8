package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/firmware"
)

// Job is a firmware job on devices/{id}/ota/job (DEVICE_PROTOCOL.md).
type Job struct {
	Job       string          `json:"job"`
	Campaign  string          `json:"campaign,omitempty"`
	Manifest  json.RawMessage `json:"manifest"`
	Keys      json.RawMessage `json:"keys"`
	URL       string          `json:"url"`
	Emergency bool            `json:"emergency,omitempty"`
}

// Job states reported on devices/{id}/ota/status.
const (
	StateReceived    = "received"
	StateDownloading = "downloading"
	StateVerified    = "verified"
	StateApplying    = "applying"
	StateSucceeded   = "succeeded"
	StateFailed      = "failed"
	StateRolledBack  = "rolled_back"
	StateRefused     = "refused"
)

// Errors of firmware jobs besides the firmware package's sentinels
// (firmware.ErrSignature, ErrExpired, ErrRollback, ErrWrongModel,
// ErrDowngrade, ErrDigest, ErrSize), all reported as refused.
var (
	// ErrBadJob: the job is not a JSON object with a job id, a manifest,
	// a keys document and an https url.
	ErrBadJob = errors.New("agent: malformed firmware job")
	// ErrNoRoot: no OTA root key was provisioned; nothing can be trusted.
	ErrNoRoot = errors.New("agent: no OTA root key provisioned")
	// ErrBootCheck: the new slot failed its boot check.
	ErrBootCheck = errors.New("agent: boot check failed")
)

// Status is the payload of devices/{id}/ota/status.
type Status struct {
	Job      string `json:"job"`
	State    string `json:"state"`
	Version  string `json:"version,omitempty"`
	Digest   string `json:"digest,omitempty"`
	Progress int    `json:"progress"` // percent
	Reason   string `json:"reason,omitempty"`
	TS       string `json:"ts"`
}

// parseJob decodes a job payload (untrusted bytes, FuzzParseJob).
func parseJob(b []byte) (Job, error) {
	var j Job
	if len(b) > MaxPayload {
		return j, fmt.Errorf("%w: %d bytes", ErrBadJob, len(b))
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return j, fmt.Errorf("%w: not a JSON object", ErrBadJob)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&j); err != nil {
		return Job{}, fmt.Errorf("%w: %v", ErrBadJob, err)
	}
	if dec.More() {
		return Job{}, fmt.Errorf("%w: trailing data", ErrBadJob)
	}
	if j.Job == "" || len(j.Job) > 128 {
		return Job{}, fmt.Errorf("%w: job id must be 1 to 128 characters", ErrBadJob)
	}
	return j, nil
}

// validate checks what parseJob leaves to the job's own fields; a job that
// fails here has an id to report the refusal to.
func (j *Job) validate() error {
	if len(j.Manifest) == 0 || string(j.Manifest) == "null" {
		return fmt.Errorf("%w: manifest missing", ErrBadJob)
	}
	if len(j.Keys) == 0 || string(j.Keys) == "null" {
		return fmt.Errorf("%w: keys document missing", ErrBadJob)
	}
	u, err := url.Parse(j.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%w: url must be https", ErrBadJob)
	}
	return nil
}

func (a *Agent) jobLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-a.jobs:
			a.handleJob(ctx, b)
		}
	}
}

func (a *Agent) report(s Status) {
	s.TS = a.now()
	a.enqueue(a.topic("ota/status"), s)
}

// handleJob runs one firmware job to its end: refused, failed, or applied
// and rebooted into (the boot check then reports succeeded or
// rolled_back).
func (a *Agent) handleJob(ctx context.Context, b []byte) {
	job, err := parseJob(b)
	if err != nil {
		a.log.Warn("agent: firmware job refused", "device", a.cfg.Device, "err", err)
		return
	}
	st := a.snapshot()
	if job.Job == st.LastJob && st.LastState != "" {
		// A redelivery of a finished job: say again how it ended.
		a.report(Status{Job: job.Job, State: st.LastState, Version: st.running().Version, Digest: st.running().Digest,
			Progress: 100, Reason: st.LastReason})
		return
	}
	if st.Trial != nil {
		a.report(Status{Job: job.Job, State: StateFailed, Reason: "another update is being boot-checked"})
		return
	}
	a.report(Status{Job: job.Job, State: StateReceived})
	m, err := a.verifyJob(&job)
	if err != nil {
		a.finishJob(job.Job, StateRefused, err, Slot{})
		return
	}
	rel := Slot{Version: m.Signed.Version, Digest: m.Signed.SHA256}
	part, err := a.download(ctx, &job, m)
	switch {
	case err == nil:
	case errors.Is(err, firmware.ErrDigest), errors.Is(err, firmware.ErrSize):
		a.finishJob(job.Job, StateRefused, err, rel)
		return
	case ctx.Err() != nil:
		return // stopping; the partial download is resumed next time
	default:
		a.finishJob(job.Job, StateFailed, err, rel)
		return
	}
	a.report(Status{Job: job.Job, State: StateVerified, Version: rel.Version, Digest: rel.Digest, Progress: 100})
	a.report(Status{Job: job.Job, State: StateApplying, Version: rel.Version, Digest: rel.Digest, Progress: 100})
	if err := a.apply(job.Job, part, rel); err != nil {
		a.finishJob(job.Job, StateFailed, err, rel)
		return
	}
	a.log.Info("agent: update applied; rebooting into it", "device", a.cfg.Device, "job", job.Job, "version", rel.Version)
	a.Reboot()
}

// verifyJob runs every check that needs no artifact, in the protocol's
// order: keys document against the root (signature, expiry, rollback),
// manifest signatures (threshold, expiry), then model and anti-rollback.
// The accepted keys-document version is remembered.
func (a *Agent) verifyJob(job *Job) (*firmware.Manifest, error) {
	if err := job.validate(); err != nil {
		return nil, err
	}
	if a.cfg.OTARoot == nil {
		return nil, ErrNoRoot
	}
	if a.cfg.Model == "" {
		return nil, fmt.Errorf("%w: this device has no model configured", firmware.ErrWrongModel)
	}
	st := a.snapshot()
	now := a.cfg.Clock.Now()
	m, keys, err := firmware.Verify(job.Manifest, job.Keys, a.cfg.OTARoot, st.KeysVersion, now)
	if err != nil {
		return nil, err
	}
	if err := firmware.VerifyForDevice(m, a.cfg.Model, st.running().Version, now); err != nil {
		return nil, err
	}
	if keys.Signed.Version > st.KeysVersion {
		if err := a.updateState(func(p *persisted) { p.KeysVersion = max(p.KeysVersion, keys.Signed.Version) }); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (a *Agent) updateState(fn func(p *persisted)) error {
	a.stMu.Lock()
	defer a.stMu.Unlock()
	next := a.st.clone()
	fn(&next)
	if err := saveState(a.cfg.StateDir, next); err != nil {
		return err
	}
	a.st = next
	return nil
}

// finishJob records and reports a job's final state.
func (a *Agent) finishJob(job, state string, cause error, rel Slot) {
	reason := ""
	if cause != nil {
		reason = cause.Error()
	}
	if err := a.updateState(func(p *persisted) { p.LastJob, p.LastState, p.LastReason = job, state, reason }); err != nil {
		a.log.Error("agent: cannot record the job's outcome", "device", a.cfg.Device, "err", err)
	}
	a.log.Info("agent: firmware job ended", "device", a.cfg.Device, "job", job, "state", state, "reason", reason)
	a.report(Status{Job: job, State: state, Version: rel.Version, Digest: rel.Digest, Reason: reason})
}

const downloadAttempts = 5

// download fetches the artifact into download/<sha256>.part, resuming a
// partial file with Range, and verifies its size and SHA-256. It never
// writes more than the manifest's size.
func (a *Agent) download(ctx context.Context, job *Job, m *firmware.Manifest) (string, error) {
	part := filepath.Join(a.cfg.StateDir, "download", m.Signed.SHA256+".part")
	c := &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: a.cfg.ServerCA, ServerName: a.cfg.ServerName, MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c := a.currentIdentity().cert
				return &c, nil
			}},
	}}
	defer c.CloseIdleConnections()
	var last error
	for attempt := 0; attempt < downloadAttempts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-a.cfg.Clock.After(a.cfg.Backoff.Delay(attempt, a.cfg.Rand())):
			}
		}
		done, err := a.fetch(ctx, c, job, m, part)
		if err == nil && done {
			break
		}
		if errors.Is(err, firmware.ErrSize) {
			os.Remove(part)
			return "", err
		}
		last = err
		a.log.Warn("agent: artifact download interrupted", "device", a.cfg.Device, "job", job.Job, "attempt", attempt+1, "err", err)
		if attempt == downloadAttempts-1 {
			return "", fmt.Errorf("agent: download: %w", last)
		}
	}
	sum, n, err := fileDigest(part)
	if err != nil {
		return "", fmt.Errorf("agent: download: %w", err)
	}
	if n != m.Signed.Size {
		os.Remove(part)
		return "", fmt.Errorf("%w: downloaded %d bytes, manifest says %d", firmware.ErrSize, n, m.Signed.Size)
	}
	if sum != m.Signed.SHA256 {
		os.Remove(part)
		return "", fmt.Errorf("%w: downloaded SHA-256 %s, manifest says %s", firmware.ErrDigest, sum, m.Signed.SHA256)
	}
	return part, nil
}

// fetch makes one request, appending to part from its current size.
// done reports that part holds the whole artifact.
func (a *Agent) fetch(ctx context.Context, c *http.Client, job *Job, m *firmware.Manifest, part string) (done bool, err error) {
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, err
	}
	size := m.Signed.Size
	if have > size {
		if err := f.Truncate(0); err != nil {
			return false, err
		}
		have, _ = f.Seek(0, io.SeekStart)
	}
	if have == size {
		return true, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, job.URL, nil)
	if err != nil {
		return false, err
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	a.report(Status{Job: job.Job, State: StateDownloading, Version: m.Signed.Version, Digest: m.Signed.SHA256,
		Progress: int(have * 100 / size)})
	resp, err := c.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	// The server's own idea of the artifact's length, when it says one,
	// must be the manifest's: a shorter or longer file is refused at once.
	total := int64(-1)
	switch resp.StatusCode {
	case http.StatusOK:
		total = resp.ContentLength
	case http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable:
		total = contentRangeTotal(resp.Header.Get("Content-Range"))
	}
	if total >= 0 && total != size {
		return false, fmt.Errorf("%w: the server offers %d bytes, the manifest says %d", firmware.ErrSize, total, size)
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != have {
			return false, fmt.Errorf("server answered range %q to a request from %d", resp.Header.Get("Content-Range"), have)
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // the server ignored Range: start over
			if err := f.Truncate(0); err != nil {
				return false, err
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return false, err
			}
			have = 0
		}
	default:
		return false, fmt.Errorf("artifact: %s", resp.Status)
	}
	n, err := io.Copy(f, io.LimitReader(resp.Body, size-have+1))
	if have+n > size {
		return false, fmt.Errorf("%w: the server sent more than the manifest's %d bytes", firmware.ErrSize, size)
	}
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if err != nil {
		return false, err
	}
	if have+n < size {
		return false, fmt.Errorf("artifact: connection ended at %d of %d bytes", have+n, size)
	}
	return true, nil
}

// contentRangeTotal reads the complete length of "bytes START-END/SIZE"
// or "bytes */SIZE" (-1 when absent or unknown).
func contentRangeTotal(h string) int64 {
	i := strings.LastIndexByte(h, '/')
	if !strings.HasPrefix(h, "bytes ") || i < 0 {
		return -1
	}
	n, err := strconv.ParseInt(h[i+1:], 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// contentRangeStart reads the first byte position of "bytes START-END/SIZE".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := bytes.CutPrefix([]byte(h), []byte("bytes "))
	if !ok {
		return 0, false
	}
	i := bytes.IndexByte(rest, '-')
	if i <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:i]), 10, 64)
	return n, err == nil
}

// apply writes the verified artifact into the inactive slot, checks it
// there, and records the trial boot: the next boot runs from the new slot
// and returns to the previous one unless the boot check passes.
func (a *Agent) apply(job, part string, rel Slot) error {
	st := a.snapshot()
	target := other(st.Active)
	dst := slotPath(a.cfg.StateDir, target)
	if err := copyFileSync(part, dst); err != nil {
		return fmt.Errorf("agent: write slot %s: %w", target, err)
	}
	if sum, _, err := fileDigest(dst); err != nil || sum != rel.Digest {
		return fmt.Errorf("agent: slot %s reads back wrong (%v)", target, err)
	}
	os.Remove(part)
	return a.updateState(func(p *persisted) {
		p.Trial = &trial{Job: job, Prev: p.Active}
		p.Slots[target] = rel
		p.Active = target
	})
}

func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// defaultBootCheck re-reads the slot and compares its digest.
func defaultBootCheck(_ context.Context, b BootInfo) error {
	sum, _, err := fileDigest(b.Path)
	if err != nil {
		return err
	}
	if sum != b.Digest {
		return fmt.Errorf("slot %s digest %s, want %s", b.Slot, sum, b.Digest)
	}
	return nil
}

// finishTrial runs at boot: an update booted into is confirmed by the boot
// check (succeeded) or abandoned for the previous slot (rolled_back).
func (a *Agent) finishTrial(ctx context.Context) {
	st := a.snapshot()
	if st.Trial == nil {
		return
	}
	run := st.running()
	check := a.cfg.BootCheck
	if check == nil {
		check = defaultBootCheck
	}
	err := check(ctx, BootInfo{Slot: st.Active, Path: slotPath(a.cfg.StateDir, st.Active), Version: run.Version, Digest: run.Digest})
	tr := *st.Trial
	if err == nil {
		a.log.Info("agent: update confirmed", "device", a.cfg.Device, "job", tr.Job, "version", run.Version)
		if uerr := a.updateState(func(p *persisted) {
			p.Trial = nil
			p.LastJob, p.LastState, p.LastReason = tr.Job, StateSucceeded, ""
		}); uerr != nil {
			a.log.Error("agent: cannot record the update", "device", a.cfg.Device, "err", uerr)
		}
		a.report(Status{Job: tr.Job, State: StateSucceeded, Version: run.Version, Digest: run.Digest, Progress: 100})
		return
	}
	reason := fmt.Errorf("%w: %v; back on slot %s", ErrBootCheck, err, tr.Prev).Error()
	a.log.Warn("agent: update failed its boot check; rolling back", "device", a.cfg.Device, "job", tr.Job, "err", err)
	if uerr := a.updateState(func(p *persisted) {
		p.Active = tr.Prev
		p.Trial = nil
		p.LastJob, p.LastState, p.LastReason = tr.Job, StateRolledBack, reason
	}); uerr != nil {
		a.log.Error("agent: cannot record the rollback", "device", a.cfg.Device, "err", uerr)
	}
	prev := a.snapshot().running()
	a.report(Status{Job: tr.Job, State: StateRolledBack, Version: prev.Version, Digest: prev.Digest, Progress: 100, Reason: reason})
}
