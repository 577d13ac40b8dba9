package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/wsserver"
)

// mode is what the controller wants the agents to do.
type mode int

const (
	modeChurn  mode = iota // connect, register, stay a while, disconnect, reconnect elsewhere
	modeSettle             // get connected with every namespace acknowledged, then stay
)

// fleet is the set of simulated agents and the switch the controller flips between rounds.
type fleet struct {
	agents  []*agent
	nodes   []string // agent (WebSocket) addresses of the nodes
	nsPool  int
	vary    bool // a new random set of namespaces on every connection (see RELIABILITY.md)
	log     *slog.Logger
	dialCfg wsserver.DialConfig

	mu      sync.Mutex
	mode    mode
	retired func(i int) bool // in modeSettle: agents that stay disconnected for the check
	changed chan struct{}    // closed and replaced on every mode change

	stats struct {
		connects, dialFails, onlineFails, unexpectedCloses, churnCloses atomic.Int64
	}
}

// agent is one simulated micro-ws agent with a unique "ip:port" key. It speaks the wire
// protocol through wsserver.Dial and Channel.Call, as an iocore agent would.
type agent struct {
	f   *fleet
	idx int
	key string
	// own is what this agent registers on every connection. Like a real iocore agent
	// its namespaces are part of its configuration: the registry moves the registrations
	// of a replaced connection to the newer one, which is only right when both came from
	// the same agent (see RELIABILITY.md).
	own []string

	mu         sync.Mutex
	ch         *wsserver.Channel // open registry connection, nil when disconnected
	node       int               // index of the node ch is connected to
	namespaces []string          // registered on ch (all acknowledged when acked)
	acked      bool              // every online on ch answered 200
	gen        uint64            // bumped on every change of the fields above
}

// agentView is what the checker knows about one agent at one moment.
type agentView struct {
	key        string
	live       bool // connected and its last online succeeded
	node       int
	namespaces []string
	gen        uint64
}

func newFleet(n int, nodes []string, hostBase string, portBase, nsPool int, log *slog.Logger) *fleet {
	f := &fleet{nodes: nodes, nsPool: nsPool, log: log, changed: make(chan struct{})}
	// Agents notice a frozen (SIGSTOPped) node by missed pongs, as real agents' TCP would
	// eventually; 1 s x 3 keeps that well inside a round.
	f.dialCfg = wsserver.DialConfig{ChannelConfig: wsserver.ChannelConfig{PingInterval: time.Second, PingMisses: 3, CloseTimeout: time.Second,
		Logger: slog.New(slog.DiscardHandler)}, DialTimeout: 3 * time.Second}
	for i := range n {
		// 8 addresses x 200 ports keeps keys unique without colliding with the nodes'.
		key := fmt.Sprintf("%s.%d:%d", hostBase, 2+i%8, portBase+i)
		rng := rand.New(rand.NewPCG(uint64(i), 0x5eed))
		f.agents = append(f.agents, &agent{f: f, idx: i, key: key, node: -1, own: pickNamespaces(rng, nsPool)})
	}
	return f
}

func (f *fleet) setMode(m mode, retired func(int) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode, f.retired = m, retired
	close(f.changed)
	f.changed = make(chan struct{})
}

// want returns the current mode, whether agent i should be disconnected, and the channel
// that closes on the next change.
func (f *fleet) want(i int) (mode, bool, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	off := f.mode == modeSettle && f.retired != nil && f.retired(i)
	return f.mode, off, f.changed
}

func (f *fleet) run(ctx context.Context) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, a := range f.agents {
		wg.Go(func() { a.run(ctx) })
	}
	return &wg
}

// views snapshots every agent.
func (f *fleet) views() []agentView {
	out := make([]agentView, len(f.agents))
	for i, a := range f.agents {
		out[i] = a.view()
	}
	return out
}

// settled reports whether every agent is where the controller wants it: connected with
// every online acknowledged, or (retired) disconnected.
func (f *fleet) settled() (bool, int) {
	notYet := 0
	for i, a := range f.agents {
		_, off, _ := f.want(i)
		v := a.view()
		if v.live == off || (!off && a.closedUnderneath()) {
			notYet++
		}
	}
	return notYet == 0, notYet
}

func (a *agent) view() agentView {
	a.mu.Lock()
	defer a.mu.Unlock()
	return agentView{key: a.key, live: a.ch != nil && a.acked, node: a.node, namespaces: slices.Clone(a.namespaces), gen: a.gen}
}

