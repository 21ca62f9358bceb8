package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/broker"
	"github.com/garrisonhq/garrison/internal/bus"
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
// serves them. Jobs go out through the broker once it runs. On an
// external bus, which the nodes of a deployment share, artifacts also
// travel through the bus's object store (bucket garrison-artifacts), so a
// device downloads from any node; the embedded bus serves one node,
// whose artifacts directory is enough.
func (a *App) startOTA(ctx context.Context) error {
	var shared ota.Shared
	if a.cfg.Bus.URL != "" {
		objs, err := a.bus.Objects(ctx, bus.ArtifactsBucket)
		if err != nil {
			return err
		}
		shared = objs
	}
	cat, err := ota.New(ota.Options{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "ota"),
		DataDir: a.data, MaxArtifactSize: a.cfg.OTA.MaxArtifactBytes, Observer: a.firmwareView(), Shared: shared})
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
	if shared != nil {
		// Artifacts this node stored before they were shared.
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		a.onStop("firmware artifacts sharing", func(context.Context) error { cancel(); return nil })
		a.goroutine("firmware artifacts sharing", func() error {
			if n, err := cat.ShareStored(sctx); err != nil && sctx.Err() == nil {
				a.log.Warn("ota: stored artifacts not shared", "err", err)
			} else if n > 0 {
				a.log.Info("ota: stored artifacts shared through the bus", "artifacts", n)
			}
			return nil
		})
	}
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

// runCampaigns wires firmware campaigns for a deployment of one or more
// nodes. Every node takes operator actions (the engine writes them to the
// shared store), hands the ota/status reports and job subscriptions its
// broker receives to the bus, and delivers to its own sessions the jobs
// the engine relays. One node, the holder of the campaigns lease, runs the
// engine (serveCampaigns).
func (a *App) runCampaigns(ctx context.Context) error {
	if a.otaEngine.ArtifactBase() == "" {
		_, port, _ := net.SplitHostPort(a.apiLn.Addr().String())
		a.otaEngine.SetArtifactBase("https://localhost:" + port)
	}
	log := a.log.With("component", "ota")
	if err := a.broker.OnDevicePublish("ota/status", func(id broker.Identity, payload []byte) {
		s, err := ota.ParseStatus(payload)
		if err != nil {
			log.Debug("ota status refused", "tenant", id.Tenant, "device", id.Device, "err", err)
			return
		}
		b, err := json.Marshal(s)
		if err != nil {
			return
		}
		a.publishOTA(id.Tenant, id.Device, event.OTAStatus, map[string]any{"status": string(b)})
	}); err != nil {
		return err
	}
	if err := a.followJobRelays(ctx); err != nil {
		return err
	}
	a.underLease(ctx, leaseCampaigns, a.serveCampaigns)
	return nil
}

// otaPublishTimeout bounds one bus publish of a report, a re-send request
// or a job relay.
const otaPublishTimeout = 5 * time.Second

// publishOTA publishes a device's report or job subscription for the node
// running the engine. It runs on the device's read loop: the publish is
// bounded, and a failure is logged (the device's next report, or the wave
// timeout, repairs a lost one).
func (a *App) publishOTA(t event.TenantID, d event.DeviceID, kind event.Kind, attrs map[string]any) {
	ctx, cancel := context.WithTimeout(context.Background(), otaPublishTimeout)
	defer cancel()
	if err := a.bus.Publish(ctx, &event.Event{Tenant: t, Device: d, Kind: kind, Time: a.clk.Now().UTC(),
		Source: "broker", Attrs: attrs}); err != nil {
		a.log.Warn("ota: not passed to the campaign engine", "kind", kind, "tenant", t, "device", d, "err", err)
	}
}

