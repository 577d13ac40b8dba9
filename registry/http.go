package registry

import (
	"context"
	"net/http"

	"github.com/wsregistry/wsregistry/dashboard"
	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/httpapi"
	"github.com/wsregistry/wsregistry/internal/version"
)

// apiHandler is the public HTTP API (package httpapi) over this node: the node answers
// for readiness, fencing, leaving and proxied calls, raft for progress and membership,
// and the local state for reads.
func (n *Node) apiHandler() http.Handler {
	return httpapi.New(httpapi.Config{
		NodeID:              n.cfg.NodeID,
		State:               apiState{FSM: n.state, n: n},
		Cluster:             n.raft,
		Node:                n,
		Fetcher:             n,
		Auth:                n.auth,
		ValidateNamespace:   ValidateNamespace,
		Metrics:             n.metrics.handler(),
		Watch:               n.ui().hub,
		Dashboard:           dashboard.Handler(),
		Pprof:               n.cfg.Pprof,
		FaultInjection:      n.cfg.FaultInjection,
		FetchTimeoutDefault: n.cfg.FetchTimeoutDefault,
		FetchTimeoutMax:     n.cfg.FetchTimeoutMax,
		FetchBodyLimit:      n.cfg.ReadLimit,
		OnLeft:              n.cfg.OnLeft,
		Logger:              n.log,
		Version:             version.String(),
		Drain: func(ctx context.Context, cancel bool) (any, error) {
			if cancel {
				return n.Undrain(ctx)
			}
			return n.Drain(ctx)
		},
		DrainStatus: func() any { return n.DrainStatus() },
		Balance:     func() any { return n.BalanceStatus() },
		Pace:        func() any { return n.Pace() },
	})
}

// apiState is the local state as the HTTP API reads it; its where shares the round robin
// of the agents' where.
type apiState struct {
	*fsm.FSM
	n *Node
}

func (s apiState) Where(ns string) (string, bool) {
	addr, ok := s.n.Where(ns)
	result := "found"
	if !ok {
		result = "not_found"
	}
	s.n.metrics.httpWhere.WithLabelValues(result).Inc()
	return addr, ok
}

// ClusterView describes the members and raft progress as this node sees them
// (GET /v1/cluster).
func (n *Node) ClusterView() httpapi.ClusterView {
	return httpapi.DescribeCluster(n.cfg.NodeID, n.raft, apiState{FSM: n.state, n: n}, n.fenced.Load())
}

// Leave removes this node from the cluster gracefully (see cluster.Node.Leave).
func (n *Node) Leave(ctx context.Context) error { return n.raft.Leave(ctx) }
