package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
)

// batcher coalesces proposals queued together into one commit: on the leader one raft entry
// (group commit), on a follower one forwarded call to the leader. Thousands of agents
// re-registering after a failure then cost a few log writes and calls, not thousands.
type batcher struct {
	commit commitFunc
	max    int
	wait   time.Duration
	batcherHooks

	queue   chan *proposal
	slots   chan struct{} // one per batch in flight
	stop    chan struct{}
	stopped sync.WaitGroup
	// closing orders proposeAsync with close: a proposal queued under the read lock is
	// in the queue before close marks closed, so the loop's drain answers it.
	closing sync.RWMutex
	closed  bool
}

// batcherHooks are a batcher's optional settings, fixed before its loop starts.
type batcherHooks struct {
	onBatch func(commands int)
	// committed, when set, is called after each batch that committed (at index), once its
	// slot is free (so busy no longer counts it); forwarded says whether any proposal came
	// from a follower, which is waiting to hear of the commit.
	committed func(index uint64, forwarded bool)
	// slotWait, when set, bounds the wait for the batch in flight: after it the next batch
	// goes anyway. A follower's forward to a leader that vanished without a word hangs
	// until the HTTP timeout; every other write must not wait behind it.
	slotWait time.Duration
}

type proposal struct {
	cmds      []fsm.Command
	forwarded bool // made by a follower's forward: it waits for its own apply
	done      chan proposalResult
	then      func(*later.Batch, proposalResult) // instead of done: proposeAsync's callback
}

// deliver hands the proposal its result, exactly once; b is the batch of callbacks it
// is delivered with.
func (p *proposal) deliver(b *later.Batch, r proposalResult) {
	if p.then != nil {
		p.then(b, r)
		return
	}
	p.done <- r
}

type proposalResult struct {
	index uint64
	errs  []error
	err   error
}

// maxBatchesInFlight bounds the batches committing at once. Under load the next batch then
// grows while the previous one commits, instead of every proposal leaving in a batch of its
// own: per-batch costs (a log entry, an fsync on each node, a forwarded call) dominate a
// registration's CPU when batches leave as fast as they form, and fewer, larger entries
// cost less at the same latency (BENCHMARKS.md has the measurements). A lone proposal still
// leaves at once; a slow disk caps throughput at GroupCommitMax per commit.
const maxBatchesInFlight = 1

// ErrClosed is returned for proposals made while the node shuts down.
var ErrClosed = errors.New("cluster: node is shutting down")

// commitFunc starts committing cmds as one unit and returns how to wait for the outcome;
// the batcher forms the next batch while earlier ones are still in flight.
type commitFunc func(cmds []fsm.Command) (wait func() (index uint64, errs []error, err error))

func newBatcher(max int, wait time.Duration, commit commitFunc, hooks batcherHooks) *batcher {
	b := &batcher{
		commit: commit, max: max, wait: wait, batcherHooks: hooks,
		queue: make(chan *proposal, 4*max),
		slots: make(chan struct{}, maxBatchesInFlight),
		stop:  make(chan struct{}),
	}
	b.stopped.Add(1)
	go b.loop()
	return b
}

func (b *batcher) propose(ctx context.Context, cmds []fsm.Command) (uint64, []error, error) {
	return b.proposeFrom(ctx, cmds, false)
}

