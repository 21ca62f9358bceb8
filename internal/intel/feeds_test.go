package intel_test

import (
	"context"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/intel"
)

// feedServer serves one feed body with an ETag, or a failure.
type feedServer struct {
	mu     sync.Mutex
	body   string
	status int
	gets   int
	cond   int // conditional requests answered 304
}

func (s *feedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.status != 0 {
		http.Error(w, "down", s.status)
		return
	}
	etag := `"` + strconv.Itoa(len(s.body)) + `-` + strconv.Itoa(int(crc32.ChecksumIEEE([]byte(s.body)))) + `"`
	if r.Header.Get("If-None-Match") == etag {
		s.cond++
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	_, _ = w.Write([]byte(s.body))
}

func (s *feedServer) set(body string, status int) {
	s.mu.Lock()
	s.body, s.status = body, status
	s.mu.Unlock()
}

func TestFeedsRefreshKeepPreviousOnFailure(t *testing.T) {
	ctx := context.Background()
	srv := &feedServer{body: "# blocklist\n203.0.113.0/24\n198.51.100.7 ; c2\n"}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	file := filepath.Join(t.TempDir(), "local.csv")
	require.NoError(t, os.WriteFile(file, []byte("ip,comment\n192.0.2.55,scanner\n2001:db8::/32,doc\n"), 0o600))

	ti := detect.NewThreatIntel()
	reg := prometheus.NewRegistry()
	f, err := intel.New(intel.Options{Intel: ti, Registerer: reg, Feeds: []intel.Feed{
		{Name: "remote", URL: hs.URL + "/list.txt?key=secret", Refresh: time.Hour},
		{Name: "local", File: file, Refresh: time.Hour},
	}})
	require.NoError(t, err)
	f.RefreshAll(ctx)

	lookup := func(a string) string {
		feed, _ := ti.Lookup(netip.MustParseAddr(a))
		return feed
	}
	require.Equal(t, "remote", lookup("203.0.113.9"))
	require.Equal(t, "remote", lookup("198.51.100.7"))
	require.Equal(t, "local", lookup("192.0.2.55"))
	require.Equal(t, "local", lookup("2001:db8::1"))
	require.Empty(t, lookup("192.0.2.56"))
	st := f.Status()
	require.Len(t, st, 2)
	require.Equal(t, "local", st[0].Name)
	require.Equal(t, 2, st[0].Entries)
	require.Equal(t, 2, st[1].Entries)
	require.False(t, st[1].LastRefresh.IsZero())
	require.NotContains(t, st[1].Source, "secret", "the URL's query may carry a key")

	// Unchanged: a conditional GET answered 304 is a good refresh.
	require.NoError(t, f.Refresh(ctx, "remote"))
	require.Equal(t, 1, srv.cond)

	// The server fails: the feed keeps its contents, the failure shows.
	srv.set("", http.StatusBadGateway)
	err = f.Refresh(ctx, "remote")
	require.ErrorContains(t, err, "502")
	require.Equal(t, "remote", lookup("203.0.113.9"))
	// An empty (or garbage) answer does not wipe a feed either.
	srv.set("<html>maintenance</html>\n", 0)
	require.ErrorContains(t, f.Refresh(ctx, "remote"), "holds no address")
	require.Equal(t, "remote", lookup("203.0.113.9"))
	st = f.Status()
	require.Equal(t, 2, st[1].Failures)
	require.Equal(t, 2, st[1].Entries)
	require.Contains(t, st[1].LastError, "no address")
	require.Equal(t, 2.0, counterValue(t, reg, "garrison_intel_feed_refresh_failures_total", "remote"))

	// The file disappears: same.
	require.NoError(t, os.Remove(file))
	require.Error(t, f.Refresh(ctx, "local"))
	require.Equal(t, "local", lookup("192.0.2.55"))

	// A good refresh replaces the contents and clears the failures.
	srv.set("203.0.113.200\n", 0)
	require.NoError(t, f.Refresh(ctx, "remote"))
	require.Empty(t, lookup("198.51.100.7"))
	require.Equal(t, "remote", lookup("203.0.113.200"))
	st = f.Status()
	require.Equal(t, 0, st[1].Failures)
	require.Equal(t, 1, st[1].Entries)
	require.Empty(t, st[1].LastError)

	require.ErrorIs(t, f.Refresh(ctx, "nope"), intel.ErrNoFeed)

	// A feed larger than the limit is refused whole, not truncated.
	small, err := intel.New(intel.Options{Intel: ti, MaxBytes: 16, Feeds: []intel.Feed{{Name: "remote", URL: hs.URL, Refresh: time.Hour}}})
	require.NoError(t, err)
	srv.set("203.0.113.201\n203.0.113.202\n", 0)
	require.ErrorContains(t, small.Refresh(ctx, "remote"), "larger than 16 bytes")
	require.Equal(t, "remote", lookup("203.0.113.200"))
	require.Empty(t, lookup("203.0.113.201"))
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, feed string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "feed" && l.GetValue() == feed {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{feed=%q} not found", name, feed)
	return 0
}

func TestFeedsRunRefreshesOnSchedule(t *testing.T) {
	file := filepath.Join(t.TempDir(), "list.txt")
	require.NoError(t, os.WriteFile(file, []byte("192.0.2.1\n"), 0o600))
	ti := detect.NewThreatIntel()
	f, err := intel.New(intel.Options{Intel: ti, Feeds: []intel.Feed{{Name: "local", File: file, Refresh: 20 * time.Millisecond}}})
	require.NoError(t, err)
	f.RefreshAll(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	require.NoError(t, os.WriteFile(file, []byte("192.0.2.2\n"), 0o600))
	require.Eventually(t, func() bool {
		_, ok := ti.Lookup(netip.MustParseAddr("192.0.2.2"))
		return ok
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	<-done
}

func TestParseFeeds(t *testing.T) {
	fs, err := intel.Parse([]byte(`
feeds:
  - name: firehol-level1
    url: https://iplists.firehol.org/files/firehol_level1.netset
    refresh: 6h
  - name: local
    file: /etc/garrison/blocklist.csv
`), time.Hour)
	require.NoError(t, err)
	require.Equal(t, []intel.Feed{
		{Name: "firehol-level1", URL: "https://iplists.firehol.org/files/firehol_level1.netset", Refresh: 6 * time.Hour},
		{Name: "local", File: "/etc/garrison/blocklist.csv", Refresh: time.Hour},
	}, fs)
	fs, err = intel.Parse(nil, time.Hour)
	require.NoError(t, err)
	require.Empty(t, fs)

	for _, tc := range []struct{ doc, want string }{
		{"feeds:\n  - name: a\n    url: ftp://x/y\n", `feeds[0] ("a"): url must be http`},
		{"feeds:\n  - name: a\n    file: /x\n    url: https://x/y\n", "exactly one of url and file"},
		{"feeds:\n  - name: a\n", "exactly one of url and file"},
		{"feeds:\n  - name: a b\n    file: /x\n", "name must be"},
		{"feeds:\n  - name: a\n    file: /x\n  - name: a\n    file: /y\n", `feeds[1] ("a"): duplicate name`},
		{"feeds:\n  - name: a\n    file: /x\n    refresh: 1s\n", "refresh must be at least 10s"},
		{"feeds:\n  - name: a\n    file: /x\n    refesh: 1h\n", "refesh"},
		{"feeds: [", "yaml"},
	} {
		_, err := intel.Parse([]byte(tc.doc), time.Hour)
		require.ErrorIs(t, err, intel.ErrFeeds, tc.doc)
		require.ErrorContains(t, err, tc.want, tc.doc)
	}
}
