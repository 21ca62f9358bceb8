package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/store"
)

// Bootstrap operator and token names.
const (
	BootstrapOperator = "admin"
	bootstrapActor    = "system:bootstrap"
)

// bootstrap creates the platform admin and its first API token when the
// platform has no operator, all in one transaction with their audit
// records, and prints the token once. On later starts it does nothing.
func (a *App) bootstrap(ctx context.Context) error {
	sec, err := auth.NewSecret(nil)
	if err != nil {
		return err
	}
	now := a.clk.Now().UTC()
	created := false
	err = a.store.Update(ctx, func(tx store.Tx) error {
		created = false
		ops, err := tx.Operators().List(ctx, "")
		if err != nil {
			return err
		}
		if len(ops) > 0 {
			return nil
		}
		op := store.Operator{ID: "op-admin", Name: BootstrapOperator, Role: store.RolePlatformAdmin, CreatedAt: now}
		tok := store.Token{ID: sec.ID, Operator: op.ID, Role: op.Role, Name: "bootstrap", Hash: sec.Hash,
			CreatedAt: now, ExpiresAt: now.Add(a.cfg.API.TokenTTL)}
		if err := tx.Operators().Create(ctx, op); err != nil {
			return err
		}
		if err := a.audit(ctx, tx, "operator.create", "operator:"+op.ID, map[string]string{"name": op.Name, "role": string(op.Role)}); err != nil {
			return err
		}
		if err := tx.Tokens().Create(ctx, tok); err != nil {
			return err
		}
		if err := a.audit(ctx, tx, "token.create", "token:"+tok.ID, map[string]string{"operator": op.ID, "role": string(tok.Role), "name": tok.Name}); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil || !created {
		return err
	}
	a.log.Info("first start: created platform admin and bootstrap token", "operator", "op-admin", "token", sec.ID)
	a.announce = func() error { return a.printBootstrap(sec.Plaintext, now) }
	return nil
}

// printBootstrap shows the token once, with where everything lives. It runs
// after the API listens, so the address is the real one (also with :0).
func (a *App) printBootstrap(token string, now time.Time) error {
	port := "8443"
	if _, p, err := net.SplitHostPort(a.apiLn.Addr().String()); err == nil {
		port = p
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nGarrison first start.\n\n")
	fmt.Fprintf(&b, "  Data directory:   %s (delete it to reset everything)\n", a.data)
	fmt.Fprintf(&b, "  Store:            %s\n", a.storeWhere())
	fmt.Fprintf(&b, "  API certificate:  %s (the MQTT broker presents it too)\n", filepath.Join(a.data, "tls", "server.crt"))
	fmt.Fprintf(&b, "  MQTT (mTLS):      %s\n", a.broker.Addr())
	fmt.Fprintf(&b, "  CRL and OCSP:     http://%s (certificates name %s)\n", a.httpLn.Addr(), a.publicURL())
	fmt.Fprintf(&b, "  CA keys:          sealed with your key passphrase; without it they cannot be opened\n")
	fmt.Fprintf(&b, "\n  Bootstrap platform-admin API token. It is shown ONCE and stored only as a hash;\n")
	fmt.Fprintf(&b, "  it expires %s:\n\n    %s\n\n", now.Add(a.cfg.API.TokenTTL).Format("2006-01-02"), token)
	fmt.Fprintf(&b, "  export GARRISON_URL=https://localhost:%s GARRISON_TOKEN=%s\n", port, token)
	fmt.Fprintf(&b, "  garrison tenant list --data-dir %s\n\n", a.data)
	_, err := a.out.Write([]byte(b.String()))
	return err
}

// audit appends a record of the bootstrap to the platform chain.
func (a *App) audit(ctx context.Context, tx store.Tx, action, target string, details map[string]string) error {
	b, err := json.Marshal(details)
	if err != nil {
		return err
	}
	_, err = audit.Append(ctx, tx, audit.Entry{Tenant: api.PlatformChain, Time: a.clk.Now(), Actor: bootstrapActor,
		Action: action, Target: target, Details: b})
	return err
}

func (a *App) storeWhere() string {
	if a.cfg.Store.URL == "" {
		return "SQLite " + filepath.Join(a.data, "garrison.db")
	}
	return "PostgreSQL " + describeStore(a.cfg)
}
