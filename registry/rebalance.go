package registry

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/version"
)

// Rebalance is how a node evens out agent connections across the cluster. Agents reach the
// nodes through one address (a Service, a DNS alias); a rolling restart leaves the node
// restarted last with almost none, since each restarted node's agents reconnect to the
// nodes still up. A node above its fair share (agents / members) by more than Tolerance
// closes a few of its agent connections per second with 1012, so they reconnect through
// that address; it stops at its fair share.
type Rebalance struct {
	// Off disables rebalancing (drain still moves agents).
	Off bool
	// Tolerance is how far above (or, for another member, below) the fair share counts as
	// unbalanced, as a fraction of it (DefaultRebalanceTolerance); never less than one agent.
	Tolerance float64
	// Rate caps the connections closed per second on this node; 0 takes 5% of the fair
	// share per second, at least DefaultRebalanceMinRate.
	Rate float64
	// Settle is the pause after any membership change, election, or a member not ready
	// (DefaultRebalanceSettle): counts move a lot right after a restart.
	Settle time.Duration
}

// Defaults of Rebalance.
const (
	DefaultRebalanceTolerance = 0.10
	DefaultRebalanceSettle    = 10 * time.Second
	// DefaultRebalanceMinRate is the least rate (connections/s) of the automatic rate, and
	// of a drain whatever the fair share.
	DefaultRebalanceMinRate = 2.0
	// rebalanceAutoRate is the automatic rate as a fraction of the fair share per second:
	// the agents closed land on any node (1/members of them back here), so a node 80% above
	// its share takes some 30 s to reach it.
	rebalanceAutoRate = 0.05
	// drainMinRate: a drain empties the node at no less than this many connections/s (and
	// at four times the rebalancing rate).
	drainMinRate = 10.0
	// rebalanceTick is how often the balance is looked at.
	rebalanceTick = 250 * time.Millisecond
	// paceSamples is how many one-second samples of the node's counters the dashboard gets.
	paceSamples = 60
)

func (r *Rebalance) setDefaults() {
	if r.Tolerance <= 0 {
		r.Tolerance = DefaultRebalanceTolerance
	}
	if r.Settle <= 0 {
		r.Settle = DefaultRebalanceSettle
	}
}

// moving is an agent connection this node closed to move it: its registrations stay until
// the same address holds them under another session (through any node) or the grace passes,
// so lookups never miss the agent while it reconnects.
type moving struct {
	s *agentSession
	// ended is when resolveMoving first saw the connection closed: the grace counts from
	// there, not from the pick. The close handshake (up to the close timeout) comes first,
	// and on a busy node the closes of one tick finish well after it; the agent cannot
	// reconnect before.
	ended time.Time
}

// balancer is the state of rebalancing and draining on one node.
type balancer struct {
	mu      sync.Mutex
	moving  map[fsm.SessionID]moving
	active  bool      // closing connections until this node is at its fair share (hysteresis)
	settled time.Time // no rebalancing before this (membership change, election, unready member)
	sig     string    // members and incarnations last seen; a change restarts the settle time
	leader  string
	tokens  float64
	last    time.Time
	status  BalanceStatus

	pace     paceRing
	paceLast [3]float64
	paceAt   time.Time

	moved *prometheus.CounterVec
}

// BalanceStatus is what this node last decided (GET /v1/cluster "balance").
type BalanceStatus struct {
	Enabled   bool           `json:"enabled"`
	State     string         `json:"state"` // balanced, moving, draining, paused, off
	Reason    string         `json:"reason,omitempty"`
	FairShare float64        `json:"fair_share"`
	Tolerance float64        `json:"tolerance"`
	Agents    map[string]int `json:"agents"` // agent sessions per member, from the replicated state
	Moving    int            `json:"moving"` // closed here, registrations kept until re-registered
	Draining  bool           `json:"draining"`
}

