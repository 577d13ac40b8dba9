// Package registry is the node that ties the pieces together: agent sessions become raft
// commands, `where` reads the local state, liveness fences and purges, and Fetch proxies
// calls to agents. The public HTTP API is package httpapi, wired here.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/version"
	"github.com/wsregistry/wsregistry/watch"
	"github.com/wsregistry/wsregistry/wsserver"
)

// Config is one node's configuration. Listeners are bound by the caller (tests pass
// 127.0.0.1:0); advertise addresses are what other nodes and the UI use to reach this one.
type Config struct {
	NodeID  string
	DataDir string

	WSListener   net.Listener
	HTTPListener net.Listener
	RaftListener net.Listener

	WSAdvertise   string
	HTTPAdvertise string
	RaftAdvertise string

	Cluster cluster.Config // NodeID, DataDir, Listener and Advertise are filled in from above

	ReadLimit    int64 // default DefaultReadLimit; also bounds a POST /v1/fetch body
	PingInterval time.Duration
	PingMisses   int
	WriteTimeout time.Duration

	// CommitWait bounds how long an agent's `online` waits for its entry to commit,
	// across leader elections (DESIGN: writes wait, bounded, and retry on the new leader).
	// It sets Cluster.CommitWait. Default DefaultCommitWait.
	CommitWait time.Duration

	// FetchTimeoutDefault applies to proxied HTTP calls that name none (DefaultFetchTimeout);
	// FetchTimeoutMax caps what a caller may ask for (DefaultFetchTimeoutMax);
	// FetchDialTimeout bounds dialing an agent (DefaultFetchDialTimeout).
	FetchTimeoutDefault time.Duration
	FetchTimeoutMax     time.Duration
	FetchDialTimeout    time.Duration

	// Join lists peers' peer-port (raft) addresses. How peers authenticate each other is
	// Cluster.Peer.
	Join []string
	// NodeGrace is how long a member may be silent before the leader purges its sessions,
	// and how long a node cut off from the leader keeps serving before it fences itself
	// (DefaultNodeGrace).
	NodeGrace time.Duration
	// Auth is who may do what: tokens (--admin-token, --agent-token, --token-file) and the
	// trusted networks that may act without one while none is configured.
	Auth auth.Config
	// VerifyAgentIP refuses agents whose advertised host is not their source address.
	VerifyAgentIP bool
	Limits        Limits
	// HandshakeTimeout bounds how long a connection may take to send its upgrade request
	// (DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration

	// InheritWindow is how long a connection that replaced an older one (same host:port) has
	// to confirm, with online, the namespaces it inherited; the rest are dropped
	// (DefaultInheritWindow).
	InheritWindow time.Duration

	// Watch configures the /v1/watch hub (coalescing window, heartbeat, history).
	Watch watch.Config

	// Rebalance evens out agent connections across the members (rebalance.go).
	Rebalance Rebalance

	// Pprof mounts /debug/pprof on the HTTP port (off by default: it exposes internals).
	Pprof bool
	// FaultInjection exposes POST /v1/debug/partition (tests and the chaos harness only).
	FaultInjection bool
	// OnLeft runs after the node left the cluster through the API (the process then exits).
	OnLeft func()

	Logger *slog.Logger

	// features overrides what the node announces it reads (fsm.Features): tests stand in
	// for a node of an earlier build with it.
	features *uint64
}

// Node is one running registry node.
type Node struct {
	cfg         Config
	log         *slog.Logger
	state       *fsm.FSM
	raft        *cluster.Node
	mux         *wsserver.Mux
	ws          *wsserver.Server
	peers       *wsserver.Pool // channels to agents for proxied calls
	metrics     *nodeMetrics
	auth        *auth.Authority
	watchUI     *uiParts // the watch hub (ui.go)
	wsHTTP      *http.Server
	api         *http.Server // serves package httpapi's handler (http.go)
	incarnation atomic.Uint64

	sessionSeq atomic.Uint64
	requestSeq atomic.Uint64
	roundRobin atomic.Uint64
	announced  atomic.Bool
	fenced     atomic.Bool
	fenceMu    sync.Mutex // one fence or unfence transition at a time
	handoverMu sync.Mutex
	handovers  map[string]handover // agent key -> registrations a replaced connection left
	live       sync.Map            // fsm.SessionID -> *agentSession: sessions with an open connection here
	conns      connCounter
	bal        *balancer   // rebalancing, drain, pace (rebalance.go)
	draining   atomic.Bool // drain.go: not ready, agents moved off
	stopping   atomic.Bool // CloseAgents began: agents are closed with 1001, not moved

	ctx    context.Context // the node's lifetime
	cancel context.CancelFunc
	wg     sync.WaitGroup

	agentsOnce sync.Once
	closeOnce  sync.Once
	closeErr   error
}

