package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
)

// artifactPrefix is where devices download firmware artifacts, with their
// certificate, on the API listener.
const artifactPrefix = "/api/v1/firmware/artifacts/"

// artifactWriteTimeout bounds one artifact response.
const artifactWriteTimeout = 30 * time.Minute

// startOTA builds the firmware catalog (artifacts under
// <data_dir>/artifacts) and the campaign engine, before the API that
// serves them. Jobs go out through the broker once it runs.
func (a *App) startOTA(context.Context) error {
	cat, err := ota.New(ota.Options{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "ota"),
		DataDir: a.data, MaxArtifactSize: a.cfg.OTA.MaxArtifactBytes, Observer: a.firmwareView()})
	if err != nil {
		return err
	}
	eng, err := ota.NewEngine(ota.EngineOptions{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "ota"),
		Catalog: cat, Publisher: brokerJobs{a}, Alerts: storeAlerts{a.store}, ArtifactBase: a.otaBaseURL(),
		MaxConcurrent: a.cfg.OTA.MaxConcurrent, MaxDownloads: a.cfg.OTA.MaxDownloads,
		WaveTimeout: a.cfg.OTA.WaveTimeout, Tick: a.cfg.OTA.Tick})
	if err != nil {
		return err
	}
	a.otaCatalog, a.otaEngine = cat, eng
	return nil
}

// otaBaseURL is ota.public_url, else https://localhost:<api port>. The
// API listener is not open yet: with :0 the port is filled in when a job
// is built, through the listener address.
func (a *App) otaBaseURL() string {
	if a.cfg.OTA.PublicURL != "" {
		return strings.TrimRight(a.cfg.OTA.PublicURL, "/")
	}
	_, port, err := net.SplitHostPort(a.cfg.API.Addr)
	if err != nil || port == "0" || port == "" {
		return "" // set by runCampaigns once the API listens
	}
	return "https://localhost:" + port
}

// runCampaigns resumes open campaigns, feeds device ota/status reports to
// the engine and runs it until Stop.
func (a *App) runCampaigns(ctx context.Context) error {
	if a.otaEngine.ArtifactBase() == "" {
		_, port, _ := net.SplitHostPort(a.apiLn.Addr().String())
		a.otaEngine.SetArtifactBase("https://localhost:" + port)
	}
	if err := a.otaEngine.Load(ctx); err != nil {
		return err
	}
	log := a.log.With("component", "ota")
	eng := a.otaEngine
	if err := a.broker.OnDevicePublish("ota/status", func(id broker.Identity, payload []byte) {
		if err := eng.Report(context.Background(), id.Tenant, id.Device, payload); err != nil {
			log.Debug("ota status refused", "tenant", id.Tenant, "device", id.Device, "err", err)
		}
	}); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("campaign engine", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	a.goroutine("campaign engine", func() error {
		defer close(done)
		return eng.Run(rctx)
	})
	return nil
}

// followJobSubscriptions re-sends a device's unanswered firmware jobs when
// it subscribes to its job topic on this node (after a reconnect): a job
// published while it was offline is otherwise lost, since jobs are not
// retained. Resend only queues (in memory); the engine's next step
// publishes.
func (a *App) followJobSubscriptions(context.Context) error {
	if a.broker == nil || a.otaEngine == nil {
		return nil
	}
	a.broker.OnJobsSubscribed(func(id broker.Identity) {
		if n := a.otaEngine.Resend(id.Tenant, id.Device); n > 0 {
			a.log.Debug("firmware jobs queued again", "tenant", id.Tenant, "device", id.Device, "jobs", n)
		}
	})
	return nil
}

// brokerJobs publishes campaign jobs on devices/{id}/ota/job.
type brokerJobs struct{ a *App }

func (b brokerJobs) PublishJob(_ context.Context, t event.TenantID, d event.DeviceID, payload []byte) error {
	if b.a.broker == nil {
		return errors.New("ota: broker not running")
	}
	_, err := b.a.broker.PublishDevice(t, d, "ota/job", payload)
	return err
}

// storeAlerts counts alerts for the campaign gate from the alert store.
type storeAlerts struct{ st store.Store }

func (s storeAlerts) CountAlerts(ctx context.Context, t event.TenantID, devices map[event.DeviceID]bool, from, to time.Time) (int, error) {
	n := 0
	err := s.st.View(ctx, func(tx store.Tx) error {
		as, err := tx.Alerts().List(ctx, t, store.AlertFilter{Since: from})
		for _, al := range as {
			if devices[al.Device] && !al.FirstSeen.Before(from) && al.FirstSeen.Before(to) {
				n++
			}
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ota alerts: %w", err)
	}
	return n, nil
}

// withArtifacts serves firmware artifacts to devices authenticated by
// their certificate (verified against their tenant's CAs and revocation
// by identity, as EST re-enrolment does) and in a state that may update
// (quarantined included); every other request goes to next.
func (a *App) withArtifacts(next http.Handler) http.Handler {
	h := http.StripPrefix(strings.TrimSuffix(artifactPrefix, "/"), a.otaCatalog.Handler(func(r *http.Request) (event.TenantID, bool) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return "", false
		}
		id, err := a.identity.VerifyClient(r.Context(), r.TLS.PeerCertificates)
		if err != nil {
			a.log.Info("ota artifact download refused", "tenant", id.Tenant, "device", id.Device, "err", err)
			return "", false
		}
		var st store.DeviceState
		err = a.store.View(r.Context(), func(tx store.Tx) error {
			d, err := tx.Devices().Get(r.Context(), id.Tenant, id.Device)
			st = d.State
			return err
		})
		if err != nil || !(st == store.StateActive || st == store.StateQuarantined || st == store.StateRegistered) {
			a.log.Info("ota artifact download refused", "tenant", id.Tenant, "device", id.Device, "state", st, "err", err)
			return "", false
		}
		return id.Tenant, true
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, artifactPrefix) {
			w.Header().Set("X-Content-Type-Options", "nosniff")
			// Firmware over a cellular link outlasts the API's write
			// deadline; Range lets an interrupted download resume.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(artifactWriteTimeout))
			h.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Firmware is the firmware catalog (after Start).
func (a *App) Firmware() *ota.Catalog { return a.otaCatalog }

// Campaigns is the campaign engine (after Start).
func (a *App) Campaigns() *ota.Engine { return a.otaEngine }
