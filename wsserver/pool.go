package wsserver

import (
	"context"
	"fmt"
	"sync"

	"github.com/coder/websocket"
)

// Pool keeps at most one channel per peer address, shared by every caller: a channel the
// peer opened to our Server is reused, otherwise one is dialed, and concurrent dials to one
// address collapse into one. A channel that closes is dropped; the next Get dials again.
type Pool struct {
	server *Server // may be nil
	own    string
	cfg    DialConfig

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	peers  map[string]*peerDial
	closed bool
}

type peerDial struct {
	ready chan struct{}
	ch    *Channel
	err   error
}

// NewPool returns a pool that dials as own ("host:port") with cfg, and reuses server's
// accepted channels when server is not nil.
func NewPool(server *Server, own string, cfg DialConfig) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{server: server, own: own, cfg: cfg, ctx: ctx, cancel: cancel, peers: map[string]*peerDial{}}
}

// Get returns a live channel to addr. ctx bounds only this caller's wait: a dial in flight
// continues for the others waiting on it.
func (p *Pool) Get(ctx context.Context, addr string) (*Channel, error) {
	if p.server != nil {
		if ch := p.server.Channel(addr); ch != nil && !ch.isDead() {
			return ch, nil
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("wsserver: pool closed: %w", ErrClosed)
	}
	d := p.peers[addr]
	if d != nil {
		select {
		case <-d.ready:
			if d.err != nil || d.ch.isDead() {
				d = nil
			}
		default: // a dial is in flight: wait for it
		}
	}
	if d == nil {
		d = &peerDial{ready: make(chan struct{})}
		p.peers[addr] = d
		go p.dial(addr, d)
	}
	p.mu.Unlock()
	select {
	case <-d.ready:
		return d.ch, d.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *Pool) dial(addr string, d *peerDial) {
	cfg := p.cfg
	userClose := cfg.OnClose
	cfg.OnClose = func(ch *Channel) {
		p.forget(addr, d)
		if userClose != nil {
			userClose(ch)
		}
	}
	d.ch, d.err = Dial(p.ctx, addr, p.own, cfg)
	close(d.ready)
	if d.err != nil {
		p.forget(addr, d)
	}
}

func (p *Pool) forget(addr string, d *peerDial) {
	p.mu.Lock()
	if p.peers[addr] == d {
		delete(p.peers, addr)
	}
	p.mu.Unlock()
}

// Len is the number of dialed channels (and dials in flight) the pool holds.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.peers)
}

// Close closes every dialed channel and refuses further Gets.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	peers := p.peers
	p.peers = map[string]*peerDial{}
	p.mu.Unlock()
	p.cancel()
	var chans []*Channel
	for _, d := range peers {
		<-d.ready
		if d.ch != nil {
			d.ch.Close(websocket.StatusGoingAway, ReasonGoingAway)
			chans = append(chans, d.ch)
		}
	}
	for _, ch := range chans {
		<-ch.Done()
	}
}
