package registry

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rrProxy is a TCP round robin in front of the nodes' agent ports: the Service (or compose
// alias) agents reconnect through. A backend that refuses is skipped for that connection.
type rrProxy struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint64
	wg       sync.WaitGroup
}

func startProxy(t testing.TB, backends []string) *rrProxy {
	p := &rrProxy{ln: listen(t), backends: backends}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.pipe(c) }()
		}
	}()
	t.Cleanup(func() { p.ln.Close(); p.wg.Wait() })
	return p
}

func (p *rrProxy) pipe(c net.Conn) {
	defer c.Close()
	i := p.next.Add(1)
	b, err := net.DialTimeout("tcp", p.backends[i%uint64(len(p.backends))], time.Second)
	if err != nil {
		return // the agent sees a failed handshake and retries, as behind a Service
	}
	defer b.Close()
	done := make(chan struct{}, 2)
	go func() { copyPlain(b, c); b.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { copyPlain(c, b); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// copyPlain copies through a small buffer. io.Copy between two TCP connections splices on
// Linux, through a pipe (two descriptors) per copy in progress: thousands of idle agent
// connections would hold thousands of pipes and run the process out of descriptors.
func copyPlain(dst io.Writer, src io.Reader) {
	buf := make([]byte, 4096)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}

// agentStats is what the loopAgents saw (in the fleet's process, and as it reported them in
// the test's): closes with 1012, refused registrations, and the last failed dial or refusal.
type agentStats struct {
	closes, refused atomic.Int64
	online          atomic.Int64 // agents whose registration was answered 200 and still connected
	lastErr         atomic.Value
}

// loopAgent is an agent that registers namespace ns as addr through the proxy and reconnects
// (after 50-150 ms) whenever its connection ends, as iocore agents do. A registration the node
// refuses (a commit that timed out on a busy machine, a node about to drain) ends the
// connection too and is tried again: an agent connected but not registered would be counted
// nowhere and never moved.
func loopAgent(ctx context.Context, proxy, addr, ns string, st *agentStats) {
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		// A new TCP connection per try, as agents dial: a kept-alive one would stay with the
		// node that refused the last try.
		c, _, err := websocket.Dial(dctx, "ws://"+proxy+"/"+addr, &websocket.DialOptions{
			HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			st.lastErr.Store("dial: " + err.Error())
		}
		if err == nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = c.Write(wctx, websocket.MessageText, []byte(online(1, ns)))
			cancel()
			if err == nil {
				var reply []byte
				var r struct {
					Data struct {
						Status int `json:"status"`
					} `json:"data"`
				}
				if _, reply, err = c.Read(ctx); err == nil && (json.Unmarshal(reply, &r) != nil || r.Data.Status != 200) {
					st.refused.Add(1)
					st.lastErr.Store("online refused: " + string(reply))
					err = io.EOF
				}
			}
			if err == nil {
				st.online.Add(1)
				for err == nil {
					_, _, err = c.Read(ctx)
				}
				st.online.Add(-1)
			}
			if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
				st.closes.Add(1)
			}
			c.CloseNow()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50*time.Millisecond + rand.N(100*time.Millisecond)):
		}
	}
}

// fleetEnv makes this test binary the agent fleet of the rolling restart test: the proxy and
// every agent run in a child process, so their descriptors (three per agent) do not count
// against the nodes' process's limit of open files, and thousands of agent goroutines do not
// share one Go scheduler with the nodes' raft heartbeats.
const fleetEnv = "WSREGISTRY_REBALANCE_FLEET"

// startFleet runs agents loopAgents (namespaces svc-0...) in a child process behind a TCP
// round robin over backends; the child reports its counters on stdout and ends when its
// stdin closes.
func startFleet(t *testing.T, agents int, backends []string) *agentStats {
	cmd := exec.Command(os.Args[0], "-test.run=^TestRebalance_AgentFleet$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), fleetEnv+"="+strconv.Itoa(agents)+","+strings.Join(backends, ","))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st := &agentStats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var closes, refused, online int64
			var last string
			if _, err := fmt.Sscanf(sc.Text(), "fleet %d %d %d %q", &closes, &refused, &online, &last); err != nil {
				continue // the test framework's own lines
			}
			st.closes.Store(closes)
			st.refused.Store(refused)
			st.online.Store(online)
			if last != "" {
				st.lastErr.Store(last)
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		cmd.Wait()
	})
	return st
}