// serveCampaigns runs the campaign engine while this node holds the
// campaigns lease: it resumes the open campaigns from the store, then
// consumes the deployment's device.ota_status and device.ota_resend events
// with durable consumers shared by whichever node holds the lease (so a
// new holder starts after the last report the previous one took), and
// steps until the lease ends. Then it stops consuming, writes what is
// pending and idles the engine.
func (a *App) serveCampaigns(ctx context.Context) error {
	eng := a.otaEngine
	log := a.log.With("component", "ota")
	if err := eng.Load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	unload := func() error {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := eng.Unload(uctx); err != nil {
			log.Warn("campaign engine: pending reports not written", "err", err)
		}
		return nil
	}
	// One consumer per kind: NATS servers before 2.10 take one filter.
	var cs []*bus.Consumer
	stop := func() {
		for _, c := range cs {
			c.Stop()
		}
	}
	for _, k := range []event.Kind{event.OTAStatus, event.OTAResend} {
		c, err := a.bus.Consume(ctx, bus.ConsumerOptions{
			Name:    "ota-engine-" + strings.TrimPrefix(string(k), "device.ota_"),
			Stream:  a.bus.StreamFor(k),
			Filters: []string{bus.KindFilter(k)},
			Deliver: bus.DeliverNew,
			Handler: func(ctx context.Context, e *event.Event) error {
				switch e.Kind {
				case event.OTAStatus:
					if err := eng.Report(ctx, e.Tenant, e.Device, []byte(e.Str("status"))); err != nil {
						log.Debug("ota status refused", "tenant", e.Tenant, "device", e.Device, "err", err)
					}
				case event.OTAResend:
					if n := eng.Resend(e.Tenant, e.Device); n > 0 {
						log.Debug("firmware jobs queued again", "tenant", e.Tenant, "device", e.Device, "jobs", n)
					}
				}
				return nil // a refused report is not retried
			},
		})
		if err != nil {
			stop()
			_ = unload()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		cs = append(cs, c)
	}
	err := eng.Run(ctx)
	stop()
	return errors.Join(err, unload())
}

// followJobSubscriptions asks the engine to send again a device's
// unanswered firmware jobs when it subscribes to its job topic on this
// node (after a reconnect): a job published while it was offline is
// otherwise lost, since jobs are not retained. The request travels the
// bus (device.ota_resend) to the node running the engine, whose next step
// publishes.
func (a *App) followJobSubscriptions(context.Context) error {
	if a.broker == nil || a.otaEngine == nil {
		return nil
	}
	a.broker.OnJobsSubscribed(func(id broker.Identity) {
		a.publishOTA(id.Tenant, id.Device, event.OTAResend, nil)
	})
	return nil
}

// followJobRelays delivers the jobs the engine's node relayed for devices
// whose session this node holds (see followRelays).
func (a *App) followJobRelays(ctx context.Context) error {
	log := a.log.With("component", "ota")
	return a.followRelays(ctx, "ota-"+a.node+"-jobs", event.OTAJobRelay, "firmware job relays", func(_ context.Context, e *event.Event) error {
		if _, err := a.broker.PublishDevice(e.Tenant, e.Device, "ota/job", []byte(e.Str("job"))); err != nil {
			log.Warn("relayed firmware job not published", "tenant", e.Tenant, "device", e.Device, "err", err)
			return nil
		}
		log.Debug("relayed firmware job", "tenant", e.Tenant, "device", e.Device, "origin", e.Str("origin"))
		return nil
	})
}

// brokerJobs publishes campaign jobs on devices/{id}/ota/job: through this
// node's broker when it holds the device's session, else relayed on the
// bus (device.ota_job_relay) to the node that does.
type brokerJobs struct{ a *App }

func (b brokerJobs) PublishJob(ctx context.Context, t event.TenantID, d event.DeviceID, payload []byte) error {
	if b.a.broker == nil {
		return errors.New("ota: broker not running")
	}
	if b.a.broker.Live(t, d) {
		_, err := b.a.broker.PublishDevice(t, d, "ota/job", payload)
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, otaPublishTimeout)
	defer cancel()
	return b.a.bus.Publish(ctx, &event.Event{Tenant: t, Device: d, Kind: event.OTAJobRelay, Time: b.a.clk.Now().UTC(),
		Source: "ota", Attrs: map[string]any{"job": string(payload), "origin": b.a.node}})
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
