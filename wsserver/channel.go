package wsserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Defaults shared by ServerConfig and DialConfig.
const (
	DefaultReadLimit    = 1 << 20
	DefaultPingInterval = 10 * time.Second
	DefaultPingMisses   = 3
	DefaultWriteTimeout = 10 * time.Second
	DefaultSendQueue    = 128
	// DefaultMaxInflight bounds the requests one peer may have running at once; more are
	// answered 429 at once, so a peer cannot make us hold unbounded goroutines.
	DefaultMaxInflight  = 1024
	DefaultCloseTimeout = time.Second
	DefaultCallTimeout  = 30 * time.Second
)

// Close reasons used by this package (with the status codes they go with).
const (
	ReasonReplaced     = "replaced"      // 1008: a newer connection for the same key
	ReasonSlowConsumer = "slow consumer" // 1008: the send queue overflowed
	ReasonPingTimeout  = "ping timeout"  // 1008: PingMisses pings went unanswered
	ReasonInvalidUTF8  = "invalid UTF-8" // 1007
	ReasonGoingAway    = "going away"    // 1001: Shutdown
)

// chanConfig is the immutable per-channel configuration, shared by all the
// channels of one Server (or one Dial).
type chanConfig struct {
	mux          *Mux
	readLimit    int64
	pingInterval time.Duration // <0: disabled
	pingMisses   int
	writeTimeout time.Duration
	sendQueue    int
	closeTimeout time.Duration
	onIgnored    func(*Channel, string)
	onClose      func(*Channel)
	log          *slog.Logger
	libraryReads bool // tests: read every frame through coder/websocket (no frameReader)
}

// maxServedText is the largest text frame an accepting end's frameReader serves itself;
// longer ones go through the library, which buffers them anyway.
const maxServedText = 64 << 10

func (c *chanConfig) setDefaults() {
	if c.mux == nil {
		c.mux = NewMux()
	}
	if c.readLimit <= 0 {
		c.readLimit = DefaultReadLimit
	}
	if c.pingInterval == 0 {
		c.pingInterval = DefaultPingInterval
	}
	if c.pingMisses <= 0 {
		c.pingMisses = DefaultPingMisses
	}
	if c.writeTimeout <= 0 {
		c.writeTimeout = DefaultWriteTimeout
	}
	if c.sendQueue <= 0 {
		c.sendQueue = DefaultSendQueue
	}
	if c.closeTimeout <= 0 {
		c.closeTimeout = DefaultCloseTimeout
	}
	if c.log == nil {
		c.log = slog.Default()
	}
}

// Channel is one WebSocket connection, accepted or dialed. Both sides serve
// requests (through the Mux) and can Call the peer.
type Channel struct {
	conn   *websocket.Conn
	nc     net.Conn // the socket under conn, to drop it whatever state conn is in
	key    string
	remote string
	cfg    *chanConfig
	log    *slog.Logger

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
	readEnded atomic.Bool           // set by teardown: the socket is left to the close handshake
	writeErr  atomic.Pointer[error] // the write that failed and dropped the socket

	nextID atomic.Int64 // our own message counter (requests and aborts)
	sendq  chan []byte  // frames for the writer; full means slow consumer

	// On a corked socket (every accepted and dialed one), replies of inline
	// handlers are held until the reader is about to read from the socket again,
	// then written in one batch (cc calls flushHeld). wmu orders those writes
	// with the writer's.
	cc  *corkConn
	wmu sync.Mutex
	// The held replies, encoded back to back in heldBuf (no allocation per
	// reply): frame i ends at heldEnds[i]. Guarded by wmu.
	heldBuf    []byte
	heldEnds   []int
	heldFrames [][]byte // scratch for writing them

	pendMu  sync.Mutex
	pending map[int64]chan callResult // our outstanding requests

	inMu     sync.Mutex
	inflight map[int64]*inflight // the peer's requests being served

	handlers sync.WaitGroup // handler goroutines
	workers  sync.WaitGroup // writer and pinger

	closeMu     sync.Mutex
	closing     bool // a close was initiated locally
	closeCode   websocket.StatusCode
	closeReason string
	closeReq    chan struct{} // asks the writer to flush and close
	forceTimer  *time.Timer   // drops the connection if the close takes too long

	dead chan struct{}              // closed when the connection is gone: calls fail
	done chan struct{}              // closed after OnClose returned
	err  atomic.Pointer[closeError] // set before OnClose runs

	valMu sync.Mutex
	val   any

	auth any // what WithAuth put on the accepted request; set before start, then read-only

	// onGone is called once when the connection is gone, before handlers
	// are waited for (the server forgets the channel there).
	onGone func(*Channel)
}

