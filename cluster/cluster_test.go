package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// Real raft on real TCP: every node has its own bolt file in a temp dir and its own peer
// port on 127.0.0.1:0, and forms the cluster through JoinCluster as operators' nodes do.

type testNode struct {
	*Node
	state *fsm.FSM
	cfg   Config
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func testConfig(t testing.TB, id string) Config {
	ln := listen(t)
	return Config{
		NodeID: id, DataDir: t.TempDir(), Listener: ln, Advertise: ln.Addr().String(),
		HeartbeatTimeout: 150 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond,
		LeaderLeaseTimeout: 75 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
		CommitWait: testutil.Scaled(5 * time.Second), NoSync: true, RaftLogs: hclog.Warn,
		Peer: PeerAuth{Keys: []string{"test-key"}},
	}
}

func open(t testing.TB, cfg Config) *testNode {
	t.Helper()
	state := fsm.New()
	n, err := Open(cfg, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{Node: n, state: state, cfg: cfg}
}

// startCluster forms a cluster of size nodes, each told every peer's address.
func startCluster(t testing.TB, size int, adjust ...func(*Config)) []*testNode {
	t.Helper()
	var cfgs []Config
	var peers []string
	for i := range size {
		cfg := testConfig(t, fmt.Sprintf("node%d", i))
		cfg.BootstrapExpect = size
		for _, fn := range adjust {
			fn(&cfg)
		}
		cfgs = append(cfgs, cfg)
		peers = append(peers, cfg.Advertise)
	}
	nodes := make([]*testNode, size)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].Join = peers
		nodes[i] = open(t, cfgs[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Scaled(20*time.Second))
			defer cancel()
			if err := nodes[i].JoinCluster(ctx, peers); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, n := range nodes {
		testutil.Eventually(t, 10*time.Second, n.Ready, "%s not ready", n.ID())
	}
	return nodes
}

func leaderOf(t testing.TB, nodes []*testNode) *testNode {
	t.Helper()
	var l *testNode
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, n := range nodes {
			if n.IsLeader() {
				l = n
				return true
			}
		}
		return false
	}, "no leader")
	return l
}

func followerOf(t testing.TB, nodes []*testNode) *testNode {
	l := leaderOf(t, nodes)
	for _, n := range nodes {
		if n != l {
			return n
		}
	}
	t.Fatal("no follower")
	return nil
}

var seq sync.Mutex
var seqN int

// meta is a write every node can check: a node's metadata under a fresh id.
func meta(id string) fsm.Command {
	seq.Lock()
	seqN++
	rid := fmt.Sprintf("test/%d", seqN)
	seq.Unlock()
	return fsm.SetNode{RequestID: rid, Meta: fsm.NodeMeta{ID: id, WSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", RaftAddr: "127.0.0.1:3", Incarnation: 1}}
}

func commit(t testing.TB, n *testNode, cmds ...fsm.Command) {
	t.Helper()
	errs, err := n.Commit(context.Background(), cmds...)
	if err == nil {
		err = errors.Join(errs...)
	}
	if err != nil {
		t.Fatalf("commit on %s: %v", n.ID(), err)
	}
}

func TestJoin_ThreeNodesFormOneClusterWithNoSpecialNode(t *testing.T) {
	nodes := startCluster(t, 3)
	for _, n := range nodes {
		if got := len(n.Members()); got != 3 {
			t.Fatalf("%s knows %d members, want 3", n.ID(), got)
		}
	}
	l := leaderOf(t, nodes)
	for _, n := range nodes {
		if id, _ := n.Leader(); id != l.ID() {
			t.Fatalf("%s follows %q, the leader is %s", n.ID(), id, l.ID())
		}
	}
}

// A write made on a follower is forwarded, and the caller gets its answer only once this
// follower has applied it (read-your-write).
func TestCommit_ForwardedFromAFollowerIsAppliedThereOnReturn(t *testing.T) {
	nodes := startCluster(t, 3)
	f := followerOf(t, nodes)
	commit(t, f, meta("from-follower"))
	if _, ok := f.state.Node("from-follower"); !ok {
		t.Fatal("the follower's own state lacks its write when Commit returned")
	}
	for _, n := range nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { _, ok := n.state.Node("from-follower"); return ok }, "%s never applied the write", n.ID())
	}
}

