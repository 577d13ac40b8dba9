package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
)

// Info is what a node tells peers that are forming or joining a cluster.
type Info struct {
	ID         string   `json:"id"`
	RaftAddr   string   `json:"raft_addr"`
	HasState   bool     `json:"has_state"` // raft log or snapshot present: never bootstrap with it
	LeaderID   string   `json:"leader_id,omitempty"`
	LeaderRaft string   `json:"leader_raft,omitempty"`
	Term       uint64   `json:"term"`
	Voters     []string `json:"voters"`
	Nonvoters  []string `json:"nonvoters,omitempty"`
}

// JoinRequest asks the leader to add a member: a voter while there are fewer than
// Config.Voters, else a non-voter.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	// Features is what the joining build reads (fsm.Features); earlier builds send none.
	Features uint64 `json:"features,omitempty"`
}

// ErrJoinerTooOld refuses a node whose build cannot read the log's binary entries.
var ErrJoinerTooOld = errors.New("the cluster's log holds binary entries this node's build cannot read: upgrade it before it joins")

// RemoveRequest asks the leader to drop a member from the configuration.
type RemoveRequest struct {
	ID string `json:"id"`
}

// Info describes this node now.
func (n *Node) Info() Info {
	leaderID, leaderAddr := n.Leader()
	info := Info{
		ID: n.cfg.NodeID, RaftAddr: n.cfg.Advertise, HasState: n.hasState(),
		LeaderID: leaderID, LeaderRaft: leaderAddr, Term: n.raft.CurrentTerm(),
	}
	for _, s := range n.servers() {
		switch s.Suffrage {
		case raft.Voter:
			info.Voters = append(info.Voters, string(s.ID))
		case raft.Nonvoter:
			info.Nonvoters = append(info.Nonvoters, string(s.ID))
		}
	}
	return info
}

func (n *Node) hasState() bool {
	return n.raft.LastIndex() > 0
}

// servers is the current raft configuration as this node knows it.
func (n *Node) servers() []raft.Server {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil
	}
	return f.Configuration().Servers
}

// addMember makes id a member at addr, idempotently: a member with the same id and address
// is left alone; a stale entry with that id or that address is removed first. It joins as
// a voter while the configuration has fewer than Config.Voters, else as a non-voter that
// autopilot may promote later (autopilot.go).
func (n *Node) addMember(id, addr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	voters := 0
	for _, s := range n.servers() {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		if s.Suffrage == raft.Voter && !sameID && !sameAddr {
			voters++
		}
		switch {
		case sameID && sameAddr:
			return nil // already a member, voter or not: autopilot decides promotions
		case sameID || sameAddr:
			if err := n.announce(n.raft.RemoveServer(s.ID, 0, 10*time.Second)); err != nil {
				return fmt.Errorf("remove stale member %s at %s: %w", s.ID, s.Address, err)
			}
			n.log.Info("removed stale member before join", "id", s.ID, "addr", s.Address)
		}
	}
	if voters >= n.cfg.Voters {
		if err := n.announce(n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second)); err != nil {
			return fmt.Errorf("add non-voter %s: %w", id, err)
		}
		n.log.Info("member joined as a non-voter", "id", id, "raft", addr, "voters", voters, "target", n.cfg.Voters)
		return nil
	}
	if err := n.announce(n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second)); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	n.log.Info("member joined", "id", id, "raft", addr)
	return nil
}

// removeServer drops id from the configuration (leader only).
func (n *Node) removeServer(id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	found := slices.ContainsFunc(n.servers(), func(s raft.Server) bool { return string(s.ID) == id })
	if !found {
		return nil
	}
	if err := n.announce(n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second)); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	n.log.Info("member removed", "id", id)
	return nil
}

// Remove drops member id from the configuration, through the leader wherever this runs.
func (n *Node) Remove(ctx context.Context, id string) error {
	if n.IsLeader() {
		return n.removeServer(id)
	}
	_, leader := n.Leader()
	if leader == "" {
		return ErrNoLeader
	}
	return n.client.post(ctx, leader, pathRemove, RemoveRequest{ID: id}, false)
}

// AddMember asks the node at peerAddr (its peer port) who it is and makes it a member (a
// voter or a non-voter, see addMember), through the leader wherever this runs (the admin
// API's join).
func (n *Node) AddMember(ctx context.Context, peerAddr string) (id string, err error) {
	info, err := n.client.info(ctx, peerAddr)
	if err != nil {
		return "", fmt.Errorf("cannot reach %s: %w", peerAddr, err)
	}
	if n.IsLeader() {
		return info.ID, n.addMember(info.ID, info.RaftAddr)
	}
	_, leader := n.Leader()
	if leader == "" {
		return info.ID, ErrNoLeader
	}
	return info.ID, n.client.post(ctx, leader, pathJoin, JoinRequest{ID: info.ID, RaftAddr: info.RaftAddr, Features: fsm.Features}, false)
}

