// Package mqttconn makes a net.Conn safe for paho.golang's concurrent
// writers.
//
// paho writes each control packet as several Write calls (net.Buffers) and
// writes from more than one goroutine: the caller's Publish or Subscribe,
// the pinger's PINGREQ and the reader's acknowledgements. On a TCP
// connection net.Buffers becomes one writev, but on a TLS connection each
// buffer is its own Write, so a PINGREQ can land inside a SUBSCRIBE and the
// broker closes the connection for a malformed packet (seen here with
// mochi-mqtt: "malformed packet: topic"). paho takes a lock around each
// packet when the writer implements sync.Locker; Locked provides one.
package mqttconn

import (
	"net"
	"sync"
)

// Locked wraps c so that paho writes each packet whole.
func Locked(c net.Conn) net.Conn { return &locked{Conn: c} }

type locked struct {
	net.Conn
	sync.Mutex
}
