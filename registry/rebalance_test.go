package registry

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
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
	go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, b); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// lastDialErr is the last failed dial of a loopAgent, for the failure message.
var lastDialErr atomic.Value

// loopAgent is an agent that registers namespace ns as addr through the proxy and reconnects
// (after 50-150 ms) whenever its connection ends, as iocore agents do.
func loopAgent(ctx context.Context, proxy, addr, ns string, closes *atomic.Int64) {
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		// A new TCP connection per try, as agents dial: a kept-alive one would stay with the
		// node that refused the last try.
		c, _, err := websocket.Dial(dctx, "ws://"+proxy+"/"+addr, &websocket.DialOptions{
			HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			lastDialErr.Store(err.Error())
		}
		if err == nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = c.Write(wctx, websocket.MessageText, []byte(online(1, ns)))
			cancel()
			for err == nil {
				_, _, err = c.Read(ctx)
			}
			if websocket.CloseStatus(err) == websocket.StatusServiceRestart {
				closes.Add(1)
			}
			c.CloseNow()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50*time.Millisecond + rand.N(100*time.Millisecond)):
		}
	}
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
	tc := startCluster(t, 3, 3*time.Second, func(c *Config) {
		c.Rebalance.Settle = time.Second
		c.Limits.MaxRequestsPerSecondPerConn = -1
	})
	var backends []string
	for _, n := range tc.nodes {
		backends = append(backends, n.cfg.WSAdvertise)
	}
	proxy := startProxy(t, backends)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var moved atomic.Int64
	names := make([]string, agents)
	for i := range agents {
		names[i] = "svc-" + strconv.Itoa(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 2 * time.Millisecond) // agents start over a few seconds, not in one burst
			loopAgent(ctx, proxy.ln.Addr().String(), fmt.Sprintf("10.1.%d.%d/9000", i/250, i%250+1), names[i], &moved)
		}()
	}
	all := func(n *Node) bool {
		for _, ns := range names {
			if _, ok := n.state.Pick(ns, 0); !ok {
				return false
			}
		}
		return true
	}
	for _, n := range tc.nodes {
		eventually(t, 30*time.Second+slack, func() bool { return all(n) }, "agents never all registered on %s (last dial error: %v)", n.cfg.NodeID, lastDialErr.Load())
	}

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
							firstMiss.Store(fmt.Sprintf("%s: %s at %s (applied index %d)", n.cfg.NodeID, ns, time.Now().Format("15:04:05.000"), n.state.AppliedIndex()))
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
		lastRestart = time.Now()
		t.Logf("node%d drained in %v, restarted after %v; agents per node %v", i, drained.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), counts(tc))
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
	balanced := time.Since(lastRestart)
	// Settled means staying settled: no flapping once every node stopped moving agents.
	for _, n := range tc.nodes {
		eventually(t, 30*time.Second, func() bool { return n.BalanceStatus().State == "balanced" }, "%s not balanced: %+v", n.cfg.NodeID, n.BalanceStatus())
	}
	movedAtBalance := moved.Load()
	time.Sleep(2 * time.Second) // a window to see flapping in, not an assertion of timing
	if extra := moved.Load() - movedAtBalance; extra > int64(agents/20+1) {
		t.Errorf("%d agents moved after the nodes were balanced (flapping)", extra)
	}
	cancel()
	wg.Wait()
	if m := misses.Load(); m > 0 {
		t.Errorf("%d lookups missed a live agent (first: %v) in %d rounds", m, firstMiss.Load(), rounds.Load())
	}
	if rounds.Load() < 10 {
		t.Errorf("the reader ran only %d rounds", rounds.Load())
	}
	t.Logf("%d agents: balanced %v after the last restart (%v), %d moved with 1012, %d reader rounds of %d namespaces x 3 nodes, %d misses",
		agents, balanced.Round(time.Millisecond), counts(tc), moved.Load(), rounds.Load(), agents, misses.Load())
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