// TestRebalance_AgentFleet is not a test of its own: it is the child process of startFleet.
func TestRebalance_AgentFleet(t *testing.T) {
	spec := os.Getenv(fleetEnv)
	if spec == "" {
		t.Skip("the agent fleet of TestRebalance_RollingRestartEvensOutWithoutMissingALookup (a child process)")
	}
	parts := strings.Split(spec, ",")
	agents, err := strconv.Atoi(parts[0])
	if err != nil || len(parts) < 2 {
		t.Fatalf("%s=%q: want AGENTS,BACKEND...", fleetEnv, spec)
	}
	proxy := startProxy(t, parts[1:])
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var st agentStats
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Agents start at a bounded pace (500/s), not in one burst.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(i) * 2 * time.Millisecond):
			}
			loopAgent(ctx, proxy.ln.Addr().String(), fmt.Sprintf("10.1.%d.%d/9000", i/250, i%250+1), "svc-"+strconv.Itoa(i), &st)
		}()
	}
	report := func() {
		last, _ := st.lastErr.Load().(string)
		fmt.Printf("fleet %d %d %d %q\n", st.closes.Load(), st.refused.Load(), st.online.Load(), last)
	}
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			report()
		}
	}
	wg.Wait()
	report()
}

// TestRebalance_RollingRestartEvensOutWithoutMissingALookup drains and restarts every node in
// turn, as the StatefulSet's preStop and a rolling update do, while a reader asks every node
// for every namespace (one agent each, so any gap would show); then the nodes must even out.
// WSREGISTRY_REBALANCE_AGENTS=3000 makes it the measurement in BENCHMARKS.md.
func TestRebalance_RollingRestartEvensOutWithoutMissingALookup(t *testing.T) {
	agents := 30
	if v, err := strconv.Atoi(os.Getenv("WSREGISTRY_REBALANCE_AGENTS")); err == nil && v > 0 {
		agents = v
	}
	// Deadlines grow with the agents: 3,000 take a while to register on a busy machine.
	slack := time.Duration(agents) * 20 * time.Millisecond
	// The short grace keeps the suite's run fast. Thousands of agents moving at once on a
	// busy machine can take longer than that to register again, and a moved agent dropped by
	// the grace misses until it does: the measurement runs with the production default.
	grace := 3 * time.Second
	if agents > 100 {
		grace = DefaultNodeGrace
	}
	var lost atomic.Int64
	tc := startCluster(t, 3, grace, func(c *Config) {
		c.Rebalance.Settle = time.Second
		c.Limits.MaxRequestsPerSecondPerConn = -1
		c.Logger = slog.New(lostCounter{c.Logger.Handler(), &lost})
	})
	var backends []string
	for _, n := range tc.nodes {
		backends = append(backends, n.cfg.WSAdvertise)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	names := make([]string, agents)
	for i := range names {
		names[i] = "svc-" + strconv.Itoa(i)
	}
	regStart := time.Now()
	stats := startFleet(t, agents, backends)
	registered := func(n *Node) int {
		c := 0
		for _, ns := range names {
			if _, ok := n.state.Pick(ns, 0); ok {
				c++
			}
		}
		return c
	}
	progress := func(n *Node) string {
		leader, _ := n.raft.Leader()
		return fmt.Sprintf("%s sees %d of %d namespaces, sessions per node %v, leader %q; the fleet: %d online, %d refused (last error: %v), %d closed with 1012",
			n.cfg.NodeID, registered(n), agents, n.state.SessionCounts(), leader, stats.online.Load(), stats.refused.Load(), stats.lastErr.Load(), stats.closes.Load())
	}
	for _, n := range tc.nodes {
		next := time.Now().Add(5 * time.Second)
		eventually(t, 30*time.Second+slack, func() bool {
			if registered(n) == agents {
				return true
			}
			if time.Now().After(next) {
				t.Logf("%v: %s", time.Since(regStart).Round(time.Second), progress(n))
				next = time.Now().Add(5 * time.Second)
			}
			return false
		}, "agents never all registered on %s", n.cfg.NodeID)
	}
	t.Logf("%d agents registered in %v (%d refused, %d closed with 1012 meanwhile); agents per node %v",
		agents, time.Since(regStart).Round(time.Millisecond), stats.refused.Load(), stats.closes.Load(), counts(tc))

	// The reader: every namespace on every node that is up, all the time.
	var upMu sync.Mutex
	up := map[*Node]bool{tc.nodes[0]: true, tc.nodes[1]: true, tc.nodes[2]: true}
	var rounds, misses atomic.Int64
	var firstMiss atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			upMu.Lock()
			for n := range up {
				for _, ns := range names {
					if _, ok := n.state.Pick(ns, 0); !ok {
						if misses.Add(1) == 1 {
							// What the other nodes hold for it says whose view was wrong.
							var others []string
							for m := range up {
								if m != n {
									others = append(others, fmt.Sprintf("%s (applied %d) %v", m.cfg.NodeID, m.state.AppliedIndex(), m.state.Instances(ns)))
								}
							}
							firstMiss.Store(fmt.Sprintf("%s: %s at %s (applied index %d, incarnation %d); others: %v",
								n.cfg.NodeID, ns, time.Now().Format("15:04:05.000"), n.state.AppliedIndex(), n.Incarnation(), others))
						}
					}
				}
			}
			upMu.Unlock()
			rounds.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	var lastRestart time.Time
	var closesAtLastRestart int64
	for i := range tc.nodes {
		n := tc.nodes[i]
		start := time.Now()
		if _, err := n.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second+slack, func() bool { return n.DrainStatus().Done }, "node%d never drained: %+v", i, n.DrainStatus())
		drained := time.Since(start)
		upMu.Lock()
		delete(up, n)
		upMu.Unlock()
		n.Close()
		r := tc.restart(i)
		upMu.Lock()
		up[r] = true
		upMu.Unlock()
		lastRestart, closesAtLastRestart = time.Now(), stats.closes.Load()
		t.Logf("%s node%d drained in %v, restarted after %v; agents per node %v", start.Format("15:04:05.000"), i, drained.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), counts(tc))
	}
	within := func() bool {
		c := counts(tc)
		fair := float64(agents) / 3
		for _, v := range c {
			if math.Abs(float64(v)-fair) > max(0.1*fair, 1) {
				return false
			}
		}
		return true
	}
	eventually(t, 60*time.Second+slack, within, "nodes never evened out: %v", counts(tc))
	balanced, closesToBalance := time.Since(lastRestart), stats.closes.Load()-closesAtLastRestart
	// Settled means staying settled: no flapping once every node stopped moving agents.
	for _, n := range tc.nodes {
		eventually(t, 30*time.Second, func() bool { return n.BalanceStatus().State == "balanced" }, "%s not balanced: %+v", n.cfg.NodeID, n.BalanceStatus())
	}
	movedAtBalance := stats.closes.Load()
	time.Sleep(2 * time.Second) // a window to see flapping in, not an assertion of timing
	if extra := stats.closes.Load() - movedAtBalance; extra > int64(agents/20+1) {
		t.Errorf("%d agents moved after the nodes were balanced (flapping)", extra)
	}
	cancel()
	wg.Wait()
	if m := misses.Load(); m > 0 {
		t.Errorf("%d lookups missed a live agent (first: %v) in %d rounds; %d moved agents dropped by the grace", m, firstMiss.Load(), rounds.Load(), lost.Load())
	}
	if rounds.Load() < 10 {
		t.Errorf("the reader ran only %d rounds", rounds.Load())
	}
	t.Logf("%d agents: balanced %v after the last restart (%v) with %d closes (1012) after it, %d closed with 1012 in all (drains included), %d refused registrations, %d dropped by the grace, %d reader rounds of %d namespaces x 3 nodes, %d misses",
		agents, balanced.Round(time.Millisecond), counts(tc), closesToBalance, stats.closes.Load(), stats.refused.Load(), lost.Load(), rounds.Load(), agents, misses.Load())
}

