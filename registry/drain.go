package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// DrainStatus is GET/POST /v1/drain: whether the node drains and what it still holds.
type DrainStatus struct {
	Node     string `json:"node"`
	Draining bool   `json:"draining"`
	// Agents is the agent connections still open here; Moving the moved agents whose
	// registrations this node keeps until they registered again elsewhere.
	Agents int `json:"agents"`
	Moving int `json:"moving"`
	// Done: draining and nothing left (the node can go).
	Done bool `json:"done"`
}

// Drain makes the node not ready, refuses new agent connections, announces that it drains
// (other nodes pause rebalancing) and moves its agents off at the bounded rate (see
// balanceOnce). Idempotent; it returns at once: DrainStatus says when the node holds none.
func (n *Node) Drain(ctx context.Context) (DrainStatus, error) {
	if !n.draining.Swap(true) {
		n.log.Warn("draining: moving every agent to other nodes", "agents", n.ws.Len())
	}
	if err := n.announceMeta(ctx); err != nil {
		// The drain goes on (this node is not ready and refuses agents); only the other
		// nodes' pause waits for the announcement, which the reconciler retries.
		return n.DrainStatus(), fmt.Errorf("draining, but the announcement did not commit: %w", err)
	}
	return n.DrainStatus(), nil
}

// Undrain ends a drain: the node is ready and accepts agents again.
func (n *Node) Undrain(ctx context.Context) (DrainStatus, error) {
	if n.draining.Swap(false) {
		n.log.Info("drain cancelled: accepting agents again")
	}
	if err := n.announceMeta(ctx); err != nil {
		return n.DrainStatus(), fmt.Errorf("drain cancelled, but the announcement did not commit: %w", err)
	}
	return n.DrainStatus(), nil
}

// DrainStatus reports the drain's progress.
func (n *Node) DrainStatus() DrainStatus {
	st := DrainStatus{Node: n.cfg.NodeID, Draining: n.draining.Load(), Agents: n.ws.Len()}
	if n.bal != nil {
		st.Moving = n.movingCount()
	}
	st.Done = st.Draining && st.Agents == 0 && st.Moving == 0
	return st
}

// announceMeta commits this node's metadata as it is now (draining or not).
func (n *Node) announceMeta(ctx context.Context) error {
	errs, err := n.submit(ctx, fsm.SetNode{RequestID: n.newRequestID(), Meta: n.ownMeta()})
	if err == nil {
		err = firstError(errs)
	}
	return err
}

// announceLeaving marks this node draining in the replicated metadata before it closes its
// agents, so the other nodes pause rebalancing while it is away (a restart comes back with a
// new incarnation, which is not draining). Best effort and short: a node without a leader
// just stops.
func (n *Node) announceLeaving(ctx context.Context) {
	if ok, _ := n.Ready(); !ok && !n.draining.Load() {
		return
	}
	n.draining.Store(true)
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := n.announceMeta(ctx); err != nil {
		n.log.Debug("could not announce that this node is going away", "err", err)
	}
}
