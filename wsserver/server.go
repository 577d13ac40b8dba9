package wsserver

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
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
	Mux          *Mux
	ReadLimit    int64         // default 1 MiB; a larger message closes that connection with 1009
	PingInterval time.Duration // default 10 s; 0 means default, negative disables
	PingMisses   int           // default 3: close after this many consecutive missed pongs
	WriteTimeout time.Duration // default 10 s per write
	SendQueue    int           // default 128 frames; a reply that finds it full waits up to WriteTimeout, then the connection closes (1008 "slow consumer")
	CloseTimeout time.Duration // default 1 s: a close handshake taking longer drops the connection

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
	// OnClose is called exactly once for every channel that got OnOpen,
	// after every handler of that channel has returned (their contexts are
	// cancelled on close) and after Server.Channel stopped returning it.
	// ch.Err tells why the channel ended.
	OnClose func(ch *Channel)
	// OnIgnored is called for a message that was ignored (not JSON, bad
	// frame, response to no outstanding request). May be nil.
	OnIgnored func(ch *Channel, reason string)
	// ReplaceTimeout bounds how long a newer connection waits for the older
	// one it replaces to finish (default 5 s).
	ReplaceTimeout time.Duration
	Logger         *slog.Logger

	libraryReads bool // tests: every frame through coder/websocket, as before frameReader
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
	ccfg := chanConfig{
		mux:          cfg.Mux,
		readLimit:    cfg.ReadLimit,
		pingInterval: cfg.PingInterval,
		pingMisses:   cfg.PingMisses,
		writeTimeout: cfg.WriteTimeout,
		sendQueue:    cfg.SendQueue,
		closeTimeout: cfg.CloseTimeout,
		onIgnored:    cfg.OnIgnored,
		onClose:      cfg.OnClose,
		log:          cfg.Logger,
		libraryReads: cfg.libraryReads,
	}
	ccfg.setDefaults()
	s := &Server{
		ccfg:           ccfg,
		onOpen:         cfg.OnOpen,
		replaceTimeout: cfg.ReplaceTimeout,
		log:            ccfg.log,
		byKey:          make(map[string]*Channel),
		all:            make(map[*Channel]struct{}),
	}
	if s.replaceTimeout <= 0 {
		s.replaceTimeout = 5 * time.Second
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
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	ch.serve() // returns after OnClose
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

// hijackRecorder keeps the net.Conn that websocket.Accept hijacks.
type hijackRecorder struct {
	http.ResponseWriter
	nc net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nc, brw, err
	}
	// Everything coder/websocket writes goes through the corkConn, so the
	// channel's writer can send a batch of replies with one system call.
	// net/http hands over a fresh writer on the raw socket; flush it in
	// case, then replace it with one on the corkConn.
	if err := brw.Writer.Flush(); err != nil {
		return nc, brw, err
	}
	cc := &corkConn{Conn: nc, server: true, handshakeLeftovers: brw.Reader.Buffered() > 0}
	h.nc = cc
	return cc, bufio.NewReadWriter(brw.Reader, bufio.NewWriterSize(cc, 4096)), nil
}

// corkConn is the socket of an accepted connection. While corked (by the
// channel's writer, around a batch of frames), writes are collected in memory;
// uncork sends them with one write under a deadline. Control frames that
// coder/websocket writes meanwhile (pongs) join the batch in order.
type corkConn struct {
	net.Conn
	server bool       // the accepting end: frames are not masked (writeTextFrames)
	mu     sync.Mutex // orders writes; held during the socket write
	corked bool
	buf    []byte
	// closeSent: the library wrote a close frame; no data frame may follow it.
	closeSent bool
	// frames, when set, reads the socket and serves plain text frames itself (see
	// frameReader); it is not used when the client's first frames arrived with its
	// handshake (handshakeLeftovers), as they would then bypass it.
	frames             *frameReader
	handshakeLeftovers bool
	// beforeRead runs before every socket read (the channel's flushHeld): what
	// was answered from the bytes of the last read goes out before waiting for more.
	beforeRead func()
	// deadline is the write deadline armed on the socket (zero: none). Arming it
	// costs two runtime timer updates per write, so flushes reuse it while at least
	// half the timeout remains (see armWriteDeadline).
	deadline time.Time
}

func (c *corkConn) Read(p []byte) (int, error) {
	if c.frames != nil {
		return c.frames.Read(p)
	}
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The library flushes after every whole frame, and frames it writes while data frames
	// can go through writeTextFrames are control frames (far smaller than its buffer), so
	// each Write here then starts a frame: 0x88 is a close frame (FIN, opcode 8). The
	// library writes data frames only in the channel's flushAndClose, and a chunk of a large
	// one may start with 0x88 too: harmless, as writeTextFrames is not used once closing.
	if len(p) > 0 && p[0] == 0x88 {
		c.closeSent = true
	}
	if c.corked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	// The library bounds its own writes (by context); a deadline armed by an
	// earlier flush may have passed while the connection was idle.
	if !c.deadline.IsZero() {
		_ = c.Conn.SetWriteDeadline(time.Time{})
		c.deadline = time.Time{}
	}
	return c.Conn.Write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// writeTextFrames sends each payload as one unmasked text frame, all with one write under
// the deadline. It stands in for the library's Write on the accepting end, which costs a
// few hundred ns per message in channel-based locks and context checks (~8% of the CPU of
// a where at c=256); frames written by the library meanwhile stay whole and in order.
func (c *corkConn) writeTextFrames(payloads [][]byte, timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return net.ErrClosed
	}
	for _, p := range payloads {
		c.buf = appendTextFrameHeader(c.buf, len(p))
		c.buf = append(c.buf, p...)
	}
	return c.flushLocked(timeout) // the accepting end is never corked: nothing else is pending
}

// armWriteDeadline makes sure the next write fails if it takes longer than half to
// all of timeout: a busy connection rearms the socket's deadline once per timeout/2
// rather than twice per write. The caller holds mu.
func (c *corkConn) armWriteDeadline(timeout time.Duration) {
	now := time.Now()
	if !c.deadline.IsZero() && c.deadline.Sub(now) >= timeout/2 {
		return
	}
	c.deadline = now.Add(timeout)
	_ = c.Conn.SetWriteDeadline(c.deadline)
}

// appendTextFrameHeader appends the header of an unmasked, final text frame (RFC 6455 5.2).
func appendTextFrameHeader(b []byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, 0x81, 126, byte(n>>8), byte(n))
	default:
		return append(b, 0x81, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// uncork writes what was collected under the write deadline (armWriteDeadline); a
// later write of the library clears it (Write).
func (c *corkConn) uncork(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked(timeout)
}

// flushLocked writes the collected bytes under the deadline. The caller holds mu.
func (c *corkConn) flushLocked(timeout time.Duration) error {
	if len(c.buf) == 0 {
		return nil
	}
	c.armWriteDeadline(timeout)
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 256<<10 {
		c.buf = nil // do not keep a burst's buffer for the connection's life
	} else {
		c.buf = c.buf[:0]
	}
	return err
}