// lostCounter counts the moved agents a node dropped because they did not register again
// within the grace (a miss for lookups until they do).
type lostCounter struct {
	slog.Handler
	n *atomic.Int64
}

func (h lostCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.Handler.Enabled(ctx, l)
}

func (h lostCounter) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "did not register again within the node grace") {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "agents" {
				h.n.Add(a.Value.Int64())
			}
			return true
		})
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h lostCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return lostCounter{h.Handler.WithAttrs(as), h.n}
}

func (h lostCounter) WithGroup(g string) slog.Handler {
	return lostCounter{h.Handler.WithGroup(g), h.n}
}

func counts(tc *testCluster) map[string]int {
	return tc.nodes[0].state.SessionCounts()
}

// TestRebalance_OffKeepsTheImbalance: --rebalance=false never closes a connection.
func TestRebalance_OffKeepsTheImbalance(t *testing.T) {
	tc := startCluster(t, 3, 3*time.Second, func(c *Config) {
		c.Rebalance.Settle = 100 * time.Millisecond
		c.Rebalance.Off = true
	})
	var as []*rawAgent
	for i := range 6 {
		a := dialRaw(t, tc.nodes[0], "/10.2.0."+strconv.Itoa(i+1)+"/9000")
		a.call(online(1, "off-"+strconv.Itoa(i)), ok(1))
		as = append(as, a)
	}
	for _, n := range tc.nodes {
		eventually(t, 10*time.Second, func() bool { return n.BalanceStatus().State == "off" }, "%s: %+v", n.cfg.NodeID, n.BalanceStatus())
	}
	if got := tc.nodes[0].ws.Len(); got != 6 {
		t.Fatalf("node0 holds %d agents, want all 6", got)
	}
}