func (n *Node) startBalancer() {
	b := &balancer{moving: map[fsm.SessionID]moving{}, settled: time.Now().Add(n.cfg.Rebalance.Settle)}
	b.moved = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_agents_moved_total",
		Help: "Agent connections this node closed with 1012 so they reconnect elsewhere, by reason (rebalance, drain).",
	}, []string{"reason"})
	b.pace = newPaceRing(paceSamples)
	n.bal = b
	n.metrics.reg.MustRegister(b.moved,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wsregistry_rebalancing", Help: "1 while this node closes agent connections to reach its fair share (or drains)."},
			func() float64 {
				st := n.BalanceStatus()
				return boolFloat(st.State == "moving" || st.State == "draining")
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wsregistry_draining", Help: "1 while this node drains (moves all its agents off)."},
			func() float64 { return boolFloat(n.draining.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "wsregistry_build_info",
			Help:        "Always 1; the labels say which build this node runs.",
			ConstLabels: prometheus.Labels{"version": version.String(), "revision": version.Revision(), "goversion": version.GoVersion()},
		}, func() float64 { return 1 }),
	)
	n.wg.Add(1)
	go n.balanceLoop()
}

func (n *Node) balanceLoop() {
	defer n.wg.Done()
	t := time.NewTicker(rebalanceTick)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			n.samplePace(now)
			n.resolveMoving(now)
			n.balanceOnce(now)
		}
	}
}

// isMoving reports whether s was closed to move it (agentClosed then keeps its registrations).
func (n *Node) isMoving(s *agentSession) bool {
	n.bal.mu.Lock()
	defer n.bal.mu.Unlock()
	_, ok := n.bal.moving[s.id]
	return ok
}

// resolveMoving drops what moving agents registered again elsewhere, and all of a moving
// session once everything is re-registered or the grace passed.
func (n *Node) resolveMoving(now time.Time) {
	b := n.bal
	b.mu.Lock()
	list := make([]moving, 0, len(b.moving))
	for _, m := range b.moving {
		list = append(list, m)
	}
	b.mu.Unlock()
	if len(list) == 0 {
		return
	}
	if n.fenced.Load() {
		// The majority purges this node's sessions anyway; the reconciler must not try to
		// register these again after the fence.
		for _, m := range list {
			n.forgetMoving(m.s.id)
			n.live.Delete(m.s.id)
		}
		return
	}
	var cmds []fsm.Command
	var done []fsm.SessionID
	lost := 0
	for _, m := range list {
		select {
		case <-m.s.ch.Done():
		default:
			continue // still closing: agentClosed has not run yet
		}
		if m.ended.IsZero() {
			m.ended = now
			b.mu.Lock()
			if _, ok := b.moving[m.s.id]; ok {
				b.moving[m.s.id] = m
			}
			b.mu.Unlock()
		}
		regs := n.state.RegistrationsOf(m.s.id)
		var taken []string
		for _, r := range regs {
			if n.state.HeldElsewhere(r.Namespace, r.Address, m.s.id) {
				taken = append(taken, r.Namespace)
			}
		}
		if len(taken) == len(regs) || now.Sub(m.ended) > n.cfg.NodeGrace {
			if len(taken) < len(regs) {
				lost++
			}
			cmds = append(cmds, fsm.Deregister{RequestID: n.newRequestID(), Session: m.s.id})
			done = append(done, m.s.id)
			continue
		}
		for _, ns := range taken {
			m.s.remove(ns) // so the reconciler does not register it again
			cmds = append(cmds, fsm.Unregister{RequestID: n.newRequestID(), Session: m.s.id, Namespace: ns})
		}
	}
	if len(cmds) == 0 {
		return
	}
	if lost > 0 {
		n.log.Warn("moved agents did not register again within the node grace after their connection closed; dropping their registrations",
			"agents", lost, "grace", n.cfg.NodeGrace)
	}
	if _, err := n.submit(n.ctx, cmds...); err != nil {
		n.log.Warn("could not drop the registrations of moved agents; will retry", "err", err)
		return
	}
	for _, id := range done {
		n.forgetMoving(id)
		n.live.Delete(id)
	}
}

