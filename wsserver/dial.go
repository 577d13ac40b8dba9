package wsserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// DialConfig configures Dial. Zero values mean the defaults.
type DialConfig struct {
	// ChannelConfig applies to the dialed channel; its Mux serves the peer's
	// requests there (nil: all answered 104).
	ChannelConfig

	DialTimeout time.Duration // default DefaultDialTimeout (10 s), for the TCP connect and the handshake
	PathPrefix  string        // e.g. "/t/<token>"; put between the target and /<own-host>/<own-port>
	TLS         *tls.Config   // when set, dial wss:// with it (ServerName defaults to the target's host)
	HTTPHeader  http.Header   // added to the handshake request, e.g. Authorization
}

// Dial opens ws://<target><PathPrefix>/<own-host>/<own-port> (wss:// when
// cfg.TLS is set) and serves the channel until it closes. own is our
// advertised "host:port". ctx bounds the dial only; the channel lives until it
// is closed (its handler contexts keep ctx's values). No proxy from the
// environment is used.
func Dial(ctx context.Context, target, own string, cfg DialConfig) (*Channel, error) {
	host, port, err := net.SplitHostPort(own)
	if err != nil {
		return nil, fmt.Errorf("wsserver: dial %s: own address %q: %w", target, own, err)
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var (
		mu sync.Mutex
		nc net.Conn
	)
	dialer := &net.Dialer{}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// As on accepted connections: the writer sends a batch of frames with one
			// write (the SDK's replies, the node's proxied calls).
			cc := &corkConn{Conn: c}
			mu.Lock()
			nc = cc
			mu.Unlock()
			return cc, nil
		},
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	scheme := "ws://"
	if cfg.TLS != nil {
		// The transport runs TLS over the corkConn, so batched frames still leave
		// with one write. A WebSocket handshake is HTTP/1.1: do not offer h2.
		tr.TLSClientConfig = cfg.TLS.Clone()
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		scheme = "wss://"
	}
	u := scheme + target + cfg.PathPrefix + "/" + host + "/" + port
	conn, resp, err := websocket.Dial(dctx, u, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr},
		HTTPHeader:      cfg.HTTPHeader,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusServiceUnavailable {
			return nil, fmt.Errorf("wsserver: dial %s: HTTP %d: %w: %w", target, resp.StatusCode, ErrRefused, err)
		}
		if resp != nil {
			return nil, fmt.Errorf("wsserver: dial %s: HTTP %d: %w", target, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("wsserver: dial %s: %w", target, err)
	}
	ccfg := newChanConfig(cfg.ChannelConfig, false)
	mu.Lock()
	raw := nc
	mu.Unlock()
	remote := ""
	if raw != nil {
		remote = raw.RemoteAddr().String()
	}
	ch := newChannel(context.WithoutCancel(ctx), conn, raw, target, remote, &ccfg)
	ch.start()
	go ch.serve()
	return ch, nil
}
