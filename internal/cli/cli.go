// Package cli is the operator CLI's client of the Garrison API and its
// output formatting (aligned tables or JSON).
//
// The client trusts, in order: the CA file given (GARRISON_CA_FILE), the
// server certificate kept in a data directory (<data_dir>/tls/server.crt),
// or nothing but the system roots. Insecure skips verification and exists
// for development only. The token is read from GARRISON_TOKEN, never from
// a flag, so it does not show in process listings.
package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/garrisonhq/garrison/internal/tlsutil"
)

// Config says how to reach the API.
type Config struct {
	URL      string // https://host:port; when empty, read from DataDir/run/api.addr
	Token    string
	CAFile   string
	DataDir  string
	Insecure bool
}

// Client calls the API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// ErrNoToken is returned when no token is configured.
var ErrNoToken = errors.New("no API token: set GARRISON_TOKEN")

// New returns a client for c.
func New(c Config) (*Client, error) {
	if c.Token == "" {
		return nil, ErrNoToken
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case c.Insecure:
		tc.InsecureSkipVerify = true //nolint:gosec // explicit --insecure, for development
	case c.CAFile != "":
		p, err := tlsutil.Pool(c.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = p
	case c.DataDir != "":
		p, err := tlsutil.Pool(filepath.Join(c.DataDir, "tls", tlsutil.CertFile))
		if err != nil {
			return nil, fmt.Errorf("trust the server of data dir %s: %w", c.DataDir, err)
		}
		tc.RootCAs = p
	}
	base := c.URL
	if base == "" && c.DataDir != "" {
		b, err := os.ReadFile(filepath.Join(c.DataDir, "run", "api.addr"))
		if err != nil {
			return nil, fmt.Errorf("no GARRISON_URL and no running server in %s: %w", c.DataDir, err)
		}
		addr := strings.TrimSpace(string(b))
		if strings.HasPrefix(addr, "[::]:") || strings.HasPrefix(addr, "0.0.0.0:") {
			addr = "localhost:" + addr[strings.LastIndex(addr, ":")+1:]
		}
		base = "https://" + addr
	}
	if base == "" {
		base = "https://localhost:8443"
	}
	return &Client{
		base:  strings.TrimRight(base, "/"),
		token: c.Token,
		http:  &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}},
	}, nil
}

// APIError is an error response of the API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// Do sends in (when not nil) as JSON and decodes the response into out
// (when not nil). A non-2xx response is an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var eb struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			return &APIError{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(data))}
		}
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

// Column is one column of a table: a header and how to read a row.
type Column[T any] struct {
	Header string
	Value  func(T) string
}

// Print writes rows as an aligned table, or as indented JSON when format is
// "json".
func Print[T any](w io.Writer, format string, rows []T, cols []Column[T]) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []T{}
		}
		return enc.Encode(rows)
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		hs := make([]string, len(cols))
		for i, c := range cols {
			hs[i] = c.Header
		}
		fmt.Fprintln(tw, strings.Join(hs, "\t"))
		for _, r := range rows {
			vs := make([]string, len(cols))
			for i, c := range cols {
				vs[i] = sanitize(c.Value(r))
			}
			fmt.Fprintln(tw, strings.Join(vs, "\t"))
		}
		return tw.Flush()
	default:
		return fmt.Errorf("unknown output format %q (want table or json)", format)
	}
}

// PrintOne writes one value as JSON or as a one-row table.
func PrintOne[T any](w io.Writer, format string, v T, cols []Column[T]) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return Print(w, format, []T{v}, cols)
}

// sanitize keeps server-supplied strings from moving the terminal.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// Sanitize replaces control characters of a server-supplied string, so that
// text printed outside a table cannot move the terminal either.
func Sanitize(s string) string { return sanitize(s) }

// Time formats a time for tables.
func Time(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
