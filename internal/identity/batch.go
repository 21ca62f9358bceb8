package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// Group commit. Concurrent Issue and Enrol calls sign in parallel, then
// queue their records; the first caller to find no commit running becomes
// the leader and commits everything queued in one store.Update, again and
// again until the queue is empty, while the others wait for their result.
// One fsync then carries many certificates, each with its own audit
// records.
//
// A batch is applied per tenant with a fixed number of statements whatever
// its size (see applyTenant): the audit head is read (and on PostgreSQL
// locked) once, the tokens and devices the batch names are read in bulk,
// every check and token use runs in memory, and the writes go out as bulk
// statements where the store has them (sqlstore/bulk.go). A refused entry (bad
// token, unknown device) changes nothing and does not affect the others. If
// a batch fails as a whole, its entries are retried one per transaction, so
// one bad entry never fails another caller's issuance.
//
// Linger. A commit costs a fixed part (transaction, audit head, token and
// WAL pages, fsync) whatever its size, so committing whatever is queued the
// moment the last commit ends (often a handful when the machine keeps up)
// spends that part again and again on CPU the signatures need. Before a
// commit the leader therefore waits while other issuances are being signed,
// until none is (all have queued, or failed), maxBatch are queued or
// maxLinger passes. A lone issuance commits at once; while it waits the
// signers have the cores, so waiting costs latency (at most maxLinger), not
// throughput.

type pendingIssue struct {
	iss Issued
	opt IssueOptions
	// token, if set, makes this a token enrolment: the token is checked
	// and spent in the batch's transaction, and refuses this entry alone.
	token *tokenUse
	// activate moves a registered device to active (an enrolment).
	activate bool

	// Results, set by the batch (which may run more than once).
	refused   error
	activated bool
	done      chan error
}

// tokenUse is what an enrolment presents: the token id and the SHA-256 of
// the whole secret.
type tokenUse struct {
	id   string
	hash [sha256.Size]byte
}

type groupCommit struct {
	queue   []*pendingIssue
	running bool
	// waiting: the leader lingers (see linger); wake (capacity 1) ends it.
	waiting bool
	wake    chan struct{}
}

// maxBatch bounds one transaction.
const maxBatch = 512

// maxLinger bounds how long a commit waits for issuances still signing
// (see linger); Service.maxLinger holds it (tests change it).
const maxLinger = 4 * time.Millisecond

// beginSign counts an issuance that will queue for the group commit once
// signed; commitEntry or abortSign uncounts it.
func (s *Service) beginSign() { s.signing.Add(1) }

// abortSign uncounts an issuance that failed before queueing; a lingering
// leader stops waiting if it was the last being signed.
func (s *Service) abortSign() {
	s.gcMu.Lock()
	if s.signing.Add(-1) == 0 {
		s.wakeLeader()
	}
	s.gcMu.Unlock()
}

// wakeLeader ends the leader's linger; call it with gcMu held.
func (s *Service) wakeLeader() {
	if s.gc.waiting {
		s.gc.waiting = false
		select {
		case s.gc.wake <- struct{}{}:
		default:
		}
	}
}

// linger waits while other issuances are being signed, until none is,
// maxBatch are queued or maxLinger passes. It is called by the leader with
// gcMu held and returns with it held.
func (s *Service) linger() {
	if q := len(s.gc.queue); q == 0 || q >= maxBatch || s.signing.Load() == 0 {
		return
	}
	if s.gc.wake == nil {
		s.gc.wake = make(chan struct{}, 1)
	}
	s.gc.waiting = true
	wake := s.gc.wake
	s.gcMu.Unlock()
	t := time.NewTimer(s.maxLinger)
	select {
	case <-wake:
	case <-t.C:
	}
	t.Stop()
	s.gcMu.Lock()
	s.gc.waiting = false
	select { // a wake sent after the timer fired
	case <-wake:
	default:
	}
}

// commitEntry queues p, counted by beginSign, for the group commit and
// waits for it: it returns p's refusal, if any, or the commit's error, and
// whether p's device was activated.
func (s *Service) commitEntry(ctx context.Context, p *pendingIssue) (activated bool, err error) {
	p.done = make(chan error, 1)
	s.gcMu.Lock()
	s.gc.queue = append(s.gc.queue, p)
	signing := s.signing.Add(-1)
	if s.gc.running {
		if signing == 0 || len(s.gc.queue) >= maxBatch {
			s.wakeLeader()
		}
		s.gcMu.Unlock()
		err = <-p.done
		return p.activated && err == nil, err
	}
	s.gc.running = true
	for {
		s.linger()
		batch := s.gc.queue
		if len(batch) > maxBatch {
			batch = batch[:maxBatch]
		}
		s.gc.queue = s.gc.queue[len(batch):]
		if len(batch) == 0 {
			s.gc.running = false
			s.gcMu.Unlock()
			break
		}
		s.gcMu.Unlock()
		s.commitBatch(context.WithoutCancel(ctx), batch)
		s.gcMu.Lock()
	}
	err = <-p.done
	return p.activated && err == nil, err
}

