package wsserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ServerConfig configures a Server. Zero values mean the defaults.
type ServerConfig struct {
	// ChannelConfig applies to every accepted channel. Its OnClose is called
	// exactly once for every channel that got OnOpen.
	ChannelConfig

	// OnOpen is called before the channel reads its first message. A channel
	// that was accepted while Shutdown ran gets neither OnOpen nor OnClose.
	//
	// When a newer connection replaces an older one with the same key, the
	// older is closed with 1008 "replaced" and its OnClose returns BEFORE
	// OnOpen of the newer is called, unless the older channel is still not
	// finished after ReplaceTimeout (one of its handlers ignores the
	// cancellation of its context): then OnOpen of the newer runs anyway and
	// the older's OnClose runs later. Keying state by *Channel (not by Key)
	// is correct in both orders.
	OnOpen func(ch *Channel)
	// ReplaceTimeout bounds how long a newer connection waits for the older
	// one it replaces to finish (default DefaultReplaceTimeout, 5 s).
	ReplaceTimeout time.Duration

	libraryReads bool // tests: read every frame through coder/websocket, bypassing the frameReader
}

// Server accepts micro-ws connections at /<host>/<port>[/extra...]; it is an
// http.Handler.
type Server struct {
	ccfg           chanConfig
	onOpen         func(*Channel)
	replaceTimeout time.Duration
	log            *slog.Logger

	ctx    context.Context // server lifetime: parent of every channel
	cancel context.CancelFunc

	mu       sync.Mutex
	byKey    map[string]*Channel
	all      map[*Channel]struct{}
	shutdown bool
}

// NewServer returns a Server; it serves until Shutdown.
func NewServer(cfg ServerConfig) *Server {
	ccfg := newChanConfig(cfg.ChannelConfig, cfg.libraryReads)
	s := &Server{
		ccfg:           ccfg,
		onOpen:         cfg.OnOpen,
		replaceTimeout: cfg.ReplaceTimeout,
		log:            ccfg.log,
		byKey:          make(map[string]*Channel),
		all:            make(map[*Channel]struct{}),
	}
	if s.replaceTimeout <= 0 {
		s.replaceTimeout = DefaultReplaceTimeout
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// ParseKey reads the peer identity "host:port" from a request path
// /<host>/<port>[/extra...]. Extra segments are ignored; the port must be a
// number 1..65535 and is normalised (leading zeros dropped).
func ParseKey(path string) (string, error) {
	p := strings.TrimPrefix(path, "/")
	host, rest, ok := strings.Cut(p, "/")
	if !ok {
		return "", errors.New("path must be /<host>/<port>: port segment missing")
	}
	port, _, _ := strings.Cut(rest, "/")
	switch {
	case host == "":
		return "", errors.New("path must be /<host>/<port>: empty host")
	case len(host) > 253:
		return "", errors.New("host too long")
	case port == "":
		return "", errors.New("path must be /<host>/<port>: empty port")
	}
	if strings.ContainsAny(host, ":[]") {
		// The key is host:port; a colon in the host would make an address that where could
		// never hand out usefully (agents advertise IPv4 addresses or names).
		return "", errors.New("host " + strconv.Quote(host) + " contains ':' (want an IPv4 address or a name)")
	}
	for _, r := range host {
		if r <= ' ' || r == 0x7f {
			return "", errors.New("host contains a control character or space")
		}
	}
	n := 0
	for i := 0; i < len(port); i++ {
		c := port[i]
		if c < '0' || c > '9' {
			return "", errors.New("port " + strconv.Quote(port) + " is not a number")
		}
		n = n*10 + int(c-'0')
		if n > 65535 {
			break
		}
	}
	if n < 1 || n > 65535 {
		return "", errors.New("port " + strconv.Quote(port) + " is not in 1..65535")
	}
	return host + ":" + strconv.Itoa(n), nil
}

// ServeHTTP validates the path, upgrades the connection and serves the
// channel until it ends. A bad path is refused with HTTP 400 before the
// upgrade, a request after Shutdown with 503.
//
// ServeHTTP returns once the channel is open and served by its own goroutine: net/http's
// state for the request (its buffered writer, the request and its headers) is then freed
// instead of being held for the life of the connection. What must last as long as the
// connection goes in WhenClosed.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	closed, _ := r.Context().Value(whenClosedKey{}).(func())
	served := false
	defer func() {
		if !served && closed != nil {
			closed()
		}
	}()
	key, err := ParseKey(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	down := s.shutdown
	s.mu.Unlock()
	if down {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	hr := &hijackRecorder{ResponseWriter: w}
	conn, err := websocket.Accept(hr, r, &websocket.AcceptOptions{
		// Agents are not browsers and carry no credentials in cookies;
		// the original accepts any Origin.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Debug("websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	ch := newChannel(s.ctx, conn, hr.nc, key, r.RemoteAddr, &s.ccfg)
	ch.onGone = s.forget
	ch.auth = r.Context().Value(authKey{})

	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = conn.Close(websocket.StatusGoingAway, ReasonGoingAway)
		ch.cancel()
		return
	}
	old := s.byKey[key]
	s.byKey[key] = ch
	s.all[ch] = struct{}{}
	s.mu.Unlock()

	ch.start()
	if old != nil {
		s.log.Info("connection replaced by a newer one", "peer", key, "old_remote", old.remote, "remote", r.RemoteAddr)
		old.closeWith(websocket.StatusPolicyViolation, ReasonReplaced)
		t := time.NewTimer(s.replaceTimeout)
		select {
		case <-old.done:
		case <-t.C:
			s.log.Warn("replaced channel did not finish in time; opening the new one anyway", "peer", key)
		}
		t.Stop()
	}
	if s.onOpen != nil {
		s.callOnOpen(ch)
	}
	served = true
	go func() {
		ch.serve() // returns after OnClose
		if closed != nil {
			closed()
		}
	}()
}

// whenClosedKey is the request context key of WhenClosed.
type whenClosedKey struct{}

// WhenClosed returns r carrying fn, for a gate in front of the Server: the Server calls fn
// once, when the channel accepted from r has ended (after its OnClose), or when ServeHTTP
// refuses r. ServeHTTP itself returns once the channel is open, so a gate cannot release
// what it holds for the connection (a connection slot) when ServeHTTP returns.
func WhenClosed(r *http.Request, fn func()) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), whenClosedKey{}, fn))
}

