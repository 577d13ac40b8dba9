package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/wsserver"
)

// nsView is one namespace of GET /v1/namespaces.
type nsView struct {
	Name      string `json:"name"`
	Instances []struct {
		Host string `json:"host"`
		Node string `json:"node"`
	} `json:"instances"`
}

// namespacesOn reads every namespace a node lists (nil, false when it does not answer).
func namespacesOn(client *http.Client, p *proc) (map[string]nsView, bool) {
	resp, err := client.Get("http://" + p.http + "/v1/namespaces")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var list []nsView
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&list) != nil {
		return nil, false
	}
	out := make(map[string]nsView, len(list))
	for _, v := range list {
		out[v.Name] = v
	}
	return out, true
}

// sdkAgent starts an in-process Go SDK agent serving on its own loopback listener (so the
// registry's check reaches it) and registers ns through registries.
func sdkAgent(t *testing.T, ns string, registries ...string) *wsserver.Agent {
	t.Helper()
	a, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registries: registries, Listen: "127.0.0.1:0", Advertise: "127.0.0.1",
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	if err := a.Online(ctx, ns); err != nil {
		t.Fatalf("online %s: %v", ns, err)
	}
	return a
}

// agentProc runs `wsregistry agent-demo` registering ns through registry: an agent that can
// be killed for real.
func agentProc(t *testing.T, ns, registry string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary, "agent-demo", "--registry", registry, "--namespace", ns,
		"--listen", "127.0.0.1:0", "--advertise", "127.0.0.1")
	cmd.Env = childEnv(nil)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("log of agent %s:\n%s", ns, log.String())
		}
	})
	eventually(t, 15*time.Second, func() bool { return strings.Contains(log.String(), "online as") }, "agent %s never registered:\n%s", ns, log.String())
	return cmd
}

// Item 4 of issue 16: a node that stalls (SIGSTOP) for longer than the grace must not make
// its live agents disappear (they are connected to it and cannot know), while agents that
// died with it are gone within grace + 1 s.
func TestProcess_PausedNodeKeepsItsLiveAgentsAndDropsItsDeadOnes(t *testing.T) {
	t.Run("follower", func(t *testing.T) { testPausedNode(t, false) })
	t.Run("leader", func(t *testing.T) { testPausedNode(t, true) })
}

