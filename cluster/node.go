// Package cluster owns the raft node: the bolt log and stable store, file snapshots, the
// TCP transport, bootstrap and joining, and group commit of proposed commands.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/wsregistry/wsregistry/fsm"
)

// Config is what a raft node needs. Durations left zero take LAN defaults: raft's own
// defaults (1 s) are tuned for WANs and make failover take seconds.
type Config struct {
	NodeID    string
	DataDir   string
	Listener  net.Listener // raft traffic; the caller binds it so tests can use 127.0.0.1:0
	Advertise string       // ip:port peers dial; must not be 0.0.0.0

	// BootstrapExpect is how many voters form the first configuration. 1 means a node with no
	// state bootstraps alone; larger values wait for that many peers found through Join.
	BootstrapExpect int
	// Join lists peers' peer-port (raft) addresses. A node given any never bootstraps alone.
	Join []string

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	ApplyTimeout       time.Duration // how long one proposal may wait for raft
	// CommitWait bounds how long Commit and ConsistentRead wait, across leader elections.
	CommitWait time.Duration

	NoSync bool // skip fsync of the log: only for tests and throwaway benchmarks
	// LogStore is where raft's log lives: LogStoreWAL (the default) or LogStoreBolt
	// (logstore.go). A node finding its log in the other one moves it at start.
	LogStore          string
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	SnapshotRetain    int

	GroupCommitMax  int           // commands in one raft entry at most
	GroupCommitWait time.Duration // extra wait for more commands once one is queued (0: take what is queued)

	Logger   *slog.Logger
	RaftLogs hclog.Level // floor for raft's own log lines (default INFO)

	// Peer authenticates every connection on the peer port (raft and internal calls).
	Peer PeerAuth

	// HealthInterval is how often the leader probes every member (health.go). Zero: a
	// tenth of the grace SilentMembers is asked about (100 ms..1 s), DefaultHealthInterval
	// until then.
	HealthInterval time.Duration
	// Voters is how many voters the leader keeps (DefaultVoters); every other member is a
	// non-voter. Autopilot (autopilot.go) restores it after a voter is lost.
	Voters int
	// DeadServerTimeout is how long a voter may be silent before autopilot removes it;
	// StabilizationTime is how long a non-voter must be healthy and caught up before it is
	// promoted. Zero: DefaultDeadServerTimeout, DefaultStabilizationTime.
	DeadServerTimeout time.Duration
	StabilizationTime time.Duration
	// FaultInjection wraps the raft log in a store whose writes a switch can block
	// (SetDiskBlocked): tests and the chaos harness only.
	FaultInjection bool
	// trailingLogs overrides how many entries raft keeps after a snapshot (tests: a
	// lagging member then needs a snapshot after a few writes, not 10,240).
	trailingLogs uint64

	// Observers for metrics; nil is fine.
	OnBatch       func(commands int)                  // a group-committed raft entry was proposed
	OnSnapshot    func(took time.Duration, err error) // a snapshot was persisted
	AfterSnapshot func()                              // raft is done with a snapshot (log compacted too)
	OnApply       func(binary bool)                   // a command entry was applied; binary: fsm.TypeBinaryBatch
	// OnCommit observes every Commit: path is "local" (on the leader) or "forwarded".
	OnCommit func(path string, took time.Duration, err error)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&c.ElectionTimeout, DefaultElectionTimeout)
	def(&c.LeaderLeaseTimeout, DefaultLeaderLeaseTimeout)
	def(&c.CommitTimeout, DefaultCommitTimeout)
	def(&c.ApplyTimeout, DefaultApplyTimeout)
	def(&c.CommitWait, DefaultCommitWait)
	def(&c.SnapshotInterval, DefaultSnapshotInterval)
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		c.LeaderLeaseTimeout = c.HeartbeatTimeout
	}
	if c.LogStore == "" {
		c.LogStore = LogStoreWAL
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotRetain <= 0 {
		c.SnapshotRetain = DefaultSnapshotRetain
	}
	if c.GroupCommitMax <= 0 {
		c.GroupCommitMax = DefaultGroupCommitMax
	}
	if c.BootstrapExpect <= 0 {
		c.BootstrapExpect = 1
	}
	if c.Voters <= 0 {
		c.Voters = DefaultVoters
	}
	def(&c.DeadServerTimeout, DefaultDeadServerTimeout)
	def(&c.StabilizationTime, DefaultStabilizationTime)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RaftLogs == hclog.NoLevel {
		c.RaftLogs = hclog.Info
	}
}

