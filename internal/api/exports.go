package api

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/store"
)

// exportRoutes are a tenant's webhook endpoints and their deliveries.
func (s *Server) exportRoutes(t string) []Route {
	const get, post, del = http.MethodGet, http.MethodPost, http.MethodDelete
	const ok, created, none = http.StatusOK, http.StatusCreated, http.StatusNoContent
	return []Route{
		op(get, t+"/webhooks", auth.PermExportsRead, ScopeTenant, ok, "List webhook endpoints (never their secrets).", (*Server).listWebhooks),
		op(post, t+"/webhooks", auth.PermExportsWrite, ScopeTenant, created, "Create a webhook endpoint; a generated secret is returned once.", (*Server).createWebhook),
		op(get, t+"/webhooks/{id}", auth.PermExportsRead, ScopeTenant, ok, "Get a webhook endpoint.", (*Server).getWebhook),
		op(del, t+"/webhooks/{id}", auth.PermExportsWrite, ScopeTenant, none, "Delete a webhook endpoint and its queued deliveries.", (*Server).deleteWebhook),
		op(get, t+"/deliveries", auth.PermExportsRead, ScopeTenant, ok, "List webhook deliveries, newest first; state=dead is the dead-letter list.", (*Server).listDeliveries),
		op(post, t+"/deliveries/{id}/redrive", auth.PermExportsWrite, ScopeTenant, ok, "Send a dead-lettered delivery again (attempts reset).", (*Server).redriveDelivery),
		op(get, t+"/syslog", auth.PermExportsRead, ScopeTenant, ok, "Get the tenant's own syslog target (404 when it has none).", (*Server).getSyslog),
		op(http.MethodPut, t+"/syslog", auth.PermExportsWrite, ScopeTenant, ok, "Set the tenant's own syslog target: its alerts go there as RFC 5424 OCSF findings, over TCP or TLS.", (*Server).putSyslog),
		op(del, t+"/syslog", auth.PermExportsWrite, ScopeTenant, none, "Remove the tenant's own syslog target.", (*Server).deleteSyslog),
	}
}

// SyslogRequest sets a tenant's own syslog collector: Addr is host:port;
// TLS uses RFC 5425 (TLS 1.2 or later), verifying the collector with CAPEM
// (PEM certificates) when given, else the system roots.
type SyslogRequest struct {
	Addr  string `json:"addr"`
	TLS   bool   `json:"tls,omitempty"`
	CAPEM string `json:"ca_pem,omitempty"`
}

func (s *Server) getSyslog(ctx context.Context, c *call, _ noBody) (export.SyslogTarget, error) {
	var t export.SyslogTarget
	var ok bool
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		t, ok, err = export.GetSyslogTarget(ctx, tx, c.tenant)
		return err
	})
	if err == nil && !ok {
		return t, errorf(http.StatusNotFound, CodeNotFound, "the tenant has no syslog target")
	}
	return t, err
}

func (s *Server) putSyslog(ctx context.Context, c *call, req SyslogRequest) (export.SyslogTarget, error) {
	t := export.SyslogTarget{Addr: req.Addr, TLS: req.TLS, CAPEM: req.CAPEM}
	if err := t.Validate(); err != nil {
		return t, errorf(http.StatusBadRequest, CodeInvalid, err.Error())
	}
	err := s.opt.Store.Update(ctx, func(tx store.Tx) (err error) {
		t, err = export.PutSyslogTarget(ctx, tx, c.tenant, t, c.p.Actor(), s.opt.Clock.Now())
		return err
	})
	return t, err
}

func (s *Server) deleteSyslog(ctx context.Context, c *call, _ noBody) (noBody, error) {
	return noBody{}, s.opt.Store.Update(ctx, func(tx store.Tx) error {
		return export.DeleteSyslogTarget(ctx, tx, c.tenant, c.p.Actor(), s.opt.Clock.Now())
	})
}

// CreateWebhookRequest creates a webhook endpoint. Events filters the event
// types it receives (empty: all; see docs/EXPORTS.md); Channel is the
// notify channel of playbooks it serves ("default" when empty). Secret, at
// least 16 bytes, keys the HMAC-SHA256 signature; one is generated when
// empty.
type CreateWebhookRequest struct {
	Name    string   `json:"name"`
	URL     string   `json:"url"`
	Secret  string   `json:"secret,omitempty"`
	Events  []string `json:"events,omitempty"`
	Channel string   `json:"channel,omitempty"`
}

// WebhookCreated is a new webhook with its secret, shown this once when the
// server generated it.
type WebhookCreated struct {
	Webhook store.Webhook `json:"webhook"`
	Secret  string        `json:"secret,omitempty"`
}

func (s *Server) listWebhooks(ctx context.Context, c *call, _ noBody) ([]store.Webhook, error) {
	var ws []store.Webhook
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		ws, err = tx.Webhooks().List(ctx, c.tenant)
		return err
	})
	return nonNil(ws), err
}

