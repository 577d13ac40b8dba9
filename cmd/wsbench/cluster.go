package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wsregistry/wsregistry/internal/localcluster"
)

// cluster is a local cluster started by scripts/local-cluster.sh, addressed by node index.
type cluster struct {
	*localcluster.Cluster
	host string
	n    int
	hc   *http.Client
}

func newCluster(dir, host string, n int) *cluster {
	hc := &http.Client{Timeout: 10 * time.Second}
	return &cluster{Cluster: localcluster.New(dir, host, n, hc), host: host, n: n, hc: hc}
}

func (c *cluster) ws(i int) string                         { return c.Nodes[i].WS }
func (c *cluster) http(i int) string                       { return c.Nodes[i].HTTP }
func (c *cluster) pid(i int) (int, error)                  { return c.Nodes[i].PID() }
func (c *cluster) pids() []int                             { return c.PIDs() }
func (c *cluster) leader(ctx context.Context) (int, error) { return c.Leader(ctx) }

func (c *cluster) getJSON(ctx context.Context, addr, path string, v any) error {
	_, err := c.GetJSON(ctx, addr, path, v)
	return err
}

func (c *cluster) ready(ctx context.Context, i int) bool { return c.Ready(ctx, c.Nodes[i]) == nil }

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

// capture records what it takes to start node i again exactly as it runs now (before a kill).
func (c *cluster) capture(i int) error { return c.Nodes[i].Capture() }

// kill sends SIGKILL to node i (by its PID) and waits until it is gone.
func (c *cluster) kill(i int) error {
	p, err := c.pid(i)
	if err != nil {
		return err
	}
	if err := c.Nodes[i].Signal(syscall.SIGKILL); err != nil {
		return err
	}
	// The group leader shows as a zombie while other threads may still be
	// exiting with the sockets open: wait until the node's ports refuse.
	for range 2500 {
		if localcluster.IsZombie(p) && refused(c.http(i)) && refused(c.ws(i)) {
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

// restart starts node i again as capture recorded it and returns the time until it is ready.
func (c *cluster) restart(ctx context.Context, i int) (time.Duration, error) {
	start := time.Now()
	if err := c.Nodes[i].Start("wsbench: restarting"); err != nil {
		return 0, err
	}
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

// saveHeapProfile writes node i's heap profile, after a GC, to file.
func (c *cluster) saveHeapProfile(ctx context.Context, i int, file string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.http(i)+"/debug/pprof/heap?gc=1", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile of node%d: HTTP %d (is --pprof on?)", i, resp.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, body, 0o644)
}
