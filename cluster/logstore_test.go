package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// A one-node cluster whose log store is switched between restarts keeps every write: the
// log moves at start, from raft.db into the write-ahead log (an upgrade) and back (the way
// to an older build), and only one of them holds it afterwards.
func TestLogStore_TheLogMovesBetweenRaftDBAndTheWriteAheadLog(t *testing.T) {
	cfg := testConfig(t, "solo")
	cfg.SnapshotThreshold = 1 << 20 // no snapshot: the writes exist only in the log
	dir := cfg.DataDir
	raftDir := filepath.Join(dir, "raft")

	restart := func(kind string, want ...string) {
		t.Helper()
		c := cfg
		c.LogStore = kind
		c.Listener = listen(t)
		c.Advertise = c.Listener.Addr().String()
		n := open(t, c)
		testutil.Eventually(t, 10*time.Second, n.Ready, "node not ready with log store %s", kind)
		for _, id := range want {
			testutil.Eventually(t, 5*time.Second, func() bool { _, ok := n.state.Node(id); return ok },
				"with log store %s the write %q is lost", kind, id)
		}
		commit(t, n, meta(kind+"-write"))
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}

	cfg.LogStore = LogStoreBolt
	restart(LogStoreBolt)
	if boltEntries(t, raftDir) == 0 {
		t.Fatal("with log store bolt raft.db holds no log entries")
	}
	if _, err := os.Stat(filepath.Join(raftDir, walDirName)); err == nil {
		t.Fatal("with log store bolt a write-ahead log was made")
	}

	restart(LogStoreWAL, "bolt-write")
	if n := boltEntries(t, raftDir); n != 0 {
		t.Fatalf("after the move to the write-ahead log raft.db still holds %d entries", n)
	}
	if _, err := os.Stat(filepath.Join(raftDir, walDirName)); err != nil {
		t.Fatalf("no write-ahead log: %v", err)
	}

	restart(LogStoreWAL, "bolt-write", "wal-write")
	restart(LogStoreBolt, "bolt-write", "wal-write")
	if _, err := os.Stat(filepath.Join(raftDir, walDirName)); !os.IsNotExist(err) {
		t.Fatalf("after the move back to raft.db the write-ahead log is still there (%v)", err)
	}
	restart(LogStoreWAL, "bolt-write", "wal-write")
}

