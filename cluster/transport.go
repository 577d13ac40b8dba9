package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// errPartitioned is what a node cut off by the fault switch sees for every raft dial.
var errPartitioned = errors.New("raft transport: partitioned by fault switch")

// streamLayer is raft's stream abstraction over a listener the caller owns, so tests can pass
// 127.0.0.1:0 listeners and later TLS can wrap both sides. The partitioned switch lets a
// test cut a node off from its peers without touching the host's network.
type streamLayer struct {
	net.Listener
	advertise   net.Addr
	partitioned atomic.Bool
	serverTLS   *tls.Config // mutual TLS between nodes when set
	clientTLS   *tls.Config
}

func newStreamLayer(ln net.Listener, advertise string) (*streamLayer, error) {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("raft advertise address %q: port is not 1-65535", advertise)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return nil, errors.New("raft advertise address must be a routable host:port, not " + advertise)
	}
	// A DNS name is kept as it is (resolved on every dial), so a cluster whose members come
	// back with new IPs (Kubernetes pods, compose containers) still finds itself.
	return &streamLayer{Listener: ln, advertise: advertiseAddr(advertise)}, nil
}

// advertiseAddr is the address raft stores for this node: an IP or a DNS name, with port.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if s.partitioned.Load() {
		return nil, errPartitioned
	}
	conn, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	if s.clientTLS != nil {
		cfg := s.clientTLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(string(address))
		}
		tc := tls.Client(conn, cfg)
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("raft TLS handshake with %s: %w", address, err)
		}
		tc.SetDeadline(time.Time{})
		conn = tc
	}
	return &faultConn{Conn: conn, layer: s}, nil
}

func (s *streamLayer) Accept() (net.Conn, error) {
	for {
		conn, err := s.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if s.partitioned.Load() {
			conn.Close()
			continue
		}
		if s.serverTLS != nil {
			// The handshake runs on the first read, in raft's connection goroutine, so a
			// slow or certificate-less peer never blocks Accept.
			conn = tls.Server(conn, s.serverTLS)
		}
		return &faultConn{Conn: conn, layer: s}, nil
	}
}

// faultConn fails reads and writes once the switch is on, so pooled connections that were
// open before the partition stop carrying traffic too.
type faultConn struct {
	net.Conn
	layer *streamLayer
}

func (c *faultConn) Read(p []byte) (int, error) {
	if c.layer.partitioned.Load() {
		c.Conn.Close()
		return 0, errPartitioned
	}
	return c.Conn.Read(p)
}

func (c *faultConn) Write(p []byte) (int, error) {
	if c.layer.partitioned.Load() {
		c.Conn.Close()
		return 0, errPartitioned
	}
	return c.Conn.Write(p)
}
