package cluster

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

func recv[T any](t *testing.T, c <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		panic("unreachable")
	}
}

type asyncResult struct {
	errs []error
	err  error
	seen bool // the caller's node had applied the write when done ran
}

// commitAsync runs CommitAsync and returns what done got, checking it came once.
func commitAsync(t *testing.T, n *testNode, cmds []fsm.Command, applied func() bool) <-chan asyncResult {
	t.Helper()
	out := make(chan asyncResult, 2)
	var calls atomic.Int32
	n.CommitAsync(cmds, func(_ *later.Batch, errs []error, err error) {
		if calls.Add(1) > 1 {
			t.Errorf("done called more than once")
		}
		out <- asyncResult{errs: errs, err: err, seen: applied()}
	})
	return out
}

// On the leader and through a follower, done reports the command's own result once the
// caller's node has applied it: an online answered from done is a read-your-write there.
func TestCommitAsync_LeaderAndFollowerAnswerOnceApplied(t *testing.T) {
	nodes := startCluster(t, 3)
	leader, follower := leaderOf(t, nodes), followerOf(t, nodes)
	for _, n := range []*testNode{leader, follower} {
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Add(1)
			id := fmt.Sprintf("%s-async-%d", n.ID(), i)
			cmds := []fsm.Command{meta(id), fsm.Register{RequestID: id + "-bad"}} // the second is invalid
			res := commitAsync(t, n, cmds, func() bool { _, ok := n.state.Node(id); return ok })
			go func() {
				defer wg.Done()
				var r asyncResult
				select {
				case r = <-res:
				case <-time.After(testutil.Scaled(10 * time.Second)):
					t.Errorf("%s: no answer after 10 s", id)
					return
				}
				switch {
				case r.err != nil:
					t.Errorf("%s: %v", id, r.err)
				case len(r.errs) != 2 || r.errs[0] != nil || !errors.Is(r.errs[1], fsm.ErrInvalid):
					t.Errorf("%s: results %v, want nil and ErrInvalid", id, r.errs)
				case !r.seen:
					t.Errorf("%s: done ran before %s applied the write", id, n.ID())
				}
			}()
		}
		wg.Wait()
	}
}

// With no leader, CommitAsync takes Commit's path: it waits for one and retries, and
// reports the failure once CommitWait is over; done still comes exactly once.
func TestCommitAsync_NoLeaderFailsAfterCommitWait(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.CommitWait = testutil.Scaled(time.Second) })
	follower := followerOf(t, nodes)
	for _, n := range nodes {
		if n != follower {
			n.Close()
		}
	}
	start := time.Now()
	r := recv(t, commitAsync(t, follower, []fsm.Command{meta("lonely")}, func() bool { return false }),
		testutil.Scaled(20*time.Second), "done")
	if r.err == nil {
		t.Fatalf("committed with two of three nodes gone: %v", r.errs)
	}
	if took := time.Since(start); took < follower.cfg.CommitWait/2 {
		t.Fatalf("gave up after %v, before the commit wait (%v)", took, follower.cfg.CommitWait)
	}
}

// A node that shuts down answers every write still waiting to be applied there.
func TestCommitAsync_CloseReleasesWaiters(t *testing.T) {
	f := newNotifyingFSM(fsm.New())
	got := make(chan error, 3)
	f.whenApplied(nil, 5, time.Now().Add(time.Hour), func(_ *later.Batch, err error) { got <- err })
	f.whenApplied(nil, 9, time.Now().Add(time.Hour), func(_ *later.Batch, err error) { got <- err })
	f.advance(5)
	if err := recv(t, got, 5*time.Second, "index 5"); err != nil {
		t.Fatalf("index 5 applied: %v", err)
	}
	f.close()
	if err := recv(t, got, 5*time.Second, "index 9"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v, want ErrClosed", err)
	}
	f.whenApplied(nil, 12, time.Now().Add(time.Hour), func(_ *later.Batch, err error) { got <- err })
	if err := recv(t, got, 5*time.Second, "after close"); !errors.Is(err, ErrClosed) {
		t.Fatalf("a wait after close: %v, want ErrClosed", err)
	}
}

// A write applied elsewhere but not here (a member cut off right after the forward) is
// answered with an error at its deadline, not held for ever; the later deadline waits on.
func TestCommitAsync_WaitEndsAtItsDeadline(t *testing.T) {
	f := newNotifyingFSM(fsm.New())
	got := make(chan string, 2)
	f.whenApplied(nil, 3, time.Now().Add(testutil.Scaled(50*time.Millisecond)), func(_ *later.Batch, err error) {
		if errors.Is(err, errApplyWait) {
			got <- "3 expired"
		}
	})
	f.whenApplied(nil, 4, time.Now().Add(time.Hour), func(_ *later.Batch, err error) {
		if err == nil {
			got <- "4 applied"
		}
	})
	if r := recv(t, got, 5*time.Second, "expiry"); r != "3 expired" {
		t.Fatalf("first: %s", r)
	}
	f.advance(4)
	if r := recv(t, got, 5*time.Second, "apply"); r != "4 applied" {
		t.Fatalf("second: %s", r)
	}
}

// A proposal queued while the batcher closes is answered (ErrClosed), never dropped: an
// agent's online waits for that answer, and its connection's close waits for the online.
func TestBatcher_AsyncProposalsAreAnsweredThroughClose(t *testing.T) {
	for round := range 20 {
		b := newBatcher(16, 0, func(cmds []fsm.Command) func() (uint64, []error, error) {
			return func() (uint64, []error, error) { return 1, make([]error, len(cmds)), nil }
		}, batcherHooks{})
		var queued, answered atomic.Int64
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 200 {
					if b.proposeAsync([]fsm.Command{meta("x")}, func(*later.Batch, proposalResult) { answered.Add(1) }) {
						queued.Add(1)
					}
				}
			}()
		}
		b.close()
		wg.Wait()
		testutil.Eventually(t, 5*time.Second, func() bool { return answered.Load() == queued.Load() },
			"round %d: %d of %d queued proposals answered", round, answered.Load(), queued.Load())
		if b.proposeAsync([]fsm.Command{meta("y")}, func(*later.Batch, proposalResult) {}) {
			t.Fatal("a closed batcher queued a proposal")
		}
	}
}
