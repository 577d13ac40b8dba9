package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// While batches commit, new proposals wait and leave together: at most maxBatchesInFlight
// commits run at once, and what queued behind them leaves in one batch.
func TestBatcher_BoundsBatchesInFlight(t *testing.T) {
	var inFlight, most, commits, committing atomic.Int64
	release := make(chan struct{})
	b := newBatcher(1024, 0, func(cmds []fsm.Command) func() (uint64, []error, error) {
		n := inFlight.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		commits.Add(1)
		committing.Add(int64(len(cmds)))
		return func() (uint64, []error, error) {
			<-release
			inFlight.Add(-1)
			return 7, make([]error, len(cmds)), nil
		}
	}, batcherHooks{})
	defer b.close()

	const proposals = 200
	var wg sync.WaitGroup
	errs := make(chan error, proposals)
	for i := 0; i < proposals; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			index, results, err := b.propose(context.Background(), []fsm.Command{fsm.RemoveNode{Node: "x"}})
			if err == nil && (index != 7 || len(results) != 1) {
				t.Errorf("propose = %d, %v", index, results)
			}
			errs <- err
		}()
	}
	// maxBatchesInFlight commits start and block; everything else must wait for them: in the queue, and
	// one proposal in the loop, which waits for a free slot.
	deadline := time.Now().Add(10 * time.Second)
	for committing.Load()+int64(len(b.queue))+1 < proposals || commits.Load() < maxBatchesInFlight {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d commits, %d queued", commits.Load(), len(b.queue))
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case release <- struct{}{}:
		case <-done:
			finished = true
		case <-time.After(10 * time.Second):
			t.Fatal("proposals did not finish")
		}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := most.Load(); m > maxBatchesInFlight {
		t.Errorf("%d batches committed at once, want at most %d", m, maxBatchesInFlight)
	}
	// The blocked commits held one or a few proposals; the rest left together.
	if c := commits.Load(); c > maxBatchesInFlight+1 {
		t.Errorf("%d commits for %d concurrent proposals, want at most %d: the queued ones did not leave as one batch", c, proposals, maxBatchesInFlight+1)
	}
}

// nextPassesAStuckBatch starts a batcher (max commands per batch, adjusted by setup) whose
// first commit never returns, and reports whether a second proposal still completes.
func nextPassesAStuckBatch(t *testing.T, max int, hooks batcherHooks) bool {
	t.Helper()
	stuck := make(chan struct{})
	defer close(stuck)
	var calls atomic.Int64
	b := newBatcher(max, 0, func(cmds []fsm.Command) func() (uint64, []error, error) {
		first := calls.Add(1) == 1
		return func() (uint64, []error, error) {
			if first {
				<-stuck
			}
			return 1, make([]error, len(cmds)), nil
		}
	}, hooks)
	defer b.close()
	go b.propose(context.Background(), []fsm.Command{fsm.RemoveNode{Node: "stuck"}})
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("first batch never committed")
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := b.propose(context.Background(), []fsm.Command{fsm.RemoveNode{Node: "next"}})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// A forward stuck on a leader that vanished without a word holds its slot until the HTTP
// timeout; with slotWait the next batch goes after that long instead of waiting behind it.
func TestBatcher_SlotWaitLetsTheNextBatchPastAStuckOne(t *testing.T) {
	if !nextPassesAStuckBatch(t, 1024, batcherHooks{slotWait: 50 * time.Millisecond}) {
		t.Fatal("the next proposal waited behind the stuck batch")
	}
}

// A full batch does not wait for the one in flight: with GroupCommitMax 1 (group commit off)
// every proposal is its own entry, pipelined, not one commit at a time.
func TestBatcher_FullBatchesPipeline(t *testing.T) {
	if !nextPassesAStuckBatch(t, 1, batcherHooks{}) {
		t.Fatal("a full batch waited for the one in flight")
	}
}
