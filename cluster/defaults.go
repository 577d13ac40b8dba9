package cluster

import "time"

// Defaults of Config, shared with the flags of cmd/wsregistry and with tests: one place for
// each. raft's own defaults (1 s) are tuned for WANs; these give sub-second failover on a LAN.
const (
	DefaultHeartbeatTimeout   = 400 * time.Millisecond
	DefaultElectionTimeout    = 400 * time.Millisecond
	DefaultLeaderLeaseTimeout = 200 * time.Millisecond
	DefaultCommitTimeout      = 20 * time.Millisecond
	DefaultApplyTimeout       = 5 * time.Second
	DefaultCommitWait         = 5 * time.Second
	DefaultSnapshotInterval   = 2 * time.Minute
	DefaultSnapshotThreshold  = 8192
	DefaultSnapshotRetain     = 2
	DefaultGroupCommitMax     = 1024
)
