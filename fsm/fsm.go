// Package fsm is the registration state of wsregistry and its raft FSM:
// commands and their encoding, Apply, Snapshot and Restore, and the reads
// every node answers locally.
//
// It is deterministic: everything it holds follows from the log alone (times
// are stamped by the proposer), so every node that applies the same log
// holds the same state. Reads are safe while Apply and Restore run.
package fsm

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// ChangeKind says what a Change is about.
type ChangeKind string

const (
	ChangeRegister    ChangeKind = "register"
	ChangeDeregister  ChangeKind = "deregister"
	ChangeNode        ChangeKind = "node"         // node metadata set
	ChangeNodeRemoved ChangeKind = "node-removed" // node metadata removed
	ChangeReset       ChangeKind = "reset"        // state replaced by Restore: re-read everything
)

// Change is one effect of a command, for watchers.
type Change struct {
	Kind      ChangeKind `json:"kind"`
	Namespace string     `json:"ns,omitempty"`
	Address   string     `json:"addr,omitempty"`
	Session   string     `json:"session,omitempty"`
	Node      string     `json:"node,omitempty"`
}

// FSM implements raft.FSM over the registration state.
type FSM struct {
	mu       sync.RWMutex
	st       *state
	observer func(index uint64, changes []Change)
	// binarySnapshots says whether Snapshot may write SnapshotVersion; nil: it may.
	binarySnapshots func() bool

	// Limits of the dedup memories. Fixed per FSM: every node must use the
	// same values or their states diverge.
	maxRequests, maxTombstones int
}

var _ raft.FSM = (*FSM)(nil)

// New returns an empty FSM.
func New() *FSM { return newFSM(MaxRequestIDs, MaxTombstones) }

// newFSM lets tests use small dedup memories to exercise eviction.
func newFSM(maxRequests, maxTombstones int) *FSM {
	return &FSM{
		st:            newState(maxRequests, maxTombstones),
		maxRequests:   maxRequests,
		maxTombstones: maxTombstones,
	}
}

// SetObserver sets fn to be called synchronously after each Apply (with the
// changes it made, possibly none, so it also reports progress of the applied
// index) and after each Restore (with one ChangeReset). It is called outside
// the lock, so it may read the FSM, but it blocks raft's apply loop: keep it
// short. Set it once before the FSM is used.
func (f *FSM) SetObserver(fn func(index uint64, changes []Change)) {
	f.mu.Lock()
	f.observer = fn
	f.mu.Unlock()
}

// ApplyCommand applies data (Encode's output) as the command entry at index, exactly as
// Apply does for a raft log entry, and returns one result per command: packages that hold
// an FSM without raft (watch's tests, tools) apply entries without importing raft.
func (f *FSM) ApplyCommand(index uint64, data []byte) []error {
	res, _ := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}).([]error)
	return res
}

// Apply applies one log entry and returns []error, one per command (one for
// a non-batch entry); a nil entry is success. An entry that cannot be decoded
// or has an unknown type without IgnoreIfUnknown panics: applying a log this
// build does not understand would silently diverge from the other nodes.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		// raft only hands commands to an FSM; anything else just advances.
		f.mu.Lock()
		f.st.index = l.Index
		f.mu.Unlock()
		return []error(nil)
	}
	cmd, err := Decode(l.Data)
	if err != nil {
		panic(fmt.Sprintf("fsm: cannot apply log entry %d (term %d): %v", l.Index, l.Term, err))
	}

	f.mu.Lock()
	st := f.st
	st.index = l.Index
	var results []error
	if b, ok := cmd.(Batch); ok {
		results = make([]error, len(b.Commands))
		for i, c := range b.Commands {
			results[i] = st.apply(c)
		}
	} else {
		results = []error{st.apply(cmd)}
	}
	changes := st.takeChanges()
	obs := f.observer
	f.mu.Unlock()

	if obs != nil {
		obs(l.Index, changes)
	}
	return results
}

// Pick returns the (n mod count)-th instance of ns in the stable order, for
// round robin. It does not allocate.
func (f *FSM) Pick(ns string, n uint64) (Registration, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return pickFrom(f.st.namespaces[ns], n)
}