// What a crash in the middle of a move leaves is cleaned up: a half-made write-ahead log
// (wal.moving) or a half-removed one (wal.gone) is removed, and the log is where it was.
func TestLogStore_ACrashedMoveLeavesNoHalfLog(t *testing.T) {
	raftDir := t.TempDir()
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	if err := bolt.StoreLogs(entries(1, 5)); err != nil {
		t.Fatal(err)
	}
	for _, leftover := range []string{walMovingName, walGoneName} {
		if err := os.MkdirAll(filepath.Join(raftDir, leftover), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(raftDir, leftover, "junk"), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logs, closeLogs, err := openLogStore(LogStoreWAL, raftDir, bolt, 0, true, hclog.NewNullLogger(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closeLogs()
	for _, leftover := range []string{walMovingName, walGoneName} {
		if _, err := os.Stat(filepath.Join(raftDir, leftover)); !os.IsNotExist(err) {
			t.Errorf("%s survived the start (%v)", leftover, err)
		}
	}
	assertLog(t, logs, 1, 5)
}

// Both stores hold a log after a crash in the middle of a move (raft.db's is part of the
// write-ahead log: the write-ahead log is kept), or after an older build, which knows only
// raft.db, ran on the data dir and wrote there (raft.db's log holds entries the
// write-ahead log lacks: it is kept, whether it ends after the write-ahead log or below it
// on a newer term). Either way the log kept is where the chosen store wants it, and a
// write-ahead log that ends below the newest snapshot starts after it.
func TestLogStore_TheCurrentOfTwoLogsIsKept(t *testing.T) {
	term2 := func(logs []*raft.Log) []*raft.Log {
		for _, l := range logs {
			l.Term = 2
		}
		return logs
	}
	for _, tc := range []struct {
		name       string
		wal, bolt  []*raft.Log
		snapIndex  uint64
		first      uint64 // the log kept: first..last, term 2 from term2From on (0: none)
		last       uint64
		term2From  uint64
		emptyAfter bool // nothing kept: the snapshot covers it
	}{
		{name: "a crash after the rename", wal: entries(1, 9), bolt: entries(1, 5), first: 1, last: 9},
		{name: "a crash while copying back", wal: entries(1, 9), bolt: entries(1, 3), first: 1, last: 9},
		{name: "an older build wrote further", wal: entries(1, 5), bolt: entries(1, 9), first: 1, last: 9},
		{name: "an older build wrote on a newer term", wal: entries(1, 9), bolt: append(entries(1, 4), term2(entries(5, 6))...), first: 1, last: 6, term2From: 5},
		{name: "raft.db's log lies below the snapshot", wal: entries(1, 9), bolt: entries(1, 5), snapIndex: 7, first: 1, last: 9},
		{name: "the write-ahead log lies below the snapshot", wal: entries(50, 100), snapIndex: 500, emptyAfter: true},
	} {
		for _, kind := range []string{LogStoreWAL, LogStoreBolt} {
			if tc.emptyAfter && kind == LogStoreBolt {
				continue // raft.db may keep a log below a snapshot: raft compacts it
			}
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				raftDir := t.TempDir()
				w, err := openWAL(filepath.Join(raftDir, walDirName), true, hclog.NewNullLogger())
				if err != nil {
					t.Fatal(err)
				}
				if err := w.StoreLogs(tc.wal); err != nil {
					t.Fatal(err)
				}
				w.Close()
				bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"), NoSync: true})
				if err != nil {
					t.Fatal(err)
				}
				defer bolt.Close()
				if len(tc.bolt) > 0 {
					if err := bolt.StoreLogs(tc.bolt); err != nil {
						t.Fatal(err)
					}
				}
				logs, closeLogs, err := openLogStore(kind, raftDir, bolt, tc.snapIndex, true, hclog.NewNullLogger(), slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				if closeLogs != nil {
					defer closeLogs()
				}
				if tc.emptyAfter {
					if _, last := bounds(t, logs); last != 0 {
						t.Fatalf("the log still ends at %d, below the snapshot's %d", last, tc.snapIndex)
					}
					// raft's next entry follows the snapshot
					if err := logs.StoreLogs(entries(tc.snapIndex+1, tc.snapIndex+2)); err != nil {
						t.Fatalf("append after the snapshot: %v", err)
					}
					assertLog(t, logs, tc.snapIndex+1, tc.snapIndex+2)
					return
				}
				assertLog(t, logs, tc.first, tc.last)
				for i := tc.first; i <= tc.last; i++ {
					var e raft.Log
					if err := logs.GetLog(i, &e); err != nil {
						t.Fatal(err)
					}
					want := uint64(1)
					if tc.term2From > 0 && i >= tc.term2From {
						want = 2
					}
					if e.Term != want {
						t.Fatalf("entry %d has term %d, want %d: the wrong log was kept", i, e.Term, want)
					}
				}
				if kind == LogStoreWAL {
					if _, last := bounds(t, bolt); last != 0 {
						t.Fatalf("raft.db still holds a log up to %d", last)
					}
				} else if _, err := os.Stat(filepath.Join(raftDir, walDirName)); !os.IsNotExist(err) {
					t.Fatalf("the write-ahead log is still there (%v)", err)
				}
			})
		}
	}
}

// raft.db's log may have a gap a snapshot from the leader left; the write-ahead log takes
// the contiguous tail after it (the snapshot covers what is before).
func TestLogStore_CopyTakesTheTailAfterAGap(t *testing.T) {
	src := raft.NewInmemStore()
	if err := src.StoreLogs(append(entries(1, 5), entries(10, 12)...)); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(t.TempDir(), true, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	n, err := copyLog(w, src)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("copied %d entries, want 3 (10-12)", n)
	}
	assertLog(t, w, 10, 12)
}

// A member on raft.db that caught up by a snapshot from the leader and was stopped before
// anything else was written holds only entries below that snapshot. Moved to the
// write-ahead log at its next start, it must go on following the leader with a log that
// starts after the snapshot (copied, the old entries made the write-ahead log refuse the
// next append, and the member followed only after the leader had walked back to them).
func TestLogStore_AMemberCaughtUpByASnapshotMovesAndFollows(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) {
		c.LogStore = LogStoreBolt
		c.SnapshotThreshold = 1 << 20 // only the snapshots taken below, at the last entry
		c.trailingLogs = 4
	})
	f := followerOf(t, nodes)
	var running []*testNode
	for _, n := range nodes {
		if n != f {
			running = append(running, n)
		}
	}
	has := func(n *testNode, id string) func() bool {
		return func() bool { _, ok := n.state.Node(id); return ok }
	}
	commit(t, running[0], meta("before"))
	testutil.Eventually(t, 5*time.Second, has(f, "before"), "the follower never applied the first write")
	logs := &testutil.LogBuffer{}
	reopen := func(kind string) *testNode {
		t.Helper()
		c := f.cfg
		c.LogStore = kind
		ln, err := net.Listen("tcp", c.Advertise)
		if err != nil {
			t.Fatal(err)
		}
		c.Listener = ln
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		return open(t, c)
	}
	raftDir := filepath.Join(f.cfg.DataDir, "raft")

	// The follower, stopped, misses writes; both running members snapshot at their last
	// entry and keep 4 after it, so whichever leads can only send the snapshot. Restarted
	// on raft.db, the follower installs it and is stopped again. An election meanwhile
	// (the new term's first entry reaches the follower after the snapshot) spoils the
	// setup, and it is done again.
	var snapIndex uint64
	for attempt := 1; snapIndex == 0; attempt++ {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		last := fmt.Sprintf("while-down-%d-39", attempt)
		for i := range 40 {
			commit(t, running[i%2], meta(fmt.Sprintf("while-down-%d-%d", attempt, i)))
		}
		for _, n := range running {
			testutil.Eventually(t, 5*time.Second, has(n, last), "%s never applied the writes", n.ID())
			if err := n.raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
		f = reopen(LogStoreBolt)
		testutil.Eventually(t, 10*time.Second, has(f, last), "the follower never caught up by the leader's snapshot")
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		metas, err := snaps.List()
		if err != nil {
			t.Fatal(err)
		}
		boltLast := boltLastIndex(t, raftDir)
		switch {
		case len(metas) > 0 && boltLast < metas[0].Index:
			snapIndex = metas[0].Index
		case attempt == 3:
			t.Fatalf("setup: three times the follower did not end with raft.db's log below a snapshot (log to %d, snapshots %v)", boltLast, metas)
		default:
			t.Logf("setup, attempt %d: raft.db's log reaches %d, snapshots %v: again", attempt, boltLast, metas)
		}
	}

	logs = &testutil.LogBuffer{}
	f = reopen(LogStoreWAL)
	if _, last := bounds(t, f.logs); last != 0 {
		t.Fatalf("the write-ahead log starts with entries up to %d, below the snapshot's %d", last, snapIndex)
	}
	testutil.Eventually(t, 10*time.Second, f.Ready, "the follower is not ready on the write-ahead log")
	commit(t, running[0], meta("after"))
	testutil.Eventually(t, 10*time.Second, has(f, "after"), "the follower on the write-ahead log never applied a new write")
	// Copied, the old entries made raft's next append fail ("non-monotonic") and the
	// leader walk back entry by entry, or send the snapshot again, before the member
	// followed; at 10,240 trailing entries that is thousands of refused round trips.
	if strings.Contains(logs.String(), "failed to append") {
		t.Fatalf("the follower on the write-ahead log refused an append:\n%s", logs)
	}
}

// Raft clears a conflicting suffix of a follower's log (after a partition, say) with
// DeleteRange. raft-wal v0.4.0 then marks the segment sealed without writing its index
// block (hashicorp/raft-wal#31), and after a restart every read from that segment failed
// ("sealed segment has no index block"): raft panicked at start. Our filer reads such a
// segment as raft-wal reads a tail, by scanning it.
func TestLogStore_ASegmentCutByASuffixDeleteIsReadAfterARestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after []*raft.Log // appended after the delete, before the restart
		last  uint64
	}{
		{"new entries after the cut", entries(8, 12), 12},
		{"a restart right after the cut", nil, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w, err := openWAL(dir, true, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			if err := w.StoreLogs(entries(1, 10)); err != nil {
				t.Fatal(err)
			}
			if err := w.DeleteRange(8, 10); err != nil { // raft's "clearing log suffix"
				t.Fatal(err)
			}
			if len(tc.after) > 0 {
				if err := w.StoreLogs(tc.after); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			w, err = openWAL(dir, true, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			assertLog(t, w, 1, tc.last)
			if err := w.StoreLogs(entries(tc.last+1, tc.last+1)); err != nil {
				t.Fatal(err)
			}
			assertLog(t, w, 1, tc.last+1)
		})
	}
}

// The same through raft on a real cluster: a leader cut off from the others appends an
// entry nobody else gets; the others elect a new leader, which writes at that index; once
// healed, the old leader, now a follower, clears the conflicting suffix. It must then
// restart on its write-ahead log and follow (raft panicked at start before).
func TestLogStore_AFollowerThatClearedASuffixRestarts(t *testing.T) {
	logs := &testutil.LogBuffer{}
	nodes := startCluster(t, 3, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil)) // raft's warnings reach it
	})
	old := leaderOf(t, nodes)
	var others []*testNode
	for _, n := range nodes {
		if n != old {
			others = append(others, n)
		}
	}
	old.SetPartitioned(true)
	body, err := encodeBatch([]fsm.Command{meta("never-committed")}, true)
	if err != nil {
		t.Fatal(err)
	}
	old.raft.Apply(body, 0) // appended to the cut-off leader's log only
	now := leaderOf(t, others)
	commit(t, now, meta("new-leader-write"))
	old.SetPartitioned(false)
	testutil.Eventually(t, 10*time.Second, func() bool { _, ok := old.state.Node("new-leader-write"); return ok },
		"the healed old leader never applied the new leader's write")
	if !strings.Contains(logs.String(), "clearing log suffix") {
		t.Fatalf("setup: no member cleared a log suffix:\n%s", logs)
	}

	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	c := old.cfg
	ln, err := net.Listen("tcp", c.Advertise)
	if err != nil {
		t.Fatal(err)
	}
	c.Listener = ln
	back := open(t, c)
	testutil.Eventually(t, 10*time.Second, back.Ready, "the restarted member is not ready")
	commit(t, now, meta("after-restart"))
	testutil.Eventually(t, 10*time.Second, func() bool { _, ok := back.state.Node("after-restart"); return ok },
		"the restarted member never applied a new write")
	if _, ok := back.state.Node("never-committed"); ok {
		t.Fatal("the entry the cut-off leader alone held was applied")
	}
}

