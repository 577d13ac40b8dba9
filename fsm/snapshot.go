package fsm

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"
)

const (
	snapshotMagic = "wsregistry-snapshot"
	// SnapshotVersion is the snapshot format this build writes once every member reads it
	// (FeatureBinarySnapshot): the binary form of snapshot_binary.go.
	SnapshotVersion = 2
	// SnapshotVersionJSON is the format of earlier builds (one JSON document). This build
	// still reads it, and writes it while a member of the cluster may not read
	// SnapshotVersion (FSM.SetBinarySnapshots).
	SnapshotVersionJSON = 1
)

// FeatureBinarySnapshot: the node restores SnapshotVersion snapshots. raft sends a
// lagging or joining follower the leader's snapshot file, so the cluster writes
// SnapshotVersionJSON until every server has announced it.
const FeatureBinarySnapshot uint64 = 4

// ErrSnapshotVersion: a snapshot in a format version this build cannot read.
var ErrSnapshotVersion = errors.New("unsupported snapshot format version")

// snapshotData is the whole state, copied out of the live state; the encoders
// (writeBinary, wire) write it. Derived indexes are not stored; Restore rebuilds them.
type snapshotData struct {
	Index         uint64            `json:"index"`
	Registrations []Registration    `json:"registrations"` // by namespace, then instance order
	Nodes         []NodeMeta        `json:"nodes"`         // by id
	Purged        map[string]uint64 `json:"purged"`
	Requests      []requestEntry    `json:"requests"`   // oldest first
	Tombstones    []SessionID       `json:"tombstones"` // oldest first

	// sessions is how many live sessions the state holds: a size hint for Restore.
	sessions int
	// spans locate each namespace's instances in Registrations until sortForOutput
	// puts the namespaces in name order.
	spans []nsSpan
}

type nsSpan struct {
	name       string
	start, end int
}

type requestEntry struct {
	ID string `json:"rid"`
	result
}

// export copies the state. It runs under the read lock, so it only copies;
// sorting waits for sortForOutput, outside the lock.
func (st *state) export() *snapshotData {
	d := &snapshotData{
		Index:         st.index,
		Registrations: make([]Registration, 0, st.regCount),
		Nodes:         make([]NodeMeta, 0, len(st.nodes)),
		Purged:        make(map[string]uint64, len(st.purged)),
		Requests:      make([]requestEntry, 0, st.requests.len()),
		Tombstones:    make([]SessionID, 0, st.tombstones.len()),
		sessions:      len(st.sessions),
		spans:         make([]nsSpan, 0, len(st.namespaces)),
	}
	for name, list := range st.namespaces {
		start := len(d.Registrations)
		d.Registrations = append(d.Registrations, list...)
		d.spans = append(d.spans, nsSpan{name: name, start: start, end: len(d.Registrations)})
	}
	for _, m := range st.nodes {
		d.Nodes = append(d.Nodes, m)
	}
	for n, m := range st.purged {
		d.Purged[n] = m
	}
	st.requests.each(func(id string, r result) {
		d.Requests = append(d.Requests, requestEntry{ID: id, result: r})
	})
	st.tombstones.each(func(s SessionID, _ struct{}) {
		d.Tombstones = append(d.Tombstones, s)
	})
	return d
}

// sortForOutput makes the encoding independent of map order, so equal states
// give equal snapshots. Each namespace's instances are already in order: only
// the namespaces are sorted, by name, which at a million registrations is much
// cheaper than sorting the registrations.
func (d *snapshotData) sortForOutput() {
	if d.spans != nil {
		slices.SortFunc(d.spans, func(a, b nsSpan) int { return strings.Compare(a.name, b.name) })
		out := make([]Registration, 0, len(d.Registrations))
		for _, s := range d.spans {
			out = append(out, d.Registrations[s.start:s.end]...)
		}
		d.Registrations, d.spans = out, nil
	}
	slices.SortFunc(d.Nodes, func(a, b NodeMeta) int { return strings.Compare(a.ID, b.ID) })
}

type snapshot struct {
	data    *snapshotData
	version int // SnapshotVersion or SnapshotVersionJSON
}

// Persist writes the header line and the state in the snapshot's format.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) write(w io.Writer) error {
	s.data.sortForOutput()
	if s.version == SnapshotVersionJSON {
		return s.data.writeJSON(w)
	}
	return s.data.writeBinary(w)
}

func (s *snapshot) Release() {}

// readSnapshot parses and checks a snapshot into a fresh state.
func readSnapshot(r io.Reader, maxRequests, maxTombstones int) (*state, error) {
	sr := newStreamReader(r)
	line, err := sr.line(64)
	switch {
	case err == io.EOF && len(line) == 0:
		return nil, errors.New("fsm: restore: empty snapshot")
	case err != nil:
		return nil, fmt.Errorf("fsm: restore: not a wsregistry snapshot: no header line (%q...)", clip(line))
	}
	magic, ver, ok := strings.Cut(strings.TrimSuffix(string(line), "\n"), " ")
	if !ok || magic != snapshotMagic {
		return nil, fmt.Errorf("fsm: restore: not a wsregistry snapshot: header %q", clip(line))
	}
	v, err := strconv.ParseUint(ver, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("fsm: restore: bad snapshot version %q", clip([]byte(ver)))
	}
	var st *state
	switch v {
	case SnapshotVersion:
		st, err = readBinary(sr, maxRequests, maxTombstones)
	case SnapshotVersionJSON:
		st, err = readJSON(sr.rest(), maxRequests, maxTombstones)
	default:
		return nil, fmt.Errorf("fsm: restore: %w %d (this build reads %d and %d)", ErrSnapshotVersion, v, SnapshotVersionJSON, SnapshotVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("fsm: restore: %w", err)
	}
	return st, nil
}

func clip(b []byte) string {
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}
