package registry

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsregistry/wsregistry/watch"
)

// uiParts is what the watch stream needs while the node runs.
type uiParts struct {
	hub           *watch.Hub
	raftUp        atomic.Bool // n.raft is set: the cluster view may be read
	stopObserving func()      // ends the cluster.Node.OnChange subscription
	stopOnce      sync.Once
}

func (n *Node) ui() *uiParts { return n.watchUI }

// watchConfig is the hub's configuration.
func (n *Node) watchConfig() watch.Config { return n.cfg.Watch }

// startUI starts what the watch stream needs; it runs before raft applies anything.
func (n *Node) startUI() {
	u := &uiParts{}
	cfg := n.watchConfig()
	cfg.Logger = n.log
	cfg.Cluster = func() any {
		if !u.raftUp.Load() {
			return nil
		}
		return n.watchClusterView()
	}
	u.hub = watch.New(cfg, n.state)
	n.state.SetObserver(u.hub.Observe)
	n.watchUI = u
	if n.metrics != nil && n.metrics.reg != nil {
		n.metrics.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wsregistry_watchers", Help: "Open /v1/watch streams on this node."},
				func() float64 { return float64(u.hub.Stats().Watchers) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wsregistry_watch_events_encoded_total", Help: "Watch events encoded (once each, whatever the number of watchers)."},
				func() float64 { return float64(u.hub.Stats().Frames) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wsregistry_watch_resyncs_total", Help: "Watchers that fell behind and were sent the full state again."},
				func() float64 { return float64(u.hub.Stats().Resyncs) }),
		)
	}
}

// observeCluster starts following leader and membership changes for the watch stream;
// raft is running by now. A dropped change costs nothing: the hub re-reads the whole view
// (and polls it anyway).
func (n *Node) observeCluster() {
	u := n.ui()
	u.stopObserving = n.raft.OnChange(u.hub.ClusterChanged)
	u.raftUp.Store(true)
	u.hub.ClusterChanged()
}

// stopUI ends watch streams on Close.
func (n *Node) stopUI() {
	u := n.ui()
	if u == nil {
		return
	}
	u.stopOnce.Do(func() {
		if u.stopObserving != nil {
			u.stopObserving()
		}
		u.hub.Close()
	})
}

// watchMember and watchCluster are the cluster view in watch events: GET /v1/cluster
// (httpapi.ClusterView) without what changes all the time (last contact, commit and applied
// indexes), so an event means that something changed.
type watchMember struct {
	ID          string `json:"id"`
	Raft        string `json:"raft"`
	WS          string `json:"ws,omitempty"`
	HTTP        string `json:"http,omitempty"`
	Suffrage    string `json:"suffrage"`
	Role        string `json:"role"` // voter, nonvoter or staging
	Leader      bool   `json:"leader"`
	Incarnation uint64 `json:"incarnation,omitempty"`
	Version     string `json:"version,omitempty"`
	Draining    bool   `json:"draining,omitempty"`
}

type watchCluster struct {
	Node   string `json:"node"`
	State  string `json:"state"`
	Leader string `json:"leader"`
	Term   uint64 `json:"term"`
	Fenced bool   `json:"fenced"`
	// PeerSecurity: the dashboard warns when peers are not authenticated.
	PeerSecurity string        `json:"peer_security"`
	Members      []watchMember `json:"members"`
}

func (n *Node) watchClusterView() watchCluster {
	v := n.ClusterView()
	out := watchCluster{Node: v.Node, State: v.State, Leader: v.Leader, Term: v.Term, Fenced: v.Fenced, PeerSecurity: v.PeerSecurity, Members: []watchMember{}}
	for _, m := range v.Members {
		out.Members = append(out.Members, watchMember{
			ID: m.ID, Raft: m.Raft, WS: m.WS, HTTP: m.HTTP, Suffrage: m.Suffrage, Role: m.Role, Leader: m.Leader, Incarnation: m.Incarnation,
			Version: m.Version, Draining: m.Draining,
		})
	}
	return out
}