func testPausedNode(t *testing.T, pauseLeader bool) {
	const grace = 2 * time.Second
	procs := threeProcs(t, grace.String())
	vi := leaderOf(t, procs)
	if !pauseLeader {
		vi = (vi + 1) % 3
	}
	li := (vi + 1) % 3 // another node
	victim := procs[vi]

	// 30 agents: 17 on the victim (3 of them processes killed during the pause), 7 and 6 on
	// the others. Each has one registry address and reconnects to it, as iocore agents do.
	var live, dead []string
	perNode := map[int]int{vi: 17, li: 7, 3 - vi - li: 6}
	var deadProcs []*exec.Cmd
	var late *exec.Cmd // killed once the cluster holds it
	var lateNS string
	for node, count := range perNode {
		for i := range count {
			ns := fmt.Sprintf("svc-%d-%d", node, i)
			if node == vi && i < 3 {
				deadProcs = append(deadProcs, agentProc(t, ns, procs[node].ws))
				dead = append(dead, ns)
				continue
			}
			if node == vi && i == 3 {
				late, lateNS = agentProc(t, ns, procs[node].ws), ns
				continue
			}
			sdkAgent(t, ns, procs[node].ws)
			live = append(live, ns)
		}
	}
	client := &http.Client{Timeout: scaled(2 * time.Second)}
	for _, p := range procs {
		eventually(t, 10*time.Second, func() bool {
			got, ok := namespacesOn(client, p)
			return ok && len(got) == len(live)+len(dead)+1
		}, "not every agent registered on %s", p.http)
	}

	// The reader asks every node that can answer for every namespace, all the time.
	var paused atomic.Bool
	var missing atomic.Int64
	var mu sync.Mutex
	var firstMissing []string
	stopReader := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stopReader:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for i, p := range procs {
				if i == vi && paused.Load() {
					continue
				}
				got, ok := namespacesOn(client, p)
				if !ok {
					continue
				}
				for _, ns := range live {
					if _, found := got[ns]; !found {
						missing.Add(1)
						mu.Lock()
						if len(firstMissing) < 10 {
							firstMissing = append(firstMissing, fmt.Sprintf("%s on %s at %s", ns, p.http, time.Now().Format("15:04:05.000")))
						}
						mu.Unlock()
					}
				}
			}
		}
	}()
	defer func() { close(stopReader); <-readerDone }()

	paused.Store(true)
	if err := victim.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			victim.cmd.Process.Signal(syscall.SIGCONT)
			paused.Store(false)
		}
	}
	defer resume() // so cleanup can kill it
	for _, c := range deadProcs {
		c.Process.Signal(syscall.SIGKILL)
	}
	killed := time.Now()

	// Dead agents vanish from the live nodes within grace + 1 s.
	others := []*proc{procs[li], procs[3-vi-li]}
	eventually(t, 2*grace+5*time.Second, func() bool {
		for _, p := range others {
			got, ok := namespacesOn(client, p)
			if !ok {
				return false
			}
			for _, ns := range dead {
				if _, found := got[ns]; found {
					return false
				}
			}
		}
		return true
	}, "agents killed during the pause still listed")
	gone := time.Since(killed)
	t.Logf("agents killed with their node paused were gone from every live node %v after the kill (grace %v)", gone.Round(time.Millisecond), grace)
	if gone > scaled(grace+2*time.Second) {
		t.Errorf("dead agents took %v to go, want about grace + 1 s (%v)", gone, grace+time.Second)
	}
	// The live ones are held by the cluster meanwhile.
	got, _ := namespacesOn(client, others[0])
	held := 0
	for _, ns := range live {
		if v, ok := got[ns]; ok && len(v.Instances) == 1 && v.Instances[0].Node == fsm.ClusterOwner {
			held++
		}
	}
	if held != 13 {
		t.Errorf("%d of the victim's 13 live agents are held by the cluster, want all", held)
	}
	// An agent the cluster holds that dies is removed at the next recheck.
	if v := got[lateNS]; len(v.Instances) != 1 || v.Instances[0].Node != fsm.ClusterOwner {
		t.Fatalf("%s is not held by the cluster: %+v", lateNS, v.Instances)
	}
	late.Process.Signal(syscall.SIGKILL)
	lateKilled := time.Now()
	eventually(t, 10*time.Second, func() bool {
		for _, p := range others {
			if got, ok := namespacesOn(client, p); !ok || len(got[lateNS].Instances) > 0 {
				return false
			}
		}
		return true
	}, "a held agent that died is still listed")
	t.Logf("a held agent killed during the pause was gone %v after the kill (recheck every %v)", time.Since(lateKilled).Round(time.Millisecond), grace/2)
	// Stay paused well past the grace, then resume.
	if d := 3*grace - time.Since(stopped); d > 0 {
		time.Sleep(d)
	}
	resume()
	t.Logf("node resumed after %v", time.Since(stopped).Round(time.Millisecond))

	// Once it has fenced and its agents reconnected, every live agent is listed once, by
	// a node again, everywhere; no dead one is.
	var last string
	eventually(t, 20*time.Second, func() bool {
		for _, p := range procs {
			got, ok := namespacesOn(client, p)
			if !ok {
				last = p.http + " does not answer"
				return false
			}
			for _, ns := range live {
				if v := got[ns]; len(v.Instances) != 1 || v.Instances[0].Node == fsm.ClusterOwner {
					last = fmt.Sprintf("%s on %s: %+v", ns, p.http, v.Instances)
					return false
				}
			}
			for _, ns := range dead {
				if _, found := got[ns]; found {
					last = fmt.Sprintf("dead %s on %s", ns, p.http)
					return false
				}
			}
		}
		return true
	}, "the cluster did not settle after the node resumed: %s", lastState{&last})
	t.Logf("settled %v after the pause began (resumed at %v)", time.Since(stopped).Round(time.Millisecond), 3*grace)

	if m := missing.Load(); m != 0 {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("live namespaces were missing %d times, first: %v", m, firstMissing)
	}
}

