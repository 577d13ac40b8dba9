package wsserver

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
)

// HandlerFunc serves one request. Return (nil, nil) for an "undefined" result
// (the reply has no data key) and json.RawMessage("null") for null. A *Error
// gives its status; any other error gives 500 with err.Error(). ctx is
// cancelled when the peer aborts the request or the channel closes.
type HandlerFunc func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error)

// Mux maps (protocol, cmd) pairs to handlers. It is safe for concurrent use;
// Handle may be called while channels are serving (lookups are lock-free).
type Mux struct {
	mu      sync.Mutex // serialises writers
	m       atomic.Pointer[map[string]map[string]route]
	unknown atomic.Pointer[func(protocol, cmd string)]
}

// AsyncHandlerFunc serves one request whose answer comes later, from another goroutine
// (see Mux.HandleAsync). It must answer through reply exactly once; later answers are
// ignored.
type AsyncHandlerFunc func(ctx context.Context, ch *Channel, props json.RawMessage, reply *Reply)

type route struct {
	h      HandlerFunc
	inline bool
	async  AsyncHandlerFunc // when set, h is a blocking adapter of it (for Lookup)
}

// OnUnknown observes requests for pairs that have no handler (for metrics). They are
// still answered with 104.
func (m *Mux) OnUnknown(fn func(protocol, cmd string)) { m.unknown.Store(&fn) }

// NewMux returns an empty Mux: every request is answered with 104.
func NewMux() *Mux { return &Mux{} }

// Handle registers h for (protocol, cmd), e.g. ("ws", "/users"). A nil h
// removes the pair. A request for an unknown pair is answered with status 104
// "Cannot find the url '<protocol>:/<cmd>'". Each request runs in its own
// goroutine; ctx ends when the peer aborts it or the channel closes.
func (m *Mux) Handle(protocol, cmd string, h HandlerFunc) { m.set(protocol, cmd, route{h: h}) }

// HandleInline registers h like Handle, for a handler that only computes (no
// I/O, no waiting, no locks held for long): it runs on the connection's reader,
// in arrival order, without a goroutine or context of its own, and on an
// accepted connection its replies to the messages of one socket read leave in
// one write. ctx is the channel's; an abort cannot reach it because it answers
// before the next message is read. A handler that blocks stalls its connection.
// props is only valid during the call (it is the reader's buffer): copy what you keep.
// The result is copied before the next message of the channel is read, so it may be a
// buffer the handler reuses for the channel's next request.
func (m *Mux) HandleInline(protocol, cmd string, h HandlerFunc) {
	m.set(protocol, cmd, route{h: h, inline: true})
}

// HandleAsync registers h like Handle, for a handler that waits on something that
// will call back (a raft commit): it starts on the connection's reader, in arrival order,
// like an inline handler (no goroutine or context of its own; props is only valid during
// the call), and answers whenever it calls reply. Many requests can wait without a
// goroutine each, and the replies that one goroutine hands over together leave in few
// writes. ctx is the channel's; an abort of the request suppresses its reply. The
// channel's close (and its OnClose) waits for every started request's reply. While a
// reply is due, a reader on a plain TCP socket (Linux) waits for more data without
// reading once more, so with pings off a reset that came with the data it last read may go
// unnoticed until the reply is written: answer in bounded time (an online: within the
// commit wait).
func (m *Mux) HandleAsync(protocol, cmd string, h AsyncHandlerFunc) {
	if h == nil {
		m.set(protocol, cmd, route{})
		return
	}
	m.set(protocol, cmd, route{h: blocking(h), async: h})
}

// blocking adapts an asynchronous handler to a HandlerFunc (Lookup's callers).
func blocking(h AsyncHandlerFunc) HandlerFunc {
	return func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		type result struct {
			res json.RawMessage
			err error
		}
		done := make(chan result, 1)
		var once sync.Once
		h(ctx, ch, props, &Reply{local: func(res json.RawMessage, err error) {
			once.Do(func() { done <- result{res, err} })
		}})
		r := <-done
		return r.res, r.err
	}
}

func (m *Mux) set(protocol, cmd string, r route) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make(map[string]map[string]route)
	if cur := m.m.Load(); cur != nil {
		for p, cmds := range *cur {
			c := make(map[string]route, len(cmds))
			for k, v := range cmds {
				c[k] = v
			}
			next[p] = c
		}
	}
	if r.h == nil {
		delete(next[protocol], cmd)
	} else {
		if next[protocol] == nil {
			next[protocol] = make(map[string]route)
		}
		next[protocol][cmd] = r
	}
	m.m.Store(&next)
}

// Lookup returns the handler for (protocol, cmd) or nil.
func (m *Mux) Lookup(protocol, cmd string) HandlerFunc {
	return m.find([]byte(protocol), []byte(cmd)).h
}

func (m *Mux) find(protocol, cmd []byte) route {
	if m == nil {
		return route{}
	}
	cur := m.m.Load()
	if cur == nil {
		return route{}
	}
	return (*cur)[string(protocol)][string(cmd)]
}

// lookup is what a channel dispatches with: an unknown pair yields a nil handler
// (answered 104), or, when someone observes unknown pairs, a handler that tells them
// and answers 104.
func (m *Mux) lookup(protocol, cmd []byte) route {
	r := m.find(protocol, cmd)
	if r.h != nil || m == nil {
		return r
	}
	fn := m.unknown.Load()
	if fn == nil {
		return route{}
	}
	p, c := string(protocol), string(cmd)
	return route{h: func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		(*fn)(p, c)
		return nil, notFound([]byte(p), []byte(c))
	}, inline: true}
}

// notFound is the failure for an unknown pair.
func notFound(protocol, cmd []byte) *Error {
	return &Error{Status: 104, Message: "Cannot find the url '" + string(protocol) + ":/" + string(cmd) + "'"}
}
