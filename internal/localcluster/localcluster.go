// Package localcluster drives the node processes of scripts/local-cluster.sh for the tools
// that stress them (cmd/wsbench, cmd/wschaos): their pid files, the command lines they were
// started with, signals and restarts, and the parts of the HTTP API the tools read.
//
// Layout (local-cluster.sh): node i is "node<i>", with <dir>/node<i>.pid and
// <dir>/node<i>.log, agents on host:P+10i and HTTP on host:P+1+10i (P in <dir>/port-base, else 8427).
package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cluster is the local cluster in Dir on Host.
type Cluster struct {
	Dir, Host string
	Nodes     []*Node
	Client    *http.Client
}

// Node is one node process.
type Node struct {
	ID       string // raft node id, "node<i>"
	WS, HTTP string // host:port
	PidFile  string
	LogFile  string

	argv []string // its command line, from /proc (Capture)
	cwd  string
	// exited is closed when a process Start began has been reaped.
	exited chan struct{}
	pid    int
}

// DefaultPortBase is node 0's agent port when local-cluster.sh was not given another
// (WSREGISTRY_CLUSTER_PORT, recorded in <dir>/port-base).
const DefaultPortBase = 8427

// New describes the n nodes of the cluster in dir; it does not touch them.
func New(dir, host string, n int, client *http.Client) *Cluster {
	c := &Cluster{Dir: dir, Host: host, Client: client}
	base := DefaultPortBase
	if b, err := os.ReadFile(filepath.Join(dir, "port-base")); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			base = v
		}
	}
	for i := range n {
		c.Nodes = append(c.Nodes, &Node{
			ID:      "node" + strconv.Itoa(i),
			WS:      host + ":" + strconv.Itoa(base+10*i),
			HTTP:    host + ":" + strconv.Itoa(base+1+10*i),
			PidFile: filepath.Join(dir, "node"+strconv.Itoa(i)+".pid"),
			LogFile: filepath.Join(dir, "node"+strconv.Itoa(i)+".log"),
		})
	}
	return c
}

// PIDs returns the pids of the nodes running now.
func (c *Cluster) PIDs() []int {
	var out []int
	for _, nd := range c.Nodes {
		if p, err := nd.PID(); err == nil && syscall.Kill(p, 0) == nil {
			out = append(out, p)
		}
	}
	return out
}

// PID reads the node's pid file.
func (nd *Node) PID() (int, error) {
	b, err := os.ReadFile(nd.PidFile)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", nd.ID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: pid file: %w", nd.ID, err)
	}
	return pid, nil
}

// Capture records the running process's command line and working directory, so Start can
// run it again exactly as it was.
func (nd *Node) Capture() error {
	pid, err := nd.PID()
	if err != nil {
		return err
	}
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return fmt.Errorf("%s: reading its command line: %w", nd.ID, err)
	}
	argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	if len(argv) < 2 || argv[1] != "serve" {
		return fmt.Errorf("%s: pid %d is not a wsregistry serve process: %q", nd.ID, pid, argv)
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		return fmt.Errorf("%s: reading its working directory: %w", nd.ID, err)
	}
	nd.argv, nd.cwd = argv, cwd
	return nil
}

// Signal sends sig to the node's process (by its pid).
func (nd *Node) Signal(sig syscall.Signal) error {
	pid, err := nd.PID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("%s: kill -%d %d: %w", nd.ID, sig, pid, err)
	}
	return nil
}

// Start runs the node again with the command line Capture recorded, appending to its log
// after the line note, and records the new pid where local-cluster.sh stop finds it.
func (nd *Node) Start(note string) error {
	if nd.argv == nil {
		return fmt.Errorf("%s: no command line captured", nd.ID)
	}
	lf, err := os.OpenFile(nd.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	if note != "" {
		fmt.Fprintf(lf, "\n==== %s: %s at %s ====\n", note, nd.ID, time.Now().UTC().Format(time.RFC3339Nano))
	}
	cmd := exec.Command(nd.argv[0], nd.argv[1:]...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = nd.cwd, lf, lf
	// Its own process group: it must outlive the tool like the nodes local-cluster.sh
	// started, and a Ctrl-C meant for the tool must not stop it behind the script's back.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start: %w", nd.ID, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reap it whenever it ends
	nd.exited, nd.pid = exited, cmd.Process.Pid
	return os.WriteFile(nd.PidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

// WaitExit waits until the node's process is gone.
func (nd *Node) WaitExit(timeout time.Duration) error {
	pid, err := nd.PID()
	if err != nil {
		return err
	}
	if nd.exited != nil && nd.pid == pid {
		select {
		case <-nd.exited:
			return nil
		case <-time.After(timeout):
			return fmt.Errorf("%s: pid %d still running after %s", nd.ID, pid, timeout)
		}
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		// A process local-cluster.sh started is not our child: poll for it (a zombie
		// lingers until that shell reaps it, so state Z counts as gone).
		if syscall.Kill(pid, 0) != nil || IsZombie(pid) {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("%s: pid %d still running after %s", nd.ID, pid, timeout)
}

// IsZombie reports whether pid is gone or a zombie.
func IsZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z'
	}
	return false
}

// GetJSON GETs http://addr+path into v; a status other than 200 is an error with the body.
func (c *Cluster) GetJSON(ctx context.Context, addr, path string, v any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.Header, fmt.Errorf("GET %s%s: %s: %s", addr, path, resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	return resp.Header, nil
}

// View is the part of GET /v1/cluster the tools read.
type View struct {
	Node         string `json:"node"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	Fenced       bool   `json:"fenced"`
	Members      []struct {
		ID       string `json:"id"`
		Suffrage string `json:"suffrage"` // Voter, Nonvoter, Staging
	} `json:"members"`
	// Autopilot is what the node's autopilot did while it led (action -> changes made).
	Autopilot *struct {
		Counts   map[string]uint64 `json:"counts"`
		Failures uint64            `json:"failures"`
	} `json:"autopilot,omitempty"`
}

// View reads nd's /v1/cluster.
func (c *Cluster) View(ctx context.Context, nd *Node) (View, error) {
	var v View
	_, err := c.GetJSON(ctx, nd.HTTP, "/v1/cluster", &v)
	return v, err
}

// Leader asks the nodes in turn and returns the index of the node the first that knows one
// names.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	lastErr := fmt.Errorf("no node knows a leader")
	for _, nd := range c.Nodes {
		v, err := c.View(ctx, nd)
		if err != nil {
			lastErr = err
			continue
		}
		if v.Leader == "" {
			continue
		}
		for i, m := range c.Nodes {
			if m.ID == v.Leader {
				return i, nil
			}
		}
		lastErr = fmt.Errorf("leader %q is not a node of this cluster", v.Leader)
	}
	return -1, fmt.Errorf("no leader: %w", lastErr)
}

// Ready returns nil when nd's /readyz answers 200, else why not.
func (c *Cluster) Ready(ctx context.Context, nd *Node) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nd.HTTP+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", nd.ID, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", nd.ID, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
