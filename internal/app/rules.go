package app

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/garrisonhq/garrison/internal/platform"
)

// rulesReloadEvery is how often serve re-reads every tenant's rules, so
// that a change made through another node's API reaches this node's
// engine; changes through this node's API apply at once.
const rulesReloadEvery = 30 * time.Second

// startRules loads the operators' detection rules (CEL) into the rule set
// the detection engine reads, serves them to the API (which reloads a
// tenant's rules after every change) and re-reads them periodically.
func (a *App) startRules(ctx context.Context) error {
	log := a.log.With("component", "rules")
	rules, err := platform.NewRules(platform.RulesOptions{Store: a.store, Clock: a.clk, Logger: log})
	if err != nil {
		return err
	}
	n, err := rules.Load(ctx)
	if err != nil {
		return err
	}
	a.rules = rules
	set := rules.Set()
	if err := errors.Join(
		a.metrics.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "garrison_detect_rules_enabled", Help: "Enabled detection rules (CEL) of every tenant loaded in the engine.",
		}, func() float64 { return float64(set.Len()) })),
		a.metrics.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "garrison_detect_rule_errors_total", Help: "Rule evaluations that failed (missing attribute, type mismatch, cost limit); each counts as no match.",
		}, func() float64 { return float64(set.Errors()) })),
	); err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("rules reload", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	a.goroutine("rules reload", func() error {
		defer close(done)
		t := time.NewTicker(rulesReloadEvery)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return nil
			case <-t.C:
				if _, err := rules.Load(rctx); err != nil && rctx.Err() == nil {
					log.Warn("reload rules", "err", err)
				}
			}
		}
	})
	log.Info("detection rules loaded", "enabled", n)
	return nil
}
