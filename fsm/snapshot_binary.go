package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The binary snapshot format (SnapshotVersion). Decoding one JSON document of a million
// registrations took seconds and as many allocations as values; this form is written and
// read as a stream, field by field, and built straight into the state.
//
// After the header line "wsregistry-snapshot 2\n", in the encoding of binary.go (uvarint;
// zigzag varint; string = uvarint length + bytes):
//
//	index, live session count (a size hint), namespace count
//	per namespace, by name: name, instance count (>= 1), then per instance, in instance order:
//	    address, node ref, incarnation, seq, since (varint, minus the previous instance's since)
//	node metadata count, each (by id): id, ws, http, raft, incarnation, features, version, draining (0/1)
//	purge mark count, each (by node): node, incarnation
//	remembered request count, each (oldest first): id, class (0 ok, 1 invalid, 2 closed), detail unless ok
//	tombstone count, each (oldest first): node ref, incarnation, seq
//	CRC-32C of every byte before it, header included: 4 bytes, little endian
//
// A node ref is 0 followed by the node id, the first time an id appears, and afterwards
// k > 0 for the k-th id so written: a few node ids stand for a million sessions.
// Nothing may follow the checksum.

// nodeRefs numbers the node ids written so far (see the format).
type nodeRefs struct {
	ids     map[string]uint64
	last    string
	lastRef uint64
}

func (sw *streamWriter) node(refs *nodeRefs, id string) {
	if refs.lastRef != 0 && id == refs.last {
		sw.uvarint(refs.lastRef)
		return
	}
	ref, ok := refs.ids[id]
	if ok {
		sw.uvarint(ref)
	} else {
		ref = uint64(len(refs.ids) + 1)
		refs.ids[id] = ref
		sw.uvarint(0)
		sw.string(id)
	}
	refs.last, refs.lastRef = id, ref
}

