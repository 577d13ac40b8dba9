package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

var binary string

// TestMain builds the real binary once; these tests run it as separate processes so that
// kill -9, SIGTERM and restarts are the real thing.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsregistry-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "wsregistry")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func scaled(d time.Duration) time.Duration { return testutil.Scaled(d) }

func eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	testutil.Eventually(t, within, cond, msg, args...)
}

// proc is one wsregistry process.
type proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	http string
	ws   string
	raft string
	log  *syncBuffer
	done chan struct{}
	err  error
}

// syncBuffer collects a process's output written from several goroutines.
type syncBuffer = testutil.LogBuffer

// nodeAddrs are the three listen addresses of one node.
type nodeAddrs struct{ ws, http, raft string }

// flags are the listen flags that put a node on a.
func (a nodeAddrs) flags() []string {
	return []string{"--ws-addr", a.ws, "--http-addr", a.http, "--raft-addr", a.raft}
}

// freeAddrs asks the kernel for three free ports on ip (all three held open at once, so
// they differ) and releases them for the process to bind. Never a fixed port: the suite
// runs beside a registry someone started by hand on the defaults.
func freeAddrs(t testing.TB, ip string) nodeAddrs {
	t.Helper()
	var addrs [3]string
	var lns []net.Listener
	for i := range addrs {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("no free port on %s: %v", ip, err)
		}
		lns = append(lns, ln)
		addrs[i] = ln.Addr().String()
	}
	for _, ln := range lns {
		ln.Close()
	}
	return nodeAddrs{ws: addrs[0], http: addrs[1], raft: addrs[2]}
}

// childEnv is this process's environment without the variables that configure the
// registry, so that a developer's WSREGISTRY_* settings never leak into a test's node.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "WSREGISTRY_") || strings.HasPrefix(kv, iocorePortEnv+"=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// startProc runs the binary in dir with args and env; a holds the addresses the test
// expects it on (args must put it there).
func startProc(t testing.TB, dir string, a nodeAddrs, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = childEnv(env)
	p := &proc{t: t, cmd: cmd, ws: a.ws, http: a.http, raft: a.raft, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("log of %v:\n%s", args, p.log.String())
		}
	})
	return p
}

// errPortTaken: the process could not bind a port the kernel had given the test, because
// something else took it in between.
var errPortTaken = errors.New("a listen port was taken")

// waitListening waits until the process has bound its listeners (it prints its addresses
// once registry.Start returned). It returns errPortTaken when the process exited because
// a port was in use, and fails the test on any other exit.
func (p *proc) waitListening(within time.Duration) error {
	p.t.Helper()
	var taken bool
	eventually(p.t, within, func() bool {
		if strings.Contains(p.log.String(), ": agents ws://") {
			return true
		}
		if p.exited() {
			if taken = strings.Contains(p.log.String(), "address already in use"); taken {
				return true
			}
			p.t.Fatalf("process exited before listening: %v\n%s", p.err, p.log.String())
		}
		return false
	}, "process never listened:\n%s", p.log.String())
	if taken {
		return errPortTaken
	}
	return nil
}

// nodeSpec says how to start node i of a group, given every node's addresses (a node
// usually needs the others' peer addresses for --join).
type nodeSpec func(i int, all []nodeAddrs) (dir string, env []string, args []string)

// startNodes starts one process per ip, each on ports from the kernel. A port can be
// taken between the kernel handing it out and the process binding it: then the whole group
// starts again on fresh ports (the others' --join lists would be stale otherwise).
func startNodes(t testing.TB, ips []string, spec nodeSpec) []*proc {
	t.Helper()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		all := make([]nodeAddrs, len(ips))
		for i, ip := range ips {
			all[i] = freeAddrs(t, ip)
		}
		procs := make([]*proc, len(ips))
		for i := range ips {
			dir, env, args := spec(i, all)
			procs[i] = startProc(t, dir, all[i], env, append(all[i].flags(), args...)...)
		}
		var taken error
		for _, p := range procs {
			if err := p.waitListening(20 * time.Second); err != nil {
				taken = err
			}
		}
		if taken == nil {
			return procs
		}
		for _, p := range procs {
			p.kill()
		}
		if attempt == attempts {
			t.Fatalf("%v %d times in a row: something is grabbing ports on %v", taken, attempts, ips)
		}
		t.Logf("%v between asking the kernel and the process binding it: starting again on fresh ports", taken)
	}
}

