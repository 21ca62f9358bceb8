package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/bus"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/incident"
	"github.com/garrisonhq/garrison/internal/store"
)

// incidents is the incident and export plane: the incident service (API
// routes, the playbooks' open_incident step), the webhook exporter (the
// playbooks' notify step, incident changes, and the bus's alert.raised and
// action.taken) with its delivery worker, and the optional syslog sender.
type incidents struct {
	svc      *incident.Service
	webhooks *export.Webhooks
	syslog   *export.Syslog // nil without exports.syslog_addr
	// tenantSyslog sends to each tenant's own syslog target.
	tenantSyslog *export.TenantSyslogs
}

// startIncidents builds the incident service and the exporters, starts the
// webhook worker and the bus consumers that feed them:
//
//   - export-alerts: alert.raised → a webhook delivery per interested
//     endpoint (queued in the store before the event is acknowledged);
//   - export-syslog: alert.raised → one RFC 5424 frame (retried while the
//     collector is down, within the consumer's attempts);
//   - export-actions: action.taken → webhook deliveries, and the action on
//     the timeline of every incident holding its alert;
//   - export-alert-states: alert.state_changed → webhook deliveries;
//   - export-tenant-syslog: alert.raised → one frame to the tenant's own
//     syslog target, when it set one through the API.
//
// The consumers are durable and shared by every node, so each event is
// handled once in a cluster; they start with events published after their
// first creation.
func (a *App) startIncidents(ctx context.Context) error {
	e := a.cfg.Exports
	log := a.log.With("component", "export")
	wh, err := export.NewWebhooks(export.WebhookOptions{Store: a.store, Clock: a.clk, Logger: log,
		Client:      export.NewClient(e.WebhookTimeout, e.WebhookAllowPrivate),
		MaxAttempts: e.WebhookAttempts, Backoff: e.WebhookBackoff, MaxBackoff: e.WebhookMaxBackoff, Timeout: e.WebhookTimeout,
		Sealer: a.sealer})
	if err != nil {
		return err
	}
	// Webhook secrets stored in clear by an earlier version are sealed
	// under the key passphrase before the worker starts (audited).
	n, err := export.SealClearSecrets(ctx, a.store, a.sealer, a.clk.Now().UTC())
	if err != nil {
		return err
	}
	if n > 0 {
		log.Info("sealed webhook secrets stored in clear", "count", n)
	}
	svc, err := incident.New(incident.Options{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "incident"), Outbox: wh})
	if err != nil {
		return err
	}
	p := &incidents{svc: svc, webhooks: wh}
	if e.SyslogAddr != "" {
		o := export.SyslogOptions{Addr: e.SyslogAddr, Clock: a.clk, Logger: log}
		if e.SyslogTLS {
			o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
			if e.SyslogCAFile != "" {
				pem, err := os.ReadFile(e.SyslogCAFile)
				if err != nil {
					return fmt.Errorf("exports.syslog_ca_file: %w", err)
				}
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					return fmt.Errorf("exports.syslog_ca_file %s: no PEM certificate", e.SyslogCAFile)
				}
				o.TLS.RootCAs = pool
			}
		}
		if p.syslog, err = export.NewSyslog(o); err != nil {
			return err
		}
		a.onStop("syslog", func(context.Context) error { return p.syslog.Close() })
	}

	// Tenants' own syslog targets (set through the API, read per alert).
	tsl, err := export.NewTenantSyslogs(export.TenantSyslogOptions{Store: a.store, Clock: a.clk, Logger: log,
		AllowPrivate: e.WebhookAllowPrivate})
	if err != nil {
		return err
	}
	p.tenantSyslog = tsl
	a.onStop("tenant syslog", func(context.Context) error { return tsl.Close() })

	runCtx, cancel := context.WithCancel(context.Background())
	a.onStop("webhook worker", func(context.Context) error { cancel(); return nil })
	a.goroutine("webhook worker", func() error { return wh.Run(runCtx) })

	consumers := []bus.ConsumerOptions{
		{Name: "garrison-export-alerts", Filters: []string{bus.KindFilter(event.AlertRaised)}, Stream: a.bus.StreamFor(event.AlertRaised), Handler: p.alertToWebhooks(a)},
		{Name: "garrison-export-actions", Filters: []string{bus.KindFilter(event.ActionTaken)}, Stream: a.bus.StreamFor(event.ActionTaken), Handler: p.actionTaken(a)},
		{Name: "garrison-export-tenant-syslog", Filters: []string{bus.KindFilter(event.AlertRaised)}, Stream: a.bus.StreamFor(event.AlertRaised), Handler: p.alertToTenantSyslog(a)},
		{Name: "garrison-export-alert-states", Filters: []string{bus.KindFilter(event.AlertStateChanged)}, Stream: a.bus.StreamFor(event.AlertStateChanged), Handler: p.alertState(a)},
	}
	if p.syslog != nil {
		consumers = append(consumers, bus.ConsumerOptions{Name: "garrison-export-syslog", Filters: []string{bus.KindFilter(event.AlertRaised)},
			Stream: a.bus.StreamFor(event.AlertRaised), Handler: p.alertToSyslog(a)})
	}
	for _, o := range consumers {
		o.Deliver = bus.DeliverNew
		c, err := a.bus.Consume(ctx, o)
		if err != nil {
			return fmt.Errorf("consumer %s: %w", o.Name, err)
		}
		a.onStop(o.Name, func(context.Context) error { c.Stop(); return nil })
	}
	a.incidents = p
	a.log.Info("incidents and exports started", "syslog", e.SyslogAddr != "", "syslog_tls", e.SyslogTLS)
	return nil
}