// lastState prints what a wait saw last, when it gives up.
type lastState struct{ s *string }

func (l lastState) String() string { return *l.s }

// ownerOf returns the node ids listed for ns on p.
func ownersOn(client *http.Client, p *proc, ns string) []string {
	got, ok := namespacesOn(client, p)
	if !ok {
		return nil
	}
	var out []string
	for _, in := range got[ns].Instances {
		out = append(out, in.Node)
	}
	return out
}

// reRegistered waits until a live node lists ns through a node other than gone, and
// returns how long that took from since.
func reRegistered(t *testing.T, client *http.Client, procs []*proc, ns, gone string, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	eventually(t, 15*time.Second, func() bool {
		for _, p := range procs {
			if p.exited() {
				continue
			}
			for _, owner := range ownersOn(client, p, ns) {
				if owner != gone && owner != fsm.ClusterOwner {
					took = time.Since(since)
					return true
				}
			}
		}
		return false
	}, "the agent never registered again through a node other than %s", gone)
	return took
}

// Item 5 of issue 16: the Go SDK, given every node's address, registers again through
// another node within 1 s when its node dies (SIGKILL) or closes the connection (SIGTERM:
// the node leaves the cluster and closes its agents with 1001).
func TestProcess_SDKAgentFailsOverWhenItsNodeDiesOrCloses(t *testing.T) {
	procs := threeProcs(t, "2s")
	var addrs []string
	byID := map[string]int{}
	for i, p := range procs {
		addrs = append(addrs, p.ws)
		byID[fmt.Sprintf("node%d", i)] = i
	}
	client := &http.Client{Timeout: scaled(time.Second)}
	sdkAgent(t, "failover", addrs...)
	current := func() string {
		for _, p := range procs {
			if !p.exited() {
				if o := ownersOn(client, p, "failover"); len(o) > 0 {
					return o[len(o)-1]
				}
			}
		}
		return ""
	}
	first := current()
	if _, ok := byID[first]; !ok {
		t.Fatalf("agent registered through %q", first)
	}

	// SIGKILL its node.
	victim := procs[byID[first]]
	wasLeader := leaderOf(t, procs) == byID[first]
	victim.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-victim.done
	tookKill := reRegistered(t, client, procs, "failover", first, killed)
	t.Logf("SIGKILL of %s (leader: %v): the agent was registered through another node %v later", first, wasLeader, tookKill.Round(time.Millisecond))

	// Bring the killed node back (same data dir and flags), so the cluster keeps its
	// quorum when the next one leaves.
	restarted := startProc(t, victim.cmd.Dir, nodeAddrs{ws: victim.ws, http: victim.http, raft: victim.raft}, nil, victim.cmd.Args[1:]...)
	restarted.waitReady(30 * time.Second)
	procs[byID[first]] = restarted

	var second string
	eventually(t, 10*time.Second, func() bool {
		for _, p := range procs {
			for _, o := range ownersOn(client, p, "failover") {
				if o != first {
					second = o
					return true
				}
			}
		}
		return false
	}, "agent not on a second node")
	// Wait until the dead node's old registration is purged, so the next measurement
	// sees only what follows the close.
	eventually(t, 15*time.Second, func() bool { return len(ownersOn(client, procs[byID[second]], "failover")) == 1 }, "stale registration of %s not purged", first)

	// SIGTERM the node it moved to: it leaves the cluster and closes the connection.
	closer := procs[byID[second]]
	wasLeader = leaderOf(t, procs) == byID[second]
	closer.cmd.Process.Signal(syscall.SIGTERM)
	closed := time.Now()
	tookClose := reRegistered(t, client, procs, "failover", second, closed)
	t.Logf("SIGTERM of %s (leader: %v): the agent was registered through another node %v later", second, wasLeader, tookClose.Round(time.Millisecond))
	for what, took := range map[string]time.Duration{"SIGKILL": tookKill, "SIGTERM": tookClose} {
		if took > scaled(3*time.Second) {
			t.Errorf("after %s the agent took %v to register elsewhere, want about 1 s", what, took)
		}
	}
}
