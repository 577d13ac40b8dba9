package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testcerts"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// peerPort serves the handshake of auth on a loopback listener and records refusals.
type peerPort struct {
	addr    string
	mu      sync.Mutex
	refused []string
	l       *peerListener
}

func servePeers(t *testing.T, auth PeerAuth) *peerPort {
	t.Helper()
	p := &peerPort{}
	auth.OnRefused = func(_ net.Addr, reason string) {
		p.mu.Lock()
		p.refused = append(p.refused, reason)
		p.mu.Unlock()
	}
	ln := listen(t)
	p.addr = ln.Addr().String()
	p.l = newPeerListener(ln, &auth, func() bool { return false })
	t.Cleanup(func() { p.l.Close() })
	go func() { // accepted internal connections answer one byte, so a test can see they got through
		for {
			c, err := p.l.internal.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("!"))
			c.Close()
		}
	}()
	return p
}

func (p *peerPort) refusals() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.refused...)
}

func dialWith(auth PeerAuth, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := auth.dialPeer(ctx, addr, kindInternal)
	if err != nil {
		return err
	}
	defer c.Close()
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != '!' {
		return errors.New("connected but not served")
	}
	return nil
}

func TestPeer_ClusterKeysAcceptAnyOfTheListAndRefuseOthers(t *testing.T) {
	p := servePeers(t, PeerAuth{Keys: []string{"new-key", "old-key"}})
	for _, key := range []string{"new-key", "old-key"} {
		if err := dialWith(PeerAuth{Keys: []string{key}}, p.addr); err != nil {
			t.Fatalf("key %s: %v", key, err)
		}
	}
	for _, keys := range [][]string{nil, {"wrong"}, {"wrong", "new-key"}} { // only the first key is sent
		err := dialWith(PeerAuth{Keys: keys}, p.addr)
		if !errors.Is(err, errPeerRefused) || !strings.Contains(err.Error(), "--cluster-key") {
			t.Fatalf("keys %v: %v, want a refusal naming --cluster-key", keys, err)
		}
	}
	// The client hears the reason before the server's goroutine reports the refusal.
	testutil.Eventually(t, 5*time.Second, func() bool { return len(p.refusals()) == 3 }, "refusals observed: %v, want 3", p.refusals())
}

// A handshake recorded from one connection does not open another: the nonce differs.
func TestPeer_ReplayedHandshakeIsRefused(t *testing.T) {
	p := servePeers(t, PeerAuth{Keys: []string{"k"}})
	// Record a genuine handshake: the nonce the server sent and the client's answer.
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	hello := peerHello(kindInternal)
	conn.Write(hello)
	nonce := make([]byte, nonceLen)
	io.ReadFull(conn, nonce)
	recorded := peerMAC("k", kindInternal, nonce)
	conn.Write(recorded)
	status := make([]byte, 1)
	if _, err := io.ReadFull(conn, status); err != nil || status[0] != peerAccepted {
		t.Fatalf("genuine handshake: %v %v", status, err)
	}
	conn.Close()
	// Replay it on a new connection.
	conn, err = net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(hello)
	io.ReadFull(conn, nonce)
	conn.Write(recorded)
	reply, _ := io.ReadAll(conn)
	if len(reply) == 0 || reply[0] != peerRefused || !strings.Contains(string(reply), "cluster key") {
		t.Fatalf("replayed handshake answered %q, want a refusal", reply)
	}
}

// With no credential at all, peers must be on a trusted network (loopback by default),
// unless the node runs insecure on purpose.
func TestPeer_WithoutCredentialsOnlyTrustedAddresses(t *testing.T) {
	untrusted := servePeers(t, PeerAuth{Trusted: func(net.Addr) bool { return false }})
	err := dialWith(PeerAuth{}, untrusted.addr)
	if !errors.Is(err, errPeerRefused) || !strings.Contains(err.Error(), "--cluster-insecure") {
		t.Fatalf("untrusted peer: %v, want a refusal naming the flags", err)
	}
	if err := dialWith(PeerAuth{}, servePeers(t, PeerAuth{}).addr); err != nil {
		t.Fatalf("loopback peer without credentials: %v", err)
	}
	if err := dialWith(PeerAuth{}, servePeers(t, PeerAuth{Insecure: true, Trusted: func(net.Addr) bool { return false }}).addr); err != nil {
		t.Fatalf("insecure node refused a peer: %v", err)
	}
}

