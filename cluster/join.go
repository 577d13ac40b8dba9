package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
}

// JoinRequest asks the leader to add a voter.
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
	for _, s := range n.Servers() {
		if s.Suffrage == raft.Voter {
			info.Voters = append(info.Voters, string(s.ID))
		}
	}
	return info
}

func (n *Node) hasState() bool {
	return n.raft.LastIndex() > 0
}

// Servers is the current raft configuration as this node knows it.
func (n *Node) Servers() []raft.Server {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil
	}
	return f.Configuration().Servers
}

// leaderHTTP finds the leader's HTTP address in the replicated node metadata.
func (n *Node) leaderHTTP() (string, error) {
	id, _ := n.Leader()
	if id == "" {
		return "", errors.New("no leader known")
	}
	meta, ok := n.fsm.inner.Node(id)
	if !ok || meta.HTTPAddr == "" {
		return "", fmt.Errorf("leader %s has not announced its HTTP address yet", id)
	}
	return meta.HTTPAddr, nil
}

// LeaderHTTP is the leader's advertised HTTP address, for forwarding.
func (n *Node) LeaderHTTP() (string, error) { return n.leaderHTTP() }

// AddVoter makes id a voter at addr, idempotently: a member with the same id and address is
// left alone; a stale entry with that id or that address is removed first.
func (n *Node) AddVoter(id, addr string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	for _, s := range n.Servers() {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		switch {
		case sameID && sameAddr:
			if s.Suffrage == raft.Voter {
				return nil
			}
		case sameID || sameAddr:
			if err := n.raft.RemoveServer(s.ID, 0, 10*time.Second).Error(); err != nil {
				return fmt.Errorf("remove stale member %s at %s: %w", s.ID, s.Address, err)
			}
			n.log.Info("removed stale member before join", "id", s.ID, "addr", s.Address)
		}
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	n.log.Info("member joined", "id", id, "raft", addr)
	return nil
}

// RemoveServer drops id from the configuration (leader only).
func (n *Node) RemoveServer(id string) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	found := slices.ContainsFunc(n.Servers(), func(s raft.Server) bool { return string(s.ID) == id })
	if !found {
		return nil
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	n.log.Info("member removed", "id", id)
	return nil
}

// InfoHandler serves Info to peers.
func (n *Node) InfoHandler(clusterKey string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n.internalAllowed(clusterKey, w, r) {
			writeJSON(w, http.StatusOK, n.Info())
		}
	}
}

// leaderOnly runs fn on the leader, forwarding the same request there from a follower.
func (n *Node) leaderOnly(clusterKey string, client *Client, path string, decode func([]byte) error, fn func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !n.internalAllowed(clusterKey, w, r) {
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = decode(body)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request body: " + err.Error()})
			return
		}
		if !n.IsLeader() {
			if r.Header.Get(forwardedHeader) != "" {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not the leader either"})
				return
			}
			addr, err := n.leaderHTTP()
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
				return
			}
			var out map[string]string
			status, err := client.send(r.Context(), http.MethodPost, addr, path, body, &out, true)
			if err != nil {
				writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, status, out)
			return
		}
		if err := fn(); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// JoinHandler adds the calling node as a voter (forwarded to the leader when needed).
func (n *Node) JoinHandler(clusterKey string, client *Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var jr JoinRequest
		n.leaderOnly(clusterKey, client, PathJoin,
			func(b []byte) error {
				if err := json.Unmarshal(b, &jr); err != nil {
					return err
				}
				if jr.ID == "" || jr.RaftAddr == "" {
					return errors.New("id and raft_addr are required")
				}
				return nil
			},
			func() error {
				// Once binary entries are written, a node of an earlier build would stop on the
				// first one it applies (and stop again after every restart).
				if jr.Features&fsm.FeatureBinaryBatch == 0 && n.BinaryBatches() {
					return fmt.Errorf("%w (node %s)", ErrJoinerTooOld, jr.ID)
				}
				return n.AddVoter(jr.ID, jr.RaftAddr)
			})(w, r)
	}
}

