package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	waltypes "github.com/hashicorp/raft-wal/types"
)

// Where raft's log lives. raft.db (bolt) always keeps the stable store (term and vote,
// written only around elections); the log is either a write-ahead log of preallocated
// segment files under raft/wal (the default: one append and one fdatasync per batch of
// entries), or raft.db itself, where every append is a B+tree update with two
// fdatasyncs, about twice the CPU (BENCHMARKS.md, round 10).
const (
	LogStoreWAL  = "wal"
	LogStoreBolt = "bolt"
)

// walSegmentSize is one segment file of the write-ahead log. Entries are batches of up to
// GroupCommitMax commands (a few KiB under load), and raft keeps ~18,000 entries between
// snapshot and compaction, so a handful of segments hold the log; each new segment costs
// a metadata commit.
const walSegmentSize = 16 << 20

// Directories of a move between log stores in progress: a copy into a write-ahead log is
// made under walMoving and renamed to wal once complete, and a write-ahead log being
// given up is renamed to walGone before it is removed. Either left over by a crash is
// removed at the next start, so raft/wal exists only when it holds the whole log.
const (
	walDirName    = "wal"
	walMovingName = "wal.moving"
	walGoneName   = "wal.gone"
)

// openLogStore returns raft's log store of the given kind under raftDir, moving the log
// into it when the other kind holds it (a node upgraded from raft.db keeps its log; one
// started with --raft-log-store bolt moves it back, the way to run an older build again).
// closeFn releases it; for bolt it is nil, raft.db being closed by the caller. snapIndex
// is the index of the node's newest snapshot (0: none).
func openLogStore(kind, raftDir string, bolt *raftboltdb.BoltStore, snapIndex uint64, noSync bool, hlog hclog.Logger, log *slog.Logger) (raft.LogStore, func() error, error) {
	walDir := filepath.Join(raftDir, walDirName)
	for _, leftover := range []string{walMovingName, walGoneName} {
		if err := os.RemoveAll(filepath.Join(raftDir, leftover)); err != nil {
			return nil, nil, fmt.Errorf("remove %s: %w", leftover, err)
		}
	}
	_, err := os.Stat(walDir)
	haveWAL := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}

	switch kind {
	case LogStoreWAL:
		if !haveWAL {
			if err := moveIntoWAL(raftDir, bolt, snapIndex, noSync, hlog, log); err != nil {
				return nil, nil, fmt.Errorf("move the raft log from raft.db to %s: %w", walDirName, err)
			}
		}
		w, err := openWAL(walDir, noSync, hlog)
		if err != nil {
			return nil, nil, fmt.Errorf("open %s: %w", walDirName, err)
		}
		stale, err := staleWAL(w, bolt, snapIndex, log)
		if err == nil && stale {
			w.Close()
			w, err = replaceWAL(raftDir, bolt, snapIndex, noSync, hlog, log)
			if err != nil {
				return nil, nil, err
			}
		}
		if err == nil {
			err = dropBelowSnapshot(w, snapIndex, log)
		}
		if err != nil {
			w.Close()
			return nil, nil, fmt.Errorf("compare the logs of raft.db and %s: %w", walDirName, err)
		}
		if err := clearLog(bolt); err != nil {
			w.Close()
			return nil, nil, fmt.Errorf("clear the moved log from raft.db: %w", err)
		}
		return w, w.Close, nil
	case LogStoreBolt:
		if haveWAL {
			if err := moveOutOfWAL(raftDir, bolt, snapIndex, noSync, hlog, log); err != nil {
				return nil, nil, fmt.Errorf("move the raft log from %s to raft.db: %w", walDirName, err)
			}
		}
		return bolt, nil, nil
	default:
		return nil, nil, fmt.Errorf("raft log store %q: want %s or %s", kind, LogStoreWAL, LogStoreBolt)
	}
}