// Node is one member of the raft cluster.
type Node struct {
	cfg       Config
	raft      *raft.Raft
	fsm       *notifyingFSM
	layer     *streamLayer
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore // raft.db: the stable store, and the log with LogStoreBolt
	closeLogs func() error          // releases the write-ahead log (nil with LogStoreBolt)
	batcher   *batcher
	client    *peerClient
	forwarder *forwarder   // a follower's writes, coalesced per call to the leader
	internal  *http.Server // internal calls from peers, on the peer port
	fwdServer *fwdServer   // followers' forward streams, on the peer port
	watch     *memberWatch
	health    *healthProber
	pilot     *autopilot
	faults    *faultyLogStore // nil unless Config.FaultInjection
	log       *slog.Logger

	binaryOK     atomic.Bool // every server announced fsm.FeatureBinaryBatch (latched)
	binarySnapOK atomic.Bool // every server announced fsm.FeatureBinarySnapshot (latched)

	// joinMu is held by each join attempt; Leave sets leaving under it, so a join loop
	// still running in the background cannot add the node back after it left.
	joinMu  sync.Mutex
	leaving bool

	logs            raft.LogStore        // raft's log (through its cache), for commit notices
	protocolVersion raft.ProtocolVersion // raft's, for the commit notices' RPC header

	nudge struct { // commit notices to the followers (notice.go)
		mu       sync.Mutex
		want     uint64 // the highest last index a commit asked to be carried to the followers
		notice   uint64 // the highest committed batch index to announce
		running  bool   // nudgeLoop is running
		stopped  bool   // Close began: no more notices
		loop     sync.WaitGroup
		members  map[raft.ServerID]*noticeState
		accepted atomic.Uint64 // notices members accepted
		early    atomic.Uint64 // notices refused for an entry not stored yet, and retried
	}

	closeOnce sync.Once
	closeErr  error
}