func (s *Server) createWebhook(ctx context.Context, c *call, req CreateWebhookRequest) (WebhookCreated, error) {
	if err := checkName(req.Name); err != nil {
		return WebhookCreated{}, err
	}
	if err := export.ValidateURL(req.URL); err != nil {
		return WebhookCreated{}, errorf(http.StatusBadRequest, CodeInvalid, err.Error())
	}
	if err := export.ValidateEvents(req.Events); err != nil {
		return WebhookCreated{}, errorf(http.StatusBadRequest, CodeInvalid, err.Error())
	}
	if len(req.Events) > 16 {
		return WebhookCreated{}, errorf(http.StatusBadRequest, CodeInvalid, "at most 16 event types")
	}
	if req.Channel == "" {
		req.Channel = "default"
	}
	if !ident.MatchString(req.Channel) {
		return WebhookCreated{}, errorf(http.StatusBadRequest, CodeInvalid, "channel must be 1-128 letters, digits or ._:-")
	}
	if s.opt.WebhookSecrets == nil {
		return WebhookCreated{}, errorf(http.StatusServiceUnavailable, CodeUnavailable, "webhook secrets cannot be sealed on this server (no key passphrase)")
	}
	var shown string
	secret := []byte(req.Secret)
	switch {
	case req.Secret == "":
		var b [32]byte
		if _, err := io.ReadFull(s.opt.Rand, b[:]); err != nil {
			return WebhookCreated{}, fmt.Errorf("api: webhook secret: %w", err)
		}
		shown = "whsec_" + hex.EncodeToString(b[:])
		secret = []byte(shown)
	case len(req.Secret) < 16 || len(req.Secret) > 256 || !utf8.ValidString(req.Secret) || strings.TrimSpace(req.Secret) != req.Secret:
		return WebhookCreated{}, errorf(http.StatusBadRequest, CodeInvalid, "secret must be 16-256 bytes of text without surrounding spaces")
	}
	id, err := s.newID("wh-")
	if err != nil {
		return WebhookCreated{}, err
	}
	// Sealed under the key passphrase before it reaches the store; the
	// worker opens it only to sign a delivery.
	sealed, err := export.SealSecret(s.opt.WebhookSecrets, c.tenant, id, secret)
	clear(secret)
	if err != nil {
		return WebhookCreated{}, err
	}
	w := store.Webhook{Tenant: c.tenant, ID: id, Name: req.Name, URL: req.URL, Secret: sealed, Events: req.Events,
		Channel: req.Channel, CreatedAt: s.opt.Clock.Now().UTC()}
	if w.Events == nil {
		w.Events = []string{}
	}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Webhooks().Create(ctx, w); err != nil {
			return err
		}
		// The URL may carry a token in its query: the audit keeps the host.
		return s.audit(ctx, tx, c, c.tenant, "webhook.create", "webhook:"+id,
			map[string]any{"name": w.Name, "host": hostOf(w.URL), "events": w.Events, "channel": w.Channel})
	})
	if err != nil {
		return WebhookCreated{}, err
	}
	return WebhookCreated{Webhook: w, Secret: shown}, nil
}

func hostOf(raw string) string {
	rest, _ := strings.CutPrefix(raw, "https://")
	rest, _ = strings.CutPrefix(rest, "http://")
	host, _, _ := strings.Cut(rest, "/")
	host, _, _ = strings.Cut(host, "?")
	return host
}

func (s *Server) getWebhook(ctx context.Context, c *call, _ noBody) (store.Webhook, error) {
	var w store.Webhook
	err := s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		w, err = tx.Webhooks().Get(ctx, c.tenant, c.r.PathValue("id"))
		return err
	})
	return w, err
}

func (s *Server) deleteWebhook(ctx context.Context, c *call, _ noBody) (noBody, error) {
	id := c.r.PathValue("id")
	return noBody{}, s.opt.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Webhooks().Delete(ctx, c.tenant, id); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, c.tenant, "webhook.delete", "webhook:"+id, nil)
	})
}

var deliveryStates = []string{string(store.DeliveryPending), string(store.DeliveryDelivered), string(store.DeliveryDead)}

func (s *Server) listDeliveries(ctx context.Context, c *call, _ noBody) ([]store.Delivery, error) {
	q := query{c.r.URL.Query()}
	state, err := q.oneOf("state", deliveryStates...)
	if err != nil {
		return nil, err
	}
	n, err := q.limit()
	if err != nil {
		return nil, err
	}
	var ds []store.Delivery
	err = s.opt.Store.View(ctx, func(tx store.Tx) (err error) {
		ds, err = tx.Deliveries().List(ctx, c.tenant, store.DeliveryState(state), n)
		return err
	})
	return nonNil(ds), err
}

func (s *Server) redriveDelivery(ctx context.Context, c *call, _ noBody) (store.Delivery, error) {
	var d store.Delivery
	err := s.opt.Store.Update(ctx, func(tx store.Tx) error {
		return export.Redrive(ctx, tx, c.tenant, c.r.PathValue("id"), c.p.Actor(), s.opt.Clock.Now().UTC(), &d)
	})
	return d, err
}
