package cluster

import (
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// memberWatch tells waiting writes that raft reports a new leader. Member silence comes
// from the leader's own probes (health.go), not raft's heartbeat observations: those come
// only after the transport's I/O timeout for a paused process, and never for a member whose
// disk hangs.
type memberWatch struct {
	obs  *raft.Observer
	ch   chan raft.Observation
	done chan struct{}
	// changed holds a channel closed (and replaced) whenever raft reports a new leader.
	// Atomic: every write's retry loop reads it.
	changed atomic.Pointer[chan struct{}]
}

func newMemberWatch(r *raft.Raft) *memberWatch {
	w := &memberWatch{ch: make(chan raft.Observation, 16), done: make(chan struct{})}
	first := make(chan struct{})
	w.changed.Store(&first)
	// Blocking, so no new leader goes unnoticed; the loop below only swaps a channel.
	w.obs = raft.NewObserver(w.ch, true, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
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
			if d, ok := o.Data.(raft.LeaderObservation); ok && d.LeaderID != "" { // losing one wakes nobody: there is nobody to try
				next := make(chan struct{})
				close(*w.changed.Swap(&next))
			}
		}
	}
}

func (w *memberWatch) leaderChanged() <-chan struct{} { return *w.changed.Load() }

func (w *memberWatch) close(r *raft.Raft) {
	r.DeregisterObserver(w.obs)
	close(w.done)
}

// SilentMembers lists members the leader has not had contact with (an answered probe that
// shows the member keeping up, health.go) for longer than grace. Only meaningful on the
// leader; elsewhere it is empty. Unless Config.HealthInterval is set, the leader probes
// every grace/10 (100 ms..1 s), so a purge acting on this meets its deadline to within that.
func (n *Node) SilentMembers(grace time.Duration) []string {
	n.health.learnGrace(grace)
	if !n.IsLeader() {
		return nil
	}
	var out []string
	for id, d := range n.health.silence(time.Now()) {
		if d > grace {
			out = append(out, id)
		}
	}
	return out
}

// MemberSilence is how long the leader has not had contact with each failing member
// (leader only): members answering and keeping up are not listed.
func (n *Node) MemberSilence() map[string]time.Duration {
	if !n.IsLeader() {
		return nil
	}
	return n.health.silence(time.Now())
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
