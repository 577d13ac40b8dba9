package registry

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/wsserver"
)

// Adoption (DESIGN.md of this package, "Liveness"): before the leader purges a silent
// member, it calls each of the member's agents at its advertised address, as the proxy does.
// An agent connected to a stalled node cannot know (unchanged agents send no pings), so
// those that answer stay registered, owned by the cluster (fsm.ClusterOwner), until they
// register through a live node (which supersedes the adopted registration in the same
// entry) or stop answering a later check.
const (
	// AgentCheckTimeout bounds one check of one agent: dial (or reuse the pooled channel)
	// and one request answered.
	AgentCheckTimeout = time.Second
	// AgentCheckConcurrency bounds the checks in flight at once, per silent member and
	// per recheck round.
	AgentCheckConcurrency = 32
	// agentCheckCmd is the request a check sends. No agent has a handler for it: the
	// answer is normally 104 (unknown url), which proves a micro-ws peer serves the
	// address as much as any other answer does.
	agentCheckCmd = "/.wsregistry/alive"
)

// adoptRecheckEvery is how often the leader checks the agents the cluster holds again.
func adoptRecheckEvery(grace time.Duration) time.Duration {
	return min(max(grace/2, 500*time.Millisecond), 5*time.Second)
}

// adopter is the leader's bookkeeping of checks in flight. It lives in watchLiveness, so
// the checks never hold up the loop that fences and purges other members on time.
type adopter struct {
	n           *Node
	mu          sync.Mutex
	checking    map[string]bool // silent members whose agents are being checked
	rechecking  bool
	lastRecheck time.Time
}

func newAdopter(n *Node) *adopter { return &adopter{n: n, checking: map[string]bool{}} }

// supported: every server reads fsm.TypeAdopt. A node of an earlier build would stop on
// it, so until then the leader purges as before.
func (n *Node) adoptSupported() bool {
	members := n.raft.Members()
	if len(members) == 0 {
		return false
	}
	for _, m := range members {
		meta, ok := n.state.Node(m.ID)
		if !ok || meta.Features&fsm.FeatureAdopt == 0 {
			return false
		}
	}
	return true
}

// isMember reports whether id is in the raft configuration.
func (n *Node) isMember(id string) bool {
	for _, m := range n.raft.Members() {
		if m.ID == id {
			return true
		}
	}
	return false
}

// busy reports whether a check of member id's agents is in flight.
func (a *adopter) busy(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.checking[id]
}

// startAdopt checks the agents of silent member id in the background, then commits one
// Adopt: those that answered move to the cluster, the rest are purged with the member.
// upTo is the newest of its lives the purge covers (0: every life the state knows).
func (a *adopter) startAdopt(id string, upTo uint64) {
	a.mu.Lock()
	if a.checking[id] {
		a.mu.Unlock()
		return
	}
	a.checking[id] = true
	a.mu.Unlock()
	n := a.n
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer func() {
			a.mu.Lock()
			delete(a.checking, id)
			a.mu.Unlock()
		}()
		start := time.Now()
		// The purge covers the lives seen silent, fixed before the check: the member may come
		// back, start a new incarnation and register through it meanwhile, and that life is
		// not ours to purge (PurgeNode's 0 would resolve to it when applied).
		if upTo == 0 {
			upTo = n.incarnationOf(id)
		}
		var sessions []fsm.SessionID
		for _, s := range n.state.SessionsOf(id) {
			if s.Incarnation <= upTo {
				sessions = append(sessions, s)
			}
		}
		answered := n.checkAgents(sessions)
		var keep []fsm.SessionID
		for i, s := range sessions {
			if answered[i] {
				keep = append(keep, s)
			}
		}
		if !n.raft.IsLeader() {
			return // the next leader checks again
		}
		if n.isMember(id) && !contains(n.raft.SilentMembers(n.cfg.NodeGrace), id) {
			// It came back while we checked: its sessions are its own again (if it was cut
			// off for longer than the grace, it fences and starts a new incarnation itself).
			// A node no longer in the configuration (removed while silent) did not.
			n.log.Info("silent member answered again before its purge", "member", id)
			return
		}
		n.log.Warn("purging the sessions of a silent member; its agents that answered stay registered, held by the cluster",
			"member", id, "sessions", len(sessions), "answered", len(keep), "checked_in", time.Since(start).Round(time.Millisecond), "grace", n.cfg.NodeGrace)
		n.metrics.purges.WithLabelValues("silent_member").Inc()
		errs, err := n.submit(n.ctx, fsm.Adopt{RequestID: n.newRequestID(), Node: id, UpToIncarnation: upTo, Keep: keep})
		if err == nil {
			err = firstError(errs)
		}
		if err != nil {
			n.log.Warn("purge of a silent member not committed; will retry", "member", id, "err", err)
		}
	}()
}

