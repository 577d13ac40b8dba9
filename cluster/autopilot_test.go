package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

func suffrages(n *testNode) (voters, nonvoters []string) {
	for _, m := range n.Members() {
		if m.Voter {
			voters = append(voters, m.ID)
		} else {
			nonvoters = append(nonvoters, m.ID)
		}
	}
	return voters, nonvoters
}

// Five nodes formed with a target of three voters: the first three by id vote, the other
// two replicate as non-voters.
func TestVoters_FiveNodesFormThreeVotersAndTwoNonvoters(t *testing.T) {
	nodes := startCluster(t, 5, func(c *Config) { c.Voters = 3 })
	l := leaderOf(t, nodes)
	voters, nonvoters := suffrages(l)
	if len(voters) != 3 || len(nonvoters) != 2 {
		t.Fatalf("voters %v, non-voters %v; want 3 and 2", voters, nonvoters)
	}
	commit(t, l, meta("replicated"))
	for _, n := range nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { _, ok := n.state.Node("replicated"); return ok }, "%s never applied the write", n.ID())
	}
}

// A voter cut off for longer than the dead-server timeout is removed and a healthy
// non-voter promoted: the cluster keeps three voters, and then survives losing another.
func TestAutopilot_ReplacesADeadVoterWithANonvoter(t *testing.T) {
	const dead, stable = 600 * time.Millisecond, 300 * time.Millisecond
	nodes := startCluster(t, 5, func(c *Config) {
		c.Voters, c.DeadServerTimeout, c.StabilizationTime, c.HealthInterval = 3, dead, stable, 50*time.Millisecond
	})
	l := leaderOf(t, nodes)
	voters, _ := suffrages(l)
	var victim *testNode
	for _, n := range nodes {
		if n != l && (n.ID() == voters[0] || n.ID() == voters[1]) {
			victim = n
			break
		}
	}
	victim.SetPartitioned(true)
	testutil.Eventually(t, 15*time.Second, func() bool {
		l := leaderOf(t, nodes)
		v, nv := suffrages(l)
		for _, id := range v {
			if id == victim.ID() {
				return false
			}
		}
		return len(v) == 3 && len(nv) == 1
	}, "the dead voter %s was never replaced", victim.ID())
	l = leaderOf(t, nodes)
	// The change is visible before autopilot records it: wait for the record.
	testutil.Eventually(t, 5*time.Second, func() bool {
		st := l.Autopilot()
		return st.Counts[ActionRemoved] == 1 && st.Counts[ActionPromoted] == 1
	}, "autopilot did not count one removal and one promotion")
	// A second voter lost: two of three remain, and writes still commit.
	v, _ := suffrages(l)
	for _, n := range nodes {
		if n.ID() != l.ID() && n.ID() != victim.ID() && (n.ID() == v[0] || n.ID() == v[1] || n.ID() == v[2]) {
			n.SetPartitioned(true)
			break
		}
	}
	commit(t, l, meta("after-two-losses"))

	// The removed node comes back and rejoins as a non-voter (voters are at the target).
	victim.SetPartitioned(false)
	testutil.Eventually(t, 15*time.Second, func() bool {
		for _, m := range leaderOf(t, nodes).Members() {
			if m.ID == victim.ID() {
				return !m.Voter
			}
		}
		return false
	}, "the removed node %s never rejoined as a non-voter", victim.ID())
}

// Autopilot asks one removed node per step, the one asked longest ago, so every removed
// node gets its turn and a silent one holds a step up once, not every removed node's
// timeout in a row.
func TestAutopilot_AsksRemovedNodesInTurn(t *testing.T) {
	if got := nextToAsk(nil); got != "" {
		t.Fatalf("nothing removed: asked %q", got)
	}
	t0 := time.Now()
	removed := map[string]*removedMember{"b": {}, "a": {}, "c": {asked: t0}}
	var order []string
	for i := range 4 {
		id := nextToAsk(removed)
		order = append(order, id)
		removed[id].asked = t0.Add(time.Duration(i+1) * time.Second)
	}
	if want := []string{"a", "b", "c", "a"}; !slices.Equal(order, want) {
		t.Fatalf("asked in order %v, want %v", order, want)
	}
}

// A voter removed while cut off comes back as a non-voter even when the leader that removed
// it (and would add it back) no longer leads: the node asks to be added back itself.
func TestAutopilot_RemovedNodeAsksToBeAddedBackAfterAnElection(t *testing.T) {
	const dead, stable = 600 * time.Millisecond, 300 * time.Millisecond
	nodes := startCluster(t, 5, func(c *Config) {
		c.Voters, c.DeadServerTimeout, c.StabilizationTime, c.HealthInterval = 3, dead, stable, 50*time.Millisecond
	})
	l := leaderOf(t, nodes)
	voters, _ := suffrages(l)
	var victim *testNode
	for _, n := range nodes {
		if n != l && slices.Contains(voters, n.ID()) {
			victim = n
			break
		}
	}
	victim.SetPartitioned(true)
	testutil.Eventually(t, 15*time.Second, func() bool {
		v, _ := suffrages(leaderOf(t, nodes))
		return len(v) == 3 && !slices.Contains(v, victim.ID())
	}, "the cut-off voter %s was never replaced", victim.ID())
	// The leader that removed it hands over: nobody remembers the removal now.
	l = leaderOf(t, nodes)
	if err := l.TransferLeadership(); err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return leaderOf(t, nodes) != l }, "leadership never moved")

	victim.SetPartitioned(false)
	testutil.Eventually(t, 15*time.Second, func() bool {
		for _, m := range leaderOf(t, nodes).Members() {
			if m.ID == victim.ID() {
				return !m.Voter
			}
		}
		return false
	}, "the removed node %s never came back as a non-voter", victim.ID())
	for _, n := range nodes {
		if c := n.Autopilot().Counts[ActionRejoined]; c != 0 {
			t.Fatalf("%s's autopilot added it back (%d), not the node itself", n.ID(), c)
		}
	}
}
