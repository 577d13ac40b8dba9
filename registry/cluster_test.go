package registry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
)

// testCluster is N real nodes in this process: real raft over TCP on 127.0.0.1, real bolt
// files, real WebSocket and HTTP listeners.
type testCluster struct {
	t     *testing.T
	nodes []*Node
	cfgs  []Config
	grace time.Duration
}

func clusterConfig(t *testing.T, id string, dir string, grace time.Duration) Config {
	ws, api, rl := listen(t), listen(t), listen(t)
	return Config{
		NodeID: id, DataDir: dir,
		WSListener: ws, HTTPListener: api, RaftListener: rl,
		WSAdvertise: ws.Addr().String(), HTTPAdvertise: api.Addr().String(), RaftAdvertise: rl.Addr().String(),
		Cluster: cluster.Config{
			HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
			NoSync: true,
			Peer:   cluster.PeerAuth{Keys: []string{"test-cluster-key"}},
		},
		PingInterval: time.Second,
		NodeGrace:    grace,
		CommitWait:   scaled(5 * time.Second),
		Logger:       testLogger(t).With("test_node", id),
	}
}

// startCluster forms an n-node cluster the way operators do: every node gets the same
// --bootstrap-expect n and --join list, and none is special.
func startCluster(t *testing.T, n int, grace time.Duration, adjust ...func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, grace: grace}
	var peers []string
	for i := range n {
		cfg := clusterConfig(t, fmt.Sprintf("node%d", i), t.TempDir(), grace)
		cfg.Cluster.BootstrapExpect = n
		for _, fn := range adjust {
			fn(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
		peers = append(peers, cfg.RaftAdvertise)
	}
	tc.nodes = make([]*Node, n)
	var wg sync.WaitGroup
	for i := range tc.cfgs {
		tc.cfgs[i].Join = peers
		wg.Add(1)
		go func() {
			defer wg.Done()
			node, err := Start(tc.cfgs[i])
			if err != nil {
				t.Error(err)
				return
			}
			tc.nodes[i] = node
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, node := range tc.nodes {
		t.Cleanup(func() { node.Close() })
	}
	tc.waitReady(tc.nodes...)
	return tc
}

func (tc *testCluster) waitReady(nodes ...*Node) {
	tc.t.Helper()
	for _, n := range nodes {
		eventually(tc.t, 20*time.Second, func() bool { ok, _ := n.Ready(); return ok }, "node %s never became ready", n.cfg.NodeID)
	}
}

func (tc *testCluster) leader() *Node {
	tc.t.Helper()
	var l *Node
	eventually(tc.t, 10*time.Second, func() bool {
		for _, n := range tc.nodes {
			if n != nil && !n.closed() && n.raft.IsLeader() {
				l = n
				return true
			}
		}
		return false
	}, "no leader")
	return l
}

func (tc *testCluster) followers() []*Node {
	l := tc.leader()
	var out []*Node
	for _, n := range tc.nodes {
		if n != l && !n.closed() {
			out = append(out, n)
		}
	}
	return out
}

func (tc *testCluster) live() []*Node {
	var out []*Node
	for _, n := range tc.nodes {
		if !n.closed() {
			out = append(out, n)
		}
	}
	return out
}

// restart starts node i again on its data dir with fresh listeners on the same addresses.
func (tc *testCluster) restart(i int) *Node {
	tc.t.Helper()
	cfg := tc.cfgs[i]
	relisten := func(addr string) net.Listener {
		var ln net.Listener
		eventually(tc.t, 5*time.Second, func() bool {
			var err error
			ln, err = net.Listen("tcp", addr)
			return err == nil
		}, "cannot listen on %s again", addr)
		return ln
	}
	cfg.WSListener, cfg.HTTPListener, cfg.RaftListener = relisten(cfg.WSAdvertise), relisten(cfg.HTTPAdvertise), relisten(cfg.RaftAdvertise)
	node, err := Start(cfg)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(func() { node.Close() })
	tc.nodes[i] = node
	tc.waitReady(node)
	return node
}

func (tc *testCluster) index(n *Node) int {
	for i, m := range tc.nodes {
		if m == n {
			return i
		}
	}
	return -1
}

func TestCluster_FormsWithNoSpecialNode(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	l := tc.leader()
	v := l.ClusterView()
	if len(v.Members) != 3 {
		t.Fatalf("members: %+v", v.Members)
	}
	for _, m := range v.Members {
		if m.Suffrage != "Voter" || m.WS == "" || m.HTTP == "" || m.Raft == "" {
			t.Fatalf("member without metadata or vote: %+v", m)
		}
	}
	for _, n := range tc.nodes {
		code, hdr, body := httpGet(t, n, "/v1/cluster")
		if code != 200 || body.(map[string]any)["leader"] != l.cfg.NodeID || hdr.Get("X-Wsregistry-Known-Leader") != "true" {
			t.Fatalf("%s /v1/cluster: %d %s", n.cfg.NodeID, code, js(body))
		}
	}
}

func TestCluster_RegistrationOnAnyNodeVisibleEverywhere(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	for i, n := range tc.nodes {
		a := dialRaw(t, n, fmt.Sprintf("/127.0.0.1/%d", 9100+i))
		ns := fmt.Sprintf("svc-%d", i)
		a.call(online(0, ns), ok(0))
		// read-your-write on the node the agent talks to, at once
		a.call(where(1, ns), found(1, fmt.Sprintf("127.0.0.1:%d", 9100+i)))
		for _, m := range tc.nodes {
			eventually(t, time.Second, func() bool { _, ok := m.Where(ns); return ok }, "%s registered on %s not visible on %s within 1s", ns, n.cfg.NodeID, m.cfg.NodeID)
		}
	}
	// consistent read through a follower
	f := tc.followers()[0]
	code, _, body := httpGet(t, f, "/v1/where/svc-0?consistent=true")
	if code != 200 || body.(map[string]any)["host"] != "127.0.0.1:9100" {
		t.Fatalf("consistent where on follower: %d %s", code, js(body))
	}
}

func TestForward_QuietClusterDoesNotWaitForCommitTimeout(t *testing.T) {
	// raft tells followers what is committed only with the entries that follow or after
	// CommitTimeout. With a CommitTimeout far beyond the write deadline (CommitWait), a
	// follower acknowledges a forwarded online on a quiet cluster only because the leader
	// nudges the followers.
	tc := startCluster(t, 3, 2*time.Second, func(c *Config) { c.Cluster.CommitTimeout = 10 * time.Minute })
	f := tc.followers()[0]
	a := dialRaw(t, f, "/127.0.0.1/9150")
	for i := range 3 {
		ns := fmt.Sprintf("quiet-%d", i)
		a.call(online(2*i, ns), ok(2*i))
		a.call(where(2*i+1, ns), found(2*i+1, "127.0.0.1:9150"))
	}
	// A registration on the leader reaches the followers without waiting either.
	l := dialRaw(t, tc.leader(), "/127.0.0.1/9151")
	l.call(online(0, "quiet-on-leader"), ok(0))
	eventually(t, 5*time.Second, func() bool { _, ok := f.Where("quiet-on-leader"); return ok }, "registration on the leader not visible on a follower")
}

func TestCluster_LeaderCrashPurgesItsAgentsAndOthersServe(t *testing.T) {
	grace := time.Second
	tc := startCluster(t, 3, grace)
	l := tc.leader()
	dead := dialRaw(t, l, "/127.0.0.1/9201")
	dead.call(online(0, "on-leader"), ok(0))
	f := tc.followers()[0]
	alive := dialRaw(t, f, "/127.0.0.1/9202")
	alive.call(online(0, "on-follower"), ok(0))

	if err := l.Crash(); err != nil {
		t.Fatal(err)
	}
	nl := tc.leader()
	if nl == l {
		t.Fatal("crashed node still leads")
	}
	for _, n := range tc.live() {
		eventually(t, 5*grace, func() bool { _, ok := n.Where("on-leader"); return !ok }, "%s still answers the dead leader's agent", n.cfg.NodeID)
		if _, ok := n.Where("on-follower"); !ok {
			t.Fatalf("%s lost the follower's agent", n.cfg.NodeID)
		}
	}
	// The agent reconnects to a live node and is found again, once.
	back := dialRaw(t, nl, "/127.0.0.1/9201")
	back.call(online(0, "on-leader"), ok(0))
	for _, n := range tc.live() {
		eventually(t, time.Second, func() bool { return len(n.State().Instances("on-leader")) == 1 }, "reconnected agent not found exactly once on %s: %v", n.cfg.NodeID, n.State().Instances("on-leader"))
	}
}

func TestCluster_FollowerRestartRejoinsAndPurgesOldSessions(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	f := tc.followers()[0]
	i := tc.index(f)
	a := dialRaw(t, f, "/127.0.0.1/9301")
	a.call(online(0, "old"), ok(0))
	if err := f.Crash(); err != nil {
		t.Fatal(err)
	}
	n := tc.restart(i)
	for _, m := range tc.live() {
		eventually(t, 2*time.Second, func() bool { _, ok := m.Where("old"); return !ok }, "old session of restarted node still on %s", m.cfg.NodeID)
	}
	b := dialRaw(t, n, "/127.0.0.1/9302")
	b.call(online(0, "new"), ok(0))
	for _, m := range tc.live() {
		eventually(t, time.Second, func() bool { _, ok := m.Where("new"); return ok }, "restarted node's new agent not visible on %s", m.cfg.NodeID)
	}
}

func TestCluster_CutOffNodeFencesItselfAndRecovers(t *testing.T) {
	grace := time.Second
	tc := startCluster(t, 3, grace)
	f := tc.followers()[0]
	a := dialRaw(t, f, "/127.0.0.1/9401")
	a.call(online(0, "cut"), ok(0))

	f.raft.SetPartitioned(true)
	if code, _ := a.closeStatus(); code != websocket.StatusServiceRestart {
		t.Fatalf("agent of the fenced node closed with %d, want 1012", code)
	}
	if ok, _ := f.Ready(); ok {
		t.Fatal("fenced node reports ready")
	}
	resp, err := http.Get("http://" + f.WSAddr() + "/127.0.0.1/9401")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("fenced node accepted an agent connection: %d", resp.StatusCode)
	}
	for _, n := range tc.live() {
		if n == f {
			continue
		}
		eventually(t, 5*grace, func() bool { _, ok := n.Where("cut"); return !ok }, "majority node %s still lists the fenced node's agent", n.cfg.NodeID)
	}

	f.raft.SetPartitioned(false)
	eventually(t, 10*grace, func() bool { ok, _ := f.Ready(); return ok }, "healed node never became ready")
	b := dialRaw(t, f, "/127.0.0.1/9401")
	b.call(online(0, "cut"), ok(0))
	for _, n := range tc.live() {
		eventually(t, time.Second, func() bool { return len(n.State().Instances("cut")) == 1 }, "agent on healed node not found once on %s", n.cfg.NodeID)
	}
}

func TestForward_WritesDuringLeaderChangeApplyExactlyOnce(t *testing.T) {
	tc := startCluster(t, 3, 5*time.Second)
	const agents = 60
	var wg sync.WaitGroup
	errs := make(chan error, agents)
	start := make(chan struct{})
	for i := range agents {
		n := tc.nodes[i%3]
		a := dialRaw(t, n, fmt.Sprintf("/127.0.0.1/%d", 10000+i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), scaled(15*time.Second))
			defer cancel()
			msg := online(0, fmt.Sprintf("svc-%d", i))
			if err := a.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				errs <- err
				return
			}
			select {
			case b, ok := <-a.msgs:
				if !ok {
					errs <- fmt.Errorf("agent %d: connection ended: %v", i, a.err)
				} else if !strings.Contains(string(b), `"status":200`) {
					errs <- fmt.Errorf("agent %d: %s", i, b)
				}
			case <-ctx.Done():
				errs <- fmt.Errorf("agent %d: no reply", i)
			}
		}()
	}
	l := tc.leader()
	close(start)
	if err := l.raft.TransferLeadership(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, n := range tc.live() {
		eventually(t, 2*time.Second, func() bool { return n.State().Stats().Registrations == agents }, "%s holds %d registrations, want %d", n.cfg.NodeID, n.State().Stats().Registrations, agents)
		for i := range agents {
			if got := len(n.State().Instances(fmt.Sprintf("svc-%d", i))); got != 1 {
				t.Fatalf("%s: svc-%d registered %d times", n.cfg.NodeID, i, got)
			}
		}
	}
}

func TestCluster_FourthAndFifthNodeJoinThenLeaveAndRemove(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	join := []string{tc.cfgs[0].RaftAdvertise, tc.cfgs[1].RaftAdvertise}
	var extra []*Node
	for i := 3; i < 5; i++ {
		cfg := clusterConfig(t, fmt.Sprintf("node%d", i), t.TempDir(), 2*time.Second)
		cfg.Join = join
		n, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		tc.nodes, tc.cfgs = append(tc.nodes, n), append(tc.cfgs, cfg)
		extra = append(extra, n)
	}
	tc.waitReady(extra...)
	eventually(t, 5*time.Second, func() bool { return len(tc.leader().raft.Members()) == 5 }, "cluster did not grow to 5")

	// leave: the member is gone from the configuration and its metadata is forgotten
	ctx, cancel := context.WithTimeout(context.Background(), scaled(15*time.Second))
	defer cancel()
	extra[0].CloseAgents(ctx)
	if err := extra[0].Leave(ctx); err != nil {
		t.Fatal(err)
	}
	extra[0].Close()
	eventually(t, 5*time.Second, func() bool { return len(tc.leader().raft.Members()) == 4 }, "left node still a member")
	eventually(t, 5*time.Second, func() bool { _, ok := tc.leader().State().Node("node3"); return !ok }, "left node's metadata kept")

	// remove: an admin drops a member that is gone for good
	extra[1].Crash()
	req, _ := http.NewRequest(http.MethodPost, "http://"+tc.nodes[0].HTTPAddr()+"/v1/remove/node4", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("remove: %d", resp.StatusCode)
	}
	eventually(t, 5*time.Second, func() bool { return len(tc.leader().raft.Members()) == 3 }, "removed node still a member")
}

func TestLeave_LeaderHandsOverFirst(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	l := tc.leader()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(15*time.Second))
	defer cancel()
	if err := l.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	l.Close()
	nl := tc.leader()
	if nl == l {
		t.Fatal("leader did not hand over")
	}
	eventually(t, 5*time.Second, func() bool { return len(nl.raft.Members()) == 2 }, "old leader still a member")
}

