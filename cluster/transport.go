package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// errPartitioned is what a node cut off by the fault switch sees for every peer dial.
var errPartitioned = errors.New("peer transport: partitioned by fault switch")

// streamLayer is raft's stream abstraction over the peer port: raft's connections are the
// ones whose handshake named raft (peer.go). The partitioned switch lets a test cut a node
// off from its peers, raft and internal calls alike, without touching the host's network.
type streamLayer struct {
	peers       *peerListener
	auth        *PeerAuth
	advertise   net.Addr
	partitioned atomic.Bool
}

func newStreamLayer(ln net.Listener, advertise string, auth *PeerAuth) (*streamLayer, error) {
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
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsUnspecified() {
		auth.localIP = tcp.IP
	}
	s := &streamLayer{auth: auth, advertise: advertiseAddr(advertise)}
	s.peers = newPeerListener(ln, auth, s.partitioned.Load)
	return s, nil
}

// advertiseAddr is the address raft stores for this node: an IP or a DNS name, with port.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Accept() (net.Conn, error) {
	conn, err := s.peers.raft.Accept()
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: conn, layer: s}, nil
}

// Close ends the whole peer port: raft closes its stream layer last, on shutdown.
func (s *streamLayer) Close() error { return s.peers.Close() }

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dial(ctx, string(address), kindRaft)
}

func (s *streamLayer) dial(ctx context.Context, address string, kind byte) (net.Conn, error) {
	if s.partitioned.Load() {
		return nil, errPartitioned
	}
	conn, err := s.auth.dialPeer(ctx, address, kind)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: conn, layer: s}, nil
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