func (s *Service) commitBatch(ctx context.Context, batch []*pendingIssue) {
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error { return s.apply(ctx, tx, batch) })
	if err == nil || len(batch) == 1 {
		for _, p := range batch {
			if err == nil {
				p.done <- p.refused
			} else {
				p.done <- err
			}
		}
		return
	}
	s.log.WarnContext(ctx, "identity: batch failed, committing its entries one by one", "entries", len(batch), "err", err)
	for _, p := range batch {
		err := s.opt.Store.Update(ctx, func(tx store.Tx) error { return s.apply(ctx, tx, []*pendingIssue{p}) })
		if err == nil {
			err = p.refused
		}
		p.done <- err
	}
}

// apply writes batch in tx, tenant by tenant.
func (s *Service) apply(ctx context.Context, tx store.Tx, batch []*pendingIssue) error {
	var tenants []event.TenantID
	by := map[event.TenantID][]*pendingIssue{}
	for _, p := range batch {
		t := p.iss.Record.Tenant
		if _, ok := by[t]; !ok {
			tenants = append(tenants, t)
		}
		by[t] = append(by[t], p)
	}
	for _, t := range tenants {
		if err := s.applyTenant(ctx, tx, t, by[t]); err != nil {
			return err
		}
	}
	return nil
}

// Optional bulk forms of store operations (the SQL stores have them; see
// sqlstore/bulk.go). Without them applyTenant uses the single-row methods.
type (
	settingsGetMany interface {
		GetMany(ctx context.Context, tenant event.TenantID, keys []string) (map[string][]byte, error)
	}
	settingsPutMany interface {
		PutMany(ctx context.Context, tenant event.TenantID, keys []string, values [][]byte) error
	}
	devicesGetMany interface {
		GetMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID) (map[event.DeviceID]store.Device, error)
	}
	devicesSetStateMany interface {
		SetStateMany(ctx context.Context, tenant event.TenantID, ids []event.DeviceID, from, to store.DeviceState, at time.Time) error
	}
	certsCreateMany interface {
		CreateMany(ctx context.Context, cs []store.Certificate) error
	}
)

// spentToken is a token read in a batch, with its uses so far.
type spentToken struct {
	tok     *EnrolToken // nil: absent
	changed bool
}

