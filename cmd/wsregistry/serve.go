package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/registry"
	"github.com/wsregistry/wsregistry/watch"
	"github.com/wsregistry/wsregistry/wsserver"
)

// serveConfig is everything `serve` reads from flags and environment.
type serveConfig struct {
	nodeID          string
	dataDir         string
	wsAddr          string
	httpAddr        string
	raftAddr        string
	advertise       string
	bootstrapExpect int
	voters          int
	deadServer      time.Duration
	stabilization   time.Duration
	join            string
	clusterKey      string
	clusterInsecure bool
	trustedNets     string
	adminToken      string
	tokenFile       string
	agentTLS        string
	nodeGrace       time.Duration
	leaveOnTerm     bool
	faultInjection  bool
	pprof           bool
	agentToken      string
	verifyAgentIP   bool
	limits          registry.Limits
	handshake       time.Duration
	tlsCert         string
	tlsKey          string
	tlsCA           string
	watch           watch.Config
	fetchTimeoutMax time.Duration
	fetchDial       time.Duration
	rebalance       rebalanceFlags

	heartbeat, election, leaderLease, commitTimeout time.Duration
	noSync                                          bool
	logStore                                        string
	snapshotThreshold                               uint64
	snapshotInterval                                time.Duration
	groupCommitMax                                  int
	groupCommitWait                                 time.Duration
	commitWait                                      time.Duration

	readLimit    int64
	pingInterval time.Duration
	pingMisses   int
	writeTimeout time.Duration

	logLevel  string
	logFormat string
}

