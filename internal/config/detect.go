package config

import "time"

// Detect configures the detection plane of serve: threat-intelligence
// feeds (listed in FeedsFile, see docs/DETECTION.md) and the snapshots of
// learned state.
type Detect struct {
	FeedsFile        string        `yaml:"feeds_file" help:"YAML file listing threat-intelligence feeds (name, url or file, refresh); empty: none"`
	FeedRefresh      time.Duration `yaml:"feed_refresh" help:"refresh interval of a feed that does not set its own"`
	FeedTimeout      time.Duration `yaml:"feed_timeout" help:"time limit of one feed download"`
	FeedMaxBytes     int64         `yaml:"feed_max_bytes" help:"largest feed accepted, in bytes (a larger one is a failed refresh)"`
	SnapshotInterval time.Duration `yaml:"snapshot_interval" help:"how often learned detection state is saved to <data_dir>/detect while running (it is always saved on a clean stop); 0: only on stop"`
}

func defaultDetect() Detect {
	return Detect{FeedRefresh: time.Hour, FeedTimeout: time.Minute, FeedMaxBytes: 256 << 20, SnapshotInterval: 10 * time.Minute}
}

func (d Detect) validate(bad func(key, format string, args ...any)) {
	if d.FeedRefresh < 10*time.Second || d.FeedRefresh > 7*24*time.Hour {
		bad("detect.feed_refresh", "must be between 10s and 168h, got %s", d.FeedRefresh)
	}
	if d.FeedTimeout < time.Second || d.FeedTimeout > time.Hour {
		bad("detect.feed_timeout", "must be between 1s and 1h, got %s", d.FeedTimeout)
	}
	if d.FeedMaxBytes < 1024 || d.FeedMaxBytes > 4<<30 {
		bad("detect.feed_max_bytes", "must be between 1024 and 4294967296, got %d", d.FeedMaxBytes)
	}
	if d.SnapshotInterval != 0 && (d.SnapshotInterval < 10*time.Second || d.SnapshotInterval > 24*time.Hour) {
		bad("detect.snapshot_interval", "must be 0 (only on stop) or between 10s and 24h, got %s", d.SnapshotInterval)
	}
}
