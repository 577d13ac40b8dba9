package wsserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Close reasons used by this package (with the status codes they go with).
const (
	ReasonReplaced     = "replaced"      // 1008: a newer connection for the same key
	ReasonSlowConsumer = "slow consumer" // 1008: the send queue overflowed
	ReasonPingTimeout  = "ping timeout"  // 1008: PingMisses pings went unanswered
	ReasonInvalidUTF8  = "invalid UTF-8" // 1007
	ReasonGoingAway    = "going away"    // 1001: Shutdown
)

// Channel is one WebSocket connection, accepted or dialed. Both sides serve
// requests (through the Mux) and can Call the peer.
//
// Its state is grouped by concern, each part owned by one file: the lifecycle
// (this file), serving the peer's requests (dispatch.go), writing (write.go)
// and our calls to the peer (call.go).
type Channel struct {
	conn   *websocket.Conn
	nc     net.Conn  // the socket under conn, to drop it whatever state conn is in
	cc     *corkConn // nc when it is a corkConn (every accepted and dialed socket)
	key    string
	remote string
	cfg    *chanConfig
	// logp is the channel's logger (peer and remote attached), made on first use: most
	// idle connections never log, and each logger holds its formatted attributes.
	logp atomic.Pointer[slog.Logger]

	// ctx lives as long as the connection; cancelling it while a read or
	// write is in progress force-closes the socket. Handler contexts derive
	// from it.
	ctx    context.Context
	cancel context.CancelFunc
	// ioCtx has ctx's values but is never done: reads and corked writes use
	// it so that coder/websocket does not register a context.AfterFunc per
	// message. Cancelling ctx drops the socket instead (see newChannel),
	// which ends a blocked read just the same.
	ioCtx     context.Context
	readEnded atomic.Bool // set by teardown: the socket is left to the close handshake

	serving serveState // the peer's requests (dispatch.go)
	writer  writeState // the send queue and held replies (write.go)
	calls   callState  // our requests to the peer (call.go)
	closing closeState // whether and how a close was started
	ping    pingState  // the keepalive timer

	workers sync.WaitGroup             // writer (while it runs) and pinger
	dead    chan struct{}              // closed when the connection is gone: calls fail
	done    chan struct{}              // closed after OnClose returned
	err     atomic.Pointer[closeError] // set before OnClose runs

	// val is the embedding code's slot (the registry's session), read by every request's
	// handler on the reader's and the handlers' goroutines: an atomic load, not a lock. An
	// atomic.Value holds the interface in the channel itself: an atomic.Pointer[any] kept it
	// in an object of its own, one more cache line for every request to fetch.
	val atomic.Value

	auth any // what WithAuth put on the accepted request; set before start, then read-only

	// onGone is called once when the connection is gone, before handlers
	// are waited for (the server forgets the channel there).
	onGone func(*Channel)
}

// closeState is how the channel's close was started; mu guards all but req and started.
type closeState struct {
	mu sync.Mutex
	// started: a close was initiated locally (or the channel is being torn down). Set
	// under mu, with code and reason, so a close starts once; atomic so that the reader's
	// check before every message (isClosing) takes no lock.
	started    atomic.Bool
	code       websocket.StatusCode
	reason     string
	req        chan struct{} // asks the writer to flush and close
	torndown   bool          // teardown began: no writer starts any more (startWriter)
	forceTimer *time.Timer   // drops the connection if the close takes too long
}