// Open starts raft on cfg.DataDir. With no raft state there and BootstrapExpect 1 the node
// bootstraps a one-node cluster; with existing state it restarts from it.
func Open(cfg Config, state *fsm.FSM) (*Node, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("cluster: node id is empty")
	}
	if cfg.Listener == nil {
		return nil, errors.New("cluster: no raft listener")
	}
	raftDir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		return nil, fmt.Errorf("cluster: data dir: %w", err)
	}
	layer, err := newStreamLayer(cfg.Listener, cfg.Advertise, &cfg.Peer)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	hlog := newHclogAdapter(cfg.Logger.With("subsystem", "raft"), cfg.RaftLogs)
	fail := func(err error) (*Node, error) {
		layer.Close()
		return nil, err
	}

	// NoFreelistSync: bolt no longer writes its freelist on every commit (one commit per
	// log append on every node with LogStoreBolt; etcd does the same); opening rebuilds it
	// by a scan. The map freelist keeps that cheap as the file grows.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(raftDir, "raft.db"), NoSync: cfg.NoSync,
		BoltOptions: &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		return fail(fmt.Errorf("cluster: open raft.db: %w", err))
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, cfg.SnapshotRetain, hlog)
	if err != nil {
		store.Close()
		return fail(fmt.Errorf("cluster: snapshot store: %w", err))
	}
	// A log moved into the write-ahead log must continue from the newest snapshot.
	var snapIndex uint64
	if metas, err := snaps.List(); err == nil && len(metas) > 0 {
		snapIndex = metas[0].Index
	}
	rawLogs, closeLogs, err := openLogStore(cfg.LogStore, raftDir, store, snapIndex, cfg.NoSync, hlog, cfg.Logger)
	if err != nil {
		store.Close()
		return fail(fmt.Errorf("cluster: raft log: %w", err))
	}
	closeStores := func() {
		if closeLogs != nil {
			closeLogs()
		}
		store.Close()
	}
	// MaxRPCsInFlight 1: no pipelined replication. hashicorp/raft's pipeline can deadlock a
	// leader's replication to a member for good once that member refuses an entry (a stale
	// term after a partition, a log gap): the decoder returns, one more send parks on the
	// pipeline's unbuffered channel, and replicate() never returns, so heartbeats keep
	// flowing and no election heals it (hashicorp/raft#612; our chaos run's goroutine dump
	// of a leader that could not shut down showed exactly that). Group commit keeps one
	// batch in flight anyway, so synchronous AppendEntries cost little (BENCHMARKS.md).
	transport := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:          layer,
		MaxPool:         3,
		MaxRPCsInFlight: 1,
		Timeout:         5 * time.Second,
		Logger:          hlog,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	if cfg.trailingLogs > 0 {
		rc.TrailingLogs = cfg.trailingLogs
	}
	rc.Logger = hlog
	if err := raft.ValidateConfig(rc); err != nil {
		transport.Close()
		closeStores()
		return nil, fmt.Errorf("cluster: raft config: %w", err)
	}

	hasState, err := raft.HasExistingState(rawLogs, store, snaps)
	if err != nil {
		transport.Close()
		closeStores()
		return nil, fmt.Errorf("cluster: read raft state: %w", err)
	}

	nf := newNotifyingFSM(state)
	nf.onSnapshot = cfg.OnSnapshot
	nf.afterSnap = cfg.AfterSnapshot
	nf.onApply = cfg.OnApply
	// Replication reads back the entries just stored; an in-memory ring of the latest ones
	// spares a read of the log store for each (Consul keeps 512). 64: entries hold up to
	// GroupCommitMax commands (~100 KiB), and the pipeline only reads the newest few.
	logStore := rawLogs
	var faults *faultyLogStore
	if cfg.FaultInjection {
		faults = newFaultyLogStore(logStore)
		logStore = faults
	}
	logs, err := raft.NewLogCache(64, timedLogStore{LogStore: logStore, monotonic: cfg.LogStore == LogStoreWAL})
	if err != nil {
		transport.Close()
		closeStores()
		return nil, fmt.Errorf("cluster: log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, nf, logs, store, snaps, transport)
	if err != nil {
		transport.Close()
		closeStores()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	n := &Node{cfg: cfg, raft: r, fsm: nf, layer: layer, transport: transport, store: store, closeLogs: closeLogs, faults: faults, log: cfg.Logger,
		logs: logs, protocolVersion: rc.ProtocolVersion}
	state.SetBinarySnapshots(n.BinarySnapshots)
	n.batcher = newBatcher(cfg.GroupCommitMax, cfg.GroupCommitWait, raftCommit(r, cfg.ApplyTimeout, n.BinaryBatches), batcherHooks{
		// A forwarded write's follower waits for the news, unless the next batch is already
		// on its way: its entry carries the commit index one log append later, and under
		// load a notice per batch (an RPC and its answer to every member) was a third of
		// raft's traffic (BENCHMARKS.md, round 10). At one writer nothing is on its way.
		committed: func(index uint64, forwarded bool) {
			n.nudgeFollowers(index, r.LastIndex(), forwarded && !n.batcher.busy())
		},
		onBatch: cfg.OnBatch,
	})
	n.watch = newMemberWatch(r)
	n.client = newPeerClient(layer)
	n.forwarder = newForwarder(n.client, func() (string, error) {
		if _, addr := n.Leader(); addr != "" {
			return addr, nil
		}
		return "", ErrNoLeader
	}, n.BinaryBatches, cfg.GroupCommitMax, cfg.GroupCommitWait)
	n.startInternal()
	n.startForwardServer()
	n.health = newHealthProber(n)
	n.pilot = newAutopilot(n)

	if !hasState && cfg.BootstrapExpect == 1 && len(cfg.Join) == 0 {
		boot := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: transport.LocalAddr(),
		}}}
		if err := r.BootstrapCluster(boot).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.Close()
			return nil, fmt.Errorf("cluster: bootstrap: %w", err)
		}
		n.log.Info("bootstrapped a one-node cluster", "raft", cfg.Advertise)
	} else if hasState {
		n.log.Info("restarting from existing raft state", "node", cfg.NodeID, "dir", raftDir)
	}
	return n, nil
}

// ID is this node's raft server id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Advertise is the raft address peers use for this node.
func (n *Node) Advertise() string { return n.cfg.Advertise }

// IsLeader reports whether this node currently leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's id and raft address, empty when none is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderChanged returns a channel that is closed the next time raft reports a new leader: a
// write waiting for one retries then, not after its backoff. Take it before looking at the
// leader, so a change in between is not missed.
func (n *Node) LeaderChanged() <-chan struct{} { return n.watch.leaderChanged() }