// Writes keep going through a leader change: they wait for the new leader, and each is
// applied once.
func TestCommit_RetriesAcrossALeaderChange(t *testing.T) {
	nodes := startCluster(t, 3)
	var changed []<-chan struct{}
	for _, n := range nodes {
		changed = append(changed, n.LeaderChanged())
	}
	old := leaderOf(t, nodes)
	f := followerOf(t, nodes)
	if err := old.TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range changed { // every member hears of the change: waiting writes retry at once
		select {
		case <-ch:
		case <-time.After(testutil.Scaled(10 * time.Second)):
			t.Fatalf("%s: no leader change reported", nodes[i].ID())
		}
	}
	for i := range 20 {
		commit(t, f, meta(fmt.Sprintf("after-change-%d", i)))
	}
	testutil.Eventually(t, 5*time.Second, func() bool { id, _ := old.Leader(); return id != "" && id != old.ID() }, "no new leader")
}

// A follower's consistent read sees a write committed through another node before it.
func TestConsistentRead_FollowerSeesEveryEarlierWrite(t *testing.T) {
	nodes := startCluster(t, 3)
	l := leaderOf(t, nodes)
	commit(t, l, meta("before-read"))
	for _, n := range nodes {
		if err := n.ConsistentRead(context.Background()); err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
		if _, ok := n.state.Node("before-read"); !ok {
			t.Fatalf("%s: consistent read returned before the write was applied", n.ID())
		}
	}
}

// The leader learns that a member went silent from raft's heartbeats; the member itself
// stops hearing from the leader.
func TestLiveness_LeaderSeesASilentMember(t *testing.T) {
	nodes := startCluster(t, 3)
	l := leaderOf(t, nodes)
	f := followerOf(t, nodes)
	f.SetPartitioned(true)
	testutil.Eventually(t, 10*time.Second, func() bool { return slices.Contains(l.SilentMembers(200*time.Millisecond), f.ID()) },
		"the leader never reported %s silent", f.ID())
	testutil.Eventually(t, 10*time.Second, func() bool { return f.SinceLeaderContact() > 200*time.Millisecond || f.SinceLeaderContact() < 0 },
		"the cut-off member still hears a leader")
	f.SetPartitioned(false)
	testutil.Eventually(t, 10*time.Second, func() bool { return !slices.Contains(l.SilentMembers(0), f.ID()) }, "%s still silent after healing", f.ID())
}