// closedUnderneath: the connection ended but the agent's loop has not noticed yet.
func (a *agent) closedUnderneath() bool {
	a.mu.Lock()
	ch := a.ch
	a.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch.Done():
		return true
	default:
		return false
	}
}

func (a *agent) set(ch *wsserver.Channel, node int, namespaces []string, acked bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ch, a.node, a.namespaces, a.acked = ch, node, namespaces, acked
	a.gen++
}

func (a *agent) run(ctx context.Context) {
	rng := rand.New(rand.NewPCG(uint64(a.idx), uint64(time.Now().UnixNano())))
	last := rng.IntN(len(a.f.nodes))
	for ctx.Err() == nil {
		m, off, changed := a.f.want(a.idx)
		if off {
			a.disconnect("retired for the check")
			select {
			case <-ctx.Done():
			case <-changed:
			}
			continue
		}
		a.mu.Lock()
		ch := a.ch
		a.mu.Unlock()
		if ch == nil {
			node := a.pickNode(rng, last)
			last = node
			if !a.connect(ctx, rng, node) {
				sleepCtx(ctx, time.Duration(50+rng.IntN(250))*time.Millisecond)
			}
			continue
		}
		var stay <-chan time.Time
		if m == modeChurn {
			stay = time.After(time.Duration(300+rng.IntN(2700)) * time.Millisecond)
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-ch.Done():
			a.f.stats.unexpectedCloses.Add(1)
			a.f.log.Debug("agent connection closed by the node", "agent", a.key, "node", a.node, "err", ch.Err())
			a.set(nil, -1, nil, false)
			sleepCtx(ctx, time.Duration(50+rng.IntN(200))*time.Millisecond)
		case <-stay:
			a.f.stats.churnCloses.Add(1)
			a.disconnect("churn")
			sleepCtx(ctx, time.Duration(20+rng.IntN(300))*time.Millisecond)
		}
	}
	a.disconnect("harness stopping")
}

// pickNode prefers a node other than the last one, as a reconnecting agent behind a
// load balancer would land on another node.
func (a *agent) pickNode(rng *rand.Rand, last int) int {
	n := len(a.f.nodes)
	if n == 1 {
		return 0
	}
	return (last + 1 + rng.IntN(n-1)) % n
}

// connect dials node, registers the agent's namespaces and records the result. A failed
// online closes the connection: the agent starts over elsewhere with a clean session.
func (a *agent) connect(ctx context.Context, rng *rand.Rand, node int) bool {
	dctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	ch, err := wsserver.Dial(dctx, a.f.nodes[node], a.key, a.f.dialCfg)
	cancel()
	if err != nil {
		a.f.stats.dialFails.Add(1)
		return false
	}
	a.f.stats.connects.Add(1)
	want := a.own
	if a.f.vary {
		want = pickNamespaces(rng, a.f.nsPool)
	}
	a.set(ch, node, want, false)
	for _, ns := range want {
		// Longer than the node's commit wait (5 s), so a failure is the node's answer.
		_, err := ch.Call(ctx, "ws", "online", []string{ns}, 8*time.Second)
		if err != nil {
			a.f.stats.onlineFails.Add(1)
			a.f.log.Debug("online failed", "agent", a.key, "node", node, "ns", ns, "err", err)
			ch.Close(websocket.StatusNormalClosure, "online failed")
			<-ch.Done()
			a.set(nil, -1, nil, false)
			return false
		}
	}
	select {
	case <-ch.Done():
		a.set(nil, -1, nil, false)
		return false
	default:
	}
	a.set(ch, node, want, true)
	return true
}

func (a *agent) disconnect(why string) {
	a.mu.Lock()
	ch := a.ch
	a.mu.Unlock()
	if ch == nil {
		return
	}
	ch.Close(websocket.StatusNormalClosure, why)
	<-ch.Done()
	a.set(nil, -1, nil, false)
}

func pickNamespaces(rng *rand.Rand, pool int) []string {
	k := 1 + rng.IntN(3)
	picked := rng.Perm(pool)[:k]
	out := make([]string, k)
	for i, p := range picked {
		out[i] = fmt.Sprintf("chaos-%03d", p)
	}
	slices.Sort(out)
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

var errNotSettled = errors.New("agents did not settle")

// settle waits until every agent is where the controller wants it.
func (f *fleet) settle(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, notYet := f.settled()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d agents not settled after %s", errNotSettled, notYet, timeout)
		}
		sleepCtx(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