// SetPartitioned turns the fault switch on or off (tests and the chaos harness): raft
// traffic and the internal calls in both directions fail while it is on.
func (n *Node) SetPartitioned(on bool) { n.layer.partitioned.Store(on) }

// Partitioned reports the fault switch.
func (n *Node) Partitioned() bool { return n.layer.partitioned.Load() }

// AppliedIndex is the index of the last entry applied to this node's state.
func (n *Node) AppliedIndex() uint64 { return n.fsm.applied() }

// WaitApplied blocks until this node has applied index, so a reply can promise
// read-your-write on this node.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	return n.fsm.waitApplied(ctx, index)
}

// Ready reports whether a leader is known and this node has applied everything it knows
// to be committed.
func (n *Node) Ready() bool {
	if _, addr := n.Leader(); addr == "" {
		return false
	}
	// raft's own applied index counts the entries our FSM never sees (a new leader's no-op,
	// configuration changes): comparing the FSM's index would stay "behind" after an
	// election until the next write, and a cluster nobody writes to would never be ready.
	// raft advances the commit index before it hands the entries to the FSM, so a write
	// being applied right now looks like lag for a moment: wait that moment out for the
	// index seen now (later writes do not extend the wait). A node catching up stays behind
	// for longer.
	commit := n.raft.CommitIndex()
	deadline := time.Now().Add(readyApplyGrace)
	for n.raft.AppliedIndex() < commit {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// readyApplyGrace is how long Ready waits for entries already committed to be applied.
const readyApplyGrace = 100 * time.Millisecond

// Barrier waits until every entry committed before it has been applied (leader only).
func (n *Node) Barrier(timeout time.Duration) error { return n.announce(n.raft.Barrier(timeout)) }

// BinaryBatches reports whether every server of the configuration announced (fsm.NodeMeta
// Features) that it reads fsm.TypeBinaryBatch entries. Until then entries and forwarded
// writes are JSON batches, which every build reads: during a rolling upgrade a node of the
// earlier build would stop on a binary entry (Apply cannot skip a command it does not
// know), and an earlier leader would refuse a binary forward. Once true it stays true: a
// node of an earlier build cannot join a log that holds binary entries anyway.
func (n *Node) BinaryBatches() bool { return n.allAnnounced(fsm.FeatureBinaryBatch, &n.binaryOK) }

// BinarySnapshots reports whether every server of the configuration restores the binary
// snapshot format (fsm.FeatureBinarySnapshot), latched like BinaryBatches: until then the
// FSM writes snapshots an older member can restore when raft sends it one.
func (n *Node) BinarySnapshots() bool {
	return n.allAnnounced(fsm.FeatureBinarySnapshot, &n.binarySnapOK)
}

// allAnnounced reports whether every server's metadata carries feature; once true it stays
// true (latch): a member without it is refused at join from then on.
func (n *Node) allAnnounced(feature uint64, latch *atomic.Bool) bool {
	if latch.Load() {
		return true
	}
	if n.raft == nil {
		return false
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	servers := f.Configuration().Servers
	if len(servers) == 0 {
		return false
	}
	for _, srv := range servers {
		m, ok := n.fsm.inner.Node(string(srv.ID))
		if !ok || m.Features&feature == 0 {
			return false
		}
	}
	latch.Store(true)
	return true
}

// Close stops group commit and raft and releases the log and raft.db.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.forwarder.close()
		n.batcher.close()
		n.stopNudging()
		n.pilot.close()
		n.health.close()
		if n.faults != nil {
			n.faults.set(false) // a write hanging on the fault switch would hold up Shutdown
		}
		err := n.raft.Shutdown().Error()
		// raft closed the peer port's listener with its transport: nothing new arrives.
		n.internal.Close()
		n.fwdServer.close()
		n.client.close()
		n.fsm.close() // nothing is applied any more: release who waits for an index
		n.watch.close(n.raft)
		if terr := n.transport.Close(); err == nil {
			err = terr
		}
		if n.closeLogs != nil {
			if lerr := n.closeLogs(); err == nil {
				err = lerr
			}
		}
		if serr := n.store.Close(); err == nil {
			err = serr
		}
		n.closeErr = err
	})
	return n.closeErr
}