func entries(from, to uint64) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
	}
	return logs
}

// bounds returns s's first and last index.
func bounds(t *testing.T, s raft.LogStore) (first, last uint64) {
	t.Helper()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, err = s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	return first, last
}

func assertLog(t *testing.T, s raft.LogStore, first, last uint64) {
	t.Helper()
	if f, l := bounds(t, s); f != first || l != last {
		t.Fatalf("log holds %d-%d, want %d-%d", f, l, first, last)
	}
	for i := first; i <= last; i++ {
		var e raft.Log
		if err := s.GetLog(i, &e); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if want := fmt.Sprintf("entry %d", i); string(e.Data) != want {
			t.Fatalf("entry %d holds %q, want %q", i, e.Data, want)
		}
	}
}

// boltEntries counts the log entries in a closed node's raft.db.
func boltEntries(t *testing.T, raftDir string) uint64 {
	t.Helper()
	first, last := boltBounds(t, raftDir)
	if last == 0 {
		return 0
	}
	return last - first + 1
}

func boltLastIndex(t *testing.T, raftDir string) uint64 {
	t.Helper()
	_, last := boltBounds(t, raftDir)
	return last
}

// boltBounds returns the first and last index of the log in a closed node's raft.db.
func boltBounds(t *testing.T, raftDir string) (first, last uint64) {
	t.Helper()
	s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return bounds(t, s)
}
