package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// One writer's commits through the leader and through a follower, three nodes on real TCP
// with fsync on: the follower's extra latency is the forward and the wait for its own apply.
//
//	go test -run '^$' -bench Commit_OneWriter -benchtime 2000x ./cluster/
func BenchmarkCommit_OneWriter(b *testing.B) {
	nodes := startCluster(b, 3, func(c *Config) {
		c.NoSync = false
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = DefaultHeartbeatTimeout, DefaultElectionTimeout, DefaultLeaderLeaseTimeout
		c.CommitTimeout = DefaultCommitTimeout
	})
	var incarnation uint64 // every write a newer incarnation: none is refused as stale
	for _, role := range []string{"leader", "follower"} {
		b.Run(role, func(b *testing.B) {
			n := leaderOf(b, nodes)
			if role == "follower" {
				n = followerOf(b, nodes)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				incarnation++
				start := time.Now()
				errs, err := n.Commit(context.Background(), fsm.SetNode{RequestID: fmt.Sprintf("bench/%d", incarnation), Meta: fsm.NodeMeta{ID: "bench", WSAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2", RaftAddr: "127.0.0.1:3", Incarnation: incarnation}})
				if err != nil || errs[0] != nil {
					b.Fatal(err, errs)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			l := leaderOf(b, nodes)
			b.ReportMetric(float64(l.nudge.early.Load())/float64(max(1, l.nudge.accepted.Load())), "early-notices/accepted")
		})
	}
}
