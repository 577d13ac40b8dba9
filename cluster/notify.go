package cluster

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
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
	if index > f.index {
		f.index = index
		close(f.tick)
		f.tick = make(chan struct{})
	}
	f.mu.Unlock()
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
