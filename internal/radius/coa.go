package radius

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	lr "layeh.com/radius"
)

// Errors returned by [CoAClient].
var (
	// ErrNAK is wrapped by a *NAKError when the NAS refused the request.
	ErrNAK = errors.New("radius: request refused by nas")
	// ErrNoAnswer means no valid answer came within the retries.
	ErrNoAnswer = errors.New("radius: no answer from nas")
)

// NAKError is a Disconnect-NAK or CoA-NAK; Cause is its Error-Cause (RFC
// 5176 3.5), 0 if absent.
type NAKError struct {
	Cause uint32
}

func (e *NAKError) Error() string { return fmt.Sprintf("%v: error-cause %d", ErrNAK, e.Cause) }

// Unwrap returns ErrNAK.
func (e *NAKError) Unwrap() error { return ErrNAK }

// NAS is the dynamic-authorization server of an APN gateway (RFC 5176,
// usually port 3799).
type NAS struct {
	Addr   string // host:port
	Secret []byte
}

// Target names the session to act on; set what the gateway matches on.
type Target struct {
	SessionID string     // Acct-Session-Id
	UserName  string     // User-Name
	IMSI      string     // 3GPP-IMSI
	FramedIP  netip.Addr // Framed-IP-Address
}

// CoAClient sends Disconnect-Requests and CoA-Requests (RFC 5176). The zero
// value uses a 2 s timeout per attempt and 2 retries.
type CoAClient struct {
	Timeout time.Duration
	Retries int
}

// Disconnect asks nas to end t's session now.
func (c CoAClient) Disconnect(ctx context.Context, nas NAS, t Target) error {
	return c.exchange(ctx, nas, lr.CodeDisconnectRequest, t, nil)
}

// CoA asks nas to change t's session with extra attributes (for example a
// Filter-Id).
func (c CoAClient) CoA(ctx context.Context, nas NAS, t Target, extra lr.Attributes) error {
	return c.exchange(ctx, nas, lr.CodeCoARequest, t, extra)
}

func (c CoAClient) exchange(ctx context.Context, nas NAS, code lr.Code, t Target, extra lr.Attributes) error {
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Retries < 0 {
		c.Retries = 0
	} else if c.Retries == 0 {
		c.Retries = 2
	}
	p := lr.New(code, nas.Secret)
	if t.UserName != "" {
		p.Add(attrUserName, lr.Attribute(t.UserName))
	}
	if t.SessionID != "" {
		p.Add(attrAcctSessionID, lr.Attribute(t.SessionID))
	}
	if t.FramedIP.Is4() {
		ip := t.FramedIP.As4()
		p.Add(attrFramedIPAddress, lr.Attribute(ip[:]))
	}
	if t.IMSI != "" {
		v := append([]byte{0, 0, 0x28, 0xaf, Attr3GPPIMSI, byte(2 + len(t.IMSI))}, t.IMSI...)
		p.Add(attrVendorSpecific, lr.Attribute(v))
	}
	p.Attributes = append(p.Attributes, extra...)
	req, err := p.Encode()
	if err != nil {
		return fmt.Errorf("radius: encode %v: %w", code, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", nas.Addr)
	if err != nil {
		return fmt.Errorf("radius: dial nas %s: %w", nas.Addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, lr.MaxPacketLength)
	for attempt := 0; attempt <= c.Retries; attempt++ {
		if _, err := conn.Write(req); err != nil {
			return fmt.Errorf("radius: send to nas %s: %w", nas.Addr, err)
		}
		deadline := time.Now().Add(c.Timeout)
		if ctx.Err() != nil {
			return fmt.Errorf("radius: %v to %s: %w", code, nas.Addr, ctx.Err())
		}
		conn.SetReadDeadline(deadline)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("radius: %v to %s: %w", code, nas.Addr, ctx.Err())
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // retransmit
				}
				// ICMP port unreachable and the like: try again.
				break
			}
			resp := buf[:n]
			if n < 20 || resp[1] != req[1] || int(binary.BigEndian.Uint16(resp[2:4])) > n || !lr.IsAuthenticResponse(resp[:binary.BigEndian.Uint16(resp[2:4])], req, nas.Secret) {
				continue // not ours or forged: keep waiting
			}
			switch lr.Code(resp[0]) {
			case lr.CodeDisconnectACK, lr.CodeCoAACK:
				return nil
			case lr.CodeDisconnectNAK, lr.CodeCoANAK:
				q, err := lr.Parse(resp, nas.Secret)
				ne := &NAKError{}
				if err == nil {
					if a, ok := q.Lookup(attrErrorCause); ok && len(a) == 4 {
						ne.Cause = binary.BigEndian.Uint32(a)
					}
				}
				return fmt.Errorf("radius: %v to %s: %w", code, nas.Addr, ne)
			}
		}
	}
	return fmt.Errorf("radius: %v to %s after %d attempts: %w", code, nas.Addr, c.Retries+1, ErrNoAnswer)
}