func serveFlags(c *serveConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	fs.StringVar(&c.nodeID, "node-id", host, "stable id of this node (in Kubernetes: the pod name)")
	fs.StringVar(&c.dataDir, "data-dir", "./data", "directory for raft log, snapshots and the incarnation counter")
	fs.StringVar(&c.wsAddr, "ws-addr", ":8427", "agent WebSocket listen address (IOCORE_MICRO_WEBSOCKET_REGISTRY_PORT sets its port)")
	fs.StringVar(&c.httpAddr, "http-addr", ":8428", "HTTP API, health and metrics listen address")
	fs.StringVar(&c.raftAddr, "raft-addr", ":8429", "raft transport listen address")
	fs.StringVar(&c.advertise, "advertise", "", "host or IP other nodes use to reach this one (default: the listen host, else the first non-loopback IPv4)")
	fs.IntVar(&c.bootstrapExpect, "bootstrap-expect", 1, "voters that form a new cluster; 1 bootstraps alone when there is no state")
	fs.IntVar(&c.voters, "voters", cluster.DefaultVoters, "voters the leader keeps (odd, 1-9); every other member is a non-voter that serves agents and reads but never counts for quorum")
	fs.DurationVar(&c.deadServer, "dead-server-timeout", cluster.DefaultDeadServerTimeout, "silence after which the leader's autopilot removes a voter, when a healthy non-voter can take its place")
	fs.DurationVar(&c.stabilization, "stabilization-time", cluster.DefaultStabilizationTime, "how long a non-voter must be healthy and caught up before autopilot promotes it to restore --voters")
	fs.StringVar(&c.join, "join", "", "comma-separated peer addresses (host:8429, their --raft-addr) of members to join or to form the cluster with")
	fs.StringVar(&c.clusterKey, "cluster-key", "", "shared secret(s) that authenticate peers (raft and calls between nodes), comma-separated: the first is sent, any is accepted (rotation); empty: peers from --trusted-networks only, unless mutual TLS")
	fs.BoolVar(&c.clusterInsecure, "cluster-insecure", false, "accept peers from any address without --cluster-key or mutual TLS (a trusted private network only: anyone who reaches the peer port can rewrite the registry)")
	fs.StringVar(&c.trustedNets, "trusted-networks", "127.0.0.0/8,::1/128", "addresses (CIDRs or IPs, comma-separated; none: nobody) whose callers may use admin and fetch calls while no token is configured for them, and may be peers while no --cluster-key or mutual TLS is set")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token for admin calls (join, leave, remove, snapshot, debug) and fetch; empty: those calls only from --trusted-networks")
	fs.StringVar(&c.tokenFile, "token-file", "", "file of named tokens with scopes (admin, fetch, read, agent) and agent namespace patterns, one per line: NAME SCOPES TOKEN [NAMESPACES]; re-read on SIGHUP")
	fs.DurationVar(&c.nodeGrace, "node-grace", registry.DefaultNodeGrace, "silence after which the leader purges a member's agents, and a cut-off node fences itself")
	fs.BoolVar(&c.leaveOnTerm, "leave-on-terminate", true, "on SIGTERM leave the cluster (hand over leadership, remove self) before stopping")
	fs.DurationVar(&c.heartbeat, "raft-heartbeat-timeout", cluster.DefaultHeartbeatTimeout, "raft heartbeat timeout (LAN default; raft's own is 1s)")
	fs.DurationVar(&c.election, "raft-election-timeout", cluster.DefaultElectionTimeout, "raft election timeout")
	fs.DurationVar(&c.leaderLease, "raft-leader-lease-timeout", cluster.DefaultLeaderLeaseTimeout, "raft leader lease timeout")
	fs.DurationVar(&c.commitTimeout, "raft-commit-timeout", cluster.DefaultCommitTimeout, "raft commit timeout: how often an idle leader sends each member an empty AppendEntries; commit notices tell members of commits at once, so this is a fallback")
	fs.BoolVar(&c.noSync, "raft-no-sync", false, "skip fsync of the raft log (unsafe: tests and throwaway benchmarks only)")
	fs.StringVar(&c.logStore, "raft-log-store", cluster.LogStoreWAL, "where the raft log lives: wal (<data-dir>/raft/wal) or bolt (<data-dir>/raft/raft.db, where builds before the write-ahead log kept it: start once with bolt before going back to one); a node moves its log there at start")
	fs.Uint64Var(&c.snapshotThreshold, "snapshot-threshold", cluster.DefaultSnapshotThreshold, "log entries between snapshots")
	fs.DurationVar(&c.snapshotInterval, "snapshot-interval", cluster.DefaultSnapshotInterval, "how often to check whether to snapshot")
	fs.IntVar(&c.groupCommitMax, "group-commit-max", cluster.DefaultGroupCommitMax, "most commands coalesced into one raft entry")
	fs.DurationVar(&c.groupCommitWait, "group-commit-wait", 0, "extra wait for more commands before committing a batch (0: take what is queued)")
	fs.DurationVar(&c.commitWait, "commit-wait", registry.DefaultCommitWait, "how long a write waits for a leader to commit it, across elections")
	fs.Int64Var(&c.readLimit, "read-limit", registry.DefaultReadLimit, "largest agent message in bytes; larger ones close the connection with 1009")
	fs.DurationVar(&c.pingInterval, "ping-interval", wsserver.DefaultPingInterval, "how often every agent connection is pinged")
	fs.IntVar(&c.pingMisses, "ping-misses", wsserver.DefaultPingMisses, "missed pongs after which an agent connection is closed")
	fs.DurationVar(&c.writeTimeout, "write-timeout", wsserver.DefaultWriteTimeout, "deadline for one write to an agent")
	fs.StringVar(&c.agentToken, "agent-token", "", "token agents must present (registry address host:8427/t/<token>, Authorization: Bearer, or ?token=); empty: none (unless --token-file has agent tokens)")
	fs.BoolVar(&c.verifyAgentIP, "verify-agent-ip", false, "refuse agents whose advertised host is not their connection's source address")
	fs.IntVar(&c.limits.MaxConnections, "max-connections", registry.DefaultMaxConnections, "agent connections on this node (-1: no limit)")
	fs.IntVar(&c.limits.MaxConnectionsPerIP, "max-connections-per-ip", registry.DefaultMaxConnectionsPerIP, "agent connections from one source address (-1: no limit)")
	fs.IntVar(&c.limits.MaxRegistrationsPerConn, "max-registrations-per-connection", registry.DefaultMaxRegistrationsPerConn, "namespaces one agent connection may register (-1: no limit)")
	fs.Float64Var(&c.limits.MaxRequestsPerSecondPerConn, "max-requests-per-second", registry.DefaultMaxRequestsPerSecondPerConn, "sustained requests per agent connection, bursts of twice that (-1: no limit)")
	fs.DurationVar(&c.handshake, "handshake-timeout", registry.DefaultHandshakeTimeout, "time an agent connection has to send its upgrade request")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate: serve HTTPS and WSS (with --tls-key); its SANs must cover the advertised addresses")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA bundle: with --tls-cert, the peer port (raft and calls between nodes) becomes mutual TLS")
	fs.StringVar(&c.agentTLS, "agent-tls", "both", "with --tls-cert, what the agent port serves: both (ws:// and wss:// side by side, for agents that cannot speak TLS) or tls (wss:// only)")
	fs.DurationVar(&c.watch.Coalesce, "watch-coalesce", watch.DefaultCoalesce, "window over which /v1/watch coalesces changes into one event (negative: none)")
	fs.DurationVar(&c.watch.Heartbeat, "watch-heartbeat", watch.DefaultHeartbeat, "idle time after which /v1/watch sends a heartbeat comment")
	fs.IntVar(&c.watch.History, "watch-history", watch.DefaultHistory, "changes kept so a watcher can resume with ?index=")
	fs.BoolVar(&c.pprof, "pprof", false, "serve /debug/pprof on the HTTP port (exposes internals: keep off in production)")
	fs.BoolVar(&c.faultInjection, "fault-injection", false, "expose POST /v1/debug/partition and /v1/debug/disk to cut this node off or hang its raft log writes (admin; tests and chaos runs only)")
	fs.DurationVar(&c.fetchTimeoutMax, "fetch-timeout-max", registry.DefaultFetchTimeoutMax, "cap on the timeout a proxied call may ask for")
	fs.DurationVar(&c.fetchDial, "fetch-dial-timeout", registry.DefaultFetchDialTimeout, "how long dialing an agent for a proxied call may take")
	addRebalanceFlags(fs, &c.rebalance)
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json")
	fs.Usage = usage(fs, stderr, "Usage: wsregistry [serve] [flags]\n\nRuns one registry node. With no flags: a one-node cluster with data in ./data.")
	return fs
}