func newChannel(parent context.Context, conn *websocket.Conn, nc net.Conn, key, remote string, cfg *chanConfig) *Channel {
	ctx, cancel := context.WithCancel(parent)
	conn.SetReadLimit(cfg.readLimit)
	c := &Channel{
		conn:    conn,
		nc:      nc,
		key:     key,
		remote:  remote,
		cfg:     cfg,
		ctx:     ctx,
		cancel:  cancel,
		serving: serveState{inflight: make(map[int64]*inflight)},
		writer:  writeState{sendq: make(chan []byte, cfg.sendQueue)},
		calls:   callState{pending: make(map[int64]chan callResult)},
		closing: closeState{req: make(chan struct{}, 1)},
		dead:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.ioCtx = context.WithoutCancel(ctx)
	c.writer.pending.Store(1) // no writer before start (see start)
	c.writer.loop = c.writeLoop
	c.writer.start = c.startWriter
	c.writer.fromBatch = c.writeFromBatch
	if cc, ok := nc.(*corkConn); ok {
		c.cc = cc
		cc.beforeRead = c.flushHeld
	}
	context.AfterFunc(ctx, func() {
		if c.readEnded.Load() {
			return
		}
		if c.nc != nil {
			_ = c.nc.Close()
		} else {
			_ = c.conn.CloseNow()
		}
	})
	return c
}

// logger is the channel's logger: the server's, with the peer and its address.
func (c *Channel) logger() *slog.Logger {
	if l := c.logp.Load(); l != nil {
		return l
	}
	l := c.cfg.log.With("peer", c.key, "remote", c.remote)
	c.logp.Store(l) // two first uses at once make two equal loggers: harmless
	return l
}

// start launches the pinger, and the writer if something is to be written already. The
// caller then runs serve.
func (c *Channel) start() {
	// Only now: a channel refused before it starts (a Shutdown under way) closes through
	// the library alone, which drops the client's data frames instead of serving them.
	if cc := c.cc; cc != nil && cc.server && !c.cfg.libraryReads {
		// The frameReader sees the stream from the first frame: what the client sent
		// behind its handshake is its carry.
		cc.frames = &frameReader{conn: cc.Conn, beforeRead: cc.beforeRead, mayWait: c.mayWait,
			maxText: int(min(c.cfg.readLimit, maxServedText)),
			onText:  func(msg []byte) { c.serveMessage(true, msg) }, carry: cc.leftover}
		cc.leftover = nil
		if raw := rawConnFor(cc.Conn); raw != nil {
			cc.frames.raw, cc.frames.closed = raw, &cc.closed
			cc.raw = raw
			cc.asyncClose.Store(true)
		}
	}
	// The writer may run only from here on (it reads through cc.frames in a close
	// handshake): a close started before start was counted but started no writer.
	if c.writer.pending.Add(-1) > 0 {
		c.startWriter()
	}
	if c.cfg.pingInterval > 0 {
		c.startPinger()
	}
}

// serve reads until the connection ends, then tears the channel down.
func (c *Channel) serve() {
	err := c.readLoop()
	c.teardown(err)
}

// Key is the peer identity "host:port": from the URL path when accepted, the
// dial target when dialed.
func (c *Channel) Key() string { return c.key }

// RemoteAddr is the TCP address of the peer.
func (c *Channel) RemoteAddr() string { return c.remote }

// Done is closed when the channel has ended and its OnClose has returned.
func (c *Channel) Done() <-chan struct{} { return c.done }

// Err says why the channel ended; nil while it is open (it is set when OnClose
// runs, so OnClose may use it). The error wraps
// ErrClosed and a websocket.CloseError, so websocket.CloseStatus(ch.Err())
// gives the close code: the one we sent when we closed (1008 "replaced",
// 1009, ...), the peer's when it closed, 1006 when the connection broke.
func (c *Channel) Err() error {
	if e := c.err.Load(); e != nil {
		return e
	}
	return nil
}

// Auth returns what WithAuth put on the HTTP request this channel was accepted
// from; nil when there was nothing, and for dialed channels.
func (c *Channel) Auth() any { return c.auth }

// Value returns what SetValue stored (nil before that).
func (c *Channel) Value() any { return c.val.Load() }

// SetValue stores v in the channel's slot for the embedding code. v must not be nil, and
// every value a channel is given must be of the same type (atomic.Value's rules).
func (c *Channel) SetValue(v any) {
	c.val.Store(v)
}

// Close starts closing the channel with the given status: frames already
// queued are written, then the close frame; if the close handshake has not
// finished within the close timeout (default 1 s), the connection is dropped.
// Close does not wait: use Done.
func (c *Channel) Close(code websocket.StatusCode, reason string) {
	c.closeWith(code, reason)
}

// closeWith starts the close; it reports false if one was already started.
func (c *Channel) closeWith(code websocket.StatusCode, reason string) bool {
	c.closing.mu.Lock()
	if c.closing.started.Load() {
		c.closing.mu.Unlock()
		return false
	}
	c.closing.started.Store(true)
	c.closing.code, c.closing.reason = code, reason
	c.closing.mu.Unlock()
	select {
	case c.closing.req <- struct{}{}:
	default:
	}
	c.kick(false) // the writer goroutine does the close: the caller may be the reader
	// Bound the handshake.
	t := time.AfterFunc(c.cfg.closeTimeout, c.forceClose)
	c.closing.mu.Lock()
	c.closing.forceTimer = t
	c.closing.mu.Unlock()
	return true
}

// forceClose drops the connection: cancelling ctx aborts a pending read or
// write of ours, closing the socket also ends what coder/websocket does on
// its own contexts (e.g. the 5 s close handshake).
func (c *Channel) forceClose() {
	c.cancel()
	if c.nc != nil {
		_ = c.nc.Close()
	}
}

func (c *Channel) isClosing() bool { return c.closing.started.Load() }

func (c *Channel) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// pingState drives the keepalive from a timer rather than a goroutine per channel: an idle
// connection then costs one goroutine (its reader; the writer runs only to write), and a goroutine
// exists for a ping only while it waits for the pong. The pinger counts as one of the
// channel's workers from startPinger until exactly one of pingOnce or stopPinger sees it
// end (stopped).
type pingState struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	misses  int // touched only by pingOnce, which never runs twice at once
}