// staleWAL reports whether raft.db holds a log the write-ahead log w does not contain, so
// that raft.db's is the one to keep. Both hold one after a crash in the middle of a move,
// when raft.db's is a copy of part of w, or after an older build (which knows only
// raft.db) ran on this data dir without --raft-log-store bolt first and wrote its own.
// Raft's log matching decides: if w holds raft.db's last entry with the same term, it
// holds everything before it too. A raft.db log that ends at or below the newest
// snapshot (snapIndex) is covered by it and never wins.
func staleWAL(w raft.LogStore, bolt raft.LogStore, snapIndex uint64, log *slog.Logger) (bool, error) {
	boltLast, err := bolt.LastIndex()
	if err != nil || boltLast == 0 || boltLast <= snapIndex {
		return false, err
	}
	var inBolt, inWAL raft.Log
	if err := bolt.GetLog(boltLast, &inBolt); err != nil {
		return false, fmt.Errorf("read raft.db's last entry %d: %w", boltLast, err)
	}
	switch err := w.GetLog(boltLast, &inWAL); {
	case err == nil && inWAL.Term == inBolt.Term:
		return false, nil
	case err != nil && !errors.Is(err, raft.ErrLogNotFound):
		return false, err
	}
	walLast, err := w.LastIndex()
	if err != nil {
		return false, err
	}
	log.Warn("raft.db holds raft log entries the write-ahead log lacks (an older build ran on this data dir): keeping raft.db's log, giving up the write-ahead log",
		"raft_db_last_index", boltLast, "raft_db_last_term", inBolt.Term, "wal_last_index", walLast)
	return true, nil
}

// dropBelowSnapshot empties a write-ahead log that ends below the newest snapshot (an
// older build installed a snapshot while the write-ahead log sat unused): raft's next
// entry would not follow it. The snapshot covers what it held.
func dropBelowSnapshot(w raft.LogStore, snapIndex uint64, log *slog.Logger) error {
	walLast, err := w.LastIndex()
	if err != nil || walLast == 0 || walLast >= snapIndex {
		return err
	}
	log.Info("the write-ahead log ends below the newest snapshot: starting it after the snapshot", "wal_last_index", walLast, "snapshot_index", snapIndex)
	return clearLog(w)
}

// replaceWAL gives up the write-ahead log and moves raft.db's log into a new one.
func replaceWAL(raftDir string, bolt *raftboltdb.BoltStore, snapIndex uint64, noSync bool, hlog hclog.Logger, log *slog.Logger) (walStore, error) {
	if err := removeWAL(raftDir); err != nil {
		return walStore{}, fmt.Errorf("give up the stale %s: %w", walDirName, err)
	}
	if err := moveIntoWAL(raftDir, bolt, snapIndex, noSync, hlog, log); err != nil {
		return walStore{}, fmt.Errorf("move the raft log from raft.db to %s: %w", walDirName, err)
	}
	w, err := openWAL(filepath.Join(raftDir, walDirName), noSync, hlog)
	if err != nil {
		return walStore{}, fmt.Errorf("open %s: %w", walDirName, err)
	}
	return w, nil
}

// walStore is raft-wal's log with its metadata file, which WAL.Close leaves open (v0.4.0):
// closing both lets a node reopen its data dir in the same process.
type walStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

func (w walStore) Close() error {
	err := w.WAL.Close()
	if merr := w.meta.Close(); err == nil {
		err = merr
	}
	return err
}

func openWAL(dir string, noSync bool, hlog hclog.Logger) (walStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return walStore{}, err
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(dir,
		wal.WithMetaStore(meta),
		wal.WithSegmentSize(walSegmentSize),
		wal.WithLogger(hlog.Named("wal")),
		wal.WithSegmentFiler(indexlessSealFiler{segment.NewFiler(dir, dataSyncFS{VFS: walfs.New(), noSync: noSync})}))
	if err != nil {
		meta.Close()
		return walStore{}, err
	}
	return walStore{WAL: w, meta: meta}, nil
}

