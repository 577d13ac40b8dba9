package cluster

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// AfterSnapshot runs once raft is done with a snapshot, after OnSnapshot measured its Persist.
func TestAfterSnapshot_RunsOnceTheSnapshotIsDone(t *testing.T) {
	var persisted, after atomic.Int32
	cfg := testConfig(t, "solo")
	cfg.BootstrapExpect = 1
	cfg.OnSnapshot = func(time.Duration, error) { persisted.Add(1) }
	cfg.AfterSnapshot = func() {
		if persisted.Load() == 0 {
			t.Error("AfterSnapshot ran before the snapshot was persisted")
		}
		after.Add(1)
	}
	n := open(t, cfg)
	testutil.Eventually(t, 10*time.Second, n.IsLeader, "no leader")
	commit(t, n, meta("a"))
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return after.Load() == 1 }, "AfterSnapshot ran %d times, want 1", after.Load())
}