// startNode starts one node on ip with ports from the kernel.
func startNode(t testing.TB, dir, ip string, env []string, args ...string) *proc {
	t.Helper()
	return startNodes(t, []string{ip}, func(int, []nodeAddrs) (string, []string, []string) {
		return dir, env, args
	})[0]
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) waitReady(within time.Duration) {
	p.t.Helper()
	eventually(p.t, within, func() bool {
		if p.exited() {
			p.t.Fatalf("process exited: %v\n%s", p.err, p.log.String())
		}
		resp, err := procHTTP.Get("http://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "node at %s never became ready:\n%s", p.http, p.log.String())
}

// procHTTP bounds every call a test makes to a process: a stopped (SIGSTOP) process accepts
// connections and never answers, and a helper that walks every process (leaderOf) would
// wait on it forever.
var procHTTP = &http.Client{Timeout: 5 * time.Second}

func (p *proc) getJSON(path string, out any) int {
	p.t.Helper()
	resp, err := procHTTP.Get("http://" + p.http + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		json.Unmarshal(b, out)
	}
	return resp.StatusCode
}

// where asks the node's HTTP API; "" when not found or unreachable.
func (p *proc) where(ns string) string {
	var out struct{ Host string }
	if p.getJSON("/v1/where/"+ns, &out) != 200 {
		return ""
	}
	return out.Host
}

func (p *proc) instances(ns string) int {
	var out struct{ Instances []any }
	if p.getJSON("/v1/namespaces/"+ns, &out) != 200 {
		return 0
	}
	return len(out.Instances)
}

// agent is a raw WebSocket agent speaking the frames by hand.
type agent struct {
	t    testing.TB
	conn *websocket.Conn
	id   int
}

func dialAgent(t testing.TB, wsAddr, self string) *agent {
	t.Helper()
	host, port, _ := strings.Cut(self, ":")
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+wsAddr+"/"+host+"/"+port, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", wsAddr, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &agent{t: t, conn: c}
}

func (a *agent) request(cmd, ns string) string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	msg := fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":%q,"props":[%q],"protocol":"ws"},"mode":0}`, a.id, cmd, ns)
	a.id++
	if err := a.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		a.t.Fatalf("write: %v", err)
	}
	_, b, err := a.conn.Read(ctx)
	if err != nil {
		a.t.Fatalf("read: %v", err)
	}
	return string(b)
}

func (a *agent) online(ns string) {
	a.t.Helper()
	if got := a.request("online", ns); !strings.Contains(got, `"data":{"status":200}`) {
		a.t.Fatalf("online %s: %s", ns, got)
	}
}

// loopbackNet returns a random 127.x.y. prefix (x, y in 1..250, so never 127.0.0.1's
// network) so that concurrent tests rarely share an address; ports come from the kernel.
func loopbackNet() string {
	return fmt.Sprintf("127.%d.%d.", 1+rand.IntN(250), 1+rand.IntN(250))
}

// loopbackIPs returns n addresses <net>1 .. <net>n of one random loopback /24.
func loopbackIPs(n int) (prefix string, ips []string) {
	prefix = loopbackNet()
	for i := range n {
		ips = append(ips, fmt.Sprintf("%s%d", prefix, i+1))
	}
	return prefix, ips
}

// defaultAddrs are where a node with no flags listens, read from serve's own flag
// defaults (not parsed, so no environment variable changes them).
func defaultAddrs() nodeAddrs {
	var c serveConfig
	serveFlags(&c, io.Discard)
	return nodeAddrs{ws: c.wsAddr, http: c.httpAddr, raft: c.raftAddr}
}

// needDefaultPorts skips the test, loudly, when another process (typically a registry a
// developer started by hand) holds one of the default ports; in CI (CI=true) nothing should,
// so there it fails instead.
func needDefaultPorts(t *testing.T, def nodeAddrs, cause error) {
	t.Helper()
	var busy []string
	if cause != nil {
		busy = append(busy, cause.Error())
	}
	for _, addr := range []string{def.ws, def.http, def.raft} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			busy = append(busy, err.Error())
			continue
		}
		ln.Close()
	}
	if len(busy) == 0 {
		return
	}
	msg := fmt.Sprintf("the no-flags test needs the default addresses %s, %s and %s free, but %s", def.ws, def.http, def.raft, strings.Join(busy, "; "))
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: nothing else may listen there on a CI runner)", msg)
	}
	t.Skipf("SKIPPED, NOT PASSED: %s. Stop the registry running on this machine to run it (with CI=true this is a failure).", msg)
}

func TestProcess_NoFlagsServesAgentsOnDefaultPortsWithDataInDotData(t *testing.T) {
	def := defaultAddrs()
	needDefaultPorts(t, def, nil)
	local := func(addr string) string {
		_, port, _ := net.SplitHostPort(addr)
		return net.JoinHostPort("127.0.0.1", port)
	}
	dir := t.TempDir()
	p := startProc(t, dir, nodeAddrs{ws: local(def.ws), http: local(def.http), raft: local(def.raft)}, nil)
	if err := p.waitListening(20 * time.Second); err != nil {
		needDefaultPorts(t, def, fmt.Errorf("%w: another process bound it after the check", err))
	}
	p.waitReady(20 * time.Second)
	a := dialAgent(t, p.ws, "127.255.0.7:9001")
	a.online("user-service")
	if got := a.request("where", "user-service"); !strings.Contains(got, `"data":"127.255.0.7:9001"`) {
		t.Fatalf("where: %s", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "raft", "raft.db")); err != nil {
		t.Fatalf("no raft state in ./data: %v", err)
	}
	// SIGTERM: agents are closed with 1001 and the process exits 0.
	p.cmd.Process.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	_, _, err := a.conn.Read(ctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
		t.Fatalf("agent closed with %v (%v), want 1001", code, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatal("process did not exit after SIGTERM")
	}
	if p.err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", p.err, p.log.String())
	}
}

