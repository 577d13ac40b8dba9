package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wsregistry/wsregistry/internal/localcluster"
)

// node is one wsregistry process of the local cluster.
type node = localcluster.Node

type cluster struct {
	*localcluster.Cluster
	log *slog.Logger
}

func openCluster(dir, host string, n int, log *slog.Logger) (*cluster, error) {
	c := &cluster{Cluster: localcluster.New(dir, host, n, &http.Client{Timeout: 3 * time.Second}), log: log}
	for _, nd := range c.Nodes {
		// Restarts reuse the exact command line local-cluster.sh used.
		if err := nd.Capture(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *cluster) waitLeader(ctx context.Context, timeout time.Duration, not int) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		i, err := c.Leader(ctx)
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
			for _, nd := range c.Nodes {
				// Other reasons ("no leader known") are races with the read above.
				if err := c.Ready(ctx, nd); err != nil && strings.Contains(err.Error(), "catching up") {
					readyzStuck++
					c.log.Warn("node is healthy by /v1/cluster but /readyz says it is catching up", "node", nd.ID, "err", err)
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
	views := make([]localcluster.View, len(c.Nodes))
	for i, nd := range c.Nodes {
		v, err := c.View(ctx, nd)
		switch {
		case err != nil:
			return err.Error()
		case v.Leader == "":
			return nd.ID + ": no leader known"
		case v.Fenced:
			return nd.ID + ": fenced"
		case i > 0 && v.Leader != views[0].Leader:
			return fmt.Sprintf("%s names leader %s, %s names %s", nd.ID, v.Leader, c.Nodes[0].ID, views[0].Leader)
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
			return fmt.Sprintf("%s applied %d, leader %d", c.Nodes[i].ID, v.AppliedIndex, leaderApplied)
		}
	}
	return ""
}

func (c *cluster) partition(ctx context.Context, nd *node, on bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://%s/v1/debug/partition?on=%t", nd.HTTP, on), nil)
	if err != nil {
		return err
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: partition on=%t: %w", nd.ID, on, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: partition on=%t: %s %s (was the cluster started with --fault-injection?)", nd.ID, on, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// membership reads the configuration from the leader and returns it, with why it is not
// what the harness expects ("" when it is): every node a member, min(voters, nodes) of them
// voters (autopilot keeps --voters: a voter removed while it was down is replaced by a
// promoted non-voter, and the node comes back as a non-voter), none half-way (staging).
func (c *cluster) membership(ctx context.Context, voters int) (vs, nvs []string, why string) {
	l, err := c.Leader(ctx)
	if err != nil {
		return nil, nil, err.Error()
	}
	v, err := c.View(ctx, c.Nodes[l])
	if err != nil {
		return nil, nil, err.Error()
	}
	seen := map[string]bool{}
	for _, m := range v.Members {
		seen[m.ID] = true
		switch m.Suffrage {
		case "Voter":
			vs = append(vs, m.ID)
		case "Nonvoter":
			nvs = append(nvs, m.ID)
		default:
			why = fmt.Sprintf("%s is %s", m.ID, m.Suffrage)
		}
	}
	for _, nd := range c.Nodes {
		if !seen[nd.ID] {
			why = nd.ID + " is not a member"
		}
	}
	if want := min(voters, len(c.Nodes)); why == "" && len(vs) != want {
		why = fmt.Sprintf("%d voters %v, want %d", len(vs), vs, want)
	}
	return vs, nvs, why
}

// waitMembership waits until membership finds nothing wrong and returns the voters and
// non-voters, or, at the timeout, what was still wrong.
func (c *cluster) waitMembership(ctx context.Context, timeout time.Duration, voters int) (vs, nvs []string, err error) {
	deadline := time.Now().Add(timeout)
	for {
		vs, nvs, why := c.membership(ctx, voters)
		if why == "" {
			return vs, nvs, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return vs, nvs, fmt.Errorf("membership after %s: %s", timeout, why)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// autopilotCounts sums what the running nodes' autopilots did while they led (a restarted
// node's counts start again from zero: a lower bound).
func (c *cluster) autopilotCounts(ctx context.Context) (counts map[string]uint64, failures uint64) {
	counts = map[string]uint64{}
	for _, nd := range c.Nodes {
		v, err := c.View(ctx, nd)
		if err != nil || v.Autopilot == nil {
			continue
		}
		for k, n := range v.Autopilot.Counts {
			counts[k] += n
		}
		failures += v.Autopilot.Failures
	}
	return counts, failures
}
