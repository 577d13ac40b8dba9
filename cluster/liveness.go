package cluster

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// memberWatch is the leader's view of which members stopped answering heartbeats, and
// since when. It is fed by raft's own heartbeat observations, so "silent" means exactly
// what raft means by it.
type memberWatch struct {
	mu      sync.Mutex
	failing map[string]time.Time // member id -> last successful contact
	obs     *raft.Observer
	ch      chan raft.Observation
	done    chan struct{}
	// changed holds a channel closed (and replaced) whenever raft reports a new leader.
	// Atomic: every write's retry loop reads it, and mu is on raft's observer path.
	changed atomic.Pointer[chan struct{}]
}

func newMemberWatch(r *raft.Raft) *memberWatch {
	w := &memberWatch{failing: map[string]time.Time{}, ch: make(chan raft.Observation, 256), done: make(chan struct{})}
	first := make(chan struct{})
	w.changed.Store(&first)
	// Blocking, so a "resumed" observation is never dropped: a dropped one would make the
	// leader purge a healthy member. The loop below only touches a map, so raft never waits.
	w.obs = raft.NewObserver(w.ch, true, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation, raft.PeerObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(w.obs)
	go w.loop()
	return w
}

func (w *memberWatch) loop() {
	for {
		select {
		case <-w.done:
			return
		case o := <-w.ch:
			w.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if _, seen := w.failing[string(d.PeerID)]; !seen {
					w.failing[string(d.PeerID)] = d.LastContact
				}
			case raft.ResumedHeartbeatObservation:
				delete(w.failing, string(d.PeerID))
			case raft.PeerObservation:
				if d.Removed {
					delete(w.failing, string(d.Peer.ID))
				}
			case raft.LeaderObservation:
				// A new leader starts every member's grace anew.
				clear(w.failing)
				if d.LeaderID != "" { // losing one wakes nobody: there is nobody to try
					next := make(chan struct{})
					close(*w.changed.Swap(&next))
				}
			}
			w.mu.Unlock()
		}
	}
}

func (w *memberWatch) leaderChanged() <-chan struct{} { return *w.changed.Load() }

// silentFor returns how long each failing member has been silent.
func (w *memberWatch) silentFor(now time.Time) map[string]time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]time.Duration, len(w.failing))
	for id, last := range w.failing {
		out[id] = now.Sub(last)
	}
	return out
}

func (w *memberWatch) close(r *raft.Raft) {
	r.DeregisterObserver(w.obs)
	close(w.done)
}

// SilentMembers lists members that have not answered the leader's heartbeats for longer
// than grace. Only meaningful on the leader; elsewhere it is empty.
func (n *Node) SilentMembers(grace time.Duration) []string {
	if !n.IsLeader() {
		return nil
	}
	var out []string
	for id, d := range n.watch.silentFor(time.Now()) {
		if d > grace {
			out = append(out, id)
		}
	}
	return out
}

// MemberSilence is how long the leader has not heard from each failing member (leader only).
func (n *Node) MemberSilence() map[string]time.Duration {
	if !n.IsLeader() {
		return nil
	}
	return n.watch.silentFor(time.Now())
}

// SinceLeaderContact is how long ago this node heard from a leader: 0 on the leader, and
// -1 when it never has since it started.
func (n *Node) SinceLeaderContact() time.Duration {
	if n.IsLeader() {
		return 0
	}
	lc := n.raft.LastContact()
	if lc.IsZero() {
		return -1
	}
	return time.Since(lc)
}
