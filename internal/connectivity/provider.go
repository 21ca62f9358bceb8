package connectivity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SIM names a SIM at its connectivity platform.
type SIM struct {
	ICCID string
	IMSI  string
}

// Usage is what the platform reports a SIM has used.
type Usage struct {
	BytesUp   uint64 // from the device
	BytesDown uint64 // to the device
}

// Provider is a tenant's connectivity-management platform (the operator's
// or MVNO's SIM portal API). Implementations are safe for concurrent use.
// Errors wrap [ErrProvider] when the platform refused or answered
// something unusable.
type Provider interface {
	// SuspendSIM stops the SIM's data service at the platform.
	SuspendSIM(ctx context.Context, s SIM) error
	// ReactivateSIM resumes it.
	ReactivateSIM(ctx context.Context, s SIM) error
	// IMEI returns the IMEI the network last saw the SIM in.
	IMEI(ctx context.Context, s SIM) (string, error)
	// Usage returns the SIM's data usage in the platform's current period.
	Usage(ctx context.Context, s SIM) (Usage, error)
}

// Errors of providers.
var (
	// ErrProvider: the platform refused the request or its answer lacks
	// what was asked.
	ErrProvider = errors.New("connectivity: provider error")
	// ErrNotConfigured: the provider has no endpoint for this operation.
	ErrNotConfigured = errors.New("connectivity: operation not configured for this provider")
)

// Endpoint is one operation of an [HTTPProvider]. URL and Body are
// templates in which {iccid} and {imsi} are replaced by the SIM's values
// (checked to be digits first, so they cannot inject anything); in URL
// they are also path-escaped.
type Endpoint struct {
	Method  string            `yaml:"method"` // default GET, or POST when Body is set
	URL     string            `yaml:"url"`
	Headers map[string]string `yaml:"headers"` // added to the provider's headers
	Body    string            `yaml:"body"`
	// Fields maps what the operation reads (imei; bytes_up, bytes_down) to
	// a dotted path into the JSON answer, e.g. "data.device.imei" or
	// "items.0.imei". Numbers may be JSON numbers or numeric strings.
	Fields map[string]string `yaml:"fields"`
}

// ProviderConfig configures an [HTTPProvider] for one tenant in the peers
// file:
//
//	providers:
//	  - tenant: acme
//	    base_url: https://api.example-iot.net/v1   # optional prefix of relative URLs
//	    headers: {Authorization: "Bearer ..."}
//	    timeout: 10s
//	    suspend:    {method: PUT, url: "/sims/{iccid}/status", body: '{"status":"suspended"}'}
//	    reactivate: {method: PUT, url: "/sims/{iccid}/status", body: '{"status":"active"}'}
//	    imei:       {url: "/sims/{iccid}", fields: {imei: "sim.imei"}}
//	    usage:      {url: "/sims/{iccid}/usage", fields: {bytes_up: "data.up", bytes_down: "data.down"}}
type ProviderConfig struct {
	Tenant     string            `yaml:"tenant"`
	BaseURL    string            `yaml:"base_url"`
	Headers    map[string]string `yaml:"headers"`
	Timeout    string            `yaml:"timeout"` // default 10s
	Suspend    *Endpoint         `yaml:"suspend"`
	Reactivate *Endpoint         `yaml:"reactivate"`
	IMEI       *Endpoint         `yaml:"imei"`
	Usage      *Endpoint         `yaml:"usage"`
}

// HTTPProvider is a [Provider] for any JSON-over-HTTP platform, configured
// by URL templates. A 2xx status is success; any other status, a body that
// is not JSON where fields are read, or a missing field is an error
// wrapping [ErrProvider] (with the status, never the answer's body, which
// may hold credentials or subscriber data). Answers are read up to 1 MiB.
type HTTPProvider struct {
	cfg     ProviderConfig
	base    *url.URL
	timeout time.Duration
	client  *http.Client
}

var _ Provider = (*HTTPProvider)(nil)

var digits = regexp.MustCompile(`^[0-9]{1,22}$`)

