package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// node is one wsregistry process of the local cluster (scripts/local-cluster.sh layout:
// <dir>/node<i>.pid, <dir>/node<i>.log, agents on 8427+10i, HTTP on 8428+10i).
type node struct {
	id      string // raft node id, "node<i>"
	ws      string
	http    string
	pidFile string
	logFile string
	argv    []string // the command line it was started with, read from /proc at startup
	cmd     *exec.Cmd
}

type cluster struct {
	log    *slog.Logger
	dir    string
	nodes  []*node
	client *http.Client
}

func openCluster(dir, host string, n int, log *slog.Logger) (*cluster, error) {
	c := &cluster{log: log, dir: dir, client: &http.Client{Timeout: 3 * time.Second}}
	for i := range n {
		nd := &node{
			id:      fmt.Sprintf("node%d", i),
			ws:      fmt.Sprintf("%s:%d", host, 8427+10*i),
			http:    fmt.Sprintf("%s:%d", host, 8428+10*i),
			pidFile: filepath.Join(dir, fmt.Sprintf("node%d.pid", i)),
			logFile: filepath.Join(dir, fmt.Sprintf("node%d.log", i)),
		}
		pid, err := nd.pid()
		if err != nil {
			return nil, err
		}
		// Restarts reuse the exact command line local-cluster.sh used.
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			return nil, fmt.Errorf("%s: reading its command line: %w", nd.id, err)
		}
		nd.argv = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if len(nd.argv) < 2 || nd.argv[1] != "serve" {
			return nil, fmt.Errorf("%s: pid %d is not a wsregistry serve process: %q", nd.id, pid, nd.argv)
		}
		c.nodes = append(c.nodes, nd)
	}
	return c, nil
}

func (nd *node) pid() (int, error) {
	b, err := os.ReadFile(nd.pidFile)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", nd.id, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: pid file: %w", nd.id, err)
	}
	return pid, nil
}

func (nd *node) signal(sig syscall.Signal) error {
	pid, err := nd.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("%s: kill -%d %d: %w", nd.id, sig, pid, err)
	}
	return nil
}

// waitExit waits until the process is gone (reaping it when we started it).
func (nd *node) waitExit(timeout time.Duration) error {
	pid, err := nd.pid()
	if err != nil {
		return err
	}
	if nd.cmd != nil && nd.cmd.Process != nil && nd.cmd.Process.Pid == pid {
		done := make(chan struct{})
		go func() { _ = nd.cmd.Wait(); close(done) }()
		select {
		case <-done:
			return nil
		case <-time.After(timeout):
			return fmt.Errorf("%s: pid %d still running after %s", nd.id, pid, timeout)
		}
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		// A process local-cluster.sh started is not our child: poll for it (a zombie
		// would linger until that shell reaps it, so also accept state Z).
		if syscall.Kill(pid, 0) != nil || isZombie(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: pid %d still running after %s", nd.id, pid, timeout)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z'
	}
	return false
}

// start runs the node again with its original command line and data dir, appending to its
// log, and records the new pid where local-cluster.sh stop finds it.
func (nd *node) start() error {
	lf, err := os.OpenFile(nd.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	fmt.Fprintf(lf, "\n==== wschaos: restarting %s at %s ====\n", nd.id, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(nd.argv[0], nd.argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group: a Ctrl-C meant for the harness must not stop the node
	// behind local-cluster.sh's back (chaos.sh stops the cluster by pid).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start: %w", nd.id, err)
	}
	nd.cmd = cmd
	return os.WriteFile(nd.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

// clusterView is the part of GET /v1/cluster the harness reads.
type clusterView struct {
	Node         string `json:"node"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	Fenced       bool   `json:"fenced"`
}

func (c *cluster) getJSON(ctx context.Context, addr, path string, v any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
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

func (c *cluster) view(ctx context.Context, nd *node) (clusterView, error) {
	var v clusterView
	_, err := c.getJSON(ctx, nd.http, "/v1/cluster", &v)
	return v, err
}

// leader asks every reachable node and returns the index of the node they name.
func (c *cluster) leader(ctx context.Context) (int, error) {
	for _, nd := range c.nodes {
		v, err := c.view(ctx, nd)
		if err != nil || v.Leader == "" {
			continue
		}
		for i, m := range c.nodes {
			if m.id == v.Leader {
				return i, nil
			}
		}
	}
	return -1, errors.New("no node knows a leader")
}

func (c *cluster) waitLeader(ctx context.Context, timeout time.Duration, not int) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		i, err := c.leader(ctx)
		if err == nil && i != not {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no leader (other than node%d) within %s: %v", not, timeout, err)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// waitHealthy waits until every node answers /v1/cluster, names the same leader, is not
// fenced and has applied as far as the leader. It does not use /readyz: that stays 503
// after an election in an idle cluster (the FSM's index never reaches the new leader's
// no-op entry until the next write; reported in RELIABILITY.md), which would stall the
// quiet phase of every round. /readyz is still read, and disagreements are counted.
func (c *cluster) waitHealthy(ctx context.Context, timeout time.Duration) (readyzStuck int, err error) {
	deadline := time.Now().Add(timeout)
	for {
		why := c.healthy(ctx)
		if why == "" {
			for _, nd := range c.nodes {
				// Other reasons ("no leader known") are races with the read above.
				if err := c.ready(ctx, nd); err != nil && strings.Contains(err.Error(), "catching up") {
					readyzStuck++
					c.log.Warn("node is healthy by /v1/cluster but /readyz says it is catching up", "node", nd.id, "err", err)
				}
			}
			return readyzStuck, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("cluster not healthy after %s: %s", timeout, why)
		}
		sleepCtx(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
}

// healthy returns why the cluster is not healthy yet, or "".
func (c *cluster) healthy(ctx context.Context) string {
	views := make([]clusterView, len(c.nodes))
	for i, nd := range c.nodes {
		v, err := c.view(ctx, nd)
		switch {
		case err != nil:
			return err.Error()
		case v.Leader == "":
			return nd.id + ": no leader known"
		case v.Fenced:
			return nd.id + ": fenced"
		case i > 0 && v.Leader != views[0].Leader:
			return fmt.Sprintf("%s names leader %s, %s names %s", nd.id, v.Leader, c.nodes[0].id, views[0].Leader)
		}
		views[i] = v
	}
	var leaderApplied uint64
	for _, v := range views {
		if v.Node == v.Leader {
			leaderApplied = v.AppliedIndex
		}
	}
	for i, v := range views {
		if v.AppliedIndex < leaderApplied {
			return fmt.Sprintf("%s applied %d, leader %d", c.nodes[i].id, v.AppliedIndex, leaderApplied)
		}
	}
	return ""
}

func (c *cluster) ready(ctx context.Context, nd *node) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nd.http+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", nd.id, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", nd.id, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

func (c *cluster) partition(ctx context.Context, nd *node, on bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://%s/v1/debug/partition?on=%t", nd.http, on), nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: partition on=%t: %w", nd.id, on, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: partition on=%t: %s %s (was the cluster started with --fault-injection?)", nd.id, on, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