// moveIntoWAL copies raft.db's log, if it holds one, into a new write-ahead log, made
// under wal.moving and renamed to wal once it is complete and on disk.
//
// A member running on raft.db that installed a snapshot from the leader keeps the old
// entries below it (raft compacts such a log but does not clear it); if nothing was
// written since, raft.db's whole log lies below the snapshot. Copied, those entries would
// be the write-ahead log's tail and raft's next entry (the snapshot's index + 1) would
// not follow it: the write-ahead log refuses it, and the leader walks back entry by entry
// (up to 10,240 refused round trips) or sends the snapshot again. The snapshot covers
// them, so such a log is left behind.
func moveIntoWAL(raftDir string, bolt *raftboltdb.BoltStore, snapIndex uint64, noSync bool, hlog hclog.Logger, log *slog.Logger) error {
	moving := filepath.Join(raftDir, walMovingName)
	w, err := openWAL(moving, noSync, hlog)
	if err != nil {
		return err
	}
	var n int
	last, err := bolt.LastIndex()
	if err == nil && last >= snapIndex {
		n, err = copyLog(w, bolt)
	} else if err == nil && last > 0 {
		log.Info("raft.db's log lies below the newest snapshot: the write-ahead log starts after it", "log_last_index", last, "snapshot_index", snapIndex)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(moving) // the segment files' names are on disk before the rename
	}
	if err != nil {
		return err
	}
	if err := os.Rename(moving, filepath.Join(raftDir, walDirName)); err != nil {
		return err
	}
	if err := syncDir(raftDir); err != nil {
		return err
	}
	if n > 0 {
		log.Info("moved the raft log from raft.db to the write-ahead log", "entries", n, "dir", filepath.Join(raftDir, walDirName))
	}
	return nil
}

