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
	m       atomic.Pointer[map[string]map[string]HandlerFunc]
	unknown atomic.Pointer[func(protocol, cmd string)]
}

// OnUnknown observes requests for pairs that have no handler (for metrics). They are
// still answered with 104.
func (m *Mux) OnUnknown(fn func(protocol, cmd string)) { m.unknown.Store(&fn) }

// NewMux returns an empty Mux: every request is answered with 104.
func NewMux() *Mux { return &Mux{} }

// Handle registers h for (protocol, cmd), e.g. ("ws", "/users"). A nil h
// removes the pair. A request for an unknown pair is answered with status 104
// "Cannot find the url '<protocol>:/<cmd>'".
func (m *Mux) Handle(protocol, cmd string, h HandlerFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make(map[string]map[string]HandlerFunc)
	if cur := m.m.Load(); cur != nil {
		for p, cmds := range *cur {
			c := make(map[string]HandlerFunc, len(cmds))
			for k, v := range cmds {
				c[k] = v
			}
			next[p] = c
		}
	}
	if h == nil {
		delete(next[protocol], cmd)
	} else {
		if next[protocol] == nil {
			next[protocol] = make(map[string]HandlerFunc)
		}
		next[protocol][cmd] = h
	}
	m.m.Store(&next)
}

// Lookup returns the handler for (protocol, cmd) or nil.
func (m *Mux) Lookup(protocol, cmd string) HandlerFunc {
	return m.find([]byte(protocol), []byte(cmd))
}

func (m *Mux) find(protocol, cmd []byte) HandlerFunc {
	if m == nil {
		return nil
	}
	cur := m.m.Load()
	if cur == nil {
		return nil
	}
	return (*cur)[string(protocol)][string(cmd)]
}

// lookup is what a channel dispatches with: an unknown pair yields nil (answered 104),
// or, when someone observes unknown pairs, a handler that tells them and answers 104.
func (m *Mux) lookup(protocol, cmd []byte) HandlerFunc {
	h := m.find(protocol, cmd)
	if h != nil || m == nil {
		return h
	}
	fn := m.unknown.Load()
	if fn == nil {
		return nil
	}
	p, c := string(protocol), string(cmd)
	return func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		(*fn)(p, c)
		return nil, notFound([]byte(p), []byte(c))
	}
}

// notFound is the failure for an unknown pair.
func notFound(protocol, cmd []byte) *Error {
	return &Error{Status: 104, Message: "Cannot find the url '" + string(protocol) + ":/" + string(cmd) + "'"}
}
