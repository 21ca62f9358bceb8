package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/config"
)

func newConfigCmd(e *cliEnv) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check or print configuration"}
	var file string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate configuration (file, GARRISON_* environment, flags) and report every error",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, src, err := config.Load(config.Input{File: file, Environ: e.Environ, Flags: c.Flags()})
			if err == nil {
				err = cfg.Validate(src)
			}
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("configuration is invalid:\n%w", err)}
			}
			fmt.Fprintf(e.Stdout, "configuration is valid (data_dir %s, store %s, bus %s)\n",
				cfg.DataDir, orDefault(cfg.Redacted().Store.URL, "sqlite"), orDefault(cfg.Redacted().Bus.URL, "embedded"))
			return nil
		},
	}
	check.Flags().StringVar(&file, "config", "", "YAML configuration file")
	config.BindFlags(check.Flags())
	defaults := &cobra.Command{
		Use:   "defaults",
		Short: "Print a commented configuration file holding every default",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprint(e.Stdout, config.DefaultYAML())
			return err
		},
	}
	cmd.AddCommand(check, defaults)
	return cmd
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
