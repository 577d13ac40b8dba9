package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
)

// ErrNoLeader is what a write or a consistent read gets when no leader could serve it in time.
var ErrNoLeader = errors.New("no raft leader available")

// ErrNotLeader is returned by leader-only operations on a node that does not lead.
var ErrNotLeader = errors.New("not the leader")

// Commit commits cmds as one unit (they land in the same raft entry) and waits until this
// node has applied them, so the caller can promise read-your-write here. On the leader it
// goes through group commit, on a follower it is forwarded; failures that may or may not
// have committed are retried with the same request ids (the FSM deduplicates them), across
// elections, for up to Config.CommitWait. It returns one result per command.
func (n *Node) Commit(ctx context.Context, cmds ...fsm.Command) ([]error, error) {
	return n.commit(ctx, time.Now(), cmds)
}

// commit is Commit for a write that started at start (CommitAsync's fallback).
func (n *Node) commit(ctx context.Context, start time.Time, cmds []fsm.Command) ([]error, error) {
	ctx, cancel := context.WithDeadline(ctx, start.Add(n.cfg.CommitWait))
	defer cancel()
	path := "local"
	observe := func(err error) {
		if n.cfg.OnCommit != nil {
			n.cfg.OnCommit(path, time.Since(start), err)
		}
	}
	backoff := 10 * time.Millisecond
	var lastErr error
	for {
		var (
			index uint64
			errs  []error
			err   error
		)
		leaderChanged := n.LeaderChanged()
		if n.IsLeader() {
			index, errs, err = n.propose(ctx, cmds...)
		} else if _, addr := n.Leader(); addr == "" {
			err = errors.New("no leader known")
		} else {
			path = "forwarded"
			index, errs, err = n.forwarder.forward(ctx, cmds...)
		}
		if err == nil {
			if werr := n.WaitApplied(ctx, index); werr != nil {
				err = fmt.Errorf("committed at index %d but not yet applied here: %w", index, werr)
				observe(err)
				return nil, err
			}
			observe(nil)
			return errs, nil
		}
		if errors.Is(err, ErrClosed) || errors.Is(err, errBatchTooLarge) {
			observe(err)
			return nil, err
		}
		lastErr = err
		select {
		case <-ctx.Done():
			err := fmt.Errorf("%w: %v", ErrNoLeader, lastErr)
			observe(err)
			return nil, err
		case <-leaderChanged:
			backoff = 10 * time.Millisecond // a new leader: try it now
			continue
		case <-time.After(backoff):
		}
		if backoff < 200*time.Millisecond {
			backoff *= 2
		}
	}
}

// CommitAsync is Commit for a caller that must not hold a goroutine while the write
// commits (an agent's online): done gets what Commit would return, exactly once, from
// another goroutine, and must not block (it runs among the callbacks of a whole batch;
// what it defers to b runs when they are done: nil b, at once).
// The usual case costs no goroutine of its own: the commands join the next batch (here or
// in the forward to the leader) and done runs when the batch's outcome arrives, once this
// node has applied it. Anything else (no leader known, a failed or refused batch, a full
// queue) takes Commit's path with its retries, on a goroutine, within the same CommitWait.
func (n *Node) CommitAsync(cmds []fsm.Command, done func(b *later.Batch, errs []error, err error)) {
	start := time.Now()
	slow := func() {
		go func() {
			errs, err := n.commit(context.Background(), start, cmds)
			done(nil, errs, err)
		}()
	}
	b, path := n.batcher, "local"
	if n.raft.State() != raft.Leader {
		if _, addr := n.Leader(); addr == "" {
			slow()
			return
		}
		b, path = n.forwarder.b, "forwarded"
	}
	queued := b.proposeAsync(cmds, func(lb *later.Batch, r proposalResult) {
		if r.err != nil {
			slow() // retried as Commit would: the same request ids, so never applied twice
			return
		}
		n.fsm.whenApplied(lb, r.index, start.Add(n.cfg.CommitWait), func(lb *later.Batch, err error) {
			if err != nil {
				err = fmt.Errorf("committed at index %d but not yet applied here: %w", r.index, err)
			}
			if n.cfg.OnCommit != nil {
				n.cfg.OnCommit(path, time.Since(start), err)
			}
			if err != nil {
				done(lb, nil, err)
				return
			}
			done(lb, r.errs, nil)
		})
	})
	if !queued {
		slow()
	}
}