// TestDrain_MovesAgentsOffKeepsThemFindableAndRefusesNewOnes: a drained node is not ready,
// refuses agents with 503, closes its agents with 1012, and keeps their registrations until
// they registered again elsewhere.
func TestDrain_MovesAgentsOffKeepsThemFindableAndRefusesNewOnes(t *testing.T) {
	tc := startCluster(t, 3, 3*time.Second)
	n := tc.nodes[1]
	a := dialRaw(t, n, "/10.3.0.1/9000")
	a.call(online(1, "drained"), ok(1))
	if _, err := n.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, why := n.Ready(); ok {
		t.Fatal("a draining node says it is ready")
	} else {
		t.Log(why)
	}
	code, reason := a.closeStatus()
	if code != websocket.StatusServiceRestart {
		t.Fatalf("closed with %v %q, want 1012", code, reason)
	}
	// Not re-registered yet: still findable everywhere, and the drain is not done.
	for _, m := range tc.nodes {
		eventually(t, 5*time.Second, func() bool { _, ok := m.Where("drained"); return ok }, "%s lost the moving agent", m.cfg.NodeID)
	}
	if st := n.DrainStatus(); st.Done || st.Moving != 1 {
		t.Fatalf("drain status %+v: want one moving agent, not done", st)
	}
	resp, err := httpDial(n)
	if err == nil || resp != 503 {
		t.Fatalf("a new agent on a draining node: status %d err %v, want 503", resp, err)
	}
	// The agent reconnects elsewhere: its old session goes, the drain completes.
	b := dialRaw(t, tc.nodes[2], "/10.3.0.1/9000")
	b.call(online(1, "drained"), ok(1))
	eventually(t, 10*time.Second, func() bool { return n.DrainStatus().Done }, "drain never done: %+v", n.DrainStatus())
	for _, m := range tc.nodes {
		eventually(t, 5*time.Second, func() bool {
			regs := m.state.Instances("drained")
			return len(regs) == 1 && regs[0].Session.Node == "node2"
		}, "%s: %v", m.cfg.NodeID, m.state.Instances("drained"))
	}
	// Other nodes see the drain in the metadata and pause.
	eventually(t, 5*time.Second, func() bool { return tc.nodes[0].BalanceStatus().State == "paused" }, "node0: %+v", tc.nodes[0].BalanceStatus())
	if _, err := n.Undrain(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool { ok, _ := n.Ready(); return ok }, "not ready after undrain")
}

// httpDial tries a WebSocket handshake and returns the HTTP status of a refusal.
func httpDial(n *Node) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+n.WSAddr()+"/10.3.0.9/9000", nil)
	if err == nil {
		c.CloseNow()
		return 101, nil
	}
	if resp == nil {
		return 0, err
	}
	return resp.StatusCode, err
}

// TestRebalance_MovingAgentDroppedAfterGraceWhenItNeverReturns: a moved agent that does not
// come back is deregistered once the grace passes (no ghost).
func TestRebalance_MovingAgentDroppedAfterGraceWhenItNeverReturns(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	n := tc.nodes[0]
	a := dialRaw(t, n, "/10.4.0.1/9000")
	a.call(online(1, "gone"), ok(1))
	if _, err := n.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.closeStatus()
	start := time.Now()
	eventually(t, 10*time.Second, func() bool { _, ok := tc.nodes[2].Where("gone"); return !ok }, "the moved agent stayed registered")
	if took := time.Since(start); took < time.Second {
		t.Fatalf("dropped after %v: before the grace", took)
	}
	eventually(t, 5*time.Second, func() bool { return n.DrainStatus().Done }, "drain not done: %+v", n.DrainStatus())
}

// A stopping node is marked draining (so the others pause), but it closes its agents
// itself with 1001: its balancer must not pick them for a drain's 1012 in between.
func TestDrain_StoppingNodeLeavesItsAgentsToTheShutdown(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/10.3.0.9/9000")
	a.call(online(1, "stays"), ok(1))
	moving := func() int {
		n.bal.mu.Lock()
		defer n.bal.mu.Unlock()
		return len(n.bal.moving)
	}
	n.draining.Store(true)
	n.stopping.Store(true)
	for range 3 {
		n.balanceOnce(time.Now())
	}
	if m := moving(); m != 0 {
		t.Fatalf("a stopping node picked %d agents to move", m)
	}
	// The same node, not stopping: the drain does pick the agent (the check above can fail).
	n.stopping.Store(false)
	eventually(t, 5*time.Second, func() bool { n.balanceOnce(time.Now()); return moving() == 1 }, "a draining node never picked its agent")
	if code, _ := a.closeStatus(); code != websocket.StatusServiceRestart {
		t.Fatalf("drained agent closed with %v, want 1012", code)
	}
}