// loadAlert reads the alert an alert.raised event names; ok is false when
// it is gone (nothing to export).
func (a *App) loadAlert(ctx context.Context, ev *event.Event) (alert.Alert, bool, error) {
	var al alert.Alert
	err := a.store.View(ctx, func(tx store.Tx) (err error) {
		al, err = tx.Alerts().Get(ctx, ev.Tenant, ev.Str("alert_id"))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		a.log.Warn("alert.raised for a missing alert", "tenant", ev.Tenant, "alert", ev.Str("alert_id"))
		return al, false, nil
	}
	return al, err == nil, err
}

func (p *incidents) alertToWebhooks(a *App) bus.Handler {
	return func(ctx context.Context, ev *event.Event) error {
		al, ok, err := a.loadAlert(ctx, ev)
		if !ok {
			return err
		}
		return p.webhooks.OnAlert(ctx, al, ev.ID)
	}
}

// alertState forwards an operator's move of an alert to the webhooks.
func (p *incidents) alertState(a *App) bus.Handler {
	return func(ctx context.Context, ev *event.Event) error {
		al, ok, err := a.loadAlert(ctx, ev)
		if !ok {
			return err
		}
		return p.webhooks.OnAlertState(ctx, export.AlertStateData{Alert: al, From: alert.State(ev.Str("from")), To: alert.State(ev.Str("to")),
			Actor: ev.Str("actor"), Note: ev.Str("note")}, ev.Time, ev.ID)
	}
}

// alertToTenantSyslog sends an alert to its tenant's own syslog target, if
// any; a collector that is down is retried within the consumer's attempts,
// a target refused as private is logged and skipped.
func (p *incidents) alertToTenantSyslog(a *App) bus.Handler {
	return func(ctx context.Context, ev *event.Event) error {
		al, ok, err := a.loadAlert(ctx, ev)
		if !ok {
			return err
		}
		err = p.tenantSyslog.SendAlert(ctx, al)
		if errors.Is(err, export.ErrPrivateAddress) {
			a.log.Warn("tenant syslog target refused", "tenant", al.Tenant, "alert", al.ID, "err", err)
			return nil
		}
		return err
	}
}

func (p *incidents) alertToSyslog(a *App) bus.Handler {
	return func(ctx context.Context, ev *event.Event) error {
		al, ok, err := a.loadAlert(ctx, ev)
		if !ok {
			return err
		}
		return p.syslog.SendAlert(ctx, al)
	}
}

func (p *incidents) actionTaken(a *App) bus.Handler {
	return func(ctx context.Context, ev *event.Event) error {
		id := ev.Str("action_id")
		var act store.Action
		err := a.store.View(ctx, func(tx store.Tx) (err error) {
			act, err = tx.Actions().Get(ctx, ev.Tenant, id)
			return err
		})
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := p.webhooks.OnAction(ctx, act, ev.Str("incident_id"), ev.ID); err != nil {
			return err
		}
		return p.svc.OnAction(ctx, ev.Tenant, id)
	}
}