func (c *Channel) startPinger() {
	c.workers.Add(1)
	c.ping.mu.Lock()
	c.ping.t = time.AfterFunc(c.cfg.pingInterval, c.pingOnce)
	c.ping.mu.Unlock()
}

// stopPinger ends the keepalive (teardown, after the channel's context is cancelled).
func (c *Channel) stopPinger() {
	c.ping.mu.Lock()
	defer c.ping.mu.Unlock()
	if c.ping.t == nil || c.ping.stopped {
		return
	}
	c.ping.stopped = true
	if c.ping.t.Stop() {
		c.workers.Done() // pingOnce will not run; when it is running, it sees stopped
	}
}

// pingOnce pings and waits up to one interval for the pong; after pingMisses consecutive
// misses the channel is closed. Then it arms the timer for the next ping.
func (c *Channel) pingOnce() {
	c.ping.mu.Lock()
	if c.ping.stopped {
		c.ping.mu.Unlock()
		c.workers.Done()
		return
	}
	c.ping.mu.Unlock()
	interval := c.cfg.pingInterval
	start := time.Now()
	ctx, cancel := context.WithTimeout(c.ctx, interval)
	err := c.conn.Ping(ctx)
	cancel()
	var next time.Duration // after a miss, the next ping goes at once
	end := c.ctx.Err() != nil
	switch {
	case end:
	case err == nil:
		c.ping.misses = 0
		next = interval - time.Since(start)
	default:
		c.ping.misses++
		c.logger().Debug("ping missed", "misses", c.ping.misses, "err", err)
		if c.ping.misses >= c.cfg.pingMisses {
			c.logger().Info("peer stopped answering pings, closing", "misses", c.ping.misses)
			c.closeWith(websocket.StatusPolicyViolation, ReasonPingTimeout)
			end = true
		}
	}
	c.ping.mu.Lock()
	if end || c.ping.stopped {
		c.ping.stopped = true
		c.ping.mu.Unlock()
		c.workers.Done()
		return
	}
	c.ping.t.Reset(next)
	c.ping.mu.Unlock()
}

