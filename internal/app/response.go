package app

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// startMass runs the mass-action runner beside the response engine (called
// by startDetection once the engine exists) and hands both to the API's
// playbook, approval and mass routes. Jobs interrupted by a restart resume
// after their cursor when Serve starts. Of the nodes of a deployment, only
// the one holding the mass-actions lease runs it; every node takes
// submissions.
func (a *App) startMass(ctx context.Context, eng *respond.Engine) error {
	o := respond.MassOptions{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "mass"), Publisher: a.bus}
	if a.identity != nil {
		o.Revocations = a.identity
	}
	if a.broker != nil {
		o.Sessions = a.broker
		o.Disconnecter = brokerKick{clusterKicker{a}}
	}
	m, err := respond.NewMass(o)
	if err != nil {
		return err
	}
	// One runner per deployment: the node holding the lease (lease.go).
	// Jobs submitted through another node are found at the next wake.
	a.underLease(ctx, leaseMass, func(ctx context.Context) error {
		ctx, stop := context.WithCancel(ctx)
		defer stop()
		woke := make(chan struct{})
		go func() {
			defer close(woke)
			t := time.NewTicker(leaseRenew)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					m.Wake()
				}
			}
		}()
		err := m.Serve(ctx)
		stop()
		<-woke
		return err
	})
	a.response.set(respond.Service{Engine: eng, Mass: m})
	return nil
}

// kicker closes a device's live sessions (*broker.Broker).
type kicker interface {
	Kick(t event.TenantID, d event.DeviceID, reason string) bool
}

// brokerKick is the mass runner's Disconnecter: an MQTT kick.
type brokerKick struct{ b kicker }

func (k brokerKick) Disconnect(_ context.Context, t respond.Target) error {
	k.b.Kick(t.Tenant, t.Device, t.Reason)
	return nil
}

// responseRef is the API's response service: the API starts before the
// detection plane that builds the engine, so it is set later (and stays
// unset with detection off, where the routes answer 503).
type responseRef struct {
	mu  sync.Mutex
	svc *respond.Service
}

var _ api.ResponseService = (*responseRef)(nil)

func (r *responseRef) set(s respond.Service) {
	r.mu.Lock()
	r.svc = &s
	r.mu.Unlock()
}

func (r *responseRef) get() (respond.Service, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svc == nil {
		return respond.Service{}, &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable,
			Message: "the response engine is not running on this server (detection off or still starting)"}
	}
	return *r.svc, nil
}

func (r *responseRef) ListPlaybooks(ctx context.Context, t event.TenantID) ([]respond.PlaybookInfo, error) {
	s, err := r.get()
	if err != nil {
		return nil, err
	}
	return s.ListPlaybooks(ctx, t)
}

func (r *responseRef) GetPlaybook(ctx context.Context, t event.TenantID, name string) (respond.PlaybookInfo, error) {
	s, err := r.get()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	return s.GetPlaybook(ctx, t, name)
}

func (r *responseRef) PlaybookVersions(ctx context.Context, t event.TenantID, name string) ([]store.PlaybookVersion, error) {
	s, err := r.get()
	if err != nil {
		return nil, err
	}
	return s.PlaybookVersions(ctx, t, name)
}

func (r *responseRef) PlaybookVersion(ctx context.Context, t event.TenantID, name string, version int) (store.PlaybookVersion, error) {
	s, err := r.get()
	if err != nil {
		return store.PlaybookVersion{}, err
	}
	return s.PlaybookVersion(ctx, t, name, version)
}

func (r *responseRef) PutPlaybook(ctx context.Context, t event.TenantID, name string, doc []byte, actor string) (respond.PlaybookInfo, error) {
	s, err := r.get()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	return s.PutPlaybook(ctx, t, name, doc, actor)
}

func (r *responseRef) SetPlaybookEnabled(ctx context.Context, t event.TenantID, name string, enabled bool, actor string) (respond.PlaybookInfo, error) {
	s, err := r.get()
	if err != nil {
		return respond.PlaybookInfo{}, err
	}
	return s.SetPlaybookEnabled(ctx, t, name, enabled, actor)
}

func (r *responseRef) Approve(ctx context.Context, t event.TenantID, actionID, operator, reason string) error {
	s, err := r.get()
	if err != nil {
		return err
	}
	return s.Approve(ctx, t, actionID, operator, reason)
}

func (r *responseRef) Reject(ctx context.Context, t event.TenantID, actionID, operator, reason string) error {
	s, err := r.get()
	if err != nil {
		return err
	}
	return s.Reject(ctx, t, actionID, operator, reason)
}

func (r *responseRef) Preview(ctx context.Context, t event.TenantID, sel string, sample int) (respond.MassPreview, error) {
	s, err := r.get()
	if err != nil {
		return respond.MassPreview{}, err
	}
	return s.Preview(ctx, t, sel, sample)
}

func (r *responseRef) Submit(ctx context.Context, t event.TenantID, req respond.MassRequest, actor string) (store.MassJob, error) {
	s, err := r.get()
	if err != nil {
		return store.MassJob{}, err
	}
	return s.Submit(ctx, t, req, actor)
}

func (r *responseRef) Job(ctx context.Context, t event.TenantID, id string) (store.MassJob, error) {
	s, err := r.get()
	if err != nil {
		return store.MassJob{}, err
	}
	return s.Job(ctx, t, id)
}

func (r *responseRef) Jobs(ctx context.Context, t event.TenantID, limit int) ([]store.MassJob, error) {
	s, err := r.get()
	if err != nil {
		return nil, err
	}
	return s.Jobs(ctx, t, limit)
}

func (r *responseRef) Cancel(ctx context.Context, t event.TenantID, id, actor string) (store.MassJob, error) {
	s, err := r.get()
	if err != nil {
		return store.MassJob{}, err
	}
	return s.Cancel(ctx, t, id, actor)
}