// iocorePortEnv is honoured like the original registry's port setting.
const iocorePortEnv = "IOCORE_MICRO_WEBSOCKET_REGISTRY_PORT"

func parseServe(args []string, stderr io.Writer) (*serveConfig, error) {
	c := &serveConfig{}
	fs := serveFlags(c, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	wsGiven := false
	fs.Visit(func(f *flag.Flag) { wsGiven = wsGiven || f.Name == "ws-addr" })
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return nil, err
	}
	if _, twin := os.LookupEnv(envName("ws-addr")); !wsGiven && !twin {
		if p, ok := os.LookupEnv(iocorePortEnv); ok {
			if _, err := parsePort(p); err != nil {
				return nil, fmt.Errorf("%s: %w", iocorePortEnv, err)
			}
			c.wsAddr = ":" + p
		}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	return c, c.validate()
}

func parsePort(p string) (int, error) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	return n, nil
}

func (c *serveConfig) validate() error {
	var errs []error
	if c.nodeID == "" {
		errs = append(errs, errors.New("--node-id is empty"))
	}
	if err := c.rebalance.validate(); err != nil {
		errs = append(errs, err)
	}
	for name, addr := range map[string]string{"--ws-addr": c.wsAddr, "--http-addr": c.httpAddr, "--raft-addr": c.raftAddr} {
		if _, p, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", name, addr, err))
		} else if _, err := strconv.Atoi(p); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: port is not a number", name, addr))
		}
	}
	if c.logStore != cluster.LogStoreWAL && c.logStore != cluster.LogStoreBolt {
		errs = append(errs, fmt.Errorf("--raft-log-store %q: want %s or %s", c.logStore, cluster.LogStoreWAL, cluster.LogStoreBolt))
	}
	if c.bootstrapExpect < 1 {
		errs = append(errs, errors.New("--bootstrap-expect must be at least 1"))
	}
	if c.voters < 1 || c.voters > cluster.MaxVoters || c.voters%2 == 0 {
		errs = append(errs, fmt.Errorf("--voters %d: want an odd number from 1 to %d (an even one adds a voter to every quorum and no fault tolerance)", c.voters, cluster.MaxVoters))
	}
	if c.deadServer <= 0 || c.stabilization <= 0 {
		errs = append(errs, errors.New("--dead-server-timeout and --stabilization-time must be positive"))
	}
	if c.pingMisses < 1 {
		errs = append(errs, errors.New("--ping-misses must be at least 1"))
	}
	if c.readLimit < 1024 {
		errs = append(errs, errors.New("--read-limit must be at least 1024 bytes"))
	}
	switch c.logFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.logFormat))
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if c.tlsCA != "" && c.tlsCert == "" {
		errs = append(errs, errors.New("--tls-ca needs --tls-cert and --tls-key (mutual TLS)"))
	}
	switch c.agentTLS {
	case "both", "tls":
	default:
		errs = append(errs, fmt.Errorf("--agent-tls %q: want both or tls", c.agentTLS))
	}
	if _, err := auth.ParseNetworks(c.trustedNets); err != nil {
		errs = append(errs, fmt.Errorf("--trusted-networks: %w", err))
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c *serveConfig, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.logLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// advertiseFor is the address peers use for a listener: the explicit advertise host, else
// the bound host when it is specific, else the first non-loopback IPv4 (as agents pick theirs).
func advertiseFor(advertise string, ln net.Listener) string {
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	switch {
	case advertise != "":
		host = advertise
	case host == "" || net.ParseIP(host).IsUnspecified():
		host = firstIPv4()
	}
	return net.JoinHostPort(host, port)
}

func firstIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func runServe(args []string, stdout, stderr io.Writer) int {
	c, err := parseServe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "wsregistry serve: %v\n", err)
		return 2
	}
	log := newLogger(c, stderr)
	// The node's HTTP servers log through slog (http.Server.ErrorLog); anything else written
	// with the standard log package (a library's log.Printf) becomes a slog line too.
	slog.SetDefault(log)

	var listeners []net.Listener
	listen := func(addr string) net.Listener {
		ln, lerr := net.Listen("tcp", addr)
		if lerr != nil {
			err = errors.Join(err, lerr)
			return nil
		}
		listeners = append(listeners, ln)
		return ln
	}
	wsLn, httpLn, raftLn := listen(c.wsAddr), listen(c.httpAddr), listen(c.raftAddr)
	if err != nil {
		for _, ln := range listeners {
			ln.Close()
		}
		log.Error("cannot listen", "err", err)
		return 1
	}

	tlsCfg, err := loadTLS(c.tlsCert, c.tlsKey, c.tlsCA)
	if err != nil {
		for _, ln := range listeners {
			ln.Close()
		}
		log.Error("cannot load TLS material", "err", err)
		return 1
	}
	peer := cluster.PeerAuth{Keys: splitList(c.clusterKey), Insecure: c.clusterInsecure}
	if tlsCfg != nil {
		// Unchanged agents speak only ws://: the agent port serves both unless told not to.
		wsLn = wsserver.NewSniffListener(wsLn, tlsCfg.server, c.agentTLS == "both", c.handshake)
		httpLn = tls.NewListener(httpLn, tlsCfg.server)
		if tlsCfg.mutual {
			peer.ServerTLS, peer.ClientTLS = tlsCfg.raftServer, tlsCfg.client
		}
	}
	trusted, _ := auth.ParseNetworks(c.trustedNets) // validated

	join := splitList(c.join)
	left := make(chan struct{}, 1)
	node, err := registry.Start(registry.Config{
		NodeID:        c.nodeID,
		DataDir:       c.dataDir,
		WSListener:    wsLn,
		HTTPListener:  httpLn,
		RaftListener:  raftLn,
		WSAdvertise:   advertiseFor(c.advertise, wsLn),
		HTTPAdvertise: advertiseFor(c.advertise, httpLn),
		RaftAdvertise: advertiseFor(c.advertise, raftLn),
		Cluster: cluster.Config{
			Peer:               peer,
			BootstrapExpect:    c.bootstrapExpect,
			Voters:             c.voters,
			DeadServerTimeout:  c.deadServer,
			StabilizationTime:  c.stabilization,
			FaultInjection:     c.faultInjection,
			HeartbeatTimeout:   c.heartbeat,
			ElectionTimeout:    c.election,
			LeaderLeaseTimeout: c.leaderLease,
			CommitTimeout:      c.commitTimeout,
			NoSync:             c.noSync,
			LogStore:           c.logStore,
			SnapshotThreshold:  c.snapshotThreshold,
			SnapshotInterval:   c.snapshotInterval,
			GroupCommitMax:     c.groupCommitMax,
			GroupCommitWait:    c.groupCommitWait,
		},
		ReadLimit:    c.readLimit,
		PingInterval: c.pingInterval,
		PingMisses:   c.pingMisses,
		WriteTimeout: c.writeTimeout,
		CommitWait:   c.commitWait,
		Rebalance:    c.rebalance.config(),
		Join:         join,
		Auth: auth.Config{
			AdminToken: c.adminToken, AgentToken: c.agentToken, TokenFile: c.tokenFile, TrustedNetworks: trusted,
		},
		NodeGrace: c.nodeGrace,
		OnLeft:    func() { left <- struct{}{} },

		Watch:            c.watch,
		VerifyAgentIP:    c.verifyAgentIP,
		Limits:           c.limits,
		HandshakeTimeout: c.handshake,
		FaultInjection:   c.faultInjection,
		Pprof:            c.pprof,
		FetchTimeoutMax:  c.fetchTimeoutMax,
		FetchDialTimeout: c.fetchDial,
		Logger:           log,
	})
	if err != nil {
		for _, ln := range listeners {
			ln.Close()
		}
		log.Error("cannot start", "err", err)
		return 1
	}
	fmt.Fprintf(stdout, "wsregistry %s: agents ws://%s, http://%s, raft %s\n", c.nodeID, wsLn.Addr(), httpLn.Addr(), raftLn.Addr())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	for running := true; running; {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if err := node.Auth().Reload(); err != nil {
					log.Error("token file not reloaded: keeping the tokens in force", "err", err)
				}
				continue
			}
			running = false
			log.Info("signal received: stopping", "signal", sig.String())
			if sig == syscall.SIGTERM && c.leaveOnTerm {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				node.CloseAgents(ctx)
				if err := node.Leave(ctx); err != nil {
					log.Warn("could not leave the cluster cleanly", "err", err)
				}
				cancel()
			}
		case <-left:
			running = false
			log.Info("left the cluster: stopping")
		}
	}
	signal.Stop(sigs)
	if err := node.Close(); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}
