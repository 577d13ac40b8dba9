package cluster

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
)

// notifyingFSM wraps the registration FSM so writers can wait for "applied up to index"
// without polling. fsm/ stays free of goroutines and channels.
type notifyingFSM struct {
	inner      *fsm.FSM
	onSnapshot func(took time.Duration, err error)
	afterSnap  func() // raft is done with a snapshot (written, log compacted)
	onApply    func(binary bool)

	mu    sync.Mutex
	index uint64
	tick  chan struct{} // closed and replaced whenever index advances
	// Callbacks waiting for an index (whenApplied), with the timer that ends the overdue
	// ones; closed once the node shuts down.
	waiters []appliedWaiter
	expiry  *time.Timer
	closed  bool
}

type appliedWaiter struct {
	index    uint64
	deadline time.Time
	fn       func(*later.Batch, error)
}

func newNotifyingFSM(inner *fsm.FSM) *notifyingFSM {
	return &notifyingFSM{inner: inner, index: inner.AppliedIndex(), tick: make(chan struct{})}
}

func (f *notifyingFSM) Apply(l *raft.Log) any {
	res := f.inner.Apply(l)
	if f.onApply != nil && l.Type == raft.LogCommand && len(l.Data) > 0 {
		f.onApply(l.Data[0] == byte(fsm.TypeBinaryBatch))
	}
	f.advance(l.Index)
	return res
}

func (f *notifyingFSM) Snapshot() (raft.FSMSnapshot, error) {
	snap, err := f.inner.Snapshot()
	if err != nil || (f.onSnapshot == nil && f.afterSnap == nil) {
		return snap, err
	}
	return timedSnapshot{FSMSnapshot: snap, observe: f.onSnapshot, released: f.afterSnap}, nil
}

// timedSnapshot measures Persist, the part of a snapshot that writes the state out, and
// says when raft releases it: raft does so once the snapshot is written and the log
// compacted.
type timedSnapshot struct {
	raft.FSMSnapshot
	observe  func(time.Duration, error)
	released func()
}

func (s timedSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	err := s.FSMSnapshot.Persist(sink)
	if s.observe != nil {
		s.observe(time.Since(start), err)
	}
	return err
}

func (s timedSnapshot) Release() {
	s.FSMSnapshot.Release()
	if s.released != nil {
		s.released()
	}
}

func (f *notifyingFSM) Restore(rc io.ReadCloser) error {
	if err := f.inner.Restore(rc); err != nil {
		return err
	}
	f.advance(f.inner.AppliedIndex())
	return nil
}

func (f *notifyingFSM) advance(index uint64) {
	f.mu.Lock()
	var due []appliedWaiter
	if index > f.index {
		f.index = index
		close(f.tick)
		f.tick = make(chan struct{})
		due = f.takeWaiters(func(w appliedWaiter) bool { return w.index <= index })
	}
	f.mu.Unlock()
	runWaiters(due, nil)
}

// errApplyWait is what a waiter gets when the index was not applied here by its deadline.
var errApplyWait = errors.New("timed out waiting for this node to apply it")

// whenApplied calls fn(nil) once this node has applied index: at once (on the caller's
// goroutine, with the caller's b) if it has, else from a goroutine of its own with the
// batch of the waiters released together. fn gets errApplyWait after deadline, ErrClosed
// when the node shuts down first. It never blocks.
func (f *notifyingFSM) whenApplied(b *later.Batch, index uint64, deadline time.Time, fn func(*later.Batch, error)) {
	f.mu.Lock()
	switch {
	case f.index >= index:
		f.mu.Unlock()
		fn(b, nil)
		return
	case f.closed:
		f.mu.Unlock()
		fn(b, ErrClosed)
		return
	}
	f.waiters = append(f.waiters, appliedWaiter{index: index, deadline: deadline, fn: fn})
	if f.expiry == nil {
		f.expiry = time.AfterFunc(time.Until(deadline), f.expire)
	}
	f.mu.Unlock()
}

// expire ends the overdue waiters and arms the timer for the next deadline.
func (f *notifyingFSM) expire() {
	now := time.Now()
	f.mu.Lock()
	due := f.takeWaiters(func(w appliedWaiter) bool { return !w.deadline.After(now) })
	f.expiry = nil
	if len(f.waiters) > 0 && !f.closed {
		next := f.waiters[0].deadline
		for _, w := range f.waiters[1:] {
			if w.deadline.Before(next) {
				next = w.deadline
			}
		}
		f.expiry = time.AfterFunc(time.Until(next), f.expire)
	}
	f.mu.Unlock()
	runWaiters(due, errApplyWait)
}

// close fails every waiter with ErrClosed: nothing will be applied any more.
func (f *notifyingFSM) close() {
	f.mu.Lock()
	f.closed = true
	due := f.takeWaiters(func(appliedWaiter) bool { return true })
	if f.expiry != nil {
		f.expiry.Stop()
		f.expiry = nil
	}
	f.mu.Unlock()
	runWaiters(due, ErrClosed)
}

// takeWaiters removes and returns the waiters that match; the caller holds mu.
func (f *notifyingFSM) takeWaiters(match func(appliedWaiter) bool) []appliedWaiter {
	if len(f.waiters) == 0 {
		return nil
	}
	var due []appliedWaiter
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if match(w) {
			due = append(due, w)
		} else {
			kept = append(kept, w)
		}
	}
	clear(f.waiters[len(kept):])
	f.waiters = kept
	return due
}

// runWaiters calls the waiters' callbacks on a goroutine of their own: advance runs on
// raft's FSM goroutine, which must not wait on what the callbacks do.
func runWaiters(due []appliedWaiter, err error) {
	if len(due) == 0 {
		return
	}
	go func() {
		var callbacks later.Batch
		for _, w := range due {
			w.fn(&callbacks, err)
		}
		callbacks.Run()
	}()
}

func (f *notifyingFSM) applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index
}

func (f *notifyingFSM) waitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.Lock()
		if f.index >= index {
			f.mu.Unlock()
			return nil
		}
		tick := f.tick
		f.mu.Unlock()
		select {
		case <-tick:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
