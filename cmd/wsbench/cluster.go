package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cluster describes a local cluster started by scripts/local-cluster.sh:
// node i has WS port 8427+10i and HTTP port 8428+10i on host; its PID is in
// dir/node<i>.pid.
type cluster struct {
	host string
	n    int
	dir  string
	hc   *http.Client
}

func (c *cluster) ws(i int) string   { return c.host + ":" + strconv.Itoa(8427+10*i) }
func (c *cluster) http(i int) string { return c.host + ":" + strconv.Itoa(8428+10*i) }

func (c *cluster) pid(i int) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir, "node"+strconv.Itoa(i)+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// pids of the nodes that are running now.
func (c *cluster) pids() []int {
	var out []int
	for i := range c.n {
		if p, err := c.pid(i); err == nil && syscall.Kill(p, 0) == nil {
			out = append(out, p)
		}
	}
	return out
}

func (c *cluster) getJSON(ctx context.Context, addr, path string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: HTTP %d", addr, path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// leader returns the index of the leader node as any live node reports it.
func (c *cluster) leader(ctx context.Context) (int, error) {
	var v struct {
		Leader string `json:"leader"`
	}
	var lastErr error
	for i := range c.n {
		if err := c.getJSON(ctx, c.http(i), "/v1/cluster", &v); err != nil {
			lastErr = err
			continue
		}
		if idx, ok := strings.CutPrefix(v.Leader, "node"); ok {
			return strconv.Atoi(idx)
		}
		lastErr = fmt.Errorf("leader %q is not nodeN", v.Leader)
	}
	return -1, fmt.Errorf("no leader: %w", lastErr)
}

func (c *cluster) ready(ctx context.Context, i int) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.http(i)+"/readyz", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (c *cluster) waitReady(ctx context.Context, i int, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		if c.ready(ctx, i) {
			return time.Since(start), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("node%d not ready after %s", i, timeout)
}

// procSpec is what it takes to start a killed node again exactly as it was.
type procSpec struct {
	args []string
	cwd  string
	log  string
}

func (c *cluster) spec(i int) (procSpec, error) {
	p, err := c.pid(i)
	if err != nil {
		return procSpec{}, err
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
	if err != nil {
		return procSpec{}, err
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(p) + "/cwd")
	if err != nil {
		return procSpec{}, err
	}
	return procSpec{args: args, cwd: cwd, log: filepath.Join(c.dir, "node"+strconv.Itoa(i)+".log")}, nil
}

// kill sends SIGKILL to node i (by its PID) and waits until it is gone.
func (c *cluster) kill(i int) error {
	p, err := c.pid(i)
	if err != nil {
		return err
	}
	if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill node%d (pid %d): %w", i, p, err)
	}
	// The group leader shows as a zombie while other threads may still be
	// exiting with the sockets open: wait until the node's ports refuse.
	for range 2500 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
		gone := err != nil || strings.Contains(string(b), ") Z ")
		if gone && refused(c.http(i)) && refused(c.ws(i)) {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("node%d (pid %d) still alive after SIGKILL", i, p)
}

func refused(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return true
	}
	conn.Close()
	return false
}

// restart starts node i again from spec, records its PID where
// local-cluster.sh looks for it, and returns the time until it is ready.
func (c *cluster) restart(ctx context.Context, i int, s procSpec) (time.Duration, error) {
	logf, err := os.OpenFile(s.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(s.args[0], s.args[1:]...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = s.cwd, logf, logf
	// Its own process group: it must outlive this generator like the others.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("restart node%d: %w", i, err)
	}
	pidFile := filepath.Join(c.dir, "node"+strconv.Itoa(i)+".pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return 0, err
	}
	go func() { _ = cmd.Wait() }() // reap it if it ends while we run
	if _, err := c.waitReady(ctx, i, 60*time.Second); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// heapStats reads runtime.MemStats lines from /debug/pprof/heap?debug=1 after
// a GC (needs --pprof on the node).
func (c *cluster) heapStats(ctx context.Context, i int) (map[string]int64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.http(i)+"/debug/pprof/heap?debug=1&gc=1", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("heap profile of node%d: HTTP %d (is --pprof on?)", i, resp.StatusCode)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		// "# HeapInuse = 12345"
		l := sc.Text()
		if !strings.HasPrefix(l, "# ") {
			continue
		}
		k, v, ok := strings.Cut(l[2:], " = ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}
