package registry

import (
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
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
	Node         string `json:"node"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	LastIndex    uint64 `json:"last_index"`
	Fenced       bool   `json:"fenced"`
	// PeerSecurity is how this node authenticates its peers: mutual-tls, cluster-key,
	// trusted-hosts (no credential: loopback or --trusted-networks only) or insecure.
	PeerSecurity string       `json:"peer_security"`
	Members      []memberView `json:"members"`
}

// raftStateWord keeps the state names /v1/cluster always showed (raft's own spelling).
func raftStateWord(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// ClusterView describes the members and raft progress as this node sees them.
func (n *Node) ClusterView() clusterView {
	st := n.raft.Status()
	leaderID, _ := n.raft.Leader()
	v := clusterView{
		Node: n.cfg.NodeID, State: raftStateWord(st.State), Leader: leaderID, Term: st.Term,
		CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastIndex: st.LastIndex,
		Fenced: n.fenced.Load(), PeerSecurity: string(n.raft.Security()),
	}
	silence := n.raft.MemberSilence()
	isLeader := n.raft.IsLeader()
	for _, s := range n.raft.Members() {
		m := memberView{ID: s.ID, Raft: s.Address, Suffrage: s.Suffrage, Leader: s.ID == leaderID}
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

// Leave removes this node from the cluster gracefully (see cluster.Node.Leave).
func (n *Node) Leave(ctx context.Context) error { return n.raft.Leave(ctx) }

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
	for _, s := range n.raft.Members() {
		known = known || s.ID == id
	}
	if !known {
		writeError(w, http.StatusNotFound, "no member with id "+id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := n.raft.Remove(ctx, id); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "removed", "node": id})
}

// handleAdminJoin adds a member by its peer address (the CLI's join).
func (n *Node) handleAdminJoin(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	addr := strings.TrimSpace(r.URL.Query().Get("addr"))
	if addr == "" {
		addr = strings.TrimSpace(string(body))
	}
	if addr == "" {
		writeError(w, http.StatusBadRequest, "join needs ?addr=<peer address (--raft-addr) of the node to add>")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	id, err := n.raft.AddMember(ctx, addr)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "joined", "node": id})
}