// applyTenant writes the entries of one tenant: per entry (in order) the
// token use and its audit record, the device activation and its audit
// record, then the certificate and its audit record, as Enrol and Issue
// did one by one, but with one read of the audit head, one bulk read of
// the tokens and devices, and bulk writes.
func (s *Service) applyTenant(ctx context.Context, tx store.Tx, tenant event.TenantID, ps []*pendingIssue) error {
	now := s.clk.Now()
	// The audit head first: on PostgreSQL it locks the tenant's chain, so
	// the token and device reads below see every earlier commit (a token
	// cannot be spent twice by two processes).
	log, err := s.openLog(ctx, tx, tenant)
	if err != nil {
		return err
	}
	var keys []string
	var ids []event.DeviceID
	seenKey, seenID := map[string]bool{}, map[event.DeviceID]bool{}
	for _, p := range ps {
		p.refused, p.activated = nil, false // the store may run the batch again
		if p.token != nil && !seenKey[p.token.id] {
			seenKey[p.token.id] = true
			keys = append(keys, tokenKey(p.token.id))
		}
		if d := p.iss.Record.Device; (p.token != nil || p.activate) && !seenID[d] {
			seenID[d] = true
			ids = append(ids, d)
		}
	}
	raw, err := getSettings(ctx, tx, tenant, keys)
	if err != nil {
		return err
	}
	devs, err := getDevices(ctx, tx, tenant, ids)
	if err != nil {
		return err
	}
	toks := map[string]*spentToken{}
	for _, k := range keys {
		st := &spentToken{}
		if b, ok := raw[k]; ok {
			st.tok = new(EnrolToken)
			if err := json.Unmarshal(b, st.tok); err != nil {
				return fmt.Errorf("stored token %s: %w", k, err)
			}
		}
		toks[k] = st
	}
	var activate []event.DeviceID
	certs := make([]store.Certificate, 0, len(ps))
	for _, p := range ps {
		device := p.iss.Record.Device
		if p.token != nil {
			st := toks[tokenKey(p.token.id)]
			if p.refused = checkToken(st.tok, p.token, tenant, device, devs, now); p.refused != nil {
				continue
			}
			st.tok.Remaining--
			st.changed = true
			if err := log.add(ctx, tenant, now, p.opt.Actor, "enrol.token_use", "enrol_token/"+p.token.id,
				tokenUseDetails{Device: device, Remaining: st.tok.Remaining}); err != nil {
				return err
			}
		}
		if p.token != nil || p.activate {
			// A device the registry does not know is left alone (Issue
			// does not consult the registry).
			if d, ok := devs[device]; ok && d.State == store.StateRegistered {
				d.State, d.UpdatedAt = store.StateActive, now
				devs[device] = d
				activate = append(activate, device)
				p.activated = true
				if err := log.add(ctx, tenant, now, p.opt.Actor, "device.state", string(device),
					stateDetails{From: store.StateRegistered, Reason: "enrolled", To: store.StateActive}); err != nil {
					return err
				}
			}
		}
		r := p.iss.Record
		certs = append(certs, r)
		if err := log.add(ctx, tenant, now, p.opt.Actor, "cert.issue", "cert/"+r.Serial,
			issueDetails{Device: r.Device, Issuer: r.Issuer, NotAfter: r.NotAfter, Reason: p.opt.Reason}); err != nil {
			return err
		}
	}
	var putKeys []string
	var putValues [][]byte
	for _, k := range keys {
		if st := toks[k]; st.changed {
			b, err := json.Marshal(st.tok)
			if err != nil {
				return err
			}
			putKeys, putValues = append(putKeys, k), append(putValues, b)
		}
	}
	if err := putSettings(ctx, tx, tenant, putKeys, putValues); err != nil {
		return err
	}
	if err := activateDevices(ctx, tx, tenant, activate, devs, now); err != nil {
		return err
	}
	if err := createCerts(ctx, tx, certs); err != nil {
		return err
	}
	return log.flush(ctx)
}

// checkToken returns why tok does not let device enrol now, or nil.
func checkToken(tok *EnrolToken, use *tokenUse, tenant event.TenantID, device event.DeviceID, devs map[event.DeviceID]store.Device, now time.Time) error {
	switch {
	case tok == nil || tok.Tenant != tenant || subtle.ConstantTimeCompare(tok.Hash, use.hash[:]) != 1:
		return ErrTokenInvalid
	case !now.Before(tok.ExpiresAt):
		return ErrTokenExpired
	case tok.Remaining < 1:
		return ErrTokenUsed
	case tok.Device != "" && tok.Device != device:
		return fmt.Errorf("%w: token is for device %s", ErrTokenScope, tok.Device)
	}
	d, ok := devs[device]
	if !ok {
		return ErrUnknownDevice
	}
	if len(tok.Models) > 0 && !slices.Contains(tok.Models, d.Model) {
		return fmt.Errorf("%w: model %q", ErrTokenScope, d.Model)
	}
	return nil
}

// Audit details of the batch's records (fields in the order json.Marshal
// of a map would write them).
type (
	tokenUseDetails struct {
		Device    event.DeviceID `json:"device"`
		Remaining int            `json:"remaining"`
	}
	stateDetails struct {
		From   store.DeviceState `json:"from"`
		Reason string            `json:"reason"`
		To     store.DeviceState `json:"to"`
	}
	issueDetails struct {
		Device   event.DeviceID `json:"device"`
		Issuer   string         `json:"issuer"`
		NotAfter time.Time      `json:"not_after"`
		Reason   string         `json:"reason"`
	}
)

// batchLog appends a batch's audit records: to an [audit.Chain] written at
// flush with the default AuditFunc, else through Options.Audit one by one.
type batchLog struct {
	s     *Service
	tx    store.Tx
	chain *audit.Chain
}

func (s *Service) openLog(ctx context.Context, tx store.Tx, tenant event.TenantID) (*batchLog, error) {
	l := &batchLog{s: s, tx: tx}
	if s.customAudit {
		return l, nil
	}
	c, err := audit.OpenChain(ctx, tx, tenant)
	if err != nil {
		return nil, err
	}
	l.chain = c
	return l, nil
}

func (l *batchLog) add(ctx context.Context, tenant event.TenantID, at time.Time, actor, action, target string, details any) error {
	b, err := json.Marshal(details)
	if err != nil {
		return err
	}
	if actor == "" {
		actor = "system"
	}
	e := audit.Entry{Tenant: tenant, Time: at, Actor: actor, Action: action, Target: target, Details: b}
	if l.chain == nil {
		return l.s.opt.Audit(ctx, l.tx, e)
	}
	_, err = l.chain.Add(e)
	return err
}

