// Package httpapi is a node's public HTTP API: reads (where, namespaces, cluster), the proxy
// gateway (fetch), admin calls (join, leave, remove, snapshot), health and readiness, with
// the watch stream, dashboard and metrics mounted beside them. It reaches the node only
// through the small interfaces below, so its behaviour is testable without raft.
package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/wsserver"
)

// State is the replicated registrations as this node has applied them (*fsm.FSM, with
// Where from the node so HTTP and agents share one round robin).
type State interface {
	// Where picks one live instance of ns.
	Where(ns string) (addr string, ok bool)
	Instances(ns string) []fsm.Registration
	Namespaces() []fsm.NamespaceView
	// Node is a member's announced metadata (its WebSocket and HTTP addresses).
	Node(id string) (fsm.NodeMeta, bool)
}

// Cluster is raft as the API sees it (*cluster.Node): progress and membership for reads,
// and the few verbs admin calls need.
type Cluster interface {
	Status() cluster.Status
	Leader() (id, addr string)
	IsLeader() bool
	Members() []cluster.Member
	// MemberSilence is how long each member has not answered the leader (leader only).
	MemberSilence() map[string]time.Duration
	// MemberHealth is the leader's probe results for every other member (leader only).
	MemberHealth() map[string]cluster.MemberHealth
	// Autopilot is what autopilot did while this node led.
	Autopilot() cluster.AutopilotState
	// SinceLeaderContact is the time since this node heard from a leader: 0 on the leader,
	// negative when it never has.
	SinceLeaderContact() time.Duration
	AppliedIndex() uint64
	Security() cluster.PeerSecurity
	// ConsistentRead returns once this node has applied everything the leader had committed
	// when it was called.
	ConsistentRead(ctx context.Context) error

	AddMember(ctx context.Context, peerAddr string) (id string, err error)
	Remove(ctx context.Context, id string) error
	SaveSnapshot() (snapshot []byte, index uint64, err error)
	// RestoreSnapshot replaces the whole cluster's state; an error wrapping fsm.ErrInvalid
	// means the upload is not a snapshot this build reads.
	RestoreSnapshot(ctx context.Context, snapshot []byte) error
	SetPartitioned(on bool)
}

// Node is the running node's lifecycle (*registry.Node).
type Node interface {
	// Ready says whether the node can serve, and if not, why.
	Ready() (ok bool, why string)
	// Fenced is true while the node is cut off from the leader: its local reads may show
	// agents the majority already purged.
	Fenced() bool
	// CloseAgents closes the agents' connections (they reconnect elsewhere) before a leave.
	CloseAgents(ctx context.Context)
	Leave(ctx context.Context) error
}

// Fetcher calls an agent by namespace (*registry.Node): url is "<namespace>/<path>".
// Errors are *wsserver.Error for the agent's own answer and for a timeout (ECONNABORTED);
// anything else means no agent could be reached.
type Fetcher interface {
	Fetch(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error)
}

// Config is what New needs. State, Cluster, Node, Fetcher and Auth are required; zero
// durations and sizes take the defaults below.
type Config struct {
	// NodeID is this node's id: the cluster view names it, and remove refuses it.
	NodeID  string
	State   State
	Cluster Cluster
	Node    Node
	Fetcher Fetcher
	// Auth decides who may read, fetch and administer.
	Auth *auth.Authority
	// ValidateNamespace holds the namespaces of where and namespaces to the rules agents
	// meet when they register; nil accepts any.
	ValidateNamespace func(ns string) error

	// Metrics, Watch and Dashboard are mounted at /metrics, /v1/watch and / (nil: not mounted).
	// Metrics and Watch are reads; the dashboard page holds no data and is open.
	Metrics, Watch, Dashboard http.Handler

	// Pprof mounts /debug/pprof (admin only: profiles expose internals).
	Pprof bool
	// FaultInjection mounts POST /v1/debug/partition and /v1/debug/disk (tests and the chaos
	// harness only).
	FaultInjection bool

	// FetchTimeoutDefault applies to proxied calls that name none; FetchTimeoutMax caps
	// what a caller may ask for.
	FetchTimeoutDefault time.Duration
	FetchTimeoutMax     time.Duration
	// FetchBodyLimit bounds a fetch's props in bytes: they travel to the agent in one
	// message, which must fit its read limit.
	FetchBodyLimit int64
	// MaxSnapshotUpload bounds POST /v1/snapshot in bytes.
	MaxSnapshotUpload int64
	// LeaveTimeout bounds POST /v1/leave (closing agents, handing over, leaving);
	// MembershipTimeout bounds join and remove.
	LeaveTimeout      time.Duration
	MembershipTimeout time.Duration

	// OnLeft runs after the node left the cluster through the API (the process then exits).
	OnLeft func()
	Logger *slog.Logger

	// Version is this node's build, shown in /v1/cluster (members show what they announced).
	Version string
	// Drain starts (cancel: ends) the node's drain and DrainStatus reports it (drain.go);
	// nil: /v1/drain is not mounted. Their results are answered as JSON.
	Drain       func(ctx context.Context, cancel bool) (any, error)
	DrainStatus func() any
	// Balance and Pace add the node's rebalancing decision and its recent rates (for the
	// dashboard's charts) to /v1/cluster; nil: left out.
	Balance, Pace func() any
}

