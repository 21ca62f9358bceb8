package config

import (
	"net/url"
	"time"
)

// OTA configures firmware updates: the catalog's artifact limit, where
// devices download artifacts, and the campaign engine.
type OTA struct {
	MaxArtifactBytes int64         `yaml:"max_artifact_bytes" help:"largest firmware artifact accepted for upload, in bytes"`
	PublicURL        string        `yaml:"public_url" help:"HTTPS base URL devices download artifacts from; empty: https://localhost:<api port>"`
	MaxConcurrent    int           `yaml:"max_concurrent" help:"jobs in progress per campaign without its own cap (download rate limit)"`
	MaxDownloads     int           `yaml:"max_downloads" help:"jobs in progress over all campaigns; 0: no cap beyond each campaign's"`
	WaveTimeout      time.Duration `yaml:"wave_timeout" help:"how long a campaign wave waits for its devices' final reports by default"`
	Tick             time.Duration `yaml:"tick" help:"how often the campaign engine checks gates, sends jobs and writes progress"`
}

func defaultOTA() OTA {
	return OTA{MaxArtifactBytes: 1 << 30, MaxConcurrent: 100, WaveTimeout: time.Hour, Tick: time.Second}
}

func (o OTA) validate(bad func(key, format string, args ...any)) {
	if o.MaxArtifactBytes < 1024 || o.MaxArtifactBytes > 16<<30 {
		bad("ota.max_artifact_bytes", "must be between 1024 and 17179869184, got %d", o.MaxArtifactBytes)
	}
	if o.PublicURL != "" {
		if u, err := url.Parse(o.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" {
			bad("ota.public_url", "want an https:// URL with a host, no user info and no query, got %q", RedactURL(o.PublicURL))
		}
	}
	if o.MaxConcurrent < 1 || o.MaxConcurrent > 1_000_000 {
		bad("ota.max_concurrent", "must be between 1 and 1000000, got %d", o.MaxConcurrent)
	}
	if o.MaxDownloads < 0 {
		bad("ota.max_downloads", "must not be negative, got %d", o.MaxDownloads)
	}
	if o.WaveTimeout < time.Minute {
		bad("ota.wave_timeout", "must be at least 1m, got %s", o.WaveTimeout)
	}
	if o.Tick < 10*time.Millisecond || o.Tick > time.Minute {
		bad("ota.tick", "must be between 10ms and 1m, got %s", o.Tick)
	}
}
