package cluster

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

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
	logs, closeLogs, err := openLogStore(LogStoreWAL, raftDir, bolt, true, hclog.NewNullLogger(), slog.New(slog.DiscardHandler))
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
	s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, last := bounds(t, s)
	if last == 0 {
		return 0
	}
	return last - first + 1
}