// Anything that is not a peer (an HTTP client, a silent connection) is refused and costs a
// goroutine only until the handshake timeout.
func TestPeer_NonPeersAreRefused(t *testing.T) {
	p := servePeers(t, PeerAuth{Keys: []string{"k"}, HandshakeTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /internal/v1/info HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("x", 64)))
	reply, _ := io.ReadAll(conn)
	if !strings.Contains(string(reply), "not a wsregistry peer") {
		t.Fatalf("an HTTP request on the peer port got %q", reply)
	}
	silent, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(silent); err != nil {
		t.Fatalf("a silent client was not dropped after the handshake timeout: %v", err)
	}
}

// With certificates from --tls-ca the port is mutual TLS: a client without a certificate
// from that CA is refused before any handshake of ours.
func TestPeer_MutualTLS(t *testing.T) {
	files, err := testcerts.Write(t.TempDir(), net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	server := &tls.Config{Certificates: []tls.Certificate{files.Pair}, ClientCAs: files.Pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	client := &tls.Config{Certificates: []tls.Certificate{files.Pair}, RootCAs: files.Pool, MinVersion: tls.VersionTLS12}
	p := servePeers(t, PeerAuth{ServerTLS: server, ClientTLS: client})
	if err := dialWith(PeerAuth{ClientTLS: client}, p.addr); err != nil {
		t.Fatalf("peer with a certificate: %v", err)
	}
	if err := dialWith(PeerAuth{ClientTLS: &tls.Config{RootCAs: files.Pool, MinVersion: tls.VersionTLS12}}, p.addr); err == nil {
		t.Fatal("a peer without a client certificate got through")
	}
	if err := dialWith(PeerAuth{}, p.addr); err == nil {
		t.Fatal("a plain peer got through a TLS port")
	}
}

// A key rotates node by node without downtime: every node first accepts both keys (sending
// the old), then sends the new one, then drops the old one. At every step each node's
// configuration talks to the configurations its peers may still have, both ways.
func TestPeer_KeyRotationStepsInteroperate(t *testing.T) {
	steps := [][]string{{"old"}, {"old", "new"}, {"new", "old"}, {"new"}}
	for i := 0; i+1 < len(steps); i++ {
		a, b := steps[i], steps[i+1]
		for _, pair := range [][2][]string{{a, b}, {b, a}} {
			p := servePeers(t, PeerAuth{Keys: pair[0]})
			if err := dialWith(PeerAuth{Keys: pair[1]}, p.addr); err != nil {
				t.Fatalf("node with keys %v refused a peer with keys %v: %v", pair[0], pair[1], err)
			}
		}
	}
}

// A peer address that is really an HTTP port (an old --join list) fails at once, saying so.
func TestPeer_HTTPPortGivenAsPeerSaysSo(t *testing.T) {
	ln := listen(t)
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	start := time.Now()
	err := dialWith(PeerAuth{Keys: []string{"k"}}, ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--raft-addr") {
		t.Fatalf("dialing an HTTP port as a peer: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v to notice an HTTP port", took)
	}
}

// Peers dial from their own peer-port address, so --trusted-networks judges the node's
// address, not whichever source the routing table picks (127.0.0.1 for any loopback peer).
func TestPeer_TrustedNetworksSeeThePeersOwnAddress(t *testing.T) {
	const prefix = "127.77.0."
	inNet := func(remote net.Addr) bool { return strings.HasPrefix(remote.String(), prefix) }
	i := 0
	nodes := startCluster(t, 3, func(c *Config) {
		i++
		ln, err := net.Listen("tcp", fmt.Sprintf("%s%d:0", prefix, i))
		if err != nil {
			t.Fatal(err)
		}
		c.Listener.Close()
		c.Listener, c.Advertise = ln, ln.Addr().String()
		c.Peer = PeerAuth{Trusted: inNet} // no key, no TLS: the address is all there is
	})
	commit(t, followerOf(t, nodes), meta("trusted-by-address"))
}

// flakyListener fails its first Accept as a process out of descriptors would.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// An accept error that passes (EMFILE) must not close the peer port for good.
func TestPeer_AcceptErrorsDoNotCloseThePort(t *testing.T) {
	ln := &flakyListener{Listener: listen(t)}
	p := newPeerListener(ln, &PeerAuth{Keys: []string{"k"}}, func() bool { return false })
	t.Cleanup(func() { p.Close() })
	go func() {
		for {
			c, err := p.internal.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("!"))
			c.Close()
		}
	}()
	if err := dialWith(PeerAuth{Keys: []string{"k"}}, ln.Addr().String()); err != nil {
		t.Fatalf("after one failed accept: %v", err)
	}
	if !ln.failed.Load() {
		t.Fatal("the listener never failed: the test proves nothing")
	}
}