// PickBytes is Pick for a namespace held as bytes (a request's buffer), without copying it.
func (f *FSM) PickBytes(ns []byte, n uint64) (Registration, bool) {
	// Every where takes this path: no defer (the lookup cannot panic). The conversion only
	// feeds the lookup.
	f.mu.RLock()
	reg, ok := pickFrom(f.st.namespaces[string(ns)], n)
	f.mu.RUnlock()
	return reg, ok
}

func pickFrom(list []Registration, n uint64) (Registration, bool) {
	if len(list) == 0 {
		return Registration{}, false
	}
	return list[n%uint64(len(list))], true
}

// Instances returns a copy of ns's instances, ordered by Since, then Address,
// then Session.
func (f *FSM) Instances(ns string) []Registration {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.st.namespaces[ns])
}

// NamespaceView is one namespace and its instances.
type NamespaceView struct {
	Name      string         `json:"name"`
	Instances []Registration `json:"instances"`
}

// Namespaces returns every namespace, sorted by name.
func (f *FSM) Namespaces() []NamespaceView {
	f.mu.RLock()
	out := make([]NamespaceView, 0, len(f.st.namespaces))
	for name, list := range f.st.namespaces {
		out = append(out, NamespaceView{Name: name, Instances: slices.Clone(list)})
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b NamespaceView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Nodes returns the metadata of every known node, sorted by id.
func (f *FSM) Nodes() []NodeMeta {
	f.mu.RLock()
	out := make([]NodeMeta, 0, len(f.st.nodes))
	for _, m := range f.st.nodes {
		out = append(out, m)
	}
	f.mu.RUnlock()
	slices.SortFunc(out, func(a, b NodeMeta) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Node returns the metadata of one node.
func (f *FSM) Node(id string) (NodeMeta, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.st.nodes[id]
	return m, ok
}

// SessionsOf returns the live sessions (those with registrations) owned by
// node, ordered by incarnation then sequence.
func (f *FSM) SessionsOf(node string) []SessionID {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedSessions(f.st.byNode[node])
}

// NamespacesOf returns the namespaces session s holds, nil when it holds none.
func (f *FSM) NamespacesOf(s SessionID) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.st.sessions[s])
}

// PurgeMark returns the incarnation up to which node's sessions are purged
// for good. A node must register with a higher incarnation than this.
func (f *FSM) PurgeMark(node string) (uint64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.st.purged[node]
	return m, ok
}

// Rebase sets the applied index recorded in the state. Only for an uploaded snapshot about
// to be restored into a running cluster: its index belongs to the cluster it came from and
// must not run ahead of this cluster's log.
func (f *FSM) Rebase(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.index = index
}

// AppliedIndex is the index of the last applied log entry (or of the restored
// snapshot).
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.index
}

// Stats counts the state.
type Stats struct {
	Registrations, Namespaces, Sessions, Nodes int
}

// Stats returns the current counts.
func (f *FSM) Stats() Stats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return Stats{
		Registrations: f.st.regCount,
		Namespaces:    len(f.st.namespaces),
		Sessions:      len(f.st.sessions),
		Nodes:         len(f.st.nodes),
	}
}

// SetBinarySnapshots sets fn to tell Snapshot whether every node that may be sent the
// snapshot restores SnapshotVersion (announced FeatureBinarySnapshot); while fn reports
// false, Snapshot writes SnapshotVersionJSON, which every build reads. Without fn Snapshot
// writes SnapshotVersion. fn is called outside the lock (it may read the FSM). Set it
// once before the FSM is used.
func (f *FSM) SetBinarySnapshots(fn func() bool) {
	f.mu.Lock()
	f.binarySnapshots = fn
	f.mu.Unlock()
}

// Snapshot copies the state under the read lock so that Persist can encode
// it while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	gate := f.binarySnapshots
	f.mu.RUnlock()
	version := SnapshotVersion
	if gate != nil && !gate() {
		version = SnapshotVersionJSON
	}
	f.mu.RLock()
	d := f.st.export()
	f.mu.RUnlock()
	return &snapshot{data: d, version: version}, nil
}

// Restore replaces the state with the snapshot in rc. The new state is built
// aside and swapped in only if the whole snapshot is good, so a failed
// Restore leaves the FSM as it was.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := readSnapshot(rc, f.maxRequests, f.maxTombstones)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	obs := f.observer
	f.mu.Unlock()
	if obs != nil {
		obs(st.index, []Change{{Kind: ChangeReset}})
	}
	return nil
}
