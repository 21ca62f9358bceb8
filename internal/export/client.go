package export

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrPrivateAddress is returned when a webhook resolves to an address the
// client may not reach.
var ErrPrivateAddress = errors.New("webhook address is loopback, private, link-local or unspecified")

// NewClient returns the HTTP client webhooks are sent with. Unless
// allowPrivate, it refuses to connect to loopback, private (RFC 1918, ULA),
// link-local and unspecified addresses, checked on the address actually
// dialled (after DNS), so that a tenant's webhook cannot reach the
// platform's own network (SSRF).
func NewClient(timeout time.Duration, allowPrivate bool) *http.Client {
	d := &net.Dialer{Timeout: timeout}
	if !allowPrivate {
		d.Control = PublicOnly
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Timeout: timeout, Transport: tr}
}

// PublicOnly is a net.Dialer Control that refuses to connect to an address
// that is not [Public], checked on the address actually dialled (after DNS).
func PublicOnly(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrPrivateAddress, address)
	}
	if !Public(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrPrivateAddress, ap.Addr())
	}
	return nil
}

// Public reports whether a is a globally reachable unicast address.
func Public(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsLoopback() && !a.IsPrivate() && !a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast() &&
		!a.IsUnspecified() && !a.IsMulticast() && !a.IsInterfaceLocalMulticast()
}