// NewHTTPProvider validates cfg and returns the provider; client is the
// HTTP client to use (a default one with the configured timeout when nil).
func NewHTTPProvider(cfg ProviderConfig, client *http.Client) (*HTTPProvider, error) {
	p := &HTTPProvider{cfg: cfg, timeout: 10 * time.Second, client: client}
	var errs []error
	if cfg.Timeout != "" {
		d, err := time.ParseDuration(cfg.Timeout)
		if err != nil || d <= 0 || d > 5*time.Minute {
			errs = append(errs, fmt.Errorf("timeout: want a duration up to 5m, got %q", cfg.Timeout))
		}
		p.timeout = d
	}
	if cfg.BaseURL != "" {
		u, err := url.Parse(cfg.BaseURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("base_url: want an http(s) URL, got %q", cfg.BaseURL))
		}
		p.base = u
	}
	for name, e := range map[string]*Endpoint{"suspend": cfg.Suspend, "reactivate": cfg.Reactivate, "imei": cfg.IMEI, "usage": cfg.Usage} {
		if e == nil {
			continue
		}
		if err := p.checkEndpoint(name, e); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if cfg.Suspend == nil && cfg.Reactivate == nil && cfg.IMEI == nil && cfg.Usage == nil {
		errs = append(errs, errors.New("no operation configured (suspend, reactivate, imei, usage)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if p.client == nil {
		p.client = &http.Client{Timeout: p.timeout}
	}
	return p, nil
}

func (p *HTTPProvider) checkEndpoint(name string, e *Endpoint) error {
	switch strings.ToUpper(e.Method) {
	case "", "GET", "POST", "PUT", "PATCH", "DELETE":
	default:
		return fmt.Errorf("method %q not GET, POST, PUT, PATCH or DELETE", e.Method)
	}
	u, err := p.resolve(e.URL, SIM{ICCID: "0", IMSI: "0"})
	if err != nil {
		return err
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("url %q is not an absolute http(s) URL (set base_url for relative ones)", e.URL)
	}
	need := map[string][]string{"imei": {"imei"}, "usage": {"bytes_up", "bytes_down"}}[name]
	for _, f := range need {
		if e.Fields[f] == "" {
			return fmt.Errorf("fields.%s: missing", f)
		}
	}
	for f := range e.Fields {
		if !contains(need, f) {
			return fmt.Errorf("fields.%s: not read by %s", f, name)
		}
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func fill(tmpl string, s SIM, esc func(string) string) string {
	return strings.NewReplacer("{iccid}", esc(s.ICCID), "{imsi}", esc(s.IMSI)).Replace(tmpl)
}

func (p *HTTPProvider) resolve(tmpl string, s SIM) (*url.URL, error) {
	u, err := url.Parse(fill(tmpl, s, url.PathEscape))
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", tmpl, err)
	}
	if p.base != nil && !u.IsAbs() {
		b := *p.base
		b.Path = strings.TrimSuffix(b.Path, "/") + "/" + strings.TrimPrefix(u.Path, "/")
		b.RawPath = ""
		b.RawQuery = u.RawQuery
		return &b, nil
	}
	return u, nil
}

// call runs one operation and returns the decoded JSON answer (nil when
// the operation reads no field).
func (p *HTTPProvider) call(ctx context.Context, op string, e *Endpoint, s SIM) (any, error) {
	if e == nil {
		return nil, fmt.Errorf("%s: %w", op, ErrNotConfigured)
	}
	if (s.ICCID != "" && !digits.MatchString(s.ICCID)) || (s.IMSI != "" && !digits.MatchString(s.IMSI)) {
		return nil, fmt.Errorf("connectivity: %s: iccid and imsi must be digits", op)
	}
	if (strings.Contains(e.URL+e.Body, "{iccid}") && s.ICCID == "") || (strings.Contains(e.URL+e.Body, "{imsi}") && s.IMSI == "") {
		return nil, fmt.Errorf("connectivity: %s: the device has no SIM identifier this provider needs", op)
	}
	u, err := p.resolve(e.URL, s)
	if err != nil {
		return nil, fmt.Errorf("connectivity: %s: %w", op, err)
	}
	method := strings.ToUpper(e.Method)
	var body io.Reader
	if e.Body != "" {
		body = strings.NewReader(fill(e.Body, s, func(v string) string { return v }))
		if method == "" {
			method = http.MethodPost
		}
	}
	if method == "" {
		method = http.MethodGet
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("connectivity: %s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range p.cfg.Headers {
		req.Header.Set(k, v)
	}
	for k, v := range e.Headers {
		req.Header.Set(k, v)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("connectivity: %s %s: %w", op, u.Redacted(), err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("connectivity: %s: read answer: %w", op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("%w: %s: status %d", ErrProvider, op, resp.StatusCode)
	}
	if len(e.Fields) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: answer is not JSON", ErrProvider, op)
	}
	return doc, nil
}

// SuspendSIM implements [Provider].
func (p *HTTPProvider) SuspendSIM(ctx context.Context, s SIM) error {
	_, err := p.call(ctx, "suspend", p.cfg.Suspend, s)
	return err
}

// ReactivateSIM implements [Provider].
func (p *HTTPProvider) ReactivateSIM(ctx context.Context, s SIM) error {
	_, err := p.call(ctx, "reactivate", p.cfg.Reactivate, s)
	return err
}

// IMEI implements [Provider]: the imei field, 14-16 digits.
func (p *HTTPProvider) IMEI(ctx context.Context, s SIM) (string, error) {
	doc, err := p.call(ctx, "imei", p.cfg.IMEI, s)
	if err != nil {
		return "", err
	}
	v, err := field(doc, p.cfg.IMEI.Fields["imei"])
	if err != nil {
		return "", fmt.Errorf("%w: imei: %w", ErrProvider, err)
	}
	imei, ok := v.(string)
	if !ok || len(imei) < 14 || len(imei) > 16 || !digits.MatchString(imei) {
		return "", fmt.Errorf("%w: imei: field %s is not 14-16 digits", ErrProvider, p.cfg.IMEI.Fields["imei"])
	}
	return imei, nil
}

// Usage implements [Provider].
func (p *HTTPProvider) Usage(ctx context.Context, s SIM) (Usage, error) {
	doc, err := p.call(ctx, "usage", p.cfg.Usage, s)
	if err != nil {
		return Usage{}, err
	}
	var u Usage
	for name, dst := range map[string]*uint64{"bytes_up": &u.BytesUp, "bytes_down": &u.BytesDown} {
		path := p.cfg.Usage.Fields[name]
		v, err := field(doc, path)
		if err != nil {
			return Usage{}, fmt.Errorf("%w: usage: %w", ErrProvider, err)
		}
		var s string
		switch x := v.(type) {
		case json.Number:
			s = x.String()
		case string:
			s = x
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("%w: usage: field %s is not a non-negative integer", ErrProvider, path)
		}
		*dst = n
	}
	return u, nil
}

// field follows a dotted path (object keys, array indexes) into doc.
func field(doc any, path string) (any, error) {
	cur := doc
	for _, seg := range strings.Split(path, ".") {
		switch x := cur.(type) {
		case map[string]any:
			v, ok := x[seg]
			if !ok {
				return nil, fmt.Errorf("field %s: %q missing", path, seg)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("field %s: no element %q", path, seg)
			}
			cur = x[i]
		default:
			return nil, fmt.Errorf("field %s: %q is not inside an object or array", path, seg)
		}
	}
	return cur, nil
}
