package cluster

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// A follower learns that its forwarded write committed from the leader's commit notice, not
// from raft's CommitTimeout (here far beyond the write deadline) and not from a barrier
// entry: the log holds the writes and no barriers.
func TestCommitNotice_ForwardedWritesNeedNoExtraEntry(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.CommitTimeout = 10 * time.Minute })
	l, f := leaderOf(t, nodes), followerOf(t, nodes)
	before := l.raft.LastIndex()
	const writes = 20
	for i := range writes {
		commit(t, f, meta("forwarded-"+string(rune('a'+i))))
	}
	// At most the one barrier autopilot appends once per term, when it first runs.
	if got := barriersAfter(t, l, before); got > 1 {
		t.Fatalf("the leader appended %d barriers for %d forwarded writes, want none", got, writes)
	}
	if l.commitNoticesAccepted() == 0 {
		t.Fatal("no member accepted a commit notice")
	}

	// A write on the leader reaches the followers after the short pause, with no entry either.
	commit(t, l, meta("on-leader"))
	for _, n := range nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { _, ok := n.state.Node("on-leader"); return ok }, "%s never applied the leader's write", n.ID())
	}
	if got := barriersAfter(t, l, before); got > 1 {
		t.Fatalf("the leader appended %d barriers, want none", got)
	}
}

// Entries of raft's own that a batch's notice does not cover (a barrier, a membership
// change) are announced too: with CommitTimeout far beyond the test, a member learns they
// committed only from the announcement.
func TestCommitNotice_RaftsOwnEntriesAreAnnounced(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.CommitTimeout = 10 * time.Minute })
	l := leaderOf(t, nodes)
	commit(t, l, meta("first"))
	// Autopilot's barrier, once per term, would carry the commit index of an entry before it:
	// the entry under test comes after it.
	testutil.Eventually(t, 5*time.Second, func() bool { return barriersAfter(t, l, 0) > 0 }, "autopilot appended no barrier")
	testutil.Eventually(t, 5*time.Second, l.noticesIdle, "notices still pending")
	if err := l.Barrier(5 * time.Second); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	barrier := l.raft.LastIndex()
	for _, n := range nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { return n.raft.AppliedIndex() >= barrier },
			"%s never applied the barrier at %d (applied %d)", n.ID(), barrier, n.raft.AppliedIndex())
	}
}

// barriersAfter counts the barrier entries in n's log after index from.
func barriersAfter(t *testing.T, n *testNode, from uint64) int {
	t.Helper()
	count := 0
	for i := from + 1; i <= n.raft.LastIndex(); i++ {
		var entry raft.Log
		if err := n.logs.GetLog(i, &entry); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if entry.Type == raft.LogBarrier {
			count++
		}
	}
	return count
}

// A notice is only what the entry's leader knows: a member whose log lacks the entry refuses
// it (raft's previous-entry check), and nothing is applied out of order.
func TestCommitNotice_IsRefusedByAMemberWithoutTheEntry(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.CommitTimeout = 10 * time.Minute })
	l := leaderOf(t, nodes)
	commit(t, l, meta("known"))
	known := l.AppliedIndex()
	testutil.Eventually(t, 5*time.Second, l.noticesIdle, "the notice of the first write still pending")
	// A follower applies what an accepted notice committed a moment after answering it:
	// the baseline is taken once every member has applied the first write.
	for _, n := range nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { return n.AppliedIndex() >= known },
			"%s never applied the first write (index %d)", n.ID(), known)
	}
	accepted := l.commitNoticesAccepted()
	applied := make([]uint64, len(nodes))
	for i, n := range nodes {
		applied[i] = n.AppliedIndex()
	}
	// An index past the end of every log: the members refuse it.
	l.sendNotices(l.raft.LastIndex()+5, l.raft.CurrentTerm())
	testutil.Eventually(t, 5*time.Second, l.noticesIdle, "notices still in flight")
	if got := l.commitNoticesAccepted(); got != accepted {
		t.Fatalf("members accepted %d notices for an entry they do not hold", got-accepted)
	}
	for i, n := range nodes {
		if got := n.AppliedIndex(); got != applied[i] {
			t.Fatalf("%s applied up to %d after a refused notice, was %d", n.ID(), got, applied[i])
		}
	}
	// The members still follow the leader and take its writes.
	commit(t, l, meta("after"))
}

// noticesIdle reports that no notice is due or in flight.
func (n *Node) noticesIdle() bool {
	n.nudge.mu.Lock()
	defer n.nudge.mu.Unlock()
	if n.nudge.running {
		return false
	}
	for _, st := range n.nudge.members {
		if st.running {
			return false
		}
	}
	return true
}

// Replication is synchronous: hashicorp/raft's pipeline can leave a leader's replication to a
// member stuck for good after the member refuses an entry (see Open).
func TestTransport_ReplicationIsNotPipelined(t *testing.T) {
	nodes := startCluster(t, 3)
	l, f := leaderOf(t, nodes), followerOf(t, nodes)
	p, err := l.transport.AppendEntriesPipeline(raft.ServerID(f.ID()), raft.ServerAddress(f.Advertise()))
	if err == nil {
		p.Close()
	}
	if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline: %v, want raft.ErrPipelineReplicationNotSupported", err)
	}
}