func (n *Node) forgetMoving(id fsm.SessionID) {
	n.bal.mu.Lock()
	delete(n.bal.moving, id)
	n.bal.mu.Unlock()
}

// membersNow is the raft configuration's members with their announced metadata; ok is false
// (with why) when rebalancing must wait: a member without metadata, purged (dead or fenced)
// or draining, or silent to the leader.
func (n *Node) membersNow() (ids []string, sig string, why string) {
	var sb strings.Builder
	var silence map[string]time.Duration
	if n.raft.IsLeader() {
		silence = n.raft.MemberSilence()
	}
	for _, m := range n.raft.Members() {
		ids = append(ids, m.ID)
		meta, ok := n.state.Node(m.ID)
		mark, _ := n.state.PurgeMark(m.ID)
		switch {
		case !ok:
			why = "member " + m.ID + " has not announced itself"
		case mark >= meta.Incarnation:
			why = "member " + m.ID + " is down or fenced"
		case meta.Draining && m.ID != n.cfg.NodeID:
			why = "member " + m.ID + " is draining"
		case silence[m.ID] > n.cfg.NodeGrace/4:
			why = "member " + m.ID + " is not answering the leader"
		}
		sb.WriteString(m.ID + "/" + strconv.FormatUint(meta.Incarnation, 10) + " ")
	}
	slices.Sort(ids)
	return ids, sb.String(), why
}