// authKey is the request context key of WithAuth.
type authKey struct{}

// WithAuth returns r carrying v, for a gate in front of the Server (one that
// checks the agent's token): the channel the Server accepts from r returns v
// from Channel.Auth, so handlers such as online can tell what the token allows.
func WithAuth(r *http.Request, v any) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), authKey{}, v))
}

// callOnOpen runs OnOpen; a panic in it closes the channel (1011) instead of
// leaking it, and OnClose still runs.
func (s *Server) callOnOpen(ch *Channel) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("OnOpen panicked", "peer", ch.key, "panic", p, "stack", string(debug.Stack()))
			ch.closeWith(websocket.StatusInternalError, "internal error")
		}
	}()
	s.onOpen(ch)
}

// forget removes a channel whose connection is gone.
func (s *Server) forget(ch *Channel) {
	s.mu.Lock()
	if s.byKey[ch.key] == ch {
		delete(s.byKey, ch.key)
	}
	delete(s.all, ch)
	s.mu.Unlock()
}

// Channel returns the live accepted channel for key, or nil.
func (s *Server) Channel(key string) *Channel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byKey[key]
}

// Len is the number of keys with a live accepted channel.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// CloseAll closes every accepted channel with code and reason (e.g. 1001 on
// shutdown, 1012 when fencing) and waits until their OnClose ran. The server
// keeps accepting new connections.
func (s *Server) CloseAll(code websocket.StatusCode, reason string) {
	s.mu.Lock()
	chans := make([]*Channel, 0, len(s.all))
	for ch := range s.all {
		chans = append(chans, ch)
	}
	s.mu.Unlock()
	for _, ch := range chans {
		ch.closeWith(code, reason)
	}
	for _, ch := range chans {
		<-ch.done
	}
}

// Shutdown refuses new connections (HTTP 503) and closes every channel with
// 1001 "going away", waiting for their OnClose. If ctx ends first, remaining
// connections are dropped and ctx.Err() is returned (OnClose still runs for
// each once its handlers return).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		s.CloseAll(websocket.StatusGoingAway, ReasonGoingAway)
		close(finished)
	}()
	select {
	case <-finished:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		return ctx.Err()
	}
}
