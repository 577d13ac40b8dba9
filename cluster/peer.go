package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// The peer port carries raft and the internal calls between nodes (forwarding, join, info,
// remove, read index, restore), so nothing node-to-node listens on the public HTTP port.
// Every connection opens with a handshake, after the TLS handshake when mutual TLS is on:
//
//	client -> server  "WSR1", kind ('R' raft, 'I' internal, 'F' forward stream), "\r\n"
//	server -> client  nonce (32 random bytes)
//	client -> server  HMAC-SHA256(key, context|kind|nonce)
//	server -> client  0x00, or 0x01 and a one-line reason before it closes
//
// The client speaks first, a line, so that a peer address that is really an HTTP port
// answers at once (with an HTTP error) instead of leaving both sides waiting.
// The key never crosses the wire and a recorded handshake does not open another connection
// (the nonce differs). The key authenticates connections; it does not encrypt them: across
// an untrusted network use TLS.
const (
	peerMagic      = "WSR1"
	peerMACContext = "wsregistry peer v1"
	kindRaft       = 'R'
	kindInternal   = 'I'
	kindForward    = 'F' // fwdstream.go; builds before it refuse the kind ("bad handshake")
	nonceLen       = 32
	peerHelloLen   = len(peerMagic) + 3
	peerAccepted   = 0x00
	peerRefused    = 0x01
)

// PeerSecurity is how this node authenticates its peers, shown in /v1/cluster and metrics.
type PeerSecurity string

const (
	PeerMutualTLS PeerSecurity = "mutual-tls"    // certificates from --tls-ca (and the key, when set)
	PeerKey       PeerSecurity = "cluster-key"   // the cluster key's handshake
	PeerTrusted   PeerSecurity = "trusted-hosts" // no credential: peers on trusted networks only (loopback by default)
	PeerInsecure  PeerSecurity = "insecure"      // no credential, any address (--cluster-insecure)
)

// PeerAuth configures the peer port's handshake.
type PeerAuth struct {
	// Keys are the cluster keys: the first is sent, any is accepted, so keys rotate node by
	// node without downtime.
	Keys []string
	// ServerTLS and ClientTLS, when set, make the port mutual TLS: the server side must
	// require and verify client certificates.
	ServerTLS *tls.Config
	ClientTLS *tls.Config
	// Trusted says whether a peer may connect without a credential when neither keys nor
	// TLS are configured (nil: loopback only).
	Trusted func(remote net.Addr) bool
	// Insecure accepts peers from anywhere without a credential.
	Insecure bool
	// OnRefused observes every refused connection; reason is a short fixed phrase.
	OnRefused func(remote net.Addr, reason string)
	// HandshakeTimeout bounds the whole handshake (default 5 s).
	HandshakeTimeout time.Duration
	// noForwardStream refuses forward streams as builds from before them do (tests).
	noForwardStream bool
	// localIP, when set, is the source address of dialed connections: the node's own
	// peer-port IP, so peers see (and --trusted-networks judges) that address rather than
	// whichever the routing table picks.
	localIP net.IP
}

// Security reports the mode in force.
func (a *PeerAuth) Security() PeerSecurity {
	switch {
	case a.ServerTLS != nil:
		return PeerMutualTLS
	case len(a.Keys) > 0:
		return PeerKey
	case a.Insecure:
		return PeerInsecure
	}
	return PeerTrusted
}

func (a *PeerAuth) handshakeTimeout() time.Duration {
	if a.HandshakeTimeout > 0 {
		return a.HandshakeTimeout
	}
	return 5 * time.Second
}

func peerHello(kind byte) []byte { return []byte(peerMagic + string(kind) + "\r\n") }

func peerMAC(key string, kind byte, nonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(peerMACContext))
	m.Write([]byte{kind})
	m.Write(nonce)
	return m.Sum(nil)
}