// Leave removes this node from the cluster gracefully: a leader hands leadership over
// first, so the cluster does not wait out an election timeout.
func (n *Node) Leave(ctx context.Context) error {
	n.joinMu.Lock()
	n.leaving = true
	n.joinMu.Unlock()
	if len(n.servers()) <= 1 {
		return nil // the last member has nobody to hand over to
	}
	if n.IsLeader() {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.log.Warn("leadership transfer failed; removing self as leader", "err", err)
			return n.removeServer(n.cfg.NodeID)
		}
	}
	for {
		if len(n.servers()) <= 1 {
			return nil // the others left first: nobody to leave
		}
		err := n.Remove(ctx, n.cfg.NodeID)
		if err == nil {
			n.log.Info("left the cluster")
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("leave: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// JoinCluster makes this node a member through any of peers (peer-port addresses),
// retrying with backoff until ctx ends. With BootstrapExpect > 1 and no leader anywhere, it
// bootstraps once it has found that many nodes without raft state, as Consul does: every
// node that sees the same set proposes the same configuration.
func (n *Node) JoinCluster(ctx context.Context, peers []string) error {
	backoff := 100 * time.Millisecond
	for {
		err := n.tryJoin(ctx, peers)
		if err == nil || errors.Is(err, errLeaving) {
			return nil
		}
		n.log.Debug("join attempt failed", "err", err, "retry_in", backoff)
		if errors.Is(err, errPeerRefused) || errors.Is(err, errNotPeerPort) {
			// Neither heals by itself (a wrong key, an HTTP port in --join): say so where
			// operators look, not only at debug level.
			n.log.Warn("a peer refused this node", "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join %v: %w (last error: %v)", peers, ctx.Err(), err)
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (n *Node) tryJoin(ctx context.Context, peers []string) error {
	n.joinMu.Lock()
	defer n.joinMu.Unlock()
	if n.leaving {
		return errLeaving
	}
	self := n.Info()
	fresh := map[string]string{} // id -> raft address of nodes with no state
	if !self.HasState {
		fresh[self.ID] = self.RaftAddr
	}
	var errs []error
	listed := false // this node is one of peers: only then may it take part in a bootstrap
	for _, p := range peers {
		info, err := n.client.info(ctx, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if info.ID == self.ID {
			listed = true
			continue
		}
		if info.LeaderID != "" {
			if info.LeaderID == self.ID && (slices.Contains(info.Voters, self.ID) || slices.Contains(info.Nonvoters, self.ID)) {
				return nil
			}
			err := n.client.post(ctx, p, pathJoin, JoinRequest{ID: self.ID, RaftAddr: self.RaftAddr, Features: fsm.Features}, false)
			if err == nil {
				n.log.Info("joined the cluster", "via", p, "leader", info.LeaderID)
				return nil
			}
			errs = append(errs, fmt.Errorf("join via %s: %w", p, err))
			continue
		}
		if !info.HasState {
			fresh[info.ID] = info.RaftAddr
		}
	}
	if self.LeaderID != "" && slices.Contains(self.Voters, self.ID) && self.LeaderID == self.ID {
		return nil // we lead a cluster that has us: nothing to join
	}
	// A node that is not among its own --join peers (a fourth pod of a StatefulSet created
	// with more replicas than --bootstrap-expect) only ever joins: counting itself, it could
	// bootstrap a second cluster with the listed nodes it happens to find.
	if !self.HasState && listed && n.cfg.BootstrapExpect > 1 && len(fresh) >= n.cfg.BootstrapExpect {
		var servers []raft.Server
		for id, addr := range fresh {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
		}
		slices.SortFunc(servers, func(a, b raft.Server) int { return compareIDs(a.ID, b.ID) })
		// The first Config.Voters by id vote, the rest do not: every node that sees the same
		// set still proposes the same configuration.
		for i := n.cfg.Voters; i < len(servers); i++ {
			servers[i].Suffrage = raft.Nonvoter
		}
		err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
		n.log.Info("bootstrapped the cluster", "voters", len(servers))
		return errors.New("bootstrapped: waiting for a leader")
	}
	if len(errs) == 0 {
		if !listed && n.cfg.BootstrapExpect > 1 {
			return errors.New("no leader yet; this node is not among its --join peers, so it waits to join a cluster they form")
		}
		return fmt.Errorf("no leader yet; %d of %d expected nodes without state found", len(fresh), n.cfg.BootstrapExpect)
	}
	return errors.Join(errs...)
}

func compareIDs(a, b raft.ServerID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
