package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
)

// Autopilot keeps Config.Voters voters on the leader: a voter silent for longer than
// DeadServerTimeout is removed, and a non-voter that has been healthy and caught up for
// StabilizationTime is promoted in its place. Changes are made one at a time, by the leader
// only, after a Barrier once per leadership (so the leader's view of the configuration and
// the log is current), each through raft's own membership change.
//
// A dead voter is removed only when a promotable non-voter can take its place and the
// voters left keep a majority of the voters among themselves: a cluster of voters only
// (the three-node default) keeps its configuration as before, and a restarted member comes
// back into it unchanged. A removed node that answers again is added back as a non-voter,
// by the leader that removed it or, after an election, at its own request (rejoinSelf).

// AutopilotAction is one change autopilot made (or tried), for /v1/cluster and the log.
type AutopilotAction struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"` // one of AutopilotActions
	Member string    `json:"member"`
	// Reason says why, in words (the silence of a removed voter, the voter count a
	// promotion restores).
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"`
}

// Autopilot's actions: a dead voter removed, a non-voter promoted, a removed node that
// answers again added back as a member.
const (
	ActionRemoved  = "removed"
	ActionPromoted = "promoted"
	ActionRejoined = "rejoined"
)

// AutopilotActions names every action, for metrics that export one series each.
var AutopilotActions = []string{ActionRemoved, ActionPromoted, ActionRejoined}

// AutopilotState is what autopilot did lately and how often, as this node saw it lead.
type AutopilotState struct {
	TargetVoters int
	Recent       []AutopilotAction // newest last, bounded
	Counts       map[string]uint64 // action -> successful changes
	Failures     uint64
}

type autopilot struct {
	n    *Node
	done chan struct{}
	wg   sync.WaitGroup

	// removed holds the voters this leader removed: one that answers again is added back as
	// a non-voter. A removed member that never heard of its removal would otherwise stay
	// outside the cluster, fenced, until it restarts.
	removed map[string]*removedMember
	// selfChecked is when this node (not leading) last asked whether it is still a member;
	// led is when it last led (its start before that): raft's LastContact counts only
	// contact while following.
	selfChecked, led time.Time
	ctx              context.Context // ends at close: bounds the peer calls a step makes
	cancel           context.CancelFunc

	mu       sync.Mutex
	recent   []AutopilotAction
	counts   map[string]uint64
	failures atomic.Uint64
}

const maxRecentActions = 20

func newAutopilot(n *Node) *autopilot {
	a := &autopilot{n: n, done: make(chan struct{}), counts: map[string]uint64{}, removed: map[string]*removedMember{}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.led = time.Now()
	a.wg.Add(1)
	go a.loop()
	return a
}

func (a *autopilot) close() {
	close(a.done)
	a.cancel()
	a.wg.Wait()
}

func (a *autopilot) loop() {
	defer a.wg.Done()
	var barrierTerm uint64 // the term in which this node last passed its leader barrier
	for {
		period := min(max(a.n.health.period(), 100*time.Millisecond), time.Second)
		select {
		case <-a.done:
			return
		case <-time.After(period):
		}
		if !a.n.IsLeader() {
			clear(a.removed) // another leader decides now
			a.rejoinSelf(time.Now())
			continue
		}
		a.led = time.Now()
		term := a.n.raft.CurrentTerm()
		if barrierTerm != term {
			if err := a.n.announce(a.n.raft.Barrier(a.n.cfg.ApplyTimeout)); err != nil {
				continue
			}
			barrierTerm = term
		}
		a.step(time.Now())
	}
}

// step makes at most one membership change.
func (a *autopilot) step(now time.Time) {
	n := a.n
	servers := n.servers()
	health := n.health.health()
	if health == nil {
		return // the prober has not run a round as leader yet
	}
	var voters, dead []raft.Server
	var promotable []raft.Server
	alive := 0 // voters known to answer and keep up now, the leader included
	for _, s := range servers {
		id := string(s.ID)
		h, known := health[id]
		self := id == n.cfg.NodeID
		switch s.Suffrage {
		case raft.Voter:
			voters = append(voters, s)
			if self || (known && h.Healthy()) {
				alive++
			}
			if !self && known && now.Sub(h.LastContact) > n.cfg.DeadServerTimeout {
				dead = append(dead, s)
			}
		case raft.Nonvoter:
			if known && h.Healthy() && now.Sub(h.HealthySince) >= n.cfg.StabilizationTime {
				promotable = append(promotable, s)
			}
		}
	}
	// Most caught up first, then by id, so every leader picks alike.
	slices.SortFunc(promotable, func(x, y raft.Server) int {
		hx, hy := health[string(x.ID)], health[string(y.ID)]
		if hx.Lag != hy.Lag {
			if hx.Lag < hy.Lag {
				return -1
			}
			return 1
		}
		return compareIDs(x.ID, y.ID)
	})
	if len(dead) > 0 && len(promotable) > 0 {
		d := dead[0]
		if left := len(voters) - 1; alive >= left/2+1 {
			err := n.announce(n.raft.RemoveServer(d.ID, 0, n.cfg.ApplyTimeout))
			if err == nil && len(a.removed) < maxRemembered {
				a.removed[string(d.ID)] = &removedMember{addr: string(d.Address)}
			}
			silent := now.Sub(health[string(d.ID)].LastContact).Round(time.Millisecond)
			reason := fmt.Sprintf("voter silent for %v (dead-server-timeout %v); %d of %d voters left answer", silent, n.cfg.DeadServerTimeout, alive, left)
			a.record(now, ActionRemoved, string(d.ID), reason, err)
		}
		return
	}
	if len(voters) < n.cfg.Voters && len(promotable) > 0 {
		p := promotable[0]
		err := n.announce(n.raft.AddVoter(p.ID, p.Address, 0, n.cfg.ApplyTimeout))
		h := health[string(p.ID)]
		reason := fmt.Sprintf("%d voters, target %d; healthy for %v (stabilization-time %v), lag %d", len(voters), n.cfg.Voters, now.Sub(h.HealthySince).Round(time.Millisecond), n.cfg.StabilizationTime, h.Lag)
		a.record(now, ActionPromoted, string(p.ID), reason, err)
		return
	}
	a.rejoinOne(servers)
}

// removedMember is a voter this leader removed as dead, and when it was last asked whether
// it answers again.
type removedMember struct {
	addr  string
	asked time.Time
}

// maxRemembered bounds the removed members a leader keeps asking after.
const maxRemembered = 64

// rejoinOne adds back, as a member (a non-voter while the voters are at the target), a
// removed node that answers again. It asks one node per step, the one asked longest ago:
// a silent node holds a step up for a probe timeout, and a step that asked every removed
// node in turn would hold up the removal of a voter that dies meanwhile.
func (a *autopilot) rejoinOne(servers []raft.Server) {
	for id := range a.removed {
		if slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == id }) {
			delete(a.removed, id) // it joined again by itself (a restart)
		}
	}
	id := nextToAsk(a.removed)
	if id == "" {
		return
	}
	m := a.removed[id]
	m.asked = time.Now()
	ctx, cancel := context.WithTimeout(a.ctx, a.n.health.timeout())
	info, err := a.n.client.info(ctx, m.addr)
	cancel()
	if err != nil || info.ID != id {
		return
	}
	err = a.n.addMember(id, m.addr)
	if err == nil {
		delete(a.removed, id)
	}
	a.record(time.Now(), ActionRejoined, id, "a voter removed as dead answers again", err)
}