// setDefaults fills what is zero (or non-positive) from defaults.go.
func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def(&c.CommitWait, DefaultCommitWait)
	def(&c.NodeGrace, DefaultNodeGrace)
	def(&c.InheritWindow, DefaultInheritWindow)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.FetchTimeoutDefault, DefaultFetchTimeout)
	def(&c.FetchTimeoutMax, DefaultFetchTimeoutMax)
	def(&c.FetchDialTimeout, DefaultFetchDialTimeout)
	if c.ReadLimit <= 0 {
		c.ReadLimit = DefaultReadLimit
	}
	c.Limits.setDefaults()
	c.Rebalance.setDefaults()
}

// Start opens raft on the data dir, starts serving agents and HTTP, and announces this node
// (its addresses, and a purge of its older incarnations) in the background.
func Start(cfg Config) (*Node, error) {
	cfg.setDefaults()
	if cfg.WSListener == nil || cfg.HTTPListener == nil || cfg.RaftListener == nil {
		return nil, errors.New("registry: WS, HTTP and raft listeners are required")
	}
	if cfg.NodeID == "" {
		return nil, errors.New("registry: node id is empty")
	}
	if err := validateName("the node id", cfg.NodeID); err != nil {
		// The id names sessions and members in every node's state: the same rules as a
		// namespace (valid UTF-8, no control characters, bounded).
		return nil, fmt.Errorf("registry: %w", err)
	}
	if cfg.NodeID == fsm.ClusterOwner {
		return nil, fmt.Errorf("registry: the node id %q is reserved for registrations the cluster holds", fsm.ClusterOwner)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("registry: data dir: %w", err)
	}
	inc, err := nextIncarnation(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	log := cfg.Logger.With("node", cfg.NodeID)

	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{cfg: cfg, log: log, state: fsm.New(), ctx: ctx, cancel: cancel}
	n.incarnation.Store(inc)
	n.handovers = map[string]handover{}
	n.conns.perIP = map[string]int{}
	n.startMetrics()
	ac := cfg.Auth
	if ac.Logger == nil {
		ac.Logger = log
	}
	ac.OnRefusal = func(reason string) { n.metrics.authRefused.WithLabelValues(reason).Inc() }
	if n.auth, err = auth.New(ac); err != nil {
		cancel()
		return nil, fmt.Errorf("registry: %w", err)
	}
	n.startUI() // observes the FSM, so it must be in place before raft replays the log

	cc := cfg.Cluster
	cc.NodeID, cc.DataDir, cc.Listener, cc.Advertise, cc.Join = cfg.NodeID, cfg.DataDir, cfg.RaftListener, cfg.RaftAdvertise, cfg.Join
	cc.CommitWait = cfg.CommitWait
	if cc.HealthInterval == 0 {
		// The purges act on the node grace: probe at a tenth of it from the first round.
		cc.HealthInterval = cluster.HealthIntervalFor(cfg.NodeGrace)
	}
	cc.OnCommit = n.metrics.observeWrite
	if cc.Peer.Trusted == nil {
		cc.Peer.Trusted = func(remote net.Addr) bool { return n.auth.Trusted(remote.String()) }
	}
	cc.Peer.OnRefused = func(remote net.Addr, reason string) {
		n.auth.RefuseFrom(remote.String(), nil, "peer connection: "+reason, auth.ReasonPeer)
	}
	if cc.Logger == nil {
		cc.Logger = log
	}
	cc.OnBatch = func(commands int) { n.metrics.batchSize.Observe(float64(commands)) }
	cc.OnApply = func(binary bool) {
		if binary {
			n.metrics.entriesBinary.Inc()
		} else {
			n.metrics.entriesJSON.Inc()
		}
	}
	cc.OnSnapshot = func(took time.Duration, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		n.metrics.snapshots.WithLabelValues(result).Observe(took.Seconds())
	}
	cc.AfterSnapshot = func() { go returnIdleMemory() } // off raft's snapshot goroutine (memory.go)
	rn, err := cluster.Open(cc, n.state)
	if err != nil {
		cancel()
		n.stopUI()
		return nil, fmt.Errorf("registry: %w", err)
	}
	n.raft = rn
	n.mux = wsserver.NewMux()
	n.mux.HandleAsync("ws", "online", n.handleOnline)
	n.mux.HandleInline("ws", "where", n.handleWhere) // a local lookup: no goroutine per request
	n.mux.OnUnknown(func(protocol, _ string) {
		n.metrics.wsRequests.WithLabelValues(protocolLabel(protocol), "other", "104").Inc()
	})
	n.ws = wsserver.NewServer(wsserver.ServerConfig{
		ChannelConfig: wsserver.ChannelConfig{
			Mux:          n.mux,
			ReadLimit:    cfg.ReadLimit,
			PingInterval: cfg.PingInterval,
			PingMisses:   cfg.PingMisses,
			WriteTimeout: cfg.WriteTimeout,
			OnClose:      n.agentClosed,
			OnIgnored:    func(*wsserver.Channel, string) { n.metrics.ignored.Inc() },
			Logger:       log,
		},
		OnOpen: n.agentOpened,
	})
	n.peers = wsserver.NewPool(n.ws, cfg.WSAdvertise, wsserver.DialConfig{
		ChannelConfig: wsserver.ChannelConfig{
			Mux:          n.mux,
			ReadLimit:    cfg.ReadLimit,
			PingInterval: cfg.PingInterval,
			PingMisses:   cfg.PingMisses,
			WriteTimeout: cfg.WriteTimeout,
			Logger:       log,
		},
		DialTimeout: cfg.FetchDialTimeout,
	})
	n.wsHTTP = &http.Server{Handler: n.agentGate(n.ws), ReadHeaderTimeout: cfg.HandshakeTimeout}
	n.api = &http.Server{Handler: n.apiHandler(), ReadHeaderTimeout: DefaultAPIReadHeaderTimeout}
	n.observeCluster()
	n.startBalancer()

	n.serve(n.wsHTTP, cfg.WSListener, "ws")
	n.serve(n.api, cfg.HTTPListener, "http")
	if len(cfg.Join) > 0 {
		n.wg.Add(1)
		go n.join()
	}
	n.wg.Add(2)
	go n.announce()
	go n.watchLiveness()
	n.logPeerSecurity()
	log.Info("node started", "incarnation", inc, "ws", cfg.WSAdvertise, "http", cfg.HTTPAdvertise, "raft", cfg.RaftAdvertise, "data", cfg.DataDir)
	return n, nil
}

// logPeerSecurity says at start how peers are authenticated, loudly when they are not.
func (n *Node) logPeerSecurity() {
	clustered := len(n.cfg.Join) > 0 || n.cfg.Cluster.BootstrapExpect > 1
	switch mode := n.raft.Security(); mode {
	case cluster.PeerInsecure:
		n.log.Warn("peers are NOT authenticated: any host that reaches the peer port can join and rewrite the registry (--cluster-insecure)", "peer_security", mode)
	case cluster.PeerTrusted:
		level := slog.LevelInfo
		if clustered {
			level = slog.LevelWarn
		}
		n.log.Log(n.ctx, level, "peers are not authenticated: only peers on --trusted-networks (loopback by default) may connect; set --cluster-key or --tls-ca to cluster across hosts", "peer_security", mode)
	default:
		n.log.Info("peers authenticated", "peer_security", mode)
	}
}

func (n *Node) serve(srv *http.Server, ln net.Listener, name string) {
	// net/http's own errors (TLS handshake failures, handler panics) go through slog too,
	// not the standard logger.
	srv.ErrorLog = slog.NewLogLogger(n.log.With("listener", name).Handler(), slog.LevelWarn)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("listener stopped", "listener", name, "err", err)
		}
	}()
}