// moveOutOfWAL copies the write-ahead log into raft.db (replacing whatever partial copy an
// interrupted move left there) and then gives the write-ahead log up.
func moveOutOfWAL(raftDir string, bolt *raftboltdb.BoltStore, snapIndex uint64, noSync bool, hlog hclog.Logger, log *slog.Logger) error {
	walDir := filepath.Join(raftDir, walDirName)
	w, err := openWAL(walDir, noSync, hlog)
	if err != nil {
		return err
	}
	stale, err := staleWAL(w, bolt, snapIndex, log)
	n := 0
	if err == nil && !stale {
		err = clearLog(bolt)
		if err == nil {
			n, err = copyLog(bolt, w)
		}
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := removeWAL(raftDir); err != nil {
		return err
	}
	if !stale {
		log.Info("moved the raft log from the write-ahead log to raft.db", "entries", n)
	}
	return nil
}

// removeWAL gives the write-ahead log up: renamed to wal.gone first (the rename on disk),
// so that a crash while removing it never leaves a partial log under wal.
func removeWAL(raftDir string) error {
	gone := filepath.Join(raftDir, walGoneName)
	if err := os.Rename(filepath.Join(raftDir, walDirName), gone); err != nil {
		return err
	}
	if err := syncDir(raftDir); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// copyLog copies src's log into dst and returns how many entries it copied. Only the
// contiguous tail is copied: raft.db may hold older entries before a gap that a snapshot
// from the leader left (its log is not kept contiguous, the write-ahead log's must be);
// those are covered by that snapshot.
func copyLog(dst, src raft.LogStore) (int, error) {
	first, err := src.FirstIndex()
	if err != nil {
		return 0, err
	}
	last, err := src.LastIndex()
	if err != nil {
		return 0, err
	}
	if last == 0 {
		return 0, nil
	}
	start := last
	for start > first {
		var l raft.Log
		if err := src.GetLog(start-1, &l); errors.Is(err, raft.ErrLogNotFound) {
			break
		} else if err != nil {
			return 0, err
		}
		start--
	}
	const batchBytes = 1 << 20
	var batch []*raft.Log
	size := 0
	for i := start; i <= last; i++ {
		l := new(raft.Log)
		if err := src.GetLog(i, l); err != nil {
			return 0, fmt.Errorf("read entry %d: %w", i, err)
		}
		batch = append(batch, l)
		size += len(l.Data) + len(l.Extensions) + 32
		if size >= batchBytes || i == last {
			if err := dst.StoreLogs(batch); err != nil {
				return 0, fmt.Errorf("write entries %d-%d: %w", batch[0].Index, i, err)
			}
			batch, size = batch[:0], 0
		}
	}
	return int(last - start + 1), nil
}

// clearLog removes every entry of s's log.
func clearLog(s raft.LogStore) error {
	first, err := s.FirstIndex()
	if err != nil {
		return err
	}
	last, err := s.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	return s.DeleteRange(first, last)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// indexlessSealFiler opens raft-wal's segments, also those its metadata calls sealed
// without an index block. raft-wal v0.4.0 seals the tail that way when raft deletes a
// suffix of the log (a follower dropping entries that conflict with a new leader's:
// hashicorp/raft-wal#31). The process goes on reading it through its writer, but after a
// restart every read from it failed ("sealed segment has no index block") and raft
// panicked at start. Such a segment is read the way raft-wal reads the tail after a
// restart: its entries are found by scanning the file's committed frames. Entries it holds
// past its end (the deleted suffix) are never asked for: the next segment starts there.
type indexlessSealFiler struct {
	*segment.Filer
}

func (f indexlessSealFiler) Open(info waltypes.SegmentInfo) (waltypes.SegmentReader, error) {
	if info.IndexStart == 0 && !info.SealTime.IsZero() {
		return f.Filer.RecoverTail(info) // only read: nothing is appended to a sealed segment
	}
	return f.Filer.Open(info)
}

// dataSyncFS is raft-wal's file system with fdatasync in place of fsync for segment
// files: they are preallocated, so an append changes no metadata that reading the data
// back needs, and fsync's extra inode write (the modification time) is pure cost. With
// noSync (tests and throwaway benchmarks, --raft-no-sync) nothing is synced at all.
type dataSyncFS struct {
	waltypes.VFS
	noSync bool
}

func (v dataSyncFS) Create(dir, name string, size uint64) (waltypes.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	// The first sync of a new file must also sync its directory (raft-wal's own file
	// does that on its first Sync), or a crash could lose the file's name.
	return &dataSyncFile{WritableFile: f, dir: dir, newFile: true, noSync: v.noSync}, nil
}

func (v dataSyncFS) OpenWriter(dir, name string) (waltypes.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return &dataSyncFile{WritableFile: f, dir: dir, noSync: v.noSync}, nil
}

type dataSyncFile struct {
	waltypes.WritableFile
	dir     string
	newFile bool // its directory has not been synced since it was created
	noSync  bool
}

type fder interface{ Fd() uintptr }

func (f *dataSyncFile) Sync() error {
	if f.noSync {
		return nil
	}
	fd, ok := f.WritableFile.(fder)
	if !ok || f.newFile {
		// raft-wal's own Sync: fsync, and the directory on a new file's first sync.
		if err := f.WritableFile.Sync(); err != nil {
			return err
		}
		f.newFile = false
		return nil
	}
	for {
		err := syscall.Fdatasync(int(fd.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// timedLogStore times every write of log entries into wsregistry_raft_store_logs_seconds,
// whichever store holds the log.
type timedLogStore struct {
	raft.LogStore
	monotonic bool
}

var storeLogsKey = []string{"raft", "logstore", "storeLogs"}

func (t timedLogStore) StoreLog(l *raft.Log) error {
	return t.StoreLogs([]*raft.Log{l})
}

func (t timedLogStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	err := t.LogStore.StoreLogs(logs)
	gometrics.MeasureSince(storeLogsKey, start)
	return err
}

// IsMonotonic passes on the write-ahead log's demand that entries stay contiguous: raft
// then clears the log after installing a snapshot instead of leaving a gap.
func (t timedLogStore) IsMonotonic() bool { return t.monotonic }