// rejoinSelf asks to be added back when this node has heard from no leader for
// DeadServerTimeout and a member of its last known configuration follows a leader whose
// configuration no longer has it: it was removed while cut off. The leader that removed it
// adds it back when it answers again (rejoinOne), but only while it leads: after an
// election nobody remembers, and the node would stay outside, fenced, until it restarts.
// It asks once per DeadServerTimeout; a node that left (Leave) never asks.
func (a *autopilot) rejoinSelf(now time.Time) {
	n := a.n
	heard := n.raft.LastContact()
	if a.led.After(heard) {
		heard = a.led
	}
	if now.Sub(heard) < n.cfg.DeadServerTimeout || now.Sub(a.selfChecked) < n.cfg.DeadServerTimeout {
		return
	}
	a.selfChecked = now
	n.joinMu.Lock()
	leaving := n.leaving
	n.joinMu.Unlock()
	if leaving {
		return
	}
	self := n.cfg.NodeID
	for _, s := range n.servers() {
		if string(s.ID) == self {
			continue
		}
		ctx, cancel := context.WithTimeout(a.ctx, n.health.timeout())
		info, err := n.client.info(ctx, string(s.Address))
		cancel()
		if err != nil || info.LeaderID == "" || info.LeaderID == self {
			continue
		}
		if slices.Contains(info.Voters, self) || slices.Contains(info.Nonvoters, self) {
			return // still a member: the leader will reach it when it can
		}
		ctx, cancel = context.WithTimeout(a.ctx, n.cfg.ApplyTimeout)
		err = n.client.post(ctx, string(s.Address), pathJoin, JoinRequest{ID: self, RaftAddr: n.cfg.Advertise, Features: fsm.Features}, false)
		cancel()
		if err != nil {
			n.log.Warn("removed from the cluster while cut off; asking to be added back failed", "via", s.ID, "leader", info.LeaderID, "err", err)
		} else {
			n.log.Info("removed from the cluster while cut off: added back", "via", s.ID, "leader", info.LeaderID)
		}
		return
	}
}

// nextToAsk is the removed member asked longest ago (by id among equals), "" for none.
func nextToAsk(removed map[string]*removedMember) string {
	next := ""
	for id, m := range removed {
		if next == "" {
			next = id
			continue
		}
		n := removed[next]
		if m.asked.Before(n.asked) || (m.asked.Equal(n.asked) && id < next) {
			next = id
		}
	}
	return next
}

func (a *autopilot) record(now time.Time, action, member, reason string, err error) {
	act := AutopilotAction{At: now, Action: action, Member: member, Reason: reason}
	if err != nil {
		act.Error = err.Error()
		a.failures.Add(1)
		a.n.log.Warn("autopilot: membership change failed", "action", action, "member", member, "reason", reason, "err", err)
	} else {
		a.n.log.Info("autopilot: membership changed", "action", action, "member", member, "reason", reason)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.counts[action]++
	}
	a.recent = append(a.recent, act)
	if len(a.recent) > maxRecentActions {
		a.recent = slices.Delete(a.recent, 0, len(a.recent)-maxRecentActions)
	}
}

// Autopilot is what autopilot did while this node led.
func (n *Node) Autopilot() AutopilotState {
	a := n.pilot
	a.mu.Lock()
	defer a.mu.Unlock()
	counts := make(map[string]uint64, len(AutopilotActions))
	for _, k := range AutopilotActions {
		counts[k] = a.counts[k]
	}
	return AutopilotState{TargetVoters: n.cfg.Voters, Recent: slices.Clone(a.recent), Counts: counts, Failures: a.failures.Load()}
}
