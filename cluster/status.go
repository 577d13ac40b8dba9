package cluster

import (
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// Status is raft's progress as this node sees it, for the API, readiness and metrics.
type Status struct {
	State             string // follower, candidate, leader or shutdown
	Term              uint64
	CommitIndex       uint64
	AppliedIndex      uint64 // of the registration state
	LastIndex         uint64
	LastSnapshotIndex uint64
	FSMPending        uint64
}

// Status reads raft's progress now.
func (n *Node) Status() Status {
	stats := n.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	return Status{
		State: stateName(n.raft.State()), Term: n.raft.CurrentTerm(), CommitIndex: n.raft.CommitIndex(),
		AppliedIndex: n.AppliedIndex(), LastIndex: n.raft.LastIndex(),
		LastSnapshotIndex: u("last_snapshot_index"), FSMPending: u("fsm_pending"),
	}
}

// States lists every value Status.State takes, for metrics that export one series each.
var States = []string{"follower", "candidate", "leader", "shutdown"}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Leader:
		return "leader"
	}
	return "shutdown"
}

// Member is one server of the raft configuration.
type Member struct {
	ID      string
	Address string // its peer (raft) address
	Voter   bool
	// Suffrage is raft's word for its role: Voter, Nonvoter or Staging.
	Suffrage string
}

// Members is the raft configuration as this node knows it.
func (n *Node) Members() []Member {
	servers := n.servers()
	out := make([]Member, 0, len(servers))
	for _, s := range servers {
		out = append(out, Member{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
	}
	return out
}

// LastContact is when this node last heard from a leader (zero: never since it started, and
// on the leader itself).
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// TransferLeadership hands leadership to another voter (leader only).
func (n *Node) TransferLeadership() error { return n.raft.LeadershipTransfer().Error() }

// Security is how this node authenticates its peers.
func (n *Node) Security() PeerSecurity { return n.layer.auth.Security() }

// OnChange calls fn (from a goroutine of its own) whenever raft reports a new leader, a
// membership change or a state change of this node, until the returned stop is called.
// Observations may be dropped when fn is slow: it should re-read what it shows.
func (n *Node) OnChange(fn func()) (stop func()) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.PeerObservation, raft.RaftState:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(obs)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-ch:
				fn()
			}
		}
	}()
	return func() {
		n.raft.DeregisterObserver(obs)
		close(done)
		<-finished
	}
}