// Once the log holds binary entries, a node of an earlier build (its join request names no
// features) is refused with the reason instead of joining and stopping on the first entry.
func TestJoin_RefusesABuildThatCannotReadTheLog(t *testing.T) {
	cfg := testConfig(t, "solo")
	n := open(t, cfg)
	testutil.Eventually(t, 10*time.Second, n.IsLeader, "the one-node cluster never elected itself")
	commit(t, n, meta("solo")) // announces the binary feature for "solo"
	commit(t, n, fsm.SetNode{RequestID: "feat", Meta: fsm.NodeMeta{ID: "solo", WSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", RaftAddr: cfg.Advertise, Incarnation: 1, Features: fsm.Features}})
	testutil.Eventually(t, 10*time.Second, n.BinaryBatches, "the one-node cluster never switched to binary entries")

	other := open(t, testConfig(t, "other"))
	err := other.client.post(context.Background(), cfg.Advertise, pathJoin, JoinRequest{ID: "old", RaftAddr: "127.0.0.1:1"}, false)
	if err == nil || !strings.Contains(err.Error(), "cannot read") || !strings.Contains(err.Error(), "old") {
		t.Fatalf("join of an earlier build: %v, want a refusal naming the reason", err)
	}
	if got := len(n.Members()); got != 1 {
		t.Fatalf("configuration after the refused join: %+v", n.Members())
	}
}

// Snapshots go to followers through raft: while a member has not announced that it
// restores the binary format, the node writes the JSON one; once every member has, binary,
// and a joiner that cannot restore it is refused.
func TestSnapshots_BinaryOnlyOnceEveryMemberRestoresIt(t *testing.T) {
	cfg := testConfig(t, "solo")
	n := open(t, cfg)
	testutil.Eventually(t, 10*time.Second, n.IsLeader, "the one-node cluster never elected itself")
	announce := func(rid string, features uint64) {
		commit(t, n, fsm.SetNode{RequestID: rid, Meta: fsm.NodeMeta{ID: "solo", WSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", RaftAddr: cfg.Advertise, Incarnation: 1, Features: features}})
	}
	header := func() string {
		snap, err := n.state.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		sink := &memSink{}
		if err := snap.Persist(sink); err != nil {
			t.Fatal(err)
		}
		line, _, _ := strings.Cut(sink.String(), "\n")
		return line
	}
	announce("older", fsm.FeatureBinaryBatch)
	if got, want := header(), fmt.Sprintf("wsregistry-snapshot %d", fsm.SnapshotVersionJSON); got != want {
		t.Fatalf("snapshot header with a member that cannot restore binary snapshots: %q, want %q", got, want)
	}
	announce("current", fsm.Features)
	testutil.Eventually(t, 10*time.Second, n.BinarySnapshots, "never switched to binary snapshots")
	if got, want := header(), fmt.Sprintf("wsregistry-snapshot %d", fsm.SnapshotVersion); got != want {
		t.Fatalf("snapshot header once every member restores binary snapshots: %q, want %q", got, want)
	}
	other := open(t, testConfig(t, "other"))
	err := other.client.post(context.Background(), cfg.Advertise, pathJoin, JoinRequest{ID: "old", RaftAddr: "127.0.0.1:1", Features: fsm.FeatureBinaryBatch}, false)
	if err == nil || !strings.Contains(err.Error(), "snapshots") {
		t.Fatalf("join of a build without binary snapshots: %v, want a refusal naming the reason", err)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// A node that is not among its own --join peers (a fourth StatefulSet pod created together
// with the first three) never takes part in a bootstrap: it used to count itself, form a
// cluster with two of the listed nodes and leave the third to join as a non-voter.
func TestJoin_AnUnlistedNodeNeverBootstraps(t *testing.T) {
	var cfgs []Config
	var peers []string
	for i := range 4 {
		cfg := testConfig(t, fmt.Sprintf("node%d", i))
		cfg.BootstrapExpect = 3
		cfgs = append(cfgs, cfg)
		if i < 3 {
			peers = append(peers, cfg.Advertise)
		}
	}
	join := func(n *testNode) <-chan error {
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Scaled(20*time.Second))
			defer cancel()
			done <- n.JoinCluster(ctx, peers)
		}()
		return done
	}
	// node0, node1 and the unlisted node3 meet: three nodes without state, but only two
	// listed. node2's port refuses connections until it starts.
	cfgs[2].Listener.Close()
	n0, n1, n3 := open(t, cfgs[0]), open(t, cfgs[1]), open(t, cfgs[3])
	j0, j1, j3 := join(n0), join(n1), join(n3)
	// Each makes several join attempts (100-400 ms apart) within this window.
	deadline := time.Now().Add(testutil.Scaled(1500 * time.Millisecond))
	for time.Now().Before(deadline) {
		for _, n := range []*testNode{n0, n1, n3} {
			if len(n.Members()) > 0 {
				t.Fatalf("%s bootstrapped a cluster of %v with the unlisted node3 among the candidates", n.ID(), n.Members())
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	ln, err := net.Listen("tcp", cfgs[2].Advertise)
	if err != nil {
		t.Fatal(err)
	}
	cfgs[2].Listener = ln
	n2 := open(t, cfgs[2])
	j2 := join(n2)
	for _, j := range []<-chan error{j0, j1, j2, j3} {
		if err := <-j; err != nil {
			t.Fatal(err)
		}
	}
	l := leaderOf(t, []*testNode{n0, n1, n2, n3})
	testutil.Eventually(t, 10*time.Second, func() bool {
		info := l.Info()
		return len(info.Voters) == 3 && !slices.Contains(info.Voters, "node3") && slices.Contains(info.Nonvoters, "node3")
	}, "want voters node0-2 and node3 a non-voter: %+v", l.Info())
}
