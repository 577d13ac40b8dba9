package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/wsregistry/wsregistry/internal/version"
	"github.com/wsregistry/wsregistry/registry"
)

// rebalanceFlags are serve's flags of registry.Rebalance.
type rebalanceFlags struct {
	on        bool
	tolerance float64
	rate      float64
	settle    time.Duration
}

func addRebalanceFlags(fs *flag.FlagSet, r *rebalanceFlags) {
	fs.BoolVar(&r.on, "rebalance", true, "close a few agent connections per second (1012) while this node holds more than its fair share, so agents spread over the nodes again after a rolling restart")
	fs.Float64Var(&r.tolerance, "rebalance-tolerance", registry.DefaultRebalanceTolerance, "how far above (or, for another member, below) the fair share counts as unbalanced, as a fraction (at least one agent)")
	fs.Float64Var(&r.rate, "rebalance-rate", 0, "most agent connections closed per second on this node (0: 5% of the fair share, at least 2; a drain moves four times as fast, at least 10/s)")
	fs.DurationVar(&r.settle, "rebalance-settle", registry.DefaultRebalanceSettle, "pause of rebalancing after a membership change, an election or a member not ready")
}

func (r rebalanceFlags) config() registry.Rebalance {
	return registry.Rebalance{Off: !r.on, Tolerance: r.tolerance, Rate: r.rate, Settle: r.settle}
}

func (r rebalanceFlags) validate() error {
	switch {
	case r.tolerance < 0 || r.tolerance > 10:
		return fmt.Errorf("--rebalance-tolerance %g: want a fraction between 0 and 10 (0.1 is 10%%)", r.tolerance)
	case r.rate < 0:
		return fmt.Errorf("--rebalance-rate %g: want 0 (automatic) or a positive rate", r.rate)
	case r.settle < 0:
		return fmt.Errorf("--rebalance-settle %v: must not be negative", r.settle)
	}
	return nil
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] != "--json" {
		fmt.Fprintf(stderr, "Usage: wsregistry version [--json]\n")
		return 2
	}
	if len(args) > 0 {
		fmt.Fprintf(stdout, "{\"version\":%q,\"revision\":%q,\"go\":%q}\n", version.String(), version.Revision(), version.GoVersion())
		return 0
	}
	fmt.Fprintf(stdout, "wsregistry %s (%s)\n", version.String(), version.GoVersion())
	return 0
}

// drainStatus is GET/POST /v1/drain's answer.
type drainStatus struct {
	Node     string `json:"node"`
	Draining bool   `json:"draining"`
	Agents   int    `json:"agents"`
	Moving   int    `json:"moving"`
	Done     bool   `json:"done"`
}

func runDrain(args []string, stdout, stderr io.Writer) int {
	var wait time.Duration
	var leave, cancel bool
	return clientCommandWith("drain", "Usage: wsregistry drain [flags]\n\nThe node at --addr turns not ready, refuses new agents and moves its agents to the other\nnodes at a bounded rate (closing them with 1012; each stays findable until it registered\nagain elsewhere); this waits until it holds none. Admin: needs the admin token.", args, stdout, stderr, 0, 0,
		func(fs *flag.FlagSet) {
			fs.DurationVar(&wait, "wait", 60*time.Second, "how long to wait until the node holds no agent (0: start the drain and return)")
			fs.BoolVar(&leave, "leave", false, "then make the node leave the cluster (the Kubernetes preStop hook)")
			fs.BoolVar(&cancel, "cancel", false, "end a drain: the node is ready and accepts agents again")
		},
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			path := "/v1/drain"
			if cancel {
				path += "?cancel=true"
			}
			var st drainStatus
			if _, err := c.apiCall(http.MethodPost, path, nil, &st); err != nil {
				if !leave || cancel {
					return err
				}
				// preStop: a node that cannot drain must still leave.
				fmt.Fprintf(stdout, "drain failed (%v): leaving anyway\n", err)
				wait = 0
			}
			if cancel {
				fmt.Fprintf(stdout, "%s: drain cancelled, %d agents\n", st.Node, st.Agents)
				return nil
			}
			fmt.Fprintf(stdout, "%s: draining, %d agents, %d moving\n", st.Node, st.Agents, st.Moving)
			deadline := time.Now().Add(wait)
			last := st
			for !st.Done && time.Now().Before(deadline) {
				time.Sleep(500 * time.Millisecond)
				if _, err := c.apiCall(http.MethodGet, "/v1/drain", nil, &st); err != nil {
					return err
				}
				if st != last {
					fmt.Fprintf(stdout, "%s: %d agents, %d moving\n", st.Node, st.Agents, st.Moving)
					last = st
				}
			}
			if st.Done {
				fmt.Fprintf(stdout, "%s: drained, holds no agent\n", st.Node)
			} else if wait > 0 {
				fmt.Fprintf(stdout, "%s: still holds %d agents (%d moving) after %v\n", st.Node, st.Agents, st.Moving, wait)
			}
			if leave {
				var out map[string]string
				if _, err := c.apiCall(http.MethodPost, "/v1/leave", nil, &out); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s left the cluster\n", out["node"])
			}
			if wait > 0 && !st.Done && !leave {
				return fmt.Errorf("not drained within %v", wait)
			}
			return nil
		})
}
