package cluster

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
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
// back into it unchanged.

// AutopilotAction is one change autopilot made (or tried), for /v1/cluster and the log.
type AutopilotAction struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"` // "remove_dead_voter", "promote" or "rejoin"
	Member string    `json:"member"`
	Error  string    `json:"error,omitempty"`
}

// AutopilotActions names every action, for metrics that export one series each.
var AutopilotActions = []string{"remove_dead_voter", "promote", "rejoin"}

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

	// removed holds the voters this leader removed (id -> peer address): one that answers
	// again is added back as a non-voter. A removed member that never heard of its removal
	// would otherwise stay outside the cluster, fenced, until it restarts.
	removed map[string]string

	mu       sync.Mutex
	recent   []AutopilotAction
	counts   map[string]uint64
	failures atomic.Uint64
}

const maxRecentActions = 20

func newAutopilot(n *Node) *autopilot {
	a := &autopilot{n: n, done: make(chan struct{}), counts: map[string]uint64{}, removed: map[string]string{}}
	a.wg.Add(1)
	go a.loop()
	return a
}

func (a *autopilot) close() {
	close(a.done)
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
			continue
		}
		term := a.n.raft.CurrentTerm()
		if barrierTerm != term {
			if err := a.n.raft.Barrier(a.n.cfg.ApplyTimeout).Error(); err != nil {
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
			err := n.raft.RemoveServer(d.ID, 0, n.cfg.ApplyTimeout).Error()
			if err == nil && len(a.removed) < 64 {
				a.removed[string(d.ID)] = string(d.Address)
			}
			a.record(now, "remove_dead_voter", string(d.ID), err, "silent_for", now.Sub(health[string(d.ID)].LastContact).Round(time.Millisecond))
		}
		return
	}
	if len(voters) < n.cfg.Voters && len(promotable) > 0 {
		p := promotable[0]
		err := n.raft.AddVoter(p.ID, p.Address, 0, n.cfg.ApplyTimeout).Error()
		a.record(now, "promote", string(p.ID), err, "voters", len(voters)+1, "target", n.cfg.Voters)
		return
	}
	a.rejoinOne(servers)
}

// rejoinOne adds back, as a member (a non-voter while the voters are at the target), one
// removed node that answers again.
func (a *autopilot) rejoinOne(servers []raft.Server) {
	for id, addr := range a.removed {
		if slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == id }) {
			delete(a.removed, id) // it joined again by itself (a restart)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.n.health.timeout())
		info, err := a.n.client.info(ctx, addr)
		cancel()
		if err != nil || info.ID != id {
			continue
		}
		err = a.n.addMember(id, addr)
		if err == nil {
			delete(a.removed, id)
		}
		a.record(time.Now(), "rejoin", id, err)
		return
	}
}

func (a *autopilot) record(now time.Time, action, member string, err error, kv ...any) {
	act := AutopilotAction{At: now, Action: action, Member: member}
	if err != nil {
		act.Error = err.Error()
		a.failures.Add(1)
		a.n.log.Warn("autopilot: membership change failed", append([]any{"action", action, "member", member, "err", err}, kv...)...)
	} else {
		a.n.log.Info("autopilot: membership changed", append([]any{"action", action, "member", member}, kv...)...)
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