// announce records this node's addresses and purges the sessions of its earlier
// incarnations (nobody is connected to them any more). Readiness waits for it.
func (n *Node) announce() {
	defer n.wg.Done()
	for n.ctx.Err() == nil {
		if err := n.announceOnce(n.ctx); err == nil {
			n.announced.Store(true)
			return
		} else {
			n.log.Debug("announce retry", "err", err)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ownMeta is the metadata this node announces.
func (n *Node) ownMeta() fsm.NodeMeta {
	meta := fsm.NodeMeta{
		ID: n.cfg.NodeID, WSAddr: n.cfg.WSAdvertise, HTTPAddr: n.cfg.HTTPAdvertise,
		RaftAddr: n.cfg.RaftAdvertise, Incarnation: n.incarnation.Load(), Features: fsm.Features,
		Version: version.String(), Draining: n.draining.Load(),
	}
	if n.cfg.features != nil {
		meta.Features = *n.cfg.features
	}
	return meta
}

func (n *Node) announceOnce(ctx context.Context) error {
	meta := n.ownMeta()
	inc := meta.Incarnation
	cmds := []fsm.Command{
		fsm.SetNode{RequestID: n.newRequestID(), Meta: meta},
		fsm.PurgeNode{RequestID: n.newRequestID(), Node: n.cfg.NodeID, UpToIncarnation: inc - 1},
	}
	errs, err := n.submit(ctx, cmds...)
	if err == nil {
		err = firstError(errs)
	}
	if err != nil {
		return err
	}
	n.metrics.purges.WithLabelValues("restart").Inc()
	n.log.Info("node announced", "incarnation", inc)
	return nil
}

// join makes this node a member through the --join peers; idempotent, so a restarted
// node (even one that left) asks again.
func (n *Node) join() {
	defer n.wg.Done()
	if err := n.raft.JoinCluster(n.ctx, n.cfg.Join); err != nil && n.ctx.Err() == nil {
		n.log.Error("could not join the cluster", "err", err)
	}
}

// newRequestID is this node's next request id, "<node>/<incarnation>/<seq>": one
// allocation (every write makes one, on the path of every online).
func (n *Node) newRequestID() string {
	var buf [96]byte
	b := append(buf[:0], n.cfg.NodeID...)
	b = append(b, '/')
	b = strconv.AppendUint(b, n.incarnation.Load(), 10)
	b = append(b, '/')
	b = strconv.AppendUint(b, n.requestSeq.Add(1), 10)
	return string(b)
}

// submit commits cmds as one unit through the cluster (see cluster.Node.Commit): the
// caller may promise read-your-write on this node once it returns.
func (n *Node) submit(ctx context.Context, cmds ...fsm.Command) ([]error, error) {
	return n.raft.Commit(ctx, cmds...)
}

// Ready reports whether this node can serve: a leader is known, this node has applied
// what it knows to be committed, and its own announcement went through.
func (n *Node) Ready() (bool, string) {
	switch {
	case n.fenced.Load():
		return false, "fenced: cut off from the leader for longer than the node grace"
	case n.draining.Load():
		return false, "draining: moving its agents to other nodes"
	case !n.announced.Load():
		return false, "node has not announced itself to the cluster yet"
	case !n.raft.Ready():
		if _, addr := n.raft.Leader(); addr == "" {
			return false, "no leader known"
		}
		return false, "catching up with the leader's log"
	}
	return true, "ready"
}

// State is the node's replicated registration state (read-only use).
func (n *Node) State() *fsm.FSM { return n.state }

// Auth is who may do what on this node; Reload re-reads its token file (SIGHUP).
func (n *Node) Auth() *auth.Authority { return n.auth }

// Cluster is the node's raft member.
func (n *Node) Cluster() *cluster.Node { return n.raft }

// Incarnation is this run's incarnation number.
func (n *Node) Incarnation() uint64 { return n.incarnation.Load() }

// WSAddr and HTTPAddr are the actual listening addresses.
func (n *Node) WSAddr() string   { return n.cfg.WSListener.Addr().String() }
func (n *Node) HTTPAddr() string { return n.cfg.HTTPListener.Addr().String() }

// CloseAgents stops accepting agents and closes their connections with 1001, deregistering
// them while this node is still a member. Leaving the cluster comes after it.
func (n *Node) CloseAgents(ctx context.Context) {
	n.agentsOnce.Do(func() {
		n.stopping.Store(true)
		n.announceLeaving(ctx)
		n.wsHTTP.Close()
		if err := n.ws.Shutdown(ctx); err != nil {
			n.log.Warn("closing agent connections", "err", err)
		}
		n.flushMoving(ctx)
	})
}

// Close closes the agents' connections (see CloseAgents), then stops HTTP and raft.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.CloseAgents(ctx)
		n.log.Debug("stopping: agents closed")
		n.peers.Close()
		n.cancel()
		n.stopUI()
		// Requests still running (a watch stream, a forwarded write) get a moment, no more.
		apiCtx, apiCancel := context.WithTimeout(context.Background(), 2*time.Second)
		n.api.Shutdown(apiCtx)
		apiCancel()
		n.api.Close()
		n.log.Debug("stopping: HTTP closed")
		n.closeErr = n.raft.Close()
		n.log.Debug("stopping: raft closed")
		n.wg.Wait()
		n.log.Info("node stopped")
	})
	return n.closeErr
}

// Crash stops the node without deregistering its agents, as a killed process would. Tests use
// it to check what the next incarnation cleans up.
func (n *Node) Crash() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.wsHTTP.Close()
		n.stopUI()
		n.api.Close()
		n.peers.Close()
		n.closeErr = n.raft.Close()
		n.ws.CloseAll(websocket.StatusGoingAway, "crash")
		n.wg.Wait()
	})
	return n.closeErr
}

// closed reports whether Close or Crash ran.
func (n *Node) closed() bool { return n.ctx.Err() != nil }
