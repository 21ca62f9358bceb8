// Package intel keeps threat-intelligence feeds loaded into the detection
// engine's table ([detect.ThreatIntel]): a feeds file names each feed (a
// file or an http(s) URL) and its refresh interval; [Feeds] reads them at
// start and on schedule. A failed refresh keeps the feed's previous
// contents, is logged, counted in the status and in metrics.
package intel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/detect"
)

// Feed is one threat-intelligence feed: a name (kept as the evidence
// of every alert it causes), where to read it (a file path or an http(s)
// URL) and how often to read it again.
type Feed struct {
	Name    string        `yaml:"name" json:"name"`
	URL     string        `yaml:"url" json:"url,omitempty"`
	File    string        `yaml:"file" json:"file,omitempty"`
	Refresh time.Duration `yaml:"refresh" json:"refresh"`
}

// Source names where the feed is read from (a URL without user info or
// query, which may carry credentials).
func (f Feed) Source() string {
	if f.File != "" {
		return f.File
	}
	u, err := url.Parse(f.URL)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// ErrFeeds reports a feeds file that cannot be used; the message names
// every bad entry.
var ErrFeeds = errors.New("intel: invalid feeds file")

var feedNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// MinRefresh is the shortest refresh interval a feed may ask for.
const MinRefresh = 10 * time.Second

// Parse reads a feeds file:
//
//	feeds:
//	  - name: firehol-level1
//	    url: https://iplists.firehol.org/files/firehol_level1.netset
//	    refresh: 6h
//	  - name: local-blocklist
//	    file: /etc/garrison/blocklist.csv   # refresh: the default
//
// Entries without refresh get def. Every problem is reported at once,
// naming the entry.
func Parse(b []byte, def time.Duration) ([]Feed, error) {
	var doc struct {
		Feeds []Feed `yaml:"feeds"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrFeeds, err)
	}
	var errs []error
	seen := map[string]bool{}
	for i := range doc.Feeds {
		f := &doc.Feeds[i]
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%w: feeds[%d] (%q): %s", ErrFeeds, i, f.Name, fmt.Sprintf(format, args...)))
		}
		if !feedNameRE.MatchString(f.Name) {
			bad("name must be 1-64 letters, digits, '.', '_' or '-'")
		} else if seen[f.Name] {
			bad("duplicate name")
		}
		seen[f.Name] = true
		switch {
		case (f.URL == "") == (f.File == ""):
			bad("give exactly one of url and file")
		case f.URL != "":
			u, err := url.Parse(f.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad("url must be http:// or https:// with a host")
			}
		}
		if f.Refresh == 0 {
			f.Refresh = def
		}
		if f.Refresh < MinRefresh {
			bad("refresh must be at least %s, got %s", MinRefresh, f.Refresh)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return doc.Feeds, nil
}

// Load reads and parses a feeds file ("" gives no feeds).
func Load(path string, def time.Duration) ([]Feed, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFeeds, err)
	}
	fs, err := Parse(b, def)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return fs, nil
}

// Status is what is known of one feed.
type Status struct {
	Name        string        `json:"name"`
	Source      string        `json:"source"`
	Refresh     time.Duration `json:"refresh_ns"`
	Entries     int           `json:"entries"`   // addresses and networks loaded (the last good refresh)
	Bad         int           `json:"bad_lines"` // lines skipped in the last good refresh
	LastRefresh time.Time     `json:"last_refresh,omitzero"`
	LastAttempt time.Time     `json:"last_attempt,omitzero"`
	LastError   string        `json:"last_error,omitempty"`
	Failures    int           `json:"failures"` // consecutive failed refreshes
}

// Options configure [Feeds].
type Options struct {
	Intel  *detect.ThreatIntel
	Feeds  []Feed
	Client *http.Client // default: a client with Timeout
	// Timeout bounds one refresh (default 1m); MaxBytes one feed's body
	// (default 256 MiB).
	Timeout  time.Duration
	MaxBytes int64
	Clock    clock.Clock
	Logger   *slog.Logger
	// Registerer receives garrison_intel_feed_* metrics (optional).
	Registerer prometheus.Registerer
}

// Feeds keeps threat-intelligence feeds loaded into a [detect.ThreatIntel]
// and refreshes them on schedule. A refresh that fails (unreachable,
// HTTP error, unreadable, larger than MaxBytes, or empty when the feed
// had entries) keeps the feed's previous contents, is logged and counted.
// An HTTP feed is fetched conditionally (ETag, Last-Modified): 304 counts
// as a good refresh.
type Feeds struct {
	o        Options
	mu       sync.Mutex
	st       map[string]*feedState
	entries  *prometheus.GaugeVec
	failures *prometheus.CounterVec
	last     *prometheus.GaugeVec
}

type feedState struct {
	spec         Feed
	status       Status
	etag, lastMo string
}

// New builds the feed keeper; nothing is read until Refresh or Run.
func New(o Options) (*Feeds, error) {
	if o.Intel == nil {
		return nil, errors.New("intel: feeds need an intel table")
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 256 << 20
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Feeds{o: o, st: map[string]*feedState{},
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "garrison_intel_feed_entries", Help: "Addresses and networks loaded from a threat-intelligence feed."}, []string{"feed"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "garrison_intel_feed_refresh_failures_total",
			Help: "Failed refreshes of a threat-intelligence feed (its previous contents stay loaded)."}, []string{"feed"}),
		last: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "garrison_intel_feed_last_refresh_timestamp_seconds", Help: "When a feed was last refreshed successfully."}, []string{"feed"}),
	}
	for _, s := range o.Feeds {
		f.st[s.Name] = &feedState{spec: s, status: Status{Name: s.Name, Source: s.Source(), Refresh: s.Refresh}}
		f.failures.WithLabelValues(s.Name)
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{f.entries, f.failures, f.last} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("intel: feeds metrics: %w", err)
			}
		}
	}
	return f, nil
}

// ErrNoFeed: no feed of that name is configured.
var ErrNoFeed = errors.New("intel: no such feed")

// Status lists every feed, by name.
func (f *Feeds) Status() []Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Status, 0, len(f.st))
	for _, s := range f.st {
		out = append(out, s.status)
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// RefreshAll refreshes every feed once, one after the other; failures are
// in the status (and the log), so it has no error.
func (f *Feeds) RefreshAll(ctx context.Context) {
	for _, s := range f.o.Feeds {
		_ = f.Refresh(ctx, s.Name)
	}
}

// Refresh reads feed name now and, if that works, replaces its entries.
func (f *Feeds) Refresh(ctx context.Context, name string) error {
	f.mu.Lock()
	st := f.st[name]
	var etag, lastMo string
	if st != nil {
		etag, lastMo = st.etag, st.lastMo
	}
	f.mu.Unlock()
	if st == nil {
		return fmt.Errorf("%w: %q", ErrNoFeed, name)
	}
	ctx, cancel := context.WithTimeout(ctx, f.o.Timeout)
	defer cancel()
	res, err := f.fetch(ctx, st.spec, etag, lastMo)
	now := f.o.Clock.Now().UTC()
	f.mu.Lock()
	defer f.mu.Unlock()
	st.status.LastAttempt = now
	if err == nil && !res.notModified && len(res.prefixes) == 0 && st.status.Entries > 0 {
		err = fmt.Errorf("feed read but holds no address (%d bad lines); keeping its %d entries", res.bad, st.status.Entries)
	}
	if err != nil {
		st.status.Failures++
		st.status.LastError = err.Error()
		f.failures.WithLabelValues(name).Inc()
		f.o.Logger.Warn("threat-intelligence feed refresh failed; previous contents kept", "feed", name, "source", st.spec.Source(),
			"entries", st.status.Entries, "failures", st.status.Failures, "err", err)
		return fmt.Errorf("intel: feed %q: %w", name, err)
	}
	if !res.notModified {
		n := f.o.Intel.ImportPrefixes(name, res.prefixes)
		st.status.Entries, st.status.Bad = n, res.bad
		st.etag, st.lastMo = res.etag, res.lastMo
		f.entries.WithLabelValues(name).Set(float64(n))
	}
	st.status.LastRefresh, st.status.LastError, st.status.Failures = now, "", 0
	f.last.WithLabelValues(name).Set(float64(now.Unix()))
	f.o.Logger.Info("threat-intelligence feed refreshed", "feed", name, "entries", st.status.Entries, "bad_lines", st.status.Bad, "not_modified", res.notModified)
	return nil
}

type fetched struct {
	prefixes     []netip.Prefix
	bad          int
	notModified  bool
	etag, lastMo string
}

func (f *Feeds) fetch(ctx context.Context, s Feed, etag, lastMo string) (fetched, error) {
	var res fetched
	var body io.ReadCloser
	if s.File != "" {
		fh, err := os.Open(s.File)
		if err != nil {
			return res, err
		}
		body = fh
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		if err != nil {
			return res, err
		}
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		if lastMo != "" {
			req.Header.Set("If-Modified-Since", lastMo)
		}
		req.Header.Set("User-Agent", "garrison-intel/1")
		resp, err := f.o.Client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // the URL may carry credentials
			}
			return res, fmt.Errorf("GET %s: %w", s.Source(), err)
		}
		if resp.StatusCode == http.StatusNotModified {
			resp.Body.Close()
			res.notModified = true
			return res, nil
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return res, fmt.Errorf("GET %s: HTTP %s", s.Source(), resp.Status)
		}
		res.etag, res.lastMo = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
		body = resp.Body
	}
	defer body.Close()
	lr := &limitedReader{r: body, n: f.o.MaxBytes}
	ps, bad, err := detect.ParseFeed(lr)
	if lr.over {
		return res, fmt.Errorf("feed larger than %d bytes", f.o.MaxBytes)
	}
	if err != nil {
		return res, err
	}
	res.prefixes, res.bad = ps, bad
	return res, nil
}

// limitedReader fails (instead of truncating) past n bytes.
type limitedReader struct {
	r    io.Reader
	n    int64
	over bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		var one [1]byte
		if k, _ := l.r.Read(one[:]); k > 0 {
			l.over = true
			return 0, errors.New("feed too large")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.r.Read(p)
	l.n -= int64(k)
	return k, err
}

// Run refreshes each feed on its own schedule until ctx is done. It does
// not refresh at once: call RefreshAll first.
func (f *Feeds) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range f.o.Feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(s.Refresh)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = f.Refresh(ctx, s.Name)
				}
			}
		}()
	}
	wg.Wait()
}
