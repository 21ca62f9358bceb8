package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/garrisonhq/garrison/internal/identity"
	"github.com/garrisonhq/garrison/internal/registry"
)

// listenHTTP opens the plain-HTTP listener first, so that the CRL and OCSP
// URLs put into certificates carry its real port (also with :0).
func (a *App) listenHTTP(context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.HTTP.Addr)
	if err != nil {
		return err
	}
	a.httpLn = ln
	a.onStop("http listener", func(context.Context) error {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})
	return nil
}

// publicURL is the base of CRL and OCSP URLs: identity.public_url, else
// http://localhost:<port of the HTTP listener>.
func (a *App) publicURL() string {
	if a.cfg.Identity.PublicURL != "" {
		return a.cfg.Identity.PublicURL
	}
	_, port, err := net.SplitHostPort(a.httpLn.Addr().String())
	if err != nil {
		port = "8080"
	}
	return "http://localhost:" + port
}

// startIdentity builds the CA service with keys sealed under the operator
// passphrase and loads (or, on first start, creates) the root CA. A wrong
// passphrase stops the start here.
func (a *App) startIdentity(ctx context.Context) error {
	sealer, err := identity.NewSealer(a.passphrase)
	clear(a.passphrase) // the Sealer holds its own copy
	if err != nil {
		return err
	}
	a.sealer = sealer
	svc, err := identity.New(identity.Options{
		Store:        a.store,
		Sealer:       sealer,
		Publisher:    a.bus,
		Clock:        a.clk,
		Logger:       a.log.With("component", "identity"),
		BaseURL:      a.publicURL(),
		CertLifetime: a.cfg.Identity.CertLifetime,
	})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	a.identity = svc
	return nil
}

// startHTTP serves only the CRL and OCSP routes on the plain-HTTP listener.
func (a *App) startHTTP(context.Context) error {
	mux := http.NewServeMux()
	a.identity.Routes(mux)
	a.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          a.errorLog(),
	}
	a.onStop("http", func(ctx context.Context) error { return a.httpSrv.Shutdown(ctx) })
	ln := a.httpLn
	a.goroutine("http", func() error {
		if err := a.httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// apiRegistry is the registry the API's device routes write through; it
// publishes device.state on the bus like detection's does.
func (a *App) apiRegistry() (*registry.Registry, error) {
	return registry.New(registry.Options{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "registry"), Publisher: a.bus})
}

// withEST routes EST (RFC 7030) to identity and everything else to the API.
func withEST(apiHandler http.Handler, id *identity.Service) http.Handler {
	est := http.NewServeMux()
	id.ESTRoutes(est)
	mux := http.NewServeMux()
	mux.Handle("/.well-known/est/", est)
	mux.Handle("/", apiHandler)
	return mux
}

// CRLURL is the URL of the CRL of a tenant's CA on the plain-HTTP listener
// (after Start).
func (a *App) CRLURL(tenant, caID string) string {
	return fmt.Sprintf("http://%s/crl/%s/%s.crl", a.httpLn.Addr(), tenant, caID)
}