// isLoopback is the default Trusted: peers on this host only.
func isLoopback(remote net.Addr) bool {
	host, _, err := net.SplitHostPort(remote.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// errPeerRefused wraps what the other side said when it refused our handshake.
var errPeerRefused = errors.New("peer refused the connection")

// errLeaving ends a join loop: the node is leaving the cluster (Leave).
var errLeaving = errors.New("this node is leaving the cluster")

// errNotPeerPort is a peer address that answered HTTP: an HTTP port given as a peer.
var errNotPeerPort = errors.New("this is an HTTP port, not a peer port: peers are reached at their --raft-addr (default port 8429)")

// dialPeer opens a connection of the given kind to a peer's port and authenticates it.
func (a *PeerAuth) dialPeer(ctx context.Context, address string, kind byte) (net.Conn, error) {
	deadline := time.Now().Add(a.handshakeTimeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	d := net.Dialer{Deadline: deadline}
	if a.localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: a.localIP}
	}
	conn, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(deadline)
	if a.ClientTLS != nil {
		cfg := a.ClientTLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(address)
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS handshake with peer %s: %w", address, err)
		}
		conn = tc
	}
	if err := a.clientHandshake(conn, kind); err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer %s: %w", address, err)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

func (a *PeerAuth) clientHandshake(conn net.Conn, kind byte) error {
	if _, err := conn.Write(peerHello(kind)); err != nil {
		return err
	}
	nonce := make([]byte, nonceLen)
	n, err := io.ReadFull(conn, nonce)
	switch {
	case bytes.HasPrefix(nonce[:n], []byte("HTTP/")):
		return errNotPeerPort
	case err != nil && n > 0 && nonce[0] == peerRefused:
		return fmt.Errorf("%w: %s", errPeerRefused, strings.TrimSpace(string(nonce[1:n])))
	case err != nil:
		return fmt.Errorf("no handshake from the peer port (is this a wsregistry peer address, --raft-addr?): %w", err)
	}
	mac := make([]byte, sha256.Size)
	if len(a.Keys) > 0 {
		mac = peerMAC(a.Keys[0], kind, nonce)
	}
	if _, err := conn.Write(mac); err != nil {
		return err
	}
	var status [1]byte
	if _, err := io.ReadFull(conn, status[:]); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if status[0] == peerAccepted {
		return nil
	}
	line, _ := bufio.NewReader(io.LimitReader(conn, 512)).ReadString('\n')
	return fmt.Errorf("%w: %s", errPeerRefused, strings.TrimSpace(line))
}

// serverHandshake authenticates an accepted connection and returns its kind.
func (a *PeerAuth) serverHandshake(conn net.Conn) (net.Conn, byte, error) {
	conn.SetDeadline(time.Now().Add(a.handshakeTimeout()))
	if a.ServerTLS != nil {
		tc := tls.Server(conn, a.ServerTLS)
		if err := tc.Handshake(); err != nil {
			return nil, 0, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	hello := make([]byte, peerHelloLen)
	if _, err := io.ReadFull(conn, hello); err != nil {
		return nil, 0, refuse(conn, "not a wsregistry peer (no handshake)")
	}
	kind := hello[len(peerMagic)]
	if string(hello) != string(peerHello(kind)) || (kind != kindRaft && kind != kindInternal && (kind != kindForward || a.noForwardStream)) {
		return nil, 0, refuse(conn, "not a wsregistry peer (bad handshake)")
	}
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, 0, err
	}
	if _, err := conn.Write(nonce); err != nil {
		return nil, 0, err
	}
	mac := make([]byte, sha256.Size)
	if _, err := io.ReadFull(conn, mac); err != nil {
		return nil, 0, refuse(conn, "not a wsregistry peer (no handshake)")
	}
	switch {
	case len(a.Keys) > 0:
		ok := false
		for _, k := range a.Keys { // every key, no early exit: the time says nothing of which matched
			ok = hmac.Equal(mac, peerMAC(k, kind, nonce)) || ok
		}
		if !ok {
			return nil, 0, refuse(conn, "missing or wrong cluster key (--cluster-key)")
		}
	case a.ServerTLS != nil, a.Insecure:
	default:
		trusted := a.Trusted
		if trusted == nil {
			trusted = isLoopback
		}
		if !trusted(conn.RemoteAddr()) {
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			return nil, 0, refuse(conn, "peer "+host+" is not on --trusted-networks and no credential is set: give every node the same --cluster-key (or --tls-cert, --tls-key and --tls-ca), or --cluster-insecure on a trusted network")
		}
	}
	if _, err := conn.Write([]byte{peerAccepted}); err != nil {
		return nil, 0, err
	}
	conn.SetDeadline(time.Time{})
	return conn, kind, nil
}

// refusal is a handshake the server refused; its text went to the peer too.
type refusal struct{ reason string }

func (r refusal) Error() string { return r.reason }

func refuse(conn net.Conn, reason string) error {
	// The handshake's deadline may have passed (a silent client): the reason still goes out.
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	conn.Write(append([]byte{peerRefused}, reason+"\n"...))
	return refusal{reason}
}

// maxPendingHandshakes bounds the connections in their handshake at once; peers hold a
// few pooled connections each, so only a flood comes near it.
const maxPendingHandshakes = 256

// peerListener accepts on the peer port, authenticates each connection in a goroutine of
// its own (a slow or hostile client never holds up the others), and hands raft
// connections to raft, internal ones to the internal HTTP server and forward streams to the
// leader's forward server (fwdstream.go).
type peerListener struct {
	inner    net.Listener
	auth     *PeerAuth
	blocked  func() bool
	raft     *chanListener
	internal *chanListener
	forward  *chanListener

	mu      sync.Mutex
	pending map[net.Conn]struct{}
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
}

func newPeerListener(ln net.Listener, auth *PeerAuth, blocked func() bool) *peerListener {
	done := make(chan struct{})
	p := &peerListener{
		inner: ln, auth: auth, blocked: blocked, pending: map[net.Conn]struct{}{}, done: done,
		raft:     newChanListener(ln.Addr(), done),
		internal: newChanListener(ln.Addr(), done),
		forward:  newChanListener(ln.Addr(), done),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p
}

func (p *peerListener) acceptLoop() {
	defer p.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := p.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				p.Close()
				return
			}
			// Out of file descriptors and the like pass: the port must outlive them, as
			// raft's own transport and net/http do.
			select {
			case <-time.After(backoff):
			case <-p.done:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if p.blocked() {
			conn.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			conn.Close()
			return
		}
		if len(p.pending) >= maxPendingHandshakes {
			// Handshakes cost a goroutine and a descriptor until their deadline: a flood of
			// silent connections must not exhaust either.
			p.mu.Unlock()
			conn.Close()
			continue
		}
		p.pending[conn] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.handshake(conn)
	}
}

func (p *peerListener) handshake(raw net.Conn) {
	defer p.wg.Done()
	conn, kind, err := p.auth.serverHandshake(raw)
	p.mu.Lock()
	delete(p.pending, raw)
	p.mu.Unlock()
	if err != nil {
		raw.Close()
		var r refusal
		if errors.As(err, &r) && p.auth.OnRefused != nil {
			p.auth.OnRefused(raw.RemoteAddr(), r.reason)
		}
		return
	}
	target := p.raft
	switch kind {
	case kindInternal:
		target = p.internal
	case kindForward:
		target = p.forward
	}
	if !target.deliver(conn) {
		conn.Close()
	}
	// Close may have drained the channel just before this connection went in.
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		target.drain()
	}
}

// Close stops accepting and drops connections still in their handshake.
func (p *peerListener) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	for c := range p.pending {
		c.Close()
	}
	p.mu.Unlock()
	err := p.inner.Close()
	p.raft.drain()
	p.internal.drain()
	p.forward.drain()
	return err
}

// chanListener is a net.Listener fed with connections that passed the handshake.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
}

func newChanListener(addr net.Addr, done chan struct{}) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn, 16), done: done}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

// drain closes the connections delivered but not accepted (the listener is closing).
func (l *chanListener) drain() {
	for {
		select {
		case c := <-l.conns:
			c.Close()
		default:
			return
		}
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close is the peer listener's to do: raft and the internal server each close their
// listener on shutdown, and neither may end the other's.
func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }
