package httpapi

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/watch"
)

func (a *api) handleReady(w http.ResponseWriter, _ *http.Request) {
	ok, why := a.node.Ready()
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (a *api) handleWhere(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("namespace")
	if err := a.cfg.ValidateNamespace(ns); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	addr, ok := a.state.Where(ns)
	if !ok {
		writeError(w, http.StatusNotFound, "no live instance of namespace "+strconv.Quote(ns))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"namespace": ns, "host": addr})
}

func (a *api) handleNamespaces(w http.ResponseWriter, _ *http.Request) {
	all := a.state.Namespaces()
	out := make([]watch.Namespace, 0, len(all))
	for _, ns := range all {
		out = append(out, watch.NamespaceOf(ns.Name, ns.Instances))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) handleNamespace(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("namespace")
	if err := a.cfg.ValidateNamespace(ns); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	regs := a.state.Instances(ns)
	if len(regs) == 0 {
		writeError(w, http.StatusNotFound, "no live instance of namespace "+strconv.Quote(ns))
		return
	}
	writeJSON(w, http.StatusOK, watch.NamespaceOf(ns, regs))
}

func (a *api) handleCluster(w http.ResponseWriter, _ *http.Request) {
	v := DescribeCluster(a.cfg.NodeID, a.raft, a.state, a.node.Fenced())
	v.Version = a.cfg.Version
	if a.cfg.Balance != nil {
		v.Balance = a.cfg.Balance()
	}
	if a.cfg.Pace != nil {
		v.Pace = a.cfg.Pace()
	}
	ap := a.raft.Autopilot()
	v.Autopilot = &AutopilotView{TargetVoters: ap.TargetVoters, Recent: ap.Recent, Counts: ap.Counts, Failures: ap.Failures}
	if v.Autopilot.Recent == nil {
		v.Autopilot.Recent = []cluster.AutopilotAction{}
	}
	writeJSON(w, http.StatusOK, v)
}

// MemberView is one member in GET /v1/cluster.
type MemberView struct {
	ID       string `json:"id"`
	Raft     string `json:"raft"`
	WS       string `json:"ws,omitempty"`
	HTTP     string `json:"http,omitempty"`
	Suffrage string `json:"suffrage"` // raft's word: Voter, Nonvoter, Staging
	// Role is the suffrage in lower case: voter, nonvoter (replicates, serves agents and
	// reads, never counts for quorum) or staging.
	Role          string `json:"role"`
	Leader        bool   `json:"leader"`
	Incarnation   uint64 `json:"incarnation,omitempty"`
	LastContactMS *int64 `json:"last_contact_ms"` // null when this node cannot know
	// Version is the build the member announced ("" for builds before versions were
	// announced): a mixed-version cluster during an upgrade shows here.
	Version  string `json:"version,omitempty"`
	Draining bool   `json:"draining,omitempty"`
	// Agents is how many agent sessions the member holds, from the replicated state.
	Agents *int `json:"agents,omitempty"`
	// Health is the leader's probe of the member (only when this node leads).
	Health *HealthView `json:"health,omitempty"`
}

// HealthView is the leader's view of one member from its probes (cluster/health.go).
type HealthView struct {
	// LastContactAgeMS is the time since the member last showed that it keeps up.
	LastContactAgeMS int64  `json:"last_contact_age_ms"`
	AppliedIndex     uint64 `json:"applied_index"`
	// Lag is how far its applied index was behind the leader's commit index at its last answer.
	Lag     uint64 `json:"lag"`
	Healthy bool   `json:"healthy"`
	// HealthyForMS is how long it has been healthy without a break (autopilot promotes a
	// non-voter after --stabilization-time of it).
	HealthyForMS int64 `json:"healthy_for_ms"`
}

// AutopilotView is what autopilot keeps and did, in GET /v1/cluster.
type AutopilotView struct {
	TargetVoters int `json:"target_voters"`
	// Recent are the latest actions this node took while it led (newest last, bounded).
	Recent   []cluster.AutopilotAction `json:"recent"`
	Counts   map[string]uint64         `json:"counts"`
	Failures uint64                    `json:"failures"`
}

// ClusterView is GET /v1/cluster: the members and raft progress as one node sees them.
type ClusterView struct {
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
	Members      []MemberView `json:"members"`
	// Version is this node's build; Balance its rebalancing decision; Pace its recent rates
	// per second (registrations, lookups, proxied calls). Only in GET /v1/cluster.
	Version string `json:"version,omitempty"`
	Balance any    `json:"balance,omitempty"`
	Pace    any    `json:"pace,omitempty"`
	// Autopilot is what this node's autopilot did while it led. Only in GET /v1/cluster.
	Autopilot *AutopilotView `json:"autopilot,omitempty"`
}

// raftStateWord keeps the state names /v1/cluster has always used (raft's own spelling).
func raftStateWord(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// DescribeCluster is the cluster as node self sees it, members sorted by id. The node's
// watch stream shows it too, so both answers agree.
func DescribeCluster(self string, c Cluster, s State, fenced bool) ClusterView {
	st := c.Status()
	leaderID, _ := c.Leader()
	v := ClusterView{
		Node: self, State: raftStateWord(st.State), Leader: leaderID, Term: st.Term,
		CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastIndex: st.LastIndex,
		Fenced: fenced, PeerSecurity: string(c.Security()),
	}
	silence := c.MemberSilence()
	health := c.MemberHealth()
	now := time.Now()
	var agents map[string]int
	if sc, ok := s.(sessionCounter); ok {
		agents = sc.SessionCounts()
	}
	isLeader := c.IsLeader()
	for _, m := range c.Members() {
		mv := MemberView{ID: m.ID, Raft: m.Address, Suffrage: m.Suffrage, Role: strings.ToLower(m.Suffrage), Leader: m.ID == leaderID}
		if meta, ok := s.Node(mv.ID); ok {
			mv.WS, mv.HTTP, mv.Incarnation = meta.WSAddr, meta.HTTPAddr, meta.Incarnation
			mv.Version, mv.Draining = meta.Version, meta.Draining
		}
		if agents != nil {
			c := agents[mv.ID]
			mv.Agents = &c
		}
		// Only the leader hears from every member; a follower knows its own contact with the
		// leader and nothing about the others.
		var ms int64 = -1
		switch {
		case isLeader && mv.ID == self:
			ms = 0
		case isLeader:
			ms = silence[mv.ID].Milliseconds() // 0 for members answering heartbeats
		case mv.ID == self || mv.Leader:
			ms = lastContactMillis(c)
		}
		if ms >= 0 {
			mv.LastContactMS = &ms
		}
		switch h, ok := health[mv.ID]; {
		case isLeader && mv.ID == self:
			// The leader is the reference the others are measured against.
			mv.Health = &HealthView{AppliedIndex: st.AppliedIndex, Healthy: true}
		case isLeader && ok:
			mv.Health = &HealthView{
				LastContactAgeMS: now.Sub(h.LastContact).Milliseconds(), AppliedIndex: h.AppliedIndex, Lag: h.Lag, Healthy: h.Healthy(),
			}
			if h.Healthy() {
				mv.Health.HealthyForMS = now.Sub(h.HealthySince).Milliseconds()
			}
		}
		v.Members = append(v.Members, mv)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].ID < v.Members[j].ID })
	return v
}