// balanceOnce decides whether to close connections now, and closes them.
func (n *Node) balanceOnce(now time.Time) {
	b := n.bal
	cfg := n.cfg.Rebalance
	draining := n.draining.Load()
	ids, sig, why := n.membersNow()
	leader, _ := n.raft.Leader()
	counts := n.state.SessionCounts()
	ready, notReady := n.Ready()

	// Connections are closed after the lock is released: closing may run agentClosed,
	// which asks isMoving.
	var closing []*agentSession
	var closeReason string
	defer func() {
		for _, s := range closing {
			s.ch.Close(websocket.StatusServiceRestart, closeReason)
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BalanceStatus{Enabled: !cfg.Off, Tolerance: cfg.Tolerance, Agents: map[string]int{}, Moving: len(b.moving), Draining: draining}
	total, members := 0, 0
	for _, id := range ids {
		c := counts[id]
		st.Agents[id] = c
		total += c
		if meta, ok := n.state.Node(id); !ok || !meta.Draining {
			members++
		}
	}
	if members > 0 {
		st.FairShare = float64(total) / float64(members)
	}
	mine := counts[n.cfg.NodeID] - len(b.moving)
	dt := now.Sub(b.last).Seconds()
	if b.last.IsZero() || dt > 1 {
		dt = rebalanceTick.Seconds()
	}
	b.last = now
	defer func() { b.status = st }()

	// Anything that moves counts restarts the settle time: a membership change (a restart
	// is a new incarnation), an election, a member not ready.
	if sig != b.sig || leader != b.leader || leader == "" || why != "" {
		b.sig, b.leader = sig, leader
		b.settled = now.Add(cfg.Settle)
	}
	rate := max(DefaultRebalanceMinRate, rebalanceAutoRate*st.FairShare)
	if cfg.Rate > 0 {
		rate = cfg.Rate
	}

	if draining {
		st.State = "draining"
		if n.stopping.Load() {
			// Stopping marks the node draining too (announceLeaving), but it closes every
			// agent itself with 1001: a drain's 1012 racing it would tell them otherwise.
			return
		}
		// Every agent a drain closes lands on another node (this one refuses them), so it
		// may go faster than rebalancing; the bound protects the others from a burst.
		drainRate := max(4*rate, drainMinRate)
		b.tokens = min(b.tokens+drainRate*dt, drainRate)
		if k := int(b.tokens); k > 0 {
			closing, closeReason = n.pickForMove(k, "drain"), "draining: this node is going away; reconnect (to any node)"
			b.tokens -= float64(len(closing))
		}
		return
	}
	switch {
	case cfg.Off:
		st.State = "off"
	case why != "":
		st.State, st.Reason = "paused", why
	case leader == "":
		st.State, st.Reason = "paused", "no leader (election)"
	case now.Before(b.settled):
		st.State, st.Reason = "paused", "settling after a membership change or election"
	}
	if st.State != "" {
		b.active, b.tokens = false, 0
		return
	}
	if !ready {
		st.State, st.Reason = "paused", "this node is not ready: "+notReady
		b.active, b.tokens = false, 0
		return
	}
	fair := st.FairShare
	band := max(cfg.Tolerance*fair, 1)
	target := int(math.Ceil(fair))
	if !b.active {
		hi, lo := 0, math.MaxInt
		for _, id := range ids {
			c := counts[id]
			if id == n.cfg.NodeID {
				c = mine
			}
			hi, lo = max(hi, c), min(lo, c)
		}
		unbalanced := float64(hi) > fair+band || float64(lo) < fair-band
		b.active = unbalanced && mine > target
	}
	if b.active && mine <= target {
		b.active = false // at the fair share: stop, and start again only past the tolerance
	}
	if !b.active {
		st.State, b.tokens = "balanced", 0
		return
	}
	st.State = "moving"
	b.tokens = min(b.tokens+rate*dt, max(rate, 1))
	k := min(int(b.tokens), mine-target)
	if k <= 0 {
		return
	}
	closeReason = fmt.Sprintf("rebalancing: this node holds %d agents, the fair share is %.0f; reconnect (to any node)", mine, fair)
	closing = n.pickForMove(k, "rebalance")
	b.tokens -= float64(len(closing))
	st.Moving = len(b.moving)
}

// pickForMove picks up to k open agent connections to close with 1012 and records them as
// moving, so their registrations stay until they re-register. Called with bal.mu held; the
// caller closes them after releasing it.
func (n *Node) pickForMove(k int, why string) []*agentSession {
	b := n.bal
	var picked []*agentSession
	n.live.Range(func(_, v any) bool {
		s := v.(*agentSession)
		if _, already := b.moving[s.id]; already {
			return true
		}
		select {
		case <-s.ch.Done():
			return true
		default:
		}
		if why == "rebalance" && len(s.snapshot()) == 0 {
			return true // not counted in the state: moving it changes no count
		}
		picked = append(picked, s)
		return len(picked) < k
	})
	for _, s := range picked {
		b.moving[s.id] = moving{s: s}
	}
	if len(picked) > 0 {
		b.moved.WithLabelValues(why).Add(float64(len(picked)))
		n.log.Info("closing agent connections to move them", "why", why, "agents", len(picked))
	}
	return picked
}

// BalanceStatus is this node's last rebalancing decision and the counts it was made on.
func (n *Node) BalanceStatus() BalanceStatus {
	if n.bal == nil {
		return BalanceStatus{}
	}
	n.bal.mu.Lock()
	defer n.bal.mu.Unlock()
	st := n.bal.status
	st.Moving = len(n.bal.moving)
	return st
}

// movingCount is how many moved agents' registrations this node still keeps.
func (n *Node) movingCount() int {
	n.bal.mu.Lock()
	defer n.bal.mu.Unlock()
	return len(n.bal.moving)
}

// flushMoving deregisters what moved agents left here (the node is going away).
func (n *Node) flushMoving(ctx context.Context) {
	n.bal.mu.Lock()
	var cmds []fsm.Command
	for id := range n.bal.moving {
		cmds = append(cmds, fsm.Deregister{RequestID: n.newRequestID(), Session: id})
		n.live.Delete(id)
	}
	n.bal.moving = map[fsm.SessionID]moving{}
	n.bal.mu.Unlock()
	if len(cmds) > 0 {
		if _, err := n.submit(ctx, cmds...); err != nil {
			n.log.Warn("could not deregister moved agents", "err", err)
		}
	}
}