// writeBinary writes d, sorted (sortForOutput), in SnapshotVersion.
func (d *snapshotData) writeBinary(w io.Writer) error {
	sw := &streamWriter{w: w, buf: make([]byte, 0, streamBufSize)}
	sw.buf = fmt.Appendf(sw.buf, "%s %d\n", snapshotMagic, SnapshotVersion)
	sw.uvarint(d.Index)
	sw.uvarint(uint64(d.sessions))

	regs := d.Registrations
	count := 0
	for i := range regs {
		if i == 0 || regs[i].Namespace != regs[i-1].Namespace {
			count++
		}
	}
	sw.uvarint(uint64(count))
	refs := &nodeRefs{ids: make(map[string]uint64)}
	for i := 0; i < len(regs); {
		ns := regs[i].Namespace
		j := i + 1
		for j < len(regs) && regs[j].Namespace == ns {
			j++
		}
		sw.room()
		sw.string(ns)
		sw.uvarint(uint64(j - i))
		var since int64
		for _, r := range regs[i:j] {
			sw.room()
			sw.string(r.Address)
			sw.node(refs, r.Session.Node)
			sw.uvarint(r.Session.Incarnation)
			sw.uvarint(r.Session.Seq)
			sw.varint(r.Since - since)
			since = r.Since
		}
		if sw.err != nil {
			return sw.err
		}
		i = j
	}

	sw.uvarint(uint64(len(d.Nodes)))
	for _, m := range d.Nodes {
		sw.room()
		sw.string(m.ID)
		sw.string(m.WSAddr)
		sw.string(m.HTTPAddr)
		sw.string(m.RaftAddr)
		sw.uvarint(m.Incarnation)
		sw.uvarint(m.Features)
		sw.string(m.Version)
		sw.buf = append(sw.buf, boolByte(m.Draining))
	}

	purged := make([]string, 0, len(d.Purged))
	for n := range d.Purged {
		purged = append(purged, n)
	}
	slices.Sort(purged)
	sw.uvarint(uint64(len(purged)))
	for _, n := range purged {
		sw.room()
		sw.string(n)
		sw.uvarint(d.Purged[n])
	}

	sw.uvarint(uint64(len(d.Requests)))
	for _, e := range d.Requests {
		sw.room()
		sw.string(e.ID)
		c, ok := classByte(e.Class)
		if !ok {
			return fmt.Errorf("request %q: unknown result class %q", e.ID, e.Class)
		}
		sw.buf = append(sw.buf, c)
		if c != 0 {
			sw.string(e.Detail)
		}
	}

	sw.uvarint(uint64(len(d.Tombstones)))
	for _, s := range d.Tombstones {
		sw.room()
		sw.node(refs, s.Node)
		sw.uvarint(s.Incarnation)
		sw.uvarint(s.Seq)
	}

	sw.flush()
	if sw.err != nil {
		return sw.err
	}
	_, err := w.Write(binary.LittleEndian.AppendUint32(nil, sw.sum))
	return err
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func classByte(class string) (byte, bool) {
	switch class {
	case "":
		return 0, true
	case classInvalid:
		return 1, true
	case classClosed:
		return 2, true
	}
	return 0, false
}

var resultClasses = [...]string{"", classInvalid, classClosed}

// nsBlock is one namespace read from a snapshot, before it goes into the state.
type nsBlock struct {
	name string
	list []Registration
}

type purgeMark struct {
	node string
	upTo uint64
}

// readBinary reads the body of a SnapshotVersion snapshot (after the header line) and
// builds the state, checking what Apply would have guaranteed (as build does for the JSON
// form): a corrupt snapshot is refused, never half-loaded.
func readBinary(sr *streamReader, maxRequests, maxTombstones int) (*state, error) {
	index := sr.uvarint()
	sessionsHint := sr.uvarint()

	// Counts come from the stream: allocations are sized by min(count, capHint) and grow
	// with the data actually read, so a corrupt count costs one bounded allocation at most.
	const capHint = 1 << 16
	var nodeIDs []string
	nsCount := sr.uvarint()
	blocks := make([]nsBlock, 0, min(nsCount, capHint))
	total := 0
	for i := uint64(0); i < nsCount && sr.err == nil; i++ {
		name := sr.string()
		n := sr.uvarint()
		if sr.err != nil {
			break
		}
		if n == 0 {
			return nil, fmt.Errorf("namespace %q has no instances", clip([]byte(name)))
		}
		list := make([]Registration, 0, min(n, capHint))
		var since int64
		for range n {
			r := Registration{Namespace: name, Address: sr.string()}
			r.Session.Node = sr.nodeRef(&nodeIDs)
			r.Session.Incarnation = sr.uvarint()
			r.Session.Seq = sr.uvarint()
			since += sr.varint()
			r.Since = since
			if sr.err != nil {
				return nil, sr.failure()
			}
			if err := r.Validate(); err != nil {
				return nil, fmt.Errorf("registration %d: %w", total, err)
			}
			list = append(list, r)
			total++
		}
		blocks = append(blocks, nsBlock{name: name, list: list})
	}

	nodeCount := sr.uvarint()
	nodes := make([]NodeMeta, 0, min(nodeCount, capHint))
	for i := uint64(0); i < nodeCount && sr.err == nil; i++ {
		m := NodeMeta{ID: sr.string(), WSAddr: sr.string(), HTTPAddr: sr.string(), RaftAddr: sr.string()}
		m.Incarnation = sr.uvarint()
		m.Features = sr.uvarint()
		m.Version = sr.string()
		switch sr.byte() {
		case 0:
		case 1:
			m.Draining = true
		default:
			sr.fail(fmt.Errorf("node %q: bad draining flag", clip([]byte(m.ID))))
		}
		nodes = append(nodes, m)
	}

	purgeCount := sr.uvarint()
	purged := make([]purgeMark, 0, min(purgeCount, capHint))
	for i := uint64(0); i < purgeCount && sr.err == nil; i++ {
		purged = append(purged, purgeMark{node: sr.string(), upTo: sr.uvarint()})
	}

	reqCount := sr.uvarint()
	requests := make([]requestEntry, 0, min(reqCount, capHint))
	for i := uint64(0); i < reqCount && sr.err == nil; i++ {
		e := requestEntry{ID: sr.string()}
		c := sr.byte()
		if int(c) >= len(resultClasses) {
			sr.fail(fmt.Errorf("request %q: unknown result class %d", clip([]byte(e.ID)), c))
			break
		}
		if c != 0 {
			e.result = result{Class: resultClasses[c], Detail: sr.string()}
		}
		requests = append(requests, e)
	}

	tombCount := sr.uvarint()
	tombstones := make([]SessionID, 0, min(tombCount, capHint))
	for i := uint64(0); i < tombCount && sr.err == nil; i++ {
		s := SessionID{Node: sr.nodeRef(&nodeIDs), Incarnation: sr.uvarint(), Seq: sr.uvarint()}
		if sr.err == nil && s.Node == "" {
			return nil, fmt.Errorf("tombstone %d: session has an empty node", i)
		}
		tombstones = append(tombstones, s)
	}
	if err := sr.finish(); err != nil {
		return nil, err
	}

	st := newStateSized(maxRequests, maxTombstones, sizes{
		sessions:   int(min(sessionsHint, uint64(total))),
		requests:   len(requests),
		tombstones: len(tombstones),
	})
	st.index = index
	st.namespaces = make(map[string][]Registration, len(blocks))
	for _, b := range blocks {
		if _, dup := st.namespaces[b.name]; dup {
			return nil, fmt.Errorf("namespace %q appears twice", b.name)
		}
		list := b.list
		if !slices.IsSortedFunc(list, compareInstance) {
			slices.SortFunc(list, compareInstance)
		}
		st.namespaces[b.name] = slices.Clip(list)
		st.regCount += len(list)
		for _, r := range list {
			// Namespaces are added one at a time, so a session already in this one has
			// it as its last name.
			s := r.Session
			names := st.sessions[s]
			if len(names) > 0 && names[len(names)-1] == b.name {
				return nil, fmt.Errorf("session %s appears twice in namespace %q", s, b.name)
			}
			st.sessions[s] = append(names, b.name)
		}
	}
	// byNode once the sessions are known, so that each node's set is allocated at its size.
	perNode := make(map[string]int)
	for s := range st.sessions {
		perNode[s.Node]++
	}
	for node, n := range perNode {
		st.byNode[node] = make(map[SessionID]struct{}, n)
	}
	for s := range st.sessions {
		st.byNode[s.Node][s] = struct{}{}
	}
	for _, m := range nodes {
		if m.ID == "" {
			return nil, errors.New("node metadata with an empty id")
		}
		if _, dup := st.nodes[m.ID]; dup {
			return nil, fmt.Errorf("node %q appears twice", m.ID)
		}
		st.nodes[m.ID] = m
	}
	for _, p := range purged {
		if _, dup := st.purged[p.node]; dup {
			return nil, fmt.Errorf("purge mark of node %q appears twice", p.node)
		}
		st.purged[p.node] = p.upTo
	}
	for _, e := range requests {
		st.requests.add(e.ID, e.result)
	}
	for _, s := range tombstones {
		st.tombstones.add(s, struct{}{})
	}
	return st, nil
}

func (sr *streamReader) nodeRef(table *[]string) string {
	k := sr.uvarint()
	switch {
	case sr.err != nil:
		return ""
	case k == 0:
		s := sr.string()
		*table = append(*table, s)
		return s
	case k > uint64(len(*table)):
		sr.fail(fmt.Errorf("node reference %d, only %d node ids so far", k, len(*table)))
		return ""
	}
	return (*table)[k-1]
}