// closeError is what Err returns.
type closeError struct {
	ce    websocket.CloseError
	local bool
	cause error
}

func (e *closeError) Error() string {
	who := "peer closed"
	if e.local {
		who = "closed"
	}
	s := fmt.Sprintf("%s: %s: %d %q", ErrClosed, who, int(e.ce.Code), e.ce.Reason)
	if e.cause != nil && e.ce.Code == websocket.StatusAbnormalClosure {
		s += ": " + e.cause.Error()
	}
	return s
}

func (e *closeError) Unwrap() []error {
	errs := []error{ErrClosed, e.ce}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// classify turns the read loop's error into the channel's end reason, and
// says whether the library already sent a close frame for it.
func (c *Channel) classify(readErr error) (e *closeError, librarySentClose bool) {
	c.closing.mu.Lock()
	closing, code, reason := c.closing.started.Load(), c.closing.code, c.closing.reason
	c.closing.mu.Unlock()
	switch {
	case closing:
		return &closeError{ce: websocket.CloseError{Code: code, Reason: reason}, local: true}, false
	case websocket.CloseStatus(readErr) != -1:
		var ce websocket.CloseError
		errors.As(readErr, &ce)
		return &closeError{ce: ce}, false
	case errors.Is(readErr, websocket.ErrMessageTooBig):
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusMessageTooBig, Reason: "message too big"}, local: true, cause: readErr}, true
	case isConnErr(readErr) && c.writer.err.Load() != nil:
		// We dropped the socket because a write failed (e.g. timed out on a peer that
		// does not read); the read error is only the echo. A close frame or a protocol
		// error the reader saw first wins over it (a write fails too once the library
		// closes the socket after the close handshake).
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusAbnormalClosure}, local: true, cause: *c.writer.err.Load()}, false
	case isConnErr(readErr):
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusAbnormalClosure}, cause: readErr}, false
	default:
		// coder/websocket reports protocol violations (reserved opcodes,
		// bad rsv bits, fragmented control frames...) as plain errors after
		// sending a 1002 close frame itself.
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusProtocolError, Reason: "protocol error"}, local: true, cause: readErr}, true
	}
}

func isConnErr(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne)
}

// teardown runs once, on the reader goroutine, after the read loop ended.
func (c *Channel) teardown(readErr error) {
	c.readEnded.Store(true)
	e, libraryClosed := c.classify(readErr)
	c.closing.mu.Lock()
	c.closing.started.Store(true) // no new close handshake from now on
	c.closing.torndown = true
	ft := c.closing.forceTimer
	c.closing.mu.Unlock()
	c.cancel() // aborts writes and pings, cancels handler contexts
	c.stopPinger()
	close(c.dead)
	force := time.AfterFunc(c.cfg.closeTimeout, c.forceClose)
	c.workers.Wait() // the writer may be finishing a close handshake
	if libraryClosed {
		// The close frame is out; wait (bounded) for the peer's answer so
		// it is not lost to a reset.
		_ = c.conn.Close(e.ce.Code, e.ce.Reason)
	} else {
		_ = c.conn.CloseNow()
	}
	force.Stop()
	if ft != nil {
		ft.Stop()
	}
	if c.onGone != nil {
		c.onGone(c)
	}
	lvl := slog.LevelDebug
	if e.ce.Code != websocket.StatusNormalClosure && e.ce.Code != websocket.StatusGoingAway {
		lvl = slog.LevelInfo
	}
	c.logger().Log(context.Background(), lvl, "channel closed", "code", int(e.ce.Code), "reason", e.ce.Reason, "local", e.local)
	c.serving.handlers.Wait()
	c.err.Store(e)
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
	close(c.done)
}