// Defaults of Config.
const (
	DefaultFetchTimeout      = wsserver.DefaultCallTimeout // as iocore's fetch
	DefaultFetchTimeoutMax   = 5 * time.Minute
	DefaultFetchBodyLimit    = wsserver.DefaultReadLimit // an agent's default read limit
	DefaultMaxSnapshotUpload = cluster.MaxSnapshotUpload
	// DefaultLeaveTimeout leaves room for a leadership transfer after the agents closed.
	DefaultLeaveTimeout      = 30 * time.Second
	DefaultMembershipTimeout = 15 * time.Second
)

func (c *Config) setDefaults() {
	if c.FetchTimeoutDefault <= 0 {
		c.FetchTimeoutDefault = DefaultFetchTimeout
	}
	if c.FetchTimeoutMax <= 0 {
		c.FetchTimeoutMax = DefaultFetchTimeoutMax
	}
	if c.FetchBodyLimit <= 0 {
		c.FetchBodyLimit = DefaultFetchBodyLimit
	}
	if c.MaxSnapshotUpload <= 0 {
		c.MaxSnapshotUpload = DefaultMaxSnapshotUpload
	}
	if c.LeaveTimeout <= 0 {
		c.LeaveTimeout = DefaultLeaveTimeout
	}
	if c.MembershipTimeout <= 0 {
		c.MembershipTimeout = DefaultMembershipTimeout
	}
	if c.ValidateNamespace == nil {
		c.ValidateNamespace = func(string) error { return nil }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// api is one node's HTTP API.
type api struct {
	cfg   Config
	state State
	raft  Cluster
	node  Node
	auth  *auth.Authority
	log   *slog.Logger
}

// New returns the API's handler. It panics when a required dependency is missing: that is
// a wiring mistake, not a runtime condition.
func New(cfg Config) http.Handler {
	cfg.setDefaults()
	if cfg.State == nil || cfg.Cluster == nil || cfg.Node == nil || cfg.Fetcher == nil || cfg.Auth == nil {
		panic("httpapi: State, Cluster, Node, Fetcher and Auth are required")
	}
	a := &api{cfg: cfg, state: cfg.State, raft: cfg.Cluster, node: cfg.Node, auth: cfg.Auth, log: cfg.Logger}
	return a.routes()
}

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.handleReady)
	if a.cfg.Metrics != nil {
		mux.HandleFunc("GET /metrics", a.readScope("metrics", a.cfg.Metrics.ServeHTTP))
	}
	mux.HandleFunc("GET /v1/where/{namespace...}", a.readScope("where", a.read(a.handleWhere)))
	mux.HandleFunc("GET /v1/namespaces", a.readScope("namespaces", a.read(a.handleNamespaces)))
	mux.HandleFunc("GET /v1/namespaces/{namespace...}", a.readScope("namespaces", a.read(a.handleNamespace)))
	mux.HandleFunc("GET /v1/cluster", a.readScope("cluster", a.read(a.handleCluster)))
	// A proxied call reaches an agent's handlers: it needs a credential like a mutation.
	fetch := a.auth.Require(auth.ScopeFetch, "fetch", a.handleFetch)
	mux.HandleFunc("POST /v1/fetch/{namespace}/{path...}", fetch)
	mux.HandleFunc("POST /v1/fetch/{namespace}", fetch)
	mux.HandleFunc("POST /v1/join", a.admin("join", a.handleJoin))
	mux.HandleFunc("POST /v1/leave", a.admin("leave", a.handleLeave))
	mux.HandleFunc("POST /v1/remove/{id}", a.admin("remove", a.handleRemove))
	if a.cfg.Drain != nil && a.cfg.DrainStatus != nil {
		mux.HandleFunc("POST /v1/drain", a.admin("drain", a.handleDrain))
		mux.HandleFunc("GET /v1/drain", a.admin("drain status", a.handleDrainStatus))
	}
	mux.HandleFunc("GET /v1/snapshot", a.admin("snapshot save", a.handleSnapshotSave))
	mux.HandleFunc("POST /v1/snapshot", a.admin("snapshot restore", a.handleSnapshotRestore))
	if a.cfg.Watch != nil {
		mux.HandleFunc("GET /v1/watch", a.readScope("watch", a.cfg.Watch.ServeHTTP))
	}
	if a.cfg.Dashboard != nil {
		// The page and its assets are static and hold no data: open, so a browser can load
		// them before it has a token to send; the data comes from the read endpoints.
		mux.Handle("GET /{$}", a.cfg.Dashboard)
		mux.Handle("GET /assets/", a.cfg.Dashboard)
	}
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", a.admin("pprof", pprof.Index))
		mux.HandleFunc("/debug/pprof/cmdline", a.admin("pprof", pprof.Cmdline))
		mux.HandleFunc("/debug/pprof/profile", a.admin("pprof", pprof.Profile))
		mux.HandleFunc("/debug/pprof/symbol", a.admin("pprof", pprof.Symbol))
		mux.HandleFunc("/debug/pprof/trace", a.admin("pprof", pprof.Trace))
	}
	if a.cfg.FaultInjection {
		mux.HandleFunc("POST /v1/debug/partition", a.admin("partition", a.handlePartition))
		mux.HandleFunc("POST /v1/debug/disk", a.admin("disk fault", a.handleDisk))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}
