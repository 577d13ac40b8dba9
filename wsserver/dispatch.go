package wsserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/later"
)

// serveState is the channel's side of serving the peer's requests.
type serveState struct {
	mu       sync.Mutex
	inflight map[int64]*inflight // the peer's requests being served, by id
	// repliesDue counts the requests in inflight whose replyDue is set (forget is the only
	// way out): each still owes the socket a write, since a request leaves inflight before
	// its reply is written (mayWait). Written under mu, read without it.
	repliesDue atomic.Int32
	handlers   sync.WaitGroup // handler goroutines
}

type inflight struct {
	cancel context.CancelFunc // nil for an asynchronous handler's request
	// replyDue: a two-way request of an asynchronous handler, which answers in bounded
	// time (Mux.HandleAsync), so the reader may wait for its reply's write instead of
	// reading once more (mayWait). A goroutine handler may wait on ctx for as long as the
	// channel lives: it is not counted, so a reset behind its request is read at once
	// unless an asynchronous handler's reply is owed too (then that reply's write finds it).
	replyDue bool // set before it is admitted
	aborted  bool // guarded by serveState.mu
}

// forget removes in, the entry of request id, from inflight. The caller holds serving.mu.
func (c *Channel) forget(id int64, in *inflight) {
	delete(c.serving.inflight, id)
	if in.replyDue {
		c.serving.repliesDue.Add(-1)
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
		c.logger().Info("invalid UTF-8 in a text message, closing")
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
	c.logger().Debug("ignored message", "reason", reason, "len", len(msg))
	if c.cfg.onIgnored != nil {
		c.cfg.onIgnored(c, reason)
	}
}

// dispatch handles one message. msg is the reader's buffer, reused for the next
// message: what outlives the call (a handler goroutine's props, a response's data)
// is copied.
func (c *Channel) dispatch(msg []byte) {
	// Nearly every message is a request of one shape (a where): read it in one pass.
	if id, twoway, req, ok := parseRequest(msg); ok {
		c.startHandler(id, twoway, req)
		return
	}
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
		// The answer to one of our calls (call.go): hand it to the caller waiting for it.
		c.calls.mu.Lock()
		rc, ok := c.calls.pending[f.ID]
		if ok {
			delete(c.calls.pending, f.ID)
		}
		c.calls.mu.Unlock()
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
		c.serving.mu.Lock()
		in := c.serving.inflight[target]
		if in != nil {
			in.aborted = true
			c.forget(target, in)
		}
		c.serving.mu.Unlock()
		if in != nil {
			if in.cancel != nil {
				in.cancel()
			}
		} else {
			c.logger().Debug("abort for a request not in progress", "id", target)
		}
	}
}

func (c *Channel) startHandler(id int64, twoway bool, req rawRequest) {
	r := c.cfg.mux.lookup(req.protocol, req.cmd)
	h := r.h
	if h == nil {
		if twoway {
			e := notFound(req.protocol, req.cmd)
			_ = c.enqueue(appendFailure(make([]byte, 0, 96+len(e.Message)), id, e.Status, "", e.Message), false)
		}
		return
	}
	if r.inline {
		c.runInline(id, twoway, h, req.props)
		return
	}
	if r.async != nil {
		c.startAsync(id, twoway, r.async, req.props)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	in := &inflight{cancel: cancel}
	if !c.admit(id, twoway, in) {
		cancel()
		return
	}
	go c.runHandler(ctx, in, id, twoway, h, bytes.Clone(req.props))
}

// admit counts a request as in flight (abortable, waited for by the close) unless the
// peer already has DefaultMaxInflight of them, which it answers 429.
func (c *Channel) admit(id int64, twoway bool, in *inflight) bool {
	c.serving.mu.Lock()
	if len(c.serving.inflight) >= DefaultMaxInflight {
		c.serving.mu.Unlock()
		if twoway {
			msg := "too many requests in flight on this connection (limit " + strconv.Itoa(DefaultMaxInflight) + ")"
			_ = c.enqueue(appendFailure(make([]byte, 0, 96+len(msg)), id, 429, "", msg), false)
		}
		return false
	}
	if old := c.serving.inflight[id]; old != nil {
		c.forget(id, old) // a peer that reuses an id in flight: keep repliesDue the map's count
	}
	c.serving.inflight[id] = in
	if in.replyDue {
		c.serving.repliesDue.Add(1)
	}
	c.serving.mu.Unlock()
	c.serving.handlers.Add(1)
	return true
}

// finished forgets a finished request and reports whether its answer is still wanted.
func (c *Channel) finished(id int64, in *inflight) (aborted bool) {
	c.serving.mu.Lock()
	aborted = in.aborted
	if c.serving.inflight[id] == in {
		c.forget(id, in)
	}
	c.serving.mu.Unlock()
	return aborted
}

// Reply answers one request of an asynchronous handler (Mux.HandleAsync).
type Reply struct {
	c        *Channel
	in       inflight
	id       int64
	twoway   bool
	answered atomic.Bool
	local    func(json.RawMessage, error) // Lookup's blocking adapter: no channel
}

// startAsync starts an asynchronous handler on the reader (see Mux.HandleAsync).
func (c *Channel) startAsync(id int64, twoway bool, h AsyncHandlerFunc, props []byte) {
	r := &Reply{c: c, id: id, twoway: twoway, in: inflight{replyDue: twoway}}
	if !c.admit(id, twoway, &r.in) {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			c.logger().Error("handler panicked", "panic", p, "stack", string(debug.Stack()))
			r.Send(nil, NewError(500, "internal error"))
		}
	}()
	h(c.ctx, c, props, r)
}

// Send answers the request, as a HandlerFunc's results do: (nil, nil) is an "undefined"
// result, a *Error gives its status. Only the first answer counts. It never blocks nor
// writes to the socket itself: the frame goes to the connection's writer.
func (r *Reply) Send(res json.RawMessage, err error) { r.SendIn(nil, res, err) }

// SendIn is Send for a goroutine answering a batch of requests at once: the connection's
// writer, if it must be started, starts when b runs, so the batch's replies to one
// connection leave together.
func (r *Reply) SendIn(b *later.Batch, res json.RawMessage, err error) {
	if r.answered.Swap(true) {
		return
	}
	if r.local != nil {
		r.local(res, err)
		return
	}
	c := r.c
	defer c.serving.handlers.Done()
	if c.finished(r.id, &r.in) || !r.twoway {
		return
	}
	c.enqueueNoWait(b, c.appendReply(nil, r.id, res, err))
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
	_ = c.enqueue(c.appendReply(nil, id, res, err), false)
}

func (c *Channel) runHandler(ctx context.Context, in *inflight, id int64, twoway bool, h HandlerFunc, props []byte) {
	defer c.serving.handlers.Done()
	res, err := c.callHandler(ctx, h, props)
	in.cancel()
	if c.finished(id, in) || !twoway {
		return
	}
	_ = c.enqueue(c.appendReply(nil, id, res, err), true) // the handler's goroutine may write it
}

// appendReply appends the frame that answers request id with a handler's result.
func (c *Channel) appendReply(b []byte, id int64, res json.RawMessage, err error) []byte {
	if err == nil && res != nil && !validJSON(res) {
		c.logger().Error("handler returned invalid JSON")
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
			c.logger().Error("handler panicked", "panic", p, "stack", string(debug.Stack()))
			res, err = nil, NewError(500, "internal error")
		}
	}()
	return h(ctx, c, props)
}
