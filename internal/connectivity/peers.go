package connectivity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/flows"
	"github.com/garrisonhq/garrison/internal/radius"
)

// Peers is the peers file: who may talk to the network-side listeners and
// which connectivity platform each tenant uses. It holds shared secrets and
// API credentials: keep it readable by the garrison user only.
//
//	nas_clients:
//	  - name: pgw-madrid-1
//	    tenant: acme
//	    prefix: 10.20.0.1/32      # one gateway, or a subnet
//	    secret: "s3cr3t-shared"   # RADIUS shared secret
//	    coa_addr: 10.20.0.1:3799  # Disconnect/CoA port (default <address>:3799 for a single address)
//	exporters:
//	  - name: pgw-madrid-1
//	    tenant: acme
//	    prefix: 10.20.0.1/32
//	providers:
//	  - tenant: acme
//	    ...                        # see ProviderConfig
type Peers struct {
	NASClients []NASClient      `yaml:"nas_clients"`
	Exporters  []ExporterConfig `yaml:"exporters"`
	Providers  []ProviderConfig `yaml:"providers"`
}

// NASClient is one APN gateway (GGSN, PGW, SMF) of a tenant.
type NASClient struct {
	Name    string `yaml:"name"`
	Tenant  string `yaml:"tenant"`
	Prefix  string `yaml:"prefix"`
	Secret  string `yaml:"secret"`
	CoAAddr string `yaml:"coa_addr"`
}

// ExporterConfig is one flow exporter of a tenant.
type ExporterConfig struct {
	Name   string `yaml:"name"`
	Tenant string `yaml:"tenant"`
	Prefix string `yaml:"prefix"`
}

// ErrPeers reports a peers file that cannot be used; the message lists
// every problem with its entry.
var ErrPeers = errors.New("connectivity: invalid peers file")

var tenantRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// LoadPeers reads and validates a peers file. An empty path gives empty
// peers.
func LoadPeers(path string) (Peers, error) {
	if path == "" {
		return Peers{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Peers{}, fmt.Errorf("%w: %w", ErrPeers, err)
	}
	p, err := ParsePeers(b)
	if err != nil {
		return Peers{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePeers decodes (unknown keys are errors) and validates a peers file,
// reporting every problem at once.
func ParsePeers(b []byte) (Peers, error) {
	var p Peers
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
		return Peers{}, fmt.Errorf("%w: %v", ErrPeers, err)
	}
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	seen := map[netip.Addr]string{}
	for i, c := range p.NASClients {
		at := fmt.Sprintf("nas_clients[%d] (%s)", i, c.Name)
		if !tenantRE.MatchString(c.Tenant) {
			bad("%s: tenant %q is not a tenant id", at, c.Tenant)
		}
		pfx, err := parsePrefix(c.Prefix)
		if err != nil {
			bad("%s: prefix: %v", at, err)
		} else if pfx.IsSingleIP() {
			if other, dup := seen[pfx.Addr()]; dup {
				bad("%s: address %s already belongs to %s", at, pfx.Addr(), other)
			}
			seen[pfx.Addr()] = c.Name
		}
		if len(c.Secret) < 8 {
			bad("%s: secret must be at least 8 bytes", at)
		}
		if c.CoAAddr != "" {
			if _, _, err := net.SplitHostPort(c.CoAAddr); err != nil {
				bad("%s: coa_addr: want host:port, got %q", at, c.CoAAddr)
			}
		}
	}
	for i, e := range p.Exporters {
		at := fmt.Sprintf("exporters[%d] (%s)", i, e.Name)
		if !tenantRE.MatchString(e.Tenant) {
			bad("%s: tenant %q is not a tenant id", at, e.Tenant)
		}
		if _, err := parsePrefix(e.Prefix); err != nil {
			bad("%s: prefix: %v", at, err)
		}
	}
	tenants := map[string]bool{}
	for i, pc := range p.Providers {
		at := fmt.Sprintf("providers[%d] (%s)", i, pc.Tenant)
		if tenants[pc.Tenant] {
			bad("%s: tenant has two providers", at)
		}
		tenants[pc.Tenant] = true
		if !tenantRE.MatchString(pc.Tenant) {
			bad("%s: tenant %q is not a tenant id", at, pc.Tenant)
		}
		if _, err := NewHTTPProvider(pc, nil); err != nil {
			bad("%s: %v", at, err)
		}
	}
	if len(errs) > 0 {
		return Peers{}, fmt.Errorf("%w:\n  %s", ErrPeers, strings.Join(errs, "\n  "))
	}
	return p, nil
}

// parsePrefix accepts a CIDR prefix or a bare address (one host).
func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("missing")
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("want an address or a CIDR prefix, got %q", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want an address or a CIDR prefix, got %q", s)
	}
	return p.Masked(), nil
}

// RADIUSClients returns the NAS clients in the form the RADIUS server
// takes.
func (p Peers) RADIUSClients() []radius.Client {
	out := make([]radius.Client, 0, len(p.NASClients))
	for _, c := range p.NASClients {
		pfx, _ := parsePrefix(c.Prefix)
		out = append(out, radius.Client{Name: c.Name, Tenant: event.TenantID(c.Tenant), Prefix: pfx, Secret: []byte(c.Secret)})
	}
	return out
}

// FlowExporters returns the exporters in the form the collector takes.
func (p Peers) FlowExporters() []flows.Exporter {
	out := make([]flows.Exporter, 0, len(p.Exporters))
	for _, e := range p.Exporters {
		pfx, _ := parsePrefix(e.Prefix)
		out = append(out, flows.Exporter{Name: e.Name, Tenant: event.TenantID(e.Tenant), Prefix: pfx})
	}
	return out
}

// DynamicAuth returns where to send Disconnect and CoA requests for a
// session carried by NAS address nas through the client named name: the
// client's coa_addr, else the NAS address on port 3799. ok is false when no
// client of the tenant covers the NAS.
func (p Peers) DynamicAuth(tenant event.TenantID, name string, nas netip.Addr) (radius.NAS, bool) {
	for _, c := range p.NASClients {
		if c.Tenant != string(tenant) {
			continue
		}
		pfx, _ := parsePrefix(c.Prefix)
		if c.Name != name && !pfx.Contains(nas.Unmap()) {
			continue
		}
		addr := c.CoAAddr
		if addr == "" {
			addr = netip.AddrPortFrom(nas.Unmap(), 3799).String()
		}
		return radius.NAS{Addr: addr, Secret: []byte(c.Secret)}, true
	}
	return radius.NAS{}, false
}