// startRecheck checks, once per interval and in the background, the agents the cluster
// holds, and deregisters those that no longer answer.
func (a *adopter) startRecheck(now time.Time) {
	n := a.n
	a.mu.Lock()
	if a.rechecking || now.Sub(a.lastRecheck) < adoptRecheckEvery(n.cfg.NodeGrace) {
		a.mu.Unlock()
		return
	}
	a.lastRecheck = now
	held := n.state.SessionsOf(fsm.ClusterOwner)
	if len(held) == 0 {
		a.mu.Unlock()
		return
	}
	a.rechecking = true
	a.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer func() {
			a.mu.Lock()
			a.rechecking = false
			a.mu.Unlock()
		}()
		answered := n.checkAgents(held)
		// One failed check under load must not drop a live agent: what failed is checked
		// once more before it goes.
		var again []fsm.SessionID
		var at []int
		for i, s := range held {
			if !answered[i] {
				again, at = append(again, s), append(at, i)
			}
		}
		if len(again) > 0 {
			for j, ok := range n.checkAgents(again) {
				answered[at[j]] = ok
			}
		}
		var cmds []fsm.Command
		for i, s := range held {
			if !answered[i] {
				cmds = append(cmds, fsm.Deregister{RequestID: n.newRequestID(), Session: s})
			}
		}
		if len(cmds) == 0 || !n.raft.IsLeader() {
			return
		}
		n.log.Warn("removing agents held by the cluster that stopped answering", "agents", len(cmds), "held", len(held))
		n.metrics.purges.WithLabelValues("adopted_gone").Add(float64(len(cmds)))
		if _, err := n.submit(n.ctx, cmds...); err != nil {
			n.log.Warn("removal of agents held by the cluster not committed; will retry", "err", err)
		}
	}()
}

// checkAgents checks the agent of each session (at most AgentCheckConcurrency at once, each
// address once) and reports which answered. A session that no longer holds anything counts
// as not answering: there is nothing left to keep.
func (n *Node) checkAgents(sessions []fsm.SessionID) []bool {
	byAddr := map[string][]int{}
	for i, s := range sessions {
		if addr := n.state.AddressOf(s); addr != "" {
			byAddr[addr] = append(byAddr[addr], i)
		}
	}
	out := make([]bool, len(sessions))
	sem := make(chan struct{}, AgentCheckConcurrency)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for addr, idx := range byAddr {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok := n.agentAnswers(addr)
			mu.Lock()
			for _, i := range idx {
				out[i] = ok
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// agentAnswers reports whether a micro-ws peer at addr answers a request within
// AgentCheckTimeout, through the proxy's pool (the same channel a proxied call would use,
// so an agent that keeps one channel per key is not given a second).
func (n *Node) agentAnswers(addr string) bool {
	ctx, cancel := context.WithTimeout(n.ctx, AgentCheckTimeout)
	defer cancel()
	ch, err := n.peers.Get(ctx, addr)
	if err != nil {
		return false
	}
	_, err = ch.Call(ctx, "ws", agentCheckCmd, nil, AgentCheckTimeout)
	var we *wsserver.Error
	if errors.As(err, &we) {
		return we.Code == "" // a status of its own; ECONNABORTED is our timeout
	}
	return err == nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
