package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	log  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProc runs the binary in dir with args and env; ws and http are the addresses the
// test expects it on.
func startProc(t testing.TB, dir, ws, httpAddr string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	p := &proc{t: t, cmd: cmd, ws: ws, http: httpAddr, log: &syncBuffer{}, done: make(chan struct{})}
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
		resp, err := http.Get("http://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "node at %s never became ready:\n%s", p.http, p.log.String())
}

func (p *proc) getJSON(path string, out any) int {
	p.t.Helper()
	resp, err := http.Get("http://" + p.http + path)
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

// loopbackNet returns a random 127.x.y.0 prefix so concurrent tests never share an address,
// letting every node use the standard ports as it would on its own host.
func loopbackNet() string {
	return fmt.Sprintf("127.%d.%d.", 1+rand.IntN(250), 1+rand.IntN(250))
}

func TestProcess_NoFlagsServesAgentsOnDefaultPortsWithDataInDotData(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir, "127.0.0.1:8427", "127.0.0.1:8428", nil)
	p.waitReady(20 * time.Second)
	a := dialAgent(t, p.ws, "10.0.0.7:9001")
	a.online("user-service")
	if got := a.request("where", "user-service"); !strings.Contains(got, `"data":"10.0.0.7:9001"`) {
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
	net := loopbackNet()
	args := []string{"--ws-addr", net + "1:8427", "--http-addr", net + "1:8428", "--raft-addr", net + "1:8429", "--data-dir", "d"}
	p := startProc(t, dir, net+"1:8427", net+"1:8428", nil, args...)
	p.waitReady(20 * time.Second)
	a := dialAgent(t, p.ws, "10.0.0.7:9001")
	a.online("svc")
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done

	p2 := startProc(t, dir, net+"1:8427", net+"1:8428", nil, args...)
	p2.waitReady(20 * time.Second)
	if !strings.Contains(p2.log.String(), "restarting from existing raft state") {
		t.Fatalf("restart did not reuse the raft state:\n%s", p2.log.String())
	}
	if h := p2.where("svc"); h != "" {
		t.Fatalf("session of the killed run still registered: %s", h)
	}
	b := dialAgent(t, p2.ws, "10.0.0.7:9001")
	b.online("svc")
	if h := p2.where("svc"); h != "10.0.0.7:9001" {
		t.Fatalf("where after re-register: %q", h)
	}
}

// threeProcs starts a three-node cluster of processes on one random loopback /24, node i
// on <net>.(i+1) with the standard ports, all started alike.
func threeProcs(t *testing.T, grace string) []*proc {
	t.Helper()
	net := loopbackNet()
	var join []string
	for i := range 3 {
		join = append(join, fmt.Sprintf("%s%d:8429", net, i+1))
	}
	procs := make([]*proc, 3)
	for i := range 3 {
		ip := fmt.Sprintf("%s%d", net, i+1)
		procs[i] = startProc(t, t.TempDir(), ip+":8427", ip+":8428", nil,
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--ws-addr", ip+":8427", "--http-addr", ip+":8428", "--raft-addr", ip+":8429",
			"--bootstrap-expect", "3", "--join", strings.Join(join, ","), "--node-grace", grace,
			"--raft-heartbeat-timeout", "200ms", "--raft-election-timeout", "200ms", "--raft-leader-lease-timeout", "100ms",
			"--log-level", "debug")
	}
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
	onLeader := dialAgent(t, procs[li].ws, "10.0.0.1:9001")
	onLeader.online("svc-a")
	onFollower := dialAgent(t, procs[fi].ws, "10.0.0.2:9002")
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
		if p.where("svc-b") != "10.0.0.2:9002" {
			t.Fatalf("%s lost the live follower's agent", p.http)
		}
	}
	// The agent reconnects to a live node (as iocore agents do) and is found once everywhere.
	back := dialAgent(t, procs[nl].ws, "10.0.0.1:9001")
	back.online("svc-a")
	for _, p := range procs {
		if p.exited() {
			continue
		}
		eventually(t, time.Second, func() bool { return p.instances("svc-a") == 1 }, "reconnected agent not found exactly once on %s", p.http)
	}
}