// RemoveHandler drops a member from the configuration (forwarded to the leader when needed).
func (n *Node) RemoveHandler(clusterKey string, client *Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var rr RemoveRequest
		n.leaderOnly(clusterKey, client, PathRemove,
			func(b []byte) error {
				if err := json.Unmarshal(b, &rr); err != nil {
					return err
				}
				if rr.ID == "" {
					return errors.New("id is required")
				}
				return nil
			},
			func() error { return n.RemoveServer(rr.ID) })(w, r)
	}
}

// JoinCluster makes this node a member through any of peers (HTTP addresses), retrying
// with backoff until ctx ends. With BootstrapExpect > 1 and no leader anywhere, it
// bootstraps once it has found that many nodes without raft state, as Consul does: every
// node that sees the same set proposes the same configuration.
func (n *Node) JoinCluster(ctx context.Context, client *Client, peers []string) error {
	backoff := 100 * time.Millisecond
	for {
		err := n.tryJoin(ctx, client, peers)
		if err == nil {
			return nil
		}
		n.log.Debug("join attempt failed", "err", err, "retry_in", backoff)
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

func (n *Node) tryJoin(ctx context.Context, client *Client, peers []string) error {
	self := n.Info()
	fresh := map[string]string{} // id -> raft address of nodes with no state
	if !self.HasState {
		fresh[self.ID] = self.RaftAddr
	}
	var errs []error
	for _, p := range peers {
		var info Info
		status, err := client.do(ctx, http.MethodGet, p, PathInfo, nil, &info)
		if err != nil || status != http.StatusOK {
			errs = append(errs, fmt.Errorf("%s: %d %v", p, status, err))
			continue
		}
		if info.ID == self.ID {
			continue
		}
		if info.LeaderID != "" {
			if info.LeaderID == self.ID && slices.Contains(info.Voters, self.ID) {
				return nil
			}
			var out map[string]string
			status, err := client.do(ctx, http.MethodPost, p, PathJoin, JoinRequest{ID: self.ID, RaftAddr: self.RaftAddr, Features: fsm.Features}, &out)
			if err == nil && status == http.StatusOK {
				n.log.Info("joined the cluster", "via", p, "leader", info.LeaderID)
				return nil
			}
			errs = append(errs, fmt.Errorf("join via %s: %d %v %s", p, status, err, out["error"]))
			continue
		}
		if !info.HasState {
			fresh[info.ID] = info.RaftAddr
		}
	}
	if self.LeaderID != "" && slices.Contains(self.Voters, self.ID) && self.LeaderID == self.ID {
		return nil // we lead a cluster that has us: nothing to join
	}
	if !self.HasState && n.cfg.BootstrapExpect > 1 && len(fresh) >= n.cfg.BootstrapExpect {
		var servers []raft.Server
		for id, addr := range fresh {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
		}
		slices.SortFunc(servers, func(a, b raft.Server) int { return compareIDs(a.ID, b.ID) })
		err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
		n.log.Info("bootstrapped the cluster", "voters", len(servers))
		return errors.New("bootstrapped: waiting for a leader")
	}
	if len(errs) == 0 {
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

// Info asks the node at addr (HTTP) to describe itself.
func (c *Client) Info(ctx context.Context, addr string) (Info, error) {
	var info Info
	status, err := c.do(ctx, http.MethodGet, addr, PathInfo, nil, &info)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("%s answered %d", addr, status)
	}
	return info, err
}

// Join asks the node at addr to add req as a voter (it forwards to its leader).
func (c *Client) Join(ctx context.Context, addr string, req JoinRequest) error {
	return c.post(ctx, addr, PathJoin, req)
}

// Remove asks the node at addr to drop id from the configuration.
func (c *Client) Remove(ctx context.Context, addr, id string) error {
	return c.post(ctx, addr, PathRemove, RemoveRequest{ID: id})
}

func (c *Client) post(ctx context.Context, addr, path string, body any) error {
	var out map[string]string
	status, err := c.do(ctx, http.MethodPost, addr, path, body, &out)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("%s%s answered %d: %s", addr, path, status, out["error"])
	}
	return nil
}
