package cluster

import "time"

// Defaults of Config, shared with the flags of cmd/wsregistry and with tests: one place for
// each. raft's own defaults (1 s) are tuned for WANs; these give sub-second failover on a LAN.
const (
	DefaultHeartbeatTimeout   = 400 * time.Millisecond
	DefaultElectionTimeout    = 400 * time.Millisecond
	DefaultLeaderLeaseTimeout = 200 * time.Millisecond
	// DefaultCommitTimeout is mostly a fallback: commit notices (notice.go) tell the
	// followers of every batch's commit, and of raft's own entries this node waits for, at
	// once. With nothing to send, raft still sends each member an empty AppendEntries every
	// 1-2 CommitTimeouts: at 20 ms that was about half an idle three-node cluster's CPU
	// (BENCHMARKS.md, round 14), paid during lookups too.
	DefaultCommitTimeout     = 100 * time.Millisecond
	DefaultApplyTimeout      = 5 * time.Second
	DefaultCommitWait        = 5 * time.Second
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotRetain    = 2
	DefaultGroupCommitMax    = 1024
	// DefaultHealthInterval is the leader's probe period until it learns the grace.
	DefaultHealthInterval = time.Second
	// DefaultVoters is how many voters the leader keeps; other members are non-voters.
	DefaultVoters = 3
	// DefaultDeadServerTimeout is how long a voter may be silent before autopilot removes
	// it (while the remaining voters keep a majority).
	DefaultDeadServerTimeout = 10 * time.Second
	// DefaultStabilizationTime is how long a non-voter must stay healthy and caught up
	// before autopilot promotes it.
	DefaultStabilizationTime = 10 * time.Second
	// MaxVoters bounds --voters: every voter is on every commit's path.
	MaxVoters = 9
)
