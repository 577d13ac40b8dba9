package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// hashicorp/raft answers heartbeats without touching the disk, so a member whose log
// writes hang looks healthy to raft. The leader's probe sees that it stopped keeping up.
func TestHealth_AMemberWithABlockedDiskGoesSilent(t *testing.T) {
	const grace = 500 * time.Millisecond
	nodes := startCluster(t, 3, func(c *Config) { c.FaultInjection = true })
	l := leaderOf(t, nodes)
	f := followerOf(t, nodes)
	l.SilentMembers(grace) // the prober learns the grace
	if err := f.SetDiskBlocked(true); err != nil {
		t.Fatal(err)
	}
	blocked := time.Now()
	commit(t, l, meta("while-blocked")) // the other two still commit
	testutil.Eventually(t, 10*time.Second, func() bool { return slices.Contains(l.SilentMembers(grace), f.ID()) },
		"the leader never reported %s silent", f.ID())
	if took := time.Since(blocked); took > testutil.Scaled(grace+time.Second) {
		t.Fatalf("silent only after %v, want within grace %v + 1s", took, grace)
	}
	if err := f.SetDiskBlocked(false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return !slices.Contains(l.SilentMembers(0), f.ID()) }, "%s still silent after its disk came back", f.ID())
}

// Without Config.FaultInjection the switch is refused and the log store is the plain one.
func TestHealth_DiskFaultNeedsFaultInjection(t *testing.T) {
	n := open(t, testConfig(t, "plain"))
	if err := n.SetDiskBlocked(true); err != ErrNoFaultInjection {
		t.Fatalf("SetDiskBlocked without fault injection: %v", err)
	}
}