// propose commits cmds through group commit; it must run on the leader.
func (n *Node) propose(ctx context.Context, cmds ...fsm.Command) (uint64, []error, error) {
	if n.raft.State() != raft.Leader {
		return 0, nil, ErrNotLeader
	}
	return n.batcher.propose(ctx, cmds)
}

// ConsistentRead waits until this node's state reflects every write committed before the
// call (the leader's read index after a barrier), so a local read that follows is as fresh
// as one on the leader. It fails when no leader answers within Config.CommitWait.
func (n *Node) ConsistentRead(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.CommitWait)
	defer cancel()
	if n.IsLeader() {
		if err := n.announce(n.raft.Barrier(n.cfg.CommitWait)); err != nil {
			return fmt.Errorf("consistent read: barrier: %w", err)
		}
		return nil
	}
	_, leader := n.Leader()
	if leader == "" {
		return fmt.Errorf("consistent read: %w", ErrNoLeader)
	}
	index, err := n.client.readIndex(ctx, leader)
	if err != nil {
		return fmt.Errorf("consistent read through leader %s: %w", leader, err)
	}
	if err := n.WaitApplied(ctx, index); err != nil {
		return fmt.Errorf("consistent read: applying up to the leader's index %d: %w", index, err)
	}
	return nil
}

// MaxSnapshotUpload bounds a restored snapshot; 100,000 registrations take about 7 MB.
const MaxSnapshotUpload = 1 << 30

// RestoreSnapshot replaces the whole cluster's state with snapshot (the fsm snapshot
// format), through the leader wherever this runs. fsm.ErrInvalid marks a snapshot this
// build cannot restore.
func (n *Node) RestoreSnapshot(ctx context.Context, snapshot []byte) error {
	if err := fsm.New().Restore(io.NopCloser(bytes.NewReader(snapshot))); err != nil {
		return fmt.Errorf("%w: not a snapshot this version can restore: %v", fsm.ErrInvalid, err)
	}
	if n.IsLeader() {
		return n.restoreHere(snapshot)
	}
	_, leader := n.Leader()
	if leader == "" {
		return ErrNoLeader
	}
	var out map[string]string
	status, err := n.client.call(ctx, http.MethodPost, leader, pathRestore, snapshot, &out, false)
	if err != nil {
		return fmt.Errorf("restore through leader %s: %w", leader, err)
	}
	if status == http.StatusBadRequest {
		return fmt.Errorf("%w: %s", fsm.ErrInvalid, out["error"])
	}
	if status != http.StatusOK {
		return fmt.Errorf("restore through leader %s: %d %s", leader, status, out["error"])
	}
	return nil
}

// restoreHere restores snapshot on this node, which must lead.
func (n *Node) restoreHere(snapshot []byte) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	scratch := fsm.New()
	scratch.SetBinarySnapshots(n.BinarySnapshots) // raft sends the result to the followers
	if err := scratch.Restore(io.NopCloser(bytes.NewReader(snapshot))); err != nil {
		return fmt.Errorf("%w: not a snapshot this version can restore: %v", fsm.ErrInvalid, err)
	}
	// The upload's index is its old cluster's: rebased to ours, so applied-index waits
	// (read-your-write) and the index headers stay true.
	scratch.Rebase(n.AppliedIndex())
	snap, err := scratch.Snapshot()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	body := sink.Bytes()
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(len(body))}
	if err := n.raft.Restore(meta, bytes.NewReader(body), n.cfg.CommitWait); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	n.log.Warn("state restored from an uploaded snapshot", "bytes", len(body))
	return nil
}

// bufferSink collects a snapshot in memory.
type bufferSink struct{ bytes.Buffer }

func (*bufferSink) ID() string    { return "api" }
func (*bufferSink) Cancel() error { return nil }
func (*bufferSink) Close() error  { return nil }

// SaveSnapshot writes this node's replicated state in the snapshot format and returns the
// index it reflects. Any node can serve it.
func (n *Node) SaveSnapshot() ([]byte, uint64, error) {
	index := n.fsm.inner.AppliedIndex()
	snap, err := n.fsm.inner.Snapshot()
	if err != nil {
		return nil, 0, err
	}
	defer snap.Release()
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		return nil, 0, err
	}
	return sink.Bytes(), index, nil
}
