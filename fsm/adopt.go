package fsm

import (
	"encoding/binary"
	"slices"
)

// ClusterOwner is the owner (SessionID.Node) of the registrations the cluster holds for
// agents whose node went silent while they still answered: "adopted" registrations. No
// node can take this id (Register refuses sessions of it; the registry refuses it as a node
// id), so no node's purge, reconcile or restart touches them. Only Adopt creates them;
// they end when the agent registers the same namespace and address through a node
// (superseded at once), or when the leader deregisters them (the agent stopped answering).
const ClusterOwner = "@cluster"

// TypeAdopt is Adopt's type byte. It is not ignorable (a node that skipped it would keep
// the silent member's sessions): the proposer writes it only once every server announced
// FeatureAdopt, and PurgeNode otherwise.
const TypeAdopt CommandType = 10

// FeatureAdopt: the node applies TypeAdopt and supersedes adopted registrations.
const FeatureAdopt uint64 = 2

// Adopt purges Node like PurgeNode{Node, UpToIncarnation}, except that the registrations of
// the sessions in Keep (agents that answered the leader's check) first move to a new
// session owned by ClusterOwner, keeping namespace, address and Since. A namespace whose
// address another session (of a live node, or already adopted) holds is not moved: the
// agent has registered elsewhere. Sessions of Keep that are not live sessions of Node
// within the purged incarnations are skipped.
type Adopt struct {
	RequestID       string      `json:"rid,omitempty"`
	Node            string      `json:"node"`
	UpToIncarnation uint64      `json:"upto"`
	Keep            []SessionID `json:"keep,omitempty"`
}

// Type implements Command.
func (Adopt) Type() CommandType { return TypeAdopt }

var adoptKind = define(kindFuncs[Adopt]{
	readBinary: func(r binReader) (Adopt, error) {
		var c Adopt
		c.RequestID = r.string()
		c.Node = r.string()
		c.UpToIncarnation = r.uvarint()
		n := r.uvarint()
		// Each session takes at least three bytes: a count larger than what is left is
		// corrupt, and must not size an allocation.
		if r.err == nil && n > uint64(len(r.b)) {
			r.err = errTruncated
			return c, r.err
		}
		for i := uint64(0); i < n && r.err == nil; i++ {
			c.Keep = append(c.Keep, r.session())
		}
		return c, r.err
	},
	appendBinary: func(out []byte, c Adopt) []byte {
		out = appendString(out, c.RequestID)
		out = appendString(out, c.Node)
		out = binary.AppendUvarint(out, c.UpToIncarnation)
		out = binary.AppendUvarint(out, uint64(len(c.Keep)))
		for _, s := range c.Keep {
			out = appendSession(out, s)
		}
		return out
	},
	requestID: func(c Adopt) string { return c.RequestID },
	apply:     func(st *state, c Adopt) error { return st.adopt(c) },
})

func (st *state) adopt(c Adopt) error {
	switch {
	case c.Node == "":
		return invalidf("adopt from an empty node")
	case c.Node == ClusterOwner:
		return invalidf("adopt from %q, the cluster itself", ClusterOwner)
	}
	live := st.byNode[c.Node]
	// Adopted sessions are numbered by the entry that adopts them: unique across the log,
	// and the same on every node. Several Adopts in one batch continue the count.
	var seq uint64
	for s := range st.byNode[ClusterOwner] {
		if s.Incarnation == st.index {
			seq = max(seq, s.Seq)
		}
	}
	for _, s := range c.Keep {
		if _, ok := live[s]; !ok || s.Node != c.Node || (c.UpToIncarnation != 0 && s.Incarnation > c.UpToIncarnation) {
			continue
		}
		var moved []Registration
		for _, ns := range st.sessions[s] {
			for _, r := range st.namespaces[ns] {
				if r.Session == s && !st.servedElsewhere(ns, r.Address, c.Node) {
					moved = append(moved, r)
					break
				}
			}
		}
		if len(moved) == 0 {
			continue
		}
		seq++
		held := SessionID{Node: ClusterOwner, Incarnation: st.index, Seq: seq}
		for _, r := range moved {
			r.Session = held
			st.insert(r)
			st.changes = append(st.changes, Change{Kind: ChangeRegister, Namespace: r.Namespace, Address: r.Address, Session: held.String(), Node: ClusterOwner})
		}
	}
	return st.purgeNode(c.Node, c.UpToIncarnation)
}

// servedElsewhere reports whether a session not of node holds ns at addr.
func (st *state) servedElsewhere(ns, addr, node string) bool {
	for _, r := range st.namespaces[ns] {
		if r.Address == addr && r.Session.Node != node {
			return true
		}
	}
	return false
}

// registerSuperseding is Register's apply: a registration through a node replaces the
// adopted registration of the same namespace and address, in the same entry, so the
// agent is never missing and never listed twice.
func (st *state) registerSuperseding(r Registration) error {
	if r.Session.Node == ClusterOwner {
		return invalidf("node id %q is reserved for the cluster", ClusterOwner)
	}
	if err := st.register(r); err != nil {
		return err
	}
	if len(st.byNode[ClusterOwner]) == 0 {
		return nil
	}
	var adopted []SessionID
	for _, old := range st.namespaces[r.Namespace] {
		if old.Session.Node == ClusterOwner && old.Address == r.Address {
			adopted = append(adopted, old.Session)
		}
	}
	slices.SortFunc(adopted, compareSession)
	for _, s := range adopted {
		if err := st.unregister(s, r.Namespace); err != nil {
			return err
		}
	}
	return nil
}

// AddressOf is the address session s registered with ("" when s holds nothing).
func (f *FSM) AddressOf(s SessionID) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	names := f.st.sessions[s]
	if len(names) == 0 {
		return ""
	}
	for _, r := range f.st.namespaces[names[0]] {
		if r.Session == s {
			return r.Address
		}
	}
	return ""
}
