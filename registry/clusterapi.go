package registry

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/wsregistry/wsregistry/cluster"
)

// memberView is one member in GET /v1/cluster.
type memberView struct {
	ID            string `json:"id"`
	Raft          string `json:"raft"`
	WS            string `json:"ws,omitempty"`
	HTTP          string `json:"http,omitempty"`
	Suffrage      string `json:"suffrage"`
	Leader        bool   `json:"leader"`
	Incarnation   uint64 `json:"incarnation,omitempty"`
	LastContactMS *int64 `json:"last_contact_ms"` // null when this node cannot know
}

type clusterView struct {
	Node         string       `json:"node"`
	State        string       `json:"state"`
	Leader       string       `json:"leader"`
	Term         uint64       `json:"term"`
	CommitIndex  uint64       `json:"commit_index"`
	AppliedIndex uint64       `json:"applied_index"`
	LastIndex    uint64       `json:"last_index"`
	Fenced       bool         `json:"fenced"`
	Members      []memberView `json:"members"`
}

// ClusterView describes the members and raft progress as this node sees them.
func (n *Node) ClusterView() clusterView {
	r := n.raft.Raft()
	leaderID, _ := n.raft.Leader()
	v := clusterView{
		Node: n.cfg.NodeID, State: r.State().String(), Leader: leaderID, Term: r.CurrentTerm(),
		CommitIndex: r.CommitIndex(), AppliedIndex: n.raft.AppliedIndex(), LastIndex: r.LastIndex(),
		Fenced: n.fenced.Load(),
	}
	silence := n.raft.MemberSilence()
	isLeader := n.raft.IsLeader()
	for _, s := range n.raft.Servers() {
		m := memberView{ID: string(s.ID), Raft: string(s.Address), Suffrage: s.Suffrage.String(), Leader: string(s.ID) == leaderID}
		if meta, ok := n.state.Node(m.ID); ok {
			m.WS, m.HTTP, m.Incarnation = meta.WSAddr, meta.HTTPAddr, meta.Incarnation
		}
		var ms int64 = -1
		switch {
		case isLeader && m.ID == n.cfg.NodeID:
			ms = 0
		case isLeader:
			ms = silence[m.ID].Milliseconds() // 0 for members answering heartbeats
		case m.ID == n.cfg.NodeID || m.Leader:
			ms = n.lastContactMillis()
		}
		if ms >= 0 {
			m.LastContactMS = &ms
		}
		v.Members = append(v.Members, m)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].ID < v.Members[j].ID })
	return v
}

func (n *Node) handleCluster(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.ClusterView())
}

// adminOnly guards join, leave and remove with the admin token when one is set.
func (n *Node) adminOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := n.cfg.AdminToken; tok != "" {
			got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if subtle.ConstantTimeCompare([]byte(got), []byte(tok)) != 1 {
				writeError(w, http.StatusUnauthorized, "missing or wrong admin token")
				return
			}
		}
		h(w, r)
	}
}

// Leave removes this node from the cluster gracefully: a leader hands leadership over
// first, so the cluster does not wait out an election timeout.
func (n *Node) Leave(ctx context.Context) error {
	if len(n.raft.Servers()) <= 1 {
		return nil // the last member has nobody to hand over to
	}
	if n.raft.IsLeader() {
		if err := n.raft.Raft().LeadershipTransfer().Error(); err != nil {
			n.log.Warn("leadership transfer failed; removing self as leader", "err", err)
			return n.raft.RemoveServer(n.cfg.NodeID)
		}
	}
	for {
		if len(n.raft.Servers()) <= 1 {
			return nil // the others left first: nobody to leave
		}
		err := n.removeViaLeader(ctx, n.cfg.NodeID)
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

// removeViaLeader asks the leader (which may be this node) to drop id from the configuration.
func (n *Node) removeViaLeader(ctx context.Context, id string) error {
	if n.raft.IsLeader() {
		return n.raft.RemoveServer(id)
	}
	addr, err := n.raft.LeaderHTTP()
	if err != nil {
		return err
	}
	return n.client.Remove(ctx, addr, id)
}

func (n *Node) handleLeave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	n.CloseAgents(ctx)
	if err := n.Leave(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "left", "node": n.cfg.NodeID})
	if n.cfg.OnLeft != nil {
		go n.cfg.OnLeft()
	}
}

func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == n.cfg.NodeID {
		writeError(w, http.StatusBadRequest, "a node cannot remove itself: use leave")
		return
	}
	known := false
	for _, s := range n.raft.Servers() {
		known = known || string(s.ID) == id
	}
	if !known {
		writeError(w, http.StatusNotFound, "no member with id "+id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := n.removeViaLeader(ctx, id); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "removed", "node": id})
}

// handleAdminJoin adds a member by its HTTP address (the CLI's join).
func (n *Node) handleAdminJoin(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	addr := strings.TrimSpace(r.URL.Query().Get("addr"))
	if addr == "" {
		addr = strings.TrimSpace(string(body))
	}
	if addr == "" {
		writeError(w, http.StatusBadRequest, "join needs ?addr=<HTTP address of the node to add>")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	info, err := n.client.Info(ctx, addr)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("cannot reach %s: %v", addr, err))
		return
	}
	if n.raft.IsLeader() {
		err = n.raft.AddVoter(info.ID, info.RaftAddr)
	} else if leader, lerr := n.raft.LeaderHTTP(); lerr != nil {
		err = lerr
	} else {
		err = n.client.Join(ctx, leader, cluster.JoinRequest{ID: info.ID, RaftAddr: info.RaftAddr})
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "joined", "node": info.ID})
}