// proposeFrom is propose for a proposal a follower forwarded (forwarded true).
func (b *batcher) proposeFrom(ctx context.Context, cmds []fsm.Command, forwarded bool) (uint64, []error, error) {
	if len(cmds) == 0 {
		return 0, nil, errors.New("cluster: empty proposal")
	}
	p := &proposal{cmds: cmds, forwarded: forwarded, done: make(chan proposalResult, 1)}
	select {
	case b.queue <- p:
	case <-b.stop:
		return 0, nil, ErrClosed
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	// Once queued the proposal may be committed whatever the caller does; waiting here keeps
	// the answer honest, and callers retry with the same request ids when they give up.
	select {
	case r := <-p.done:
		return r.index, r.errs, r.err
	case <-b.stop: // shutting down: the loop may have drained the queue before we joined it
		select {
		case r := <-p.done:
			return r.index, r.errs, r.err
		case <-time.After(time.Second):
			return 0, nil, ErrClosed
		}
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

// proposeAsync queues cmds for the next batch without waiting and reports whether it did:
// then is called once with the outcome, from the batch's goroutine (it must not block),
// with the later.Batch that runs when the whole batch's callbacks are done.
// A full queue or a closing batcher queues nothing and then is not called: the caller
// takes the blocking path.
func (b *batcher) proposeAsync(cmds []fsm.Command, then func(*later.Batch, proposalResult)) bool {
	return b.proposeAsyncFrom(cmds, false, then)
}

// proposeAsyncFrom is proposeAsync for a proposal a follower forwarded (forwarded true).
func (b *batcher) proposeAsyncFrom(cmds []fsm.Command, forwarded bool, then func(*later.Batch, proposalResult)) bool {
	if len(cmds) == 0 {
		return false
	}
	b.closing.RLock()
	defer b.closing.RUnlock()
	if b.closed {
		return false
	}
	select {
	case b.queue <- &proposal{cmds: cmds, forwarded: forwarded, then: then}:
		return true
	default:
		return false
	}
}

// busy reports whether an entry is on its way: proposals wait for the next batch, or a
// batch is being formed or committed.
func (b *batcher) busy() bool { return len(b.queue) > 0 || len(b.slots) > 0 }

func (b *batcher) loop() {
	defer b.stopped.Done()
	// Batches in flight are not waited for on close: each ends by its own timeout and
	// delivers to its proposals' buffered channels, so stopping never waits on a dead leader.
	var inflight sync.WaitGroup
	for {
		var first *proposal
		select {
		case <-b.stop:
			b.drainClosed()
			return
		case first = <-b.queue:
		}
		slotted, stopping := b.takeSlot()
		if stopping {
			finish([]*proposal{first}, proposalResult{err: ErrClosed})
			b.drainClosed()
			return
		}
		batch, count := b.collect([]*proposal{first}, len(first.cmds))
		inflight.Add(1)
		b.apply(batch, count, slotted, &inflight)
	}
}

// takeSlot waits for a free slot (up to slotWait, when set); slotted says whether the
// batch holds one, stopping that the batcher is closing.
func (b *batcher) takeSlot() (slotted, stopping bool) {
	select {
	case b.slots <- struct{}{}:
		return true, false
	default:
	}
	// The slot is there to let the next batch grow; a full one gains nothing by waiting and
	// goes now, pipelined behind the batch in flight (with GroupCommitMax 1, every batch).
	if len(b.queue)+1 >= b.max {
		return false, false
	}
	var timeout <-chan time.Time
	if b.slotWait > 0 {
		t := time.NewTimer(b.slotWait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case b.slots <- struct{}{}:
		return true, false
	case <-timeout:
		return false, false
	case <-b.stop:
		return false, true
	}
}

// collect takes what is already queued, and waits up to b.wait for more, until max commands.
func (b *batcher) collect(batch []*proposal, count int) ([]*proposal, int) {
	var timer <-chan time.Time
	if b.wait > 0 {
		t := time.NewTimer(b.wait)
		defer t.Stop()
		timer = t.C
	}
	for count < b.max {
		select {
		case p := <-b.queue:
			batch = append(batch, p)
			count += len(p.cmds)
			continue
		default:
		}
		if timer == nil {
			return batch, count
		}
		select {
		case p := <-b.queue:
			batch = append(batch, p)
			count += len(p.cmds)
		case <-timer:
			return batch, count
		}
	}
	return batch, count
}

func (b *batcher) apply(batch []*proposal, count int, slotted bool, inflight *sync.WaitGroup) {
	all := batch[0].cmds
	if len(batch) > 1 {
		all = make([]fsm.Command, 0, count)
		for _, p := range batch {
			all = append(all, p.cmds...)
		}
	}
	if b.onBatch != nil {
		b.onBatch(count)
	}
	wait := b.commit(all)
	go func() {
		defer inflight.Done()
		index, errs, err := wait()
		if slotted {
			<-b.slots
		}
		if err != nil {
			finish(batch, proposalResult{err: err})
			return
		}
		var callbacks later.Batch
		defer callbacks.Run()
		if b.committed != nil {
			forwarded := false
			for _, p := range batch {
				forwarded = forwarded || p.forwarded
			}
			b.committed(index, forwarded)
		}
		off := 0
		for _, p := range batch {
			n := len(p.cmds)
			var mine []error
			if off+n <= len(errs) {
				mine = errs[off : off+n]
			} else {
				mine = make([]error, n)
			}
			off += n
			p.deliver(&callbacks, proposalResult{index: index, errs: mine})
		}
	}()
}

// raftCommit is the leader's commit: one raft entry for the whole batch, in the binary
// form once binary() says every server reads it.
func raftCommit(r *raft.Raft, applyTimeout time.Duration, binary func() bool) commitFunc {
	return func(cmds []fsm.Command) func() (uint64, []error, error) {
		data, err := encodeBatch(cmds, binary())
		if err != nil {
			return func() (uint64, []error, error) { return 0, nil, fmt.Errorf("cluster: encode: %w", err) }
		}
		// raft.Apply only enqueues; the future is awaited by the batcher's waiter.
		future := r.Apply(data, applyTimeout)
		return func() (uint64, []error, error) {
			if err := future.Error(); err != nil {
				return 0, nil, err
			}
			errs, _ := future.Response().([]error)
			return future.Index(), errs, nil
		}
	}
}

// encodeBatch encodes cmds as one batch (even of one command: batches have the compact
// binary form), or in the JSON form every build reads when binary is false.
func encodeBatch(cmds []fsm.Command, binary bool) ([]byte, error) {
	if binary {
		return fsm.Encode(fsm.Batch{Commands: cmds})
	}
	return fsm.EncodeJSON(fsm.Batch{Commands: cmds})
}

func finish(batch []*proposal, r proposalResult) {
	var callbacks later.Batch
	for _, p := range batch {
		p.deliver(&callbacks, r)
	}
	callbacks.Run()
}

func (b *batcher) drainClosed() {
	var callbacks later.Batch
	defer callbacks.Run()
	for {
		select {
		case p := <-b.queue:
			p.deliver(&callbacks, proposalResult{err: ErrClosed})
		default:
			return
		}
	}
}

func (b *batcher) close() {
	select {
	case <-b.stop:
		return
	default:
	}
	b.closing.Lock()
	b.closed = true
	b.closing.Unlock()
	close(b.stop)
	b.stopped.Wait()
}