type inflight struct {
	cancel  context.CancelFunc
	aborted bool // guarded by Channel.inMu
}

type callResult struct {
	resp response
	err  error
}

func newChannel(parent context.Context, conn *websocket.Conn, nc net.Conn, key, remote string, cfg *chanConfig) *Channel {
	ctx, cancel := context.WithCancel(parent)
	conn.SetReadLimit(cfg.readLimit)
	c := &Channel{
		conn:     conn,
		nc:       nc,
		key:      key,
		remote:   remote,
		cfg:      cfg,
		log:      cfg.log.With("peer", key, "remote", remote),
		ctx:      ctx,
		cancel:   cancel,
		sendq:    make(chan []byte, cfg.sendQueue),
		pending:  make(map[int64]chan callResult),
		inflight: make(map[int64]*inflight),
		closeReq: make(chan struct{}, 1),
		dead:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	c.ioCtx = context.WithoutCancel(ctx)
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

// start launches the writer and the pinger. The caller then runs serve.
func (c *Channel) start() {
	// Only now: a channel refused before it starts (a Shutdown under way) closes through
	// the library alone, which drops the client's data frames instead of serving them.
	if cc := c.cc; cc != nil && cc.server && !cc.handshakeLeftovers && !c.cfg.libraryReads {
		// The frameReader must see the stream from a frame boundary: bytes the
		// client sent behind its handshake are already in the library's buffer.
		cc.frames = &frameReader{conn: cc.Conn, beforeRead: cc.beforeRead, maxText: int(min(c.cfg.readLimit, maxServedText)),
			onText: func(msg []byte) { c.serveMessage(true, msg) }}
	}
	c.workers.Add(1)
	go c.writeLoop()
	if c.cfg.pingInterval > 0 {
		c.workers.Add(1)
		go c.pingLoop()
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

// Value returns what SetValue stored.
func (c *Channel) Value() any {
	c.valMu.Lock()
	defer c.valMu.Unlock()
	return c.val
}

// SetValue stores v in the channel's slot for the embedding code.
func (c *Channel) SetValue(v any) {
	c.valMu.Lock()
	c.val = v
	c.valMu.Unlock()
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
	c.closeMu.Lock()
	if c.closing {
		c.closeMu.Unlock()
		return false
	}
	c.closing = true
	c.closeCode, c.closeReason = code, reason
	c.closeMu.Unlock()
	select {
	case c.closeReq <- struct{}{}:
	default:
	}
	// Bound the handshake.
	t := time.AfterFunc(c.cfg.closeTimeout, c.forceClose)
	c.closeMu.Lock()
	c.forceTimer = t
	c.closeMu.Unlock()
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

func (c *Channel) isClosing() bool {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	return c.closing
}

func (c *Channel) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// Call sends a request and waits for its response. props is marshalled with
// encoding/json (a json.RawMessage passes through; nil sends []). timeout <= 0
// means 30 s. On timeout or ctx cancellation an abort frame is sent and the
// call fails with &Error{Code: "ECONNABORTED", Message: "Abort"} (which wraps
// the context error). If the channel closes first, the error wraps ErrClosed.
// A failure response gives an *Error with the peer's status and message. The
// result is nil when the response had no data key.
func (c *Channel) Call(ctx context.Context, protocol, cmd string, props any, timeout time.Duration) (json.RawMessage, error) {
	p, err := marshalProps(props)
	if err != nil {
		return nil, fmt.Errorf("wsserver: call %s:/%s: props: %w", protocol, cmd, err)
	}
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	if c.isDead() {
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	}
	id := c.nextID.Add(1) - 1
	frame := appendRequest(make([]byte, 0, 64+len(protocol)+len(cmd)+len(p)), id, true, protocol, cmd, p)
	rc := make(chan callResult, 1)
	c.pendMu.Lock()
	c.pending[id] = rc
	c.pendMu.Unlock()
	forget := func() {
		c.pendMu.Lock()
		delete(c.pending, id)
		c.pendMu.Unlock()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	// A call waits for room in the send queue (back-pressure on the caller)
	// rather than treating a burst of calls as a slow consumer.
	select {
	case c.sendq <- frame:
	case <-c.dead:
		forget()
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	case <-timer.C:
		forget()
		return nil, errAbort(context.DeadlineExceeded)
	case <-ctx.Done():
		forget()
		return nil, errAbort(ctx.Err())
	}
	var cause error
	select {
	case r := <-rc:
		return r.result()
	case <-c.dead:
		forget()
		// A response may have raced the close.
		select {
		case r := <-rc:
			return r.result()
		default:
		}
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	case <-timer.C:
		cause = context.DeadlineExceeded
	case <-ctx.Done():
		cause = ctx.Err()
	}
	forget()
	select {
	case r := <-rc: // answered just in time
		return r.result()
	default:
	}
	abortID := c.nextID.Add(1) - 1
	_ = c.enqueue(appendAbort(make([]byte, 0, 64), abortID, id))
	return nil, errAbort(cause)
}

func (r callResult) result() (json.RawMessage, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.resp.code != "" {
		return nil, &Error{Code: r.resp.code, Message: r.resp.message}
	}
	if r.resp.status != 200 {
		return nil, &Error{Status: r.resp.status, Message: r.resp.message}
	}
	if !r.resp.hasData {
		return nil, nil
	}
	return json.RawMessage(r.resp.data), nil
}

func marshalProps(props any) ([]byte, error) {
	switch v := props.(type) {
	case nil:
		return []byte("[]"), nil
	case json.RawMessage:
		if v == nil {
			return []byte("[]"), nil
		}
		if !validJSON(v) {
			return nil, errors.New("invalid JSON in json.RawMessage")
		}
		return v, nil
	default:
		return json.Marshal(props)
	}
}

var errSlowConsumer = errors.New("send queue full (slow consumer)")

// enqueue hands a reply or abort to the writer without blocking. A full
// queue means the peer sends requests faster than it reads our answers: the
// channel is closed (1008 "slow consumer").
func (c *Channel) enqueue(frame []byte) error {
	if c.isDead() {
		return ErrClosed
	}
	select {
	case c.sendq <- frame:
		return nil
	default:
	}
	// A full queue with a writer that is still writing is a burst, not a slow consumer: wait
	// as long as one write may take. A peer that does not read makes it time out.
	t := time.NewTimer(c.cfg.writeTimeout)
	defer t.Stop()
	select {
	case c.sendq <- frame:
		return nil
	case <-c.dead:
		return ErrClosed
	case <-t.C:
		if c.closeWith(websocket.StatusPolicyViolation, ReasonSlowConsumer) {
			c.log.Warn("send queue full, closing", "queue", cap(c.sendq))
		}
		return errSlowConsumer
	}
}

// writeBatch bounds how many queued frames go out in one system call.
const writeBatch = 128

// writeLoop is the only writer of data frames. It drains everything queued
// before blocking again; on an accepted connection the frames of one batch
// leave in a single write (a system call costs more than encoding a reply).
func (c *Channel) writeLoop() {
	defer c.workers.Done()
	batch := make([][]byte, 0, writeBatch)
	cc := c.cc
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.closeReq:
			c.flushAndClose()
			return
		case f := <-c.sendq:
			batch = append(batch[:0], f)
		}
		c.drain(&batch)
		if cc != nil && len(batch) == 1 {
			// Replies to requests that arrived together are usually still
			// being computed by handler goroutines made runnable by the
			// same read; letting them run first turns several writes into
			// one.
			runtime.Gosched()
			c.drain(&batch)
		}
		if cc != nil {
			c.wmu.Lock()
			batch = c.appendHeld(batch) // replies of inline handlers ride along
			ok := c.writeCorked(cc, batch)
			c.resetHeld()
			c.wmu.Unlock()
			if !ok {
				return
			}
			clear(batch)
			batch = batch[:0]
			continue
		}
		for i, f := range batch {
			if !c.write(f) {
				return
			}
			batch[i] = nil
		}
	}
}

// drain appends what is queued, without blocking, up to the batch's capacity.
func (c *Channel) drain(batch *[][]byte) {
	for len(*batch) < cap(*batch) {
		select {
		case f := <-c.sendq:
			*batch = append(*batch, f)
		default:
			return
		}
	}
}

// hold keeps an inline handler's reply for the next flushHeld; a full batch goes
// at once.
func (c *Channel) hold(id int64, res json.RawMessage, err error) {
	c.wmu.Lock()
	c.heldBuf = c.appendReply(c.heldBuf, id, res, err)
	c.heldEnds = append(c.heldEnds, len(c.heldBuf))
	full := len(c.heldEnds) >= writeBatch
	c.wmu.Unlock()
	if full {
		c.flushHeld()
	}
}

// appendHeld appends the held frames to batch (slices of heldBuf: valid until
// resetHeld). The caller holds wmu.
func (c *Channel) appendHeld(batch [][]byte) [][]byte {
	start := 0
	for _, end := range c.heldEnds {
		batch = append(batch, c.heldBuf[start:end:end])
		start = end
	}
	return batch
}

// resetHeld forgets the held frames once written. The caller holds wmu.
func (c *Channel) resetHeld() {
	c.heldEnds = c.heldEnds[:0]
	if cap(c.heldBuf) > 256<<10 {
		c.heldBuf = nil // do not keep a burst's buffer for the connection's life
	} else {
		c.heldBuf = c.heldBuf[:0]
	}
}

// flushHeld writes the held replies with one system call. The corkConn calls it
// before every socket read, so the replies to what one read brought leave
// together. While a close is under way the writer's flushAndClose takes them
// (a data frame after the close frame would break the close handshake).
func (c *Channel) flushHeld() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.heldEnds) == 0 || c.isClosing() {
		return
	}
	c.heldFrames = c.appendHeld(c.heldFrames[:0])
	c.writeCorked(c.cc, c.heldFrames) // a failure closes the channel
	clear(c.heldFrames)
	c.resetHeld()
}

// writeCorked sends the batch with one write under the write timeout: on the accepting
// end as frames the corkConn writes itself, on a dialing end through the library frame
// by frame into the cork buffer (no socket I/O, so no per-frame deadline context).
func (c *Channel) writeCorked(cc *corkConn, batch [][]byte) bool {
	if cc.server {
		if err := cc.writeTextFrames(batch, c.cfg.writeTimeout); err != nil {
			c.writeFailed(err)
			return false
		}
		return true
	}
	// A dialing end masks its frames with a random key: leave that to the library.
	cc.cork()
	var err error
	for _, f := range batch {
		if err = c.conn.Write(c.ioCtx, websocket.MessageText, f); err != nil {
			break
		}
	}
	if uerr := cc.uncork(c.cfg.writeTimeout); err == nil {
		err = uerr
	}
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// writeFailed drops the connection after a failed write (it is unusable) and
// remembers why, so Err blames the write rather than the peer.
func (c *Channel) writeFailed(err error) {
	if c.ctx.Err() == nil {
		c.log.Debug("write failed, dropping connection", "err", err)
		c.writeErr.CompareAndSwap(nil, &err)
	}
	c.forceClose()
}

func (c *Channel) write(f []byte) bool {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.writeTimeout)
	err := c.conn.Write(ctx, websocket.MessageText, f)
	cancel()
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// flushAndClose writes what is queued, then does the close handshake.
func (c *Channel) flushAndClose() {
	c.wmu.Lock()
	held := c.appendHeld(nil)
	c.heldBuf, c.heldEnds = nil, nil // held keeps the old buffer
	c.wmu.Unlock()
	for _, f := range held {
		if !c.write(f) {
			return
		}
	}
	for flushed := false; !flushed; {
		select {
		case f := <-c.sendq:
			if !c.write(f) {
				return
			}
		default:
			flushed = true
		}
	}
	c.closeMu.Lock()
	code, reason := c.closeCode, c.closeReason
	c.closeMu.Unlock()
	if err := c.conn.Close(code, reason); err != nil {
		c.log.Debug("close handshake", "err", err)
	}
	c.cancel()
}

// pingLoop pings every interval; after pingMisses consecutive pings without a
// pong (each waits one interval), the channel is closed.
func (c *Channel) pingLoop() {
	defer c.workers.Done()
	interval := c.cfg.pingInterval
	t := time.NewTimer(interval)
	defer t.Stop()
	misses := 0
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(c.ctx, interval)
		err := c.conn.Ping(ctx)
		cancel()
		if c.ctx.Err() != nil {
			return
		}
		if err == nil {
			misses = 0
			t.Reset(interval - time.Since(start))
			continue
		}
		misses++
		c.log.Debug("ping missed", "misses", misses, "err", err)
		if misses >= c.cfg.pingMisses {
			c.log.Info("peer stopped answering pings, closing", "misses", misses)
			c.closeWith(websocket.StatusPolicyViolation, ReasonPingTimeout)
			return
		}
		t.Reset(0)
	}
}

// readLoop reads messages until the connection fails or closes.
func (c *Channel) readLoop() error {
	var scratch []byte
	for {
		typ, r, err := c.conn.Reader(c.ioCtx)
		if err != nil {
			if c.ctx.Err() != nil && !errors.Is(err, context.Canceled) {
				// The socket was dropped because ctx ended: report it as
				// the cancellation it is.
				return fmt.Errorf("%w: %w", context.Canceled, err)
			}
			return err
		}
		scratch, err = readInto(r, scratch[:0])
		if err != nil {
			return err
		}
		c.serveMessage(typ == websocket.MessageText, scratch)
		if cap(scratch) > 64<<10 {
			scratch = nil
		}
	}
}

// serveMessage serves one message, read by the library (readLoop) or by the corkConn's
// frameReader; msg is only valid during the call.
func (c *Channel) serveMessage(text bool, msg []byte) {
	if c.isClosing() || c.readEnded.Load() {
		return // draining until the close handshake ends
	}
	if text && !utf8.Valid(msg) {
		c.log.Info("invalid UTF-8 in a text message, closing")
		c.closeWith(websocket.StatusInvalidFramePayloadData, ReasonInvalidUTF8)
		return
	}
	c.dispatch(msg)
}

func readInto(r io.Reader, b []byte) ([]byte, error) {
	if cap(b) == 0 {
		b = make([]byte, 0, 512)
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

func (c *Channel) ignored(reason string, msg []byte) {
	c.log.Debug("ignored message", "reason", reason, "len", len(msg))
	if c.cfg.onIgnored != nil {
		c.cfg.onIgnored(c, reason)
	}
}

// dispatch handles one message. msg is the reader's buffer, reused for the next
// message: what outlives the call (a handler goroutine's props, a response's data)
// is copied.
func (c *Channel) dispatch(msg []byte) {
	f, err := DecodeFrame(msg)
	if err != nil {
		c.ignored(err.Error(), msg)
		return
	}
	switch f.Mode {
	case ModeRequest:
		if f.Data == nil {
			c.ignored("request without data", msg)
			return
		}
		req, err := decodeRequest(f.Data)
		if err != nil {
			c.ignored(err.Error(), msg)
			return
		}
		c.startHandler(f.ID, f.TwoWay, req)
	case ModeResponse:
		c.pendMu.Lock()
		rc, ok := c.pending[f.ID]
		if ok {
			delete(c.pending, f.ID)
		}
		c.pendMu.Unlock()
		if !ok {
			c.ignored("response to no outstanding request", msg)
			return
		}
		var r callResult
		if f.Data == nil {
			r.err = malformed("response without data")
		} else {
			r.resp, r.err = decodeResponse(bytes.Clone(f.Data))
		}
		if r.err != nil {
			r.err = fmt.Errorf("wsserver: bad response from %s: %w", c.key, r.err)
		}
		rc <- r
	case ModeAbort:
		target, ok := parseInt(trimWS(f.Data))
		if !ok {
			c.ignored("abort data is not an integer", msg)
			return
		}
		c.inMu.Lock()
		in := c.inflight[target]
		if in != nil {
			in.aborted = true
			delete(c.inflight, target)
		}
		c.inMu.Unlock()
		if in != nil {
			in.cancel()
		} else {
			c.log.Debug("abort for a request not in progress", "id", target)
		}
	}
}

func (c *Channel) startHandler(id int64, twoway bool, req rawRequest) {
	r := c.cfg.mux.lookup(req.protocol, req.cmd)
	h := r.h
	if h == nil {
		if twoway {
			e := notFound(req.protocol, req.cmd)
			_ = c.enqueue(appendFailure(make([]byte, 0, 96+len(e.Message)), id, e.Status, "", e.Message))
		}
		return
	}
	if r.inline {
		c.runInline(id, twoway, h, req.props)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	in := &inflight{cancel: cancel}
	c.inMu.Lock()
	if len(c.inflight) >= DefaultMaxInflight {
		c.inMu.Unlock()
		cancel()
		if twoway {
			msg := "too many requests in flight on this connection (limit " + strconv.Itoa(DefaultMaxInflight) + ")"
			_ = c.enqueue(appendFailure(make([]byte, 0, 96+len(msg)), id, 429, "", msg))
		}
		return
	}
	c.inflight[id] = in
	c.inMu.Unlock()
	c.handlers.Add(1)
	go c.runHandler(ctx, in, id, twoway, h, bytes.Clone(req.props))
}

// runInline serves a request on the reader (see Mux.HandleInline).
func (c *Channel) runInline(id int64, twoway bool, h HandlerFunc, props []byte) {
	res, err := c.callHandler(c.ctx, h, props)
	if !twoway {
		return
	}
	if c.cc != nil {
		c.hold(id, res, err)
		return
	}
	_ = c.enqueue(c.appendReply(nil, id, res, err))
}

func (c *Channel) runHandler(ctx context.Context, in *inflight, id int64, twoway bool, h HandlerFunc, props []byte) {
	defer c.handlers.Done()
	res, err := c.callHandler(ctx, h, props)
	in.cancel()
	c.inMu.Lock()
	aborted := in.aborted
	if c.inflight[id] == in {
		delete(c.inflight, id)
	}
	c.inMu.Unlock()
	if aborted || !twoway {
		return
	}
	_ = c.enqueue(c.appendReply(nil, id, res, err))
}

// appendReply appends the frame that answers request id with a handler's result.
func (c *Channel) appendReply(b []byte, id int64, res json.RawMessage, err error) []byte {
	if err == nil && res != nil && !validJSON(res) {
		c.log.Error("handler returned invalid JSON")
		err = NewError(500, "handler returned invalid JSON")
	}
	if err != nil {
		status, code, msg := toFailure(err)
		if b == nil {
			b = make([]byte, 0, 96+len(msg))
		}
		return appendFailure(b, id, status, code, msg)
	}
	if b == nil {
		b = make([]byte, 0, 64+len(res))
	}
	return appendSuccess(b, id, res)
}

func (c *Channel) callHandler(ctx context.Context, h HandlerFunc, props []byte) (res json.RawMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("handler panicked", "panic", p, "stack", string(debug.Stack()))
			res, err = nil, NewError(500, "internal error")
		}
	}()
	return h(ctx, c, props)
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
	c.closeMu.Lock()
	closing, code, reason := c.closing, c.closeCode, c.closeReason
	c.closeMu.Unlock()
	switch {
	case closing:
		return &closeError{ce: websocket.CloseError{Code: code, Reason: reason}, local: true}, false
	case websocket.CloseStatus(readErr) != -1:
		var ce websocket.CloseError
		errors.As(readErr, &ce)
		return &closeError{ce: ce}, false
	case errors.Is(readErr, websocket.ErrMessageTooBig):
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusMessageTooBig, Reason: "message too big"}, local: true, cause: readErr}, true
	case isConnErr(readErr) && c.writeErr.Load() != nil:
		// We dropped the socket because a write failed (e.g. timed out on a peer that
		// does not read); the read error is only the echo. A close frame or a protocol
		// error the reader saw first wins over it (a write fails too once the library
		// closes the socket after the close handshake).
		return &closeError{ce: websocket.CloseError{Code: websocket.StatusAbnormalClosure}, local: true, cause: *c.writeErr.Load()}, false
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
	c.closeMu.Lock()
	c.closing = true // no new close handshake from now on
	ft := c.forceTimer
	c.closeMu.Unlock()
	c.cancel() // aborts writes and pings, cancels handler contexts
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
	c.log.Log(context.Background(), lvl, "channel closed", "code", int(e.ce.Code), "reason", e.ce.Reason, "local", e.local)
	c.handlers.Wait()
	c.err.Store(e)
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
	close(c.done)
}
