package platform

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/audit"
	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/sim"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// scoringAPI serves the platform's HTTP API over TLS on a loopback port and
// returns results read through it with a viewer token made for this run,
// so a scenario is scored on what an operator would see, not on the
// store's rows. stop closes the listener.
func (p *Platform) scoringAPI(ctx context.Context) (res sim.Results, stop func(), err error) {
	now := time.Now()
	srv, err := api.New(api.Options{Store: p.Store, Clock: clock.Real{}})
	if err != nil {
		return nil, nil, err
	}
	cert, pool, err := tlsutil.Ephemeral(now)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("scoring api: %w", err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	// Serve's error needs no handling: a failed listener shows as failed reads.
	go func() {
		_ = hs.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}))
	}()
	tok, err := p.viewerToken(ctx, now)
	if err != nil {
		_ = hs.Close()
		return nil, nil, err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
	return sim.APIResults{BaseURL: "https://" + ln.Addr().String(), Token: tok, Tenant: p.Tenant,
		Client: &http.Client{Transport: tr, Timeout: time.Minute}}, func() { tr.CloseIdleConnections(); _ = hs.Close() }, nil
}

// viewerToken creates a viewer operator and a one-day token for the
// tenant, with their audit records, and returns the token's secret.
func (p *Platform) viewerToken(ctx context.Context, now time.Time) (string, error) {
	sec, err := auth.NewSecret(nil)
	if err != nil {
		return "", err
	}
	op := store.Operator{ID: "op-scorer-" + sec.ID, Tenant: p.Tenant, Name: "scorer-" + sec.ID, Role: store.RoleViewer, CreatedAt: now}
	tok := store.Token{ID: sec.ID, Tenant: p.Tenant, Operator: op.ID, Role: op.Role, Name: "simulator scoring", Hash: sec.Hash,
		CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
	err = p.Store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Operators().Create(ctx, op); err != nil {
			return err
		}
		if err := tx.Tokens().Create(ctx, tok); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, audit.Entry{Tenant: p.Tenant, Time: p.Clock.Now(), Actor: "platform",
			Action: "token.create", Target: "token:" + tok.ID, Details: []byte(`{"role":"viewer","name":"simulator scoring"}`)})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("scoring token: %w", err)
	}
	return sec.Plaintext, nil
}
