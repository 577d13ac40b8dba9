package fsm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The JSON snapshot format (SnapshotVersionJSON) of earlier builds: the header line, then
// one JSON document (wireSnapshot). Restore still reads it (a node upgraded in place
// restores the snapshot its earlier build wrote), and Snapshot writes it until every
// member reads the binary format.

// writeJSON writes d, sorted (sortForOutput), in SnapshotVersionJSON.
func (d *snapshotData) writeJSON(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	if _, err := fmt.Fprintf(bw, "%s %d\n", snapshotMagic, SnapshotVersionJSON); err != nil {
		return err
	}
	if err := json.NewEncoder(bw).Encode(d.wire()); err != nil {
		return err
	}
	return bw.Flush()
}

// readJSON reads the body of a SnapshotVersionJSON snapshot (after the header line).
func readJSON(r io.Reader, maxRequests, maxTombstones int) (*state, error) {
	var w wireSnapshot
	dec := json.NewDecoder(r)
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after snapshot")
	}
	d, err := w.data()
	if err != nil {
		return nil, err
	}
	return d.build(maxRequests, maxTombstones)
}

// build turns snapshot data into a state, checking what Apply would have
// guaranteed so a corrupt snapshot is refused rather than half-loaded.
func (d *snapshotData) build(maxRequests, maxTombstones int) (*state, error) {
	st := newStateSized(maxRequests, maxTombstones, sizes{
		sessions:   len(d.Registrations),
		requests:   len(d.Requests),
		tombstones: len(d.Tombstones),
	})
	st.index = d.Index
	for i, r := range d.Registrations {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("registration %d: %w", i, err)
		}
		s := r.Session
		if st.holds(s, r.Namespace) {
			return nil, fmt.Errorf("registration %d: session %s appears twice in namespace %q", i, s, r.Namespace)
		}
		list := st.namespaces[r.Namespace]
		if len(list) > 0 {
			r.Namespace = list[0].Namespace
		}
		// Appended here and sorted below: the snapshot is normally already
		// in order, and sorting sorted data is linear.
		st.namespaces[r.Namespace] = append(list, r)
		st.regCount++
		st.sessions[s] = append(st.sessions[s], r.Namespace)
		set := st.byNode[s.Node]
		if set == nil {
			set = make(map[SessionID]struct{})
			st.byNode[s.Node] = set
		}
		set[s] = struct{}{}
	}
	for ns, list := range st.namespaces {
		if !slices.IsSortedFunc(list, compareInstance) {
			slices.SortFunc(list, compareInstance)
		}
		st.namespaces[ns] = slices.Clip(list)
	}
	for _, m := range d.Nodes {
		if m.ID == "" {
			return nil, errors.New("node metadata with an empty id")
		}
		if _, dup := st.nodes[m.ID]; dup {
			return nil, fmt.Errorf("node %q appears twice", m.ID)
		}
		st.nodes[m.ID] = m
	}
	for n, m := range d.Purged {
		st.purged[n] = m
	}
	for _, e := range d.Requests {
		if !e.result.valid() {
			return nil, fmt.Errorf("request %q: unknown result class %q", e.ID, e.Class)
		}
		st.requests.add(e.ID, e.result)
	}
	for _, s := range d.Tombstones {
		st.tombstones.add(s, struct{}{})
	}
	return st, nil
}

// wireSnapshot is the JSON after the header line. Registrations are stored
// in columns per namespace and the bounded memories as plain string lists:
// encoding/json decodes arrays of scalars several times faster than arrays of
// objects, which keeps Restore of 100k registrations quick.
type wireSnapshot struct {
	Index      uint64            `json:"index"`
	Namespaces []wireNamespace   `json:"namespaces"` // by name
	Nodes      []NodeMeta        `json:"nodes"`      // by id
	Purged     map[string]uint64 `json:"purged"`
	RequestIDs []string          `json:"request_ids"`     // oldest first
	Failed     map[string]result `json:"failed_requests"` // result of each remembered id that failed
	Tombstones []string          `json:"tombstones"`      // SessionID.String(), oldest first
}

// wireNamespace holds one namespace's instances in order, one column per field.
type wireNamespace struct {
	Name  string   `json:"name"`
	Addr  []string `json:"addr"`
	Node  []string `json:"node"`
	Inc   []uint64 `json:"inc"`
	Seq   []uint64 `json:"seq"`
	Since []int64  `json:"since"`
}

// wire expects sorted data (sortForOutput).
func (d *snapshotData) wire() *wireSnapshot {
	w := &wireSnapshot{
		Index:      d.Index,
		Nodes:      d.Nodes,
		Purged:     d.Purged,
		RequestIDs: make([]string, len(d.Requests)),
		Failed:     make(map[string]result),
		Tombstones: make([]string, len(d.Tombstones)),
	}
	for i, r := range d.Registrations {
		if i == 0 || r.Namespace != d.Registrations[i-1].Namespace {
			w.Namespaces = append(w.Namespaces, wireNamespace{Name: r.Namespace})
		}
		ns := &w.Namespaces[len(w.Namespaces)-1]
		ns.Addr = append(ns.Addr, r.Address)
		ns.Node = append(ns.Node, r.Session.Node)
		ns.Inc = append(ns.Inc, r.Session.Incarnation)
		ns.Seq = append(ns.Seq, r.Session.Seq)
		ns.Since = append(ns.Since, r.Since)
	}
	for i, e := range d.Requests {
		w.RequestIDs[i] = e.ID
		if e.Class != "" {
			w.Failed[e.ID] = e.result
		}
	}
	for i, s := range d.Tombstones {
		w.Tombstones[i] = s.String()
	}
	return w
}

func (w *wireSnapshot) data() (*snapshotData, error) {
	d := &snapshotData{Index: w.Index, Nodes: w.Nodes, Purged: w.Purged}
	total := 0
	for _, ns := range w.Namespaces {
		total += len(ns.Addr)
	}
	d.Registrations = make([]Registration, 0, total)
	for _, ns := range w.Namespaces {
		n := len(ns.Addr)
		if len(ns.Node) != n || len(ns.Inc) != n || len(ns.Seq) != n || len(ns.Since) != n {
			return nil, fmt.Errorf("namespace %q: columns of different lengths", ns.Name)
		}
		for i := range n {
			d.Registrations = append(d.Registrations, Registration{
				Namespace: ns.Name,
				Address:   ns.Addr[i],
				Session:   SessionID{Node: ns.Node[i], Incarnation: ns.Inc[i], Seq: ns.Seq[i]},
				Since:     ns.Since[i],
			})
		}
	}
	seen := 0
	d.Requests = make([]requestEntry, len(w.RequestIDs))
	for i, id := range w.RequestIDs {
		r, ok := w.Failed[id]
		if ok {
			seen++
		}
		d.Requests[i] = requestEntry{ID: id, result: r}
	}
	if seen != len(w.Failed) {
		return nil, errors.New("failed_requests names ids missing from request_ids")
	}
	d.Tombstones = make([]SessionID, len(w.Tombstones))
	for i, s := range w.Tombstones {
		id, err := ParseSessionID(s)
		if err != nil {
			return nil, fmt.Errorf("tombstone %d: %w", i, err)
		}
		d.Tombstones[i] = id
	}
	return d, nil
}
