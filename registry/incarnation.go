package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// nextIncarnation bumps the counter kept in dataDir, so sessions are unique across restarts
// and a restarted node can purge exactly its older incarnations. It never goes below the
// wall clock in milliseconds: a node whose data dir was wiped must still start above the
// purge mark the cluster keeps for its id, or every registration it makes is refused.
func nextIncarnation(dataDir string) (uint64, error) {
	path := filepath.Join(dataDir, "incarnation")
	var prev uint64
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		prev, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("incarnation file %s is corrupt: %w", path, err)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return 0, fmt.Errorf("read incarnation: %w", err)
	}
	next := max(prev+1, uint64(time.Now().UnixMilli()))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return 0, fmt.Errorf("write incarnation: %w", err)
	}
	if _, err := f.WriteString(strconv.FormatUint(next, 10) + "\n"); err != nil {
		f.Close()
		return 0, fmt.Errorf("write incarnation: %w", err)
	}
	// fsync before rename: reusing an incarnation after a crash would let a stale session
	// survive the restart purge.
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, fmt.Errorf("sync incarnation: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("write incarnation: %w", err)
	}
	return next, nil
}