func TestProcess_Kill9RestartPurgesStaleSessions(t *testing.T) {
	dir := t.TempDir()
	p := startNode(t, dir, loopbackNet()+"1", nil, "--data-dir", "d")
	p.waitReady(20 * time.Second)
	a := dialAgent(t, p.ws, "127.255.0.7:9001")
	a.online("svc")
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	// The restart must come back on the same addresses: its raft state names them.
	addrs := nodeAddrs{ws: p.ws, http: p.http, raft: p.raft}
	p2 := startProc(t, dir, addrs, nil, append(addrs.flags(), "--data-dir", "d")...)
	if err := p2.waitListening(20 * time.Second); err != nil {
		t.Fatalf("restart on the killed run's addresses %v: %v (another process took one of them after the kill)", addrs, err)
	}
	p2.waitReady(20 * time.Second)
	if !strings.Contains(p2.log.String(), "restarting from existing raft state") {
		t.Fatalf("restart did not reuse the raft state:\n%s", p2.log.String())
	}
	if h := p2.where("svc"); h != "" {
		t.Fatalf("session of the killed run still registered: %s", h)
	}
	b := dialAgent(t, p2.ws, "127.255.0.7:9001")
	b.online("svc")
	if h := p2.where("svc"); h != "127.255.0.7:9001" {
		t.Fatalf("where after re-register: %q", h)
	}
}

// peerAddrs are the nodes' peer addresses as --join takes them.
func peerAddrs(all []nodeAddrs) string {
	var join []string
	for _, a := range all {
		join = append(join, a.raft)
	}
	return strings.Join(join, ",")
}

// threeProcs starts a three-node cluster of processes on one random loopback /24, node i
// on <net>(i+1) with ports from the kernel, all started alike.
func threeProcs(t *testing.T, grace string) []*proc {
	t.Helper()
	_, ips := loopbackIPs(3)
	procs := startNodes(t, ips, func(i int, all []nodeAddrs) (string, []string, []string) {
		return t.TempDir(), nil, []string{
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--bootstrap-expect", "3", "--join", peerAddrs(all), "--node-grace", grace,
			"--raft-heartbeat-timeout", "200ms", "--raft-election-timeout", "200ms", "--raft-leader-lease-timeout", "100ms",
			"--log-level", "debug"}
	})
	for _, p := range procs {
		p.waitReady(30 * time.Second)
	}
	return procs
}

func leaderOf(t *testing.T, procs []*proc) int {
	t.Helper()
	idx := -1
	eventually(t, 10*time.Second, func() bool {
		for i, p := range procs {
			if p.exited() {
				continue
			}
			var v struct {
				Node   string `json:"node"`
				Leader string `json:"leader"`
			}
			if p.getJSON("/v1/cluster", &v) == 200 && v.Leader != "" && v.Leader == v.Node {
				idx = i
				return true
			}
		}
		return false
	}, "no leader among the processes")
	return idx
}

func TestProcess_LeaderKill9NewLeaderPurgesAndAgentsComeBack(t *testing.T) {
	procs := threeProcs(t, "1s")
	li := leaderOf(t, procs)
	fi := (li + 1) % 3
	onLeader := dialAgent(t, procs[li].ws, "127.255.0.1:9001")
	onLeader.online("svc-a")
	onFollower := dialAgent(t, procs[fi].ws, "127.255.0.2:9002")
	onFollower.online("svc-b")
	for _, p := range procs {
		eventually(t, time.Second, func() bool { return p.where("svc-a") != "" && p.where("svc-b") != "" }, "registrations not replicated to %s", p.http)
	}

	procs[li].cmd.Process.Signal(syscall.SIGKILL)
	<-procs[li].done
	nl := leaderOf(t, procs)
	if nl == li {
		t.Fatal("killed process still leads")
	}
	for _, p := range procs {
		if p.exited() {
			continue
		}
		eventually(t, 10*time.Second, func() bool { return p.where("svc-a") == "" }, "dead leader's agent still listed on %s", p.http)
		if p.where("svc-b") != "127.255.0.2:9002" {
			t.Fatalf("%s lost the live follower's agent", p.http)
		}
	}
	// The agent reconnects to a live node (as iocore agents do) and is found once everywhere.
	back := dialAgent(t, procs[nl].ws, "127.255.0.1:9001")
	back.online("svc-a")
	for _, p := range procs {
		if p.exited() {
			continue
		}
		eventually(t, time.Second, func() bool { return p.instances("svc-a") == 1 }, "reconnected agent not found exactly once on %s", p.http)
	}
}