func TestCluster_ReadyAgainAfterAnElectionWithoutWrites(t *testing.T) {
	tc := startCluster(t, 3, 5*time.Second)
	l := tc.leader()
	if err := l.raft.TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	// Nothing is written after the election but the new leader's own no-op entry.
	for _, n := range tc.nodes {
		eventually(t, 5*time.Second, func() bool { ok, _ := n.Ready(); return ok }, "%s not ready after an election with no write", n.cfg.NodeID)
	}
}

func TestCluster_RaftAdvertisesDNSNames(t *testing.T) {
	tc := &testCluster{t: t}
	var peers []string
	for i := range 3 {
		cfg := clusterConfig(t, fmt.Sprintf("dns%d", i), t.TempDir(), 5*time.Second)
		_, port, _ := net.SplitHostPort(cfg.RaftListener.Addr().String())
		cfg.RaftAdvertise = "localhost:" + port // kept as a name, resolved on every dial
		cfg.Cluster.BootstrapExpect = 3
		tc.cfgs = append(tc.cfgs, cfg)
		peers = append(peers, cfg.RaftAdvertise)
	}
	for i := range tc.cfgs {
		tc.cfgs[i].Join = peers
		n, err := Start(tc.cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		tc.nodes = append(tc.nodes, n)
	}
	tc.waitReady(tc.nodes...)
	for _, s := range tc.leader().raft.Members() {
		if !strings.HasPrefix(s.Address, "localhost:") {
			t.Fatalf("raft stored %s for %s, want the advertised name", s.Address, s.ID)
		}
	}
}

// A rolling upgrade: while one server has not announced that it reads binary entries (it
// stands in for a node of an earlier build), every node writes and forwards JSON batches
// only, which that build reads; once it is back on this build, entries turn binary.
// Registrations through the leader and the followers work throughout.
func TestRollingUpgrade_BinaryEntriesOnlyOnceEveryServerReadsThem(t *testing.T) {
	none := uint64(0)
	tc := startCluster(t, 3, 30*time.Second, func(c *Config) {
		if c.NodeID == "node2" {
			c.features = &none
		}
	})
	entries := func(n *Node, encoding string) float64 {
		series := `wsregistry_raft_entries_applied_total{encoding="` + encoding + `"} `
		for _, l := range strings.Split(scrape(t, n), "\n") {
			if v, ok := strings.CutPrefix(l, series); ok {
				var f float64
				fmt.Sscan(v, &f)
				return f
			}
		}
		t.Fatalf("no %s in /metrics", series)
		return 0
	}
	register := func(round int) {
		for i, n := range tc.nodes {
			a := dialRaw(t, n, fmt.Sprintf("/127.0.0.1/%d", 9100+10*round+i))
			a.call(online(0, fmt.Sprintf("svc-%d-%d", round, i)), ok(0))
		}
	}
	register(0)
	for _, n := range tc.nodes {
		if n.raft.BinaryBatches() {
			t.Fatalf("%s writes binary entries while node2 does not read them", n.cfg.NodeID)
		}
		if b, j := entries(n, "binary"), entries(n, "json"); b != 0 || j == 0 {
			t.Fatalf("%s applied %v binary and %v json entries, want only json", n.cfg.NodeID, b, j)
		}
	}

	// node2 upgraded: restarted on this build.
	tc.nodes[2].Close()
	tc.cfgs[2].features = nil
	tc.restart(2)
	for _, n := range tc.nodes {
		eventually(t, 10*time.Second, n.raft.BinaryBatches, "%s never switched to binary entries", n.cfg.NodeID)
	}
	register(1)
	for _, n := range tc.nodes {
		eventually(t, 10*time.Second, func() bool { return entries(n, "binary") > 0 }, "%s applied no binary entry", n.cfg.NodeID)
		eventually(t, 10*time.Second, func() bool {
			for round := range 2 {
				for i := range tc.nodes {
					if round == 0 && i == 2 {
						continue // its agent went with the restart of node2
					}
					if _, ok := n.Where(fmt.Sprintf("svc-%d-%d", round, i)); !ok {
						return false
					}
				}
			}
			return true
		}, "%s does not know every registration", n.cfg.NodeID)
	}
}

// A leader of an earlier build rewrites a forwarded SetNode without the fields it does not
// know (Features): the node re-announces its metadata, or the binary log form would stay
// off until every node restarted once more.
func TestRollingUpgrade_LostFeaturesAreAnnouncedAgain(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	n1, _ := tc.nodes[1].state.Node("node1")
	stale := n1
	stale.Features = 0 // what a leader of the earlier build writes back
	errs, err := tc.nodes[0].submit(context.Background(), fsm.SetNode{RequestID: "stale-meta", Meta: stale})
	if err != nil || firstError(errs) != nil {
		t.Fatalf("submit: %v %v", err, errs)
	}
	if m, _ := tc.nodes[0].state.Node("node1"); m.Features != 0 {
		t.Fatalf("the stale metadata did not apply: %+v", m)
	}
	for _, n := range tc.nodes {
		eventually(t, 10*time.Second, func() bool {
			m, _ := n.state.Node("node1")
			return m == n1
		}, "%s never saw node1's features again", n.cfg.NodeID)
	}
}