func (l *batchLog) flush(ctx context.Context) error {
	if l.chain == nil {
		return nil
	}
	return l.chain.Flush(ctx)
}

func getSettings(ctx context.Context, tx store.Tx, tenant event.TenantID, keys []string) (map[string][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	if m, ok := tx.Settings().(settingsGetMany); ok {
		return m.GetMany(ctx, tenant, keys)
	}
	out := make(map[string][]byte, len(keys))
	for _, k := range keys {
		b, err := tx.Settings().Get(ctx, tenant, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return out, nil
}

func putSettings(ctx context.Context, tx store.Tx, tenant event.TenantID, keys []string, values [][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	if m, ok := tx.Settings().(settingsPutMany); ok {
		return m.PutMany(ctx, tenant, keys, values)
	}
	for i, k := range keys {
		if err := tx.Settings().Put(ctx, tenant, k, values[i]); err != nil {
			return err
		}
	}
	return nil
}

func getDevices(ctx context.Context, tx store.Tx, tenant event.TenantID, ids []event.DeviceID) (map[event.DeviceID]store.Device, error) {
	if len(ids) == 0 {
		return map[event.DeviceID]store.Device{}, nil
	}
	if m, ok := tx.Devices().(devicesGetMany); ok {
		return m.GetMany(ctx, tenant, ids)
	}
	out := make(map[event.DeviceID]store.Device, len(ids))
	for _, id := range ids {
		d, err := tx.Devices().Get(ctx, tenant, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		out[id] = d
	}
	return out, nil
}

// activateDevices writes the activation of ids (registered -> active, as
// devs now holds them).
func activateDevices(ctx context.Context, tx store.Tx, tenant event.TenantID, ids []event.DeviceID, devs map[event.DeviceID]store.Device, now time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	if m, ok := tx.Devices().(devicesSetStateMany); ok {
		return m.SetStateMany(ctx, tenant, ids, store.StateRegistered, store.StateActive, now)
	}
	for _, id := range ids {
		if err := tx.Devices().Update(ctx, devs[id]); err != nil {
			return err
		}
	}
	return nil
}

func createCerts(ctx context.Context, tx store.Tx, certs []store.Certificate) error {
	if m, ok := tx.Certificates().(certsCreateMany); ok && len(certs) > 1 {
		return m.CreateMany(ctx, certs)
	}
	for _, c := range certs {
		if err := tx.Certificates().Create(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// BatchRequest is one CSR of an [Service.IssueBatch].
type BatchRequest struct {
	Device event.DeviceID
	CSR    []byte
}

// BatchResult is the outcome of one BatchRequest: Err is set (wrapping
// [ErrBadCSR] or [ErrBadID] for bad input) or Issued is.
type BatchResult struct {
	Issued Issued
	Err    error
}

// IssueBatch issues many certificates of one tenant and stores all the good
// ones, each with its audit record, in one transaction. Bad requests get
// their own error and do not stop the others. The returned error is set
// only when nothing could be stored (then every result carries it too).
func (s *Service) IssueBatch(ctx context.Context, tenant event.TenantID, reqs []BatchRequest, opt IssueOptions) ([]BatchResult, error) {
	out := make([]BatchResult, len(reqs))
	var good []int
	for i, r := range reqs {
		o := opt
		csr, err := ParseCSR(r.CSR, tenant, r.Device)
		if err == nil {
			out[i].Issued, err = s.sign(ctx, tenant, r.Device, csr.PublicKey, &o)
		}
		if err != nil {
			out[i].Err = fmt.Errorf("identity: issue %s/%s: %w", tenant, r.Device, err)
			continue
		}
		good = append(good, i)
	}
	if len(good) == 0 {
		return out, nil
	}
	if opt.Actor == "" {
		opt.Actor = "system"
	}
	if opt.Reason == "" {
		opt.Reason = "issue"
	}
	ps := make([]*pendingIssue, len(good))
	for j, i := range good {
		ps[j] = &pendingIssue{iss: out[i].Issued, opt: opt}
	}
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error { return s.apply(ctx, tx, ps) })
	if err != nil {
		err = fmt.Errorf("identity: issue batch %s: %w", tenant, err)
		for _, i := range good {
			out[i] = BatchResult{Err: err}
		}
		return out, err
	}
	for _, i := range good {
		s.published(ctx, out[i].Issued, opt)
	}
	return out, nil
}
