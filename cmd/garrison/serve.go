package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/app"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/config"
)

func newServeCmd(e *cliEnv) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the platform (SQLite and embedded NATS by default; HTTPS API and EST on :8443, CRL/OCSP on :8080, MQTT over mTLS on :8883)",
		Long: "Run the platform. The CA private keys are sealed with a passphrase that must be given in\n" +
			"GARRISON_KEY_PASSPHRASE or in a file named by --key-passphrase-file; serve refuses to start without one.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, src, err := config.Load(config.Input{File: file, Environ: e.Environ, Flags: cmd.Flags()})
			if err != nil {
				return err
			}
			if err := cfg.Validate(src); err != nil {
				return err
			}
			pass, err := cfg.KeyPassphrase(e.Environ)
			if err != nil {
				return err
			}
			log := newLogger(e.Stderr, cfg.Log.Level, cfg.Log.Format)
			if f := cfg.Identity.KeyPassphraseFile; f != "" {
				if fi, err := os.Stat(f); err == nil && fi.Mode().Perm()&0o077 != 0 {
					log.Warn("key passphrase file is readable by other users; chmod 0400 it", "path", f, "mode", fi.Mode().Perm().String())
				}
			}
			a, err := app.New(cfg, src, app.Options{Logger: log, Clock: clock.Real{}, Out: e.Stdout, KeyPassphrase: pass})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "YAML configuration file")
	config.BindFlags(cmd.Flags())
	return cmd
}
