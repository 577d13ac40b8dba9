package fsm

import (
	"fmt"
	"slices"
)

const (
	// MaxRequestIDs is how many request ids the FSM remembers for dedup.
	MaxRequestIDs = 65536
	// MaxTombstones is how many deregistered sessions the FSM remembers.
	MaxTombstones = 65536
)

// state is everything the log builds. It is only touched under FSM.mu, and a
// Restore replaces it whole.
type state struct {
	index uint64

	// namespaces holds each namespace's instances in compareInstance order,
	// so Pick is one index operation. Empty namespaces are deleted.
	namespaces map[string][]Registration
	regCount   int

	// sessions and byNode index the live registrations; they are derived
	// from namespaces and rebuilt by Restore.
	sessions map[SessionID][]string // live session -> its namespaces
	byNode   map[string]map[SessionID]struct{}

	nodes  map[string]NodeMeta
	purged map[string]uint64 // node -> every incarnation <= this is purged, for good

	requests   *idRing
	tombstones *ring[SessionID, struct{}]

	// changes collects what the Apply in progress changed, for the observer; Apply
	// takes it. It lives here rather than in a parameter because the commands' apply
	// functions are called through kinds, and a pointer passed that way escapes to the
	// heap: one allocation per Apply.
	changes []Change
}

func newState(maxRequests, maxTombstones int) *state {
	return newStateSized(maxRequests, maxTombstones, sizes{})
}

// sizes are capacity hints, so Restore does not rehash maps as they grow.
type sizes struct{ sessions, requests, tombstones int }

func newStateSized(maxRequests, maxTombstones int, n sizes) *state {
	return &state{
		namespaces: make(map[string][]Registration),
		sessions:   make(map[SessionID][]string, n.sessions),
		byNode:     make(map[string]map[SessionID]struct{}),
		nodes:      make(map[string]NodeMeta),
		purged:     make(map[string]uint64),
		requests:   newIDRing(maxRequests, n.requests),
		tombstones: newRing[SessionID, struct{}](maxTombstones, n.tombstones),
	}
}

// requestID is a command's request id ("" when it was sent without one); ok is false
// for the types that carry none (Batch, Unknown).
func requestID(cmd Command) (rid string, ok bool) {
	if k := kindOf(cmd); k != nil {
		return k.requestID(cmd)
	}
	return "", false
}

// apply runs one non-batch command, with request-id dedup, and appends what
// it changed to st.changes.
func (st *state) apply(cmd Command) error {
	if _, ok := cmd.(Unknown); ok {
		return nil
	}
	k := kindOf(cmd)
	var (
		rid string
		ok  bool
	)
	if k != nil {
		rid, ok = k.requestID(cmd)
	}
	if !ok {
		// Decode never yields anything else (nested batches included).
		panic(fmt.Sprintf("fsm: cannot apply command %T", cmd))
	}
	if rid != "" {
		if r, ok := st.requests.get(rid); ok {
			return r.err()
		}
	}
	err := k.apply(st, cmd)
	if rid != "" {
		st.requests.add(rid, resultOf(err))
	}
	return err
}

// takeChanges returns what the commands applied since the last call changed and starts
// a new list.
func (st *state) takeChanges() []Change {
	ch := st.changes
	st.changes = nil
	return ch
}

func (st *state) register(r Registration) error {
	if err := r.Validate(); err != nil {
		return err
	}
	s := r.Session
	if mark, ok := st.purged[s.Node]; ok && s.Incarnation <= mark {
		return closedf("incarnation %d of node %q is purged (up to %d)", s.Incarnation, s.Node, mark)
	}
	if st.tombstones.has(s) {
		return closedf("session %s is deregistered", s)
	}
	if st.holds(s, r.Namespace) {
		return nil // a repeat keeps the original registration and its Since
	}
	st.insert(r)
	st.changes = append(st.changes, Change{Kind: ChangeRegister, Namespace: r.Namespace, Address: r.Address, Session: s.String(), Node: s.Node})
	return nil
}

// holds reports whether session s has registered namespace ns. It scans the shorter
// of the session's namespaces and the namespace's instances: an agent that registers
// thousands of namespaces, or a namespace with thousands of instances, must not
// make each registration cost as many comparisons.
func (st *state) holds(s SessionID, ns string) bool {
	names, instances := st.sessions[s], st.namespaces[ns]
	if len(names) <= len(instances) {
		return slices.Contains(names, ns)
	}
	for _, r := range instances {
		if r.Session == s {
			return true
		}
	}
	return false
}

// insert adds a registration known to be new.
func (st *state) insert(r Registration) {
	list := st.namespaces[r.Namespace]
	if len(list) > 0 {
		r.Namespace = list[0].Namespace // share one copy of the name
	}
	i, _ := slices.BinarySearchFunc(list, r, compareInstance)
	st.namespaces[r.Namespace] = slices.Insert(list, i, r)
	st.regCount++

	s := r.Session
	st.sessions[s] = append(st.sessions[s], r.Namespace)
	set := st.byNode[s.Node]
	if set == nil {
		set = make(map[SessionID]struct{})
		st.byNode[s.Node] = set
	}
	set[s] = struct{}{}
}

func (st *state) deregister(s SessionID) error {
	if s.Node == "" {
		return invalidf("session has an empty node")
	}
	// The tombstone goes in even when nothing is registered: the Register
	// this Deregister raced may still be on its way.
	st.tombstones.add(s, struct{}{})
	if _, ok := st.sessions[s]; ok {
		st.removeSessions(map[SessionID]struct{}{s: {}})
	}
	return nil
}

// unregister drops one namespace of a live session; unknown pairs are a no-op.
func (st *state) unregister(s SessionID, ns string) error {
	if s.Node == "" {
		return invalidf("session has an empty node")
	}
	names := st.sessions[s]
	i := slices.Index(names, ns)
	if i < 0 {
		return nil
	}
	if names = slices.Delete(names, i, i+1); len(names) == 0 {
		delete(st.sessions, s)
		if set := st.byNode[s.Node]; set != nil {
			delete(set, s)
			if len(set) == 0 {
				delete(st.byNode, s.Node)
			}
		}
	} else {
		st.sessions[s] = names
	}
	list := slices.DeleteFunc(st.namespaces[ns], func(r Registration) bool {
		if r.Session != s {
			return false
		}
		st.regCount--
		st.changes = append(st.changes, Change{Kind: ChangeDeregister, Namespace: r.Namespace, Address: r.Address, Session: r.Session.String(), Node: r.Session.Node})
		return true
	})
	if len(list) == 0 {
		delete(st.namespaces, ns)
	} else {
		st.namespaces[ns] = list
	}
	return nil
}

// removeSessions drops every registration of the given live sessions, one
// pass per affected namespace so purging a big node stays linear.
func (st *state) removeSessions(gone map[SessionID]struct{}) {
	var affected []string
	names := make(map[SessionID]string, len(gone)) // each session's name made once, not per change
	for s := range gone {
		names[s] = s.String()
		affected = append(affected, st.sessions[s]...)
		delete(st.sessions, s)
		if set := st.byNode[s.Node]; set != nil {
			delete(set, s)
			if len(set) == 0 {
				delete(st.byNode, s.Node)
			}
		}
	}
	// One change per registration removed, one per entry of affected so far: grown once, a
	// node purging its old incarnation's million registrations spent half its purge copying
	// the change list as append doubled it (BENCHMARKS.md, round 8).
	st.changes = slices.Grow(st.changes, len(affected))
	// Sorted so the change list does not depend on map order.
	slices.Sort(affected)
	affected = slices.Compact(affected)
	for _, ns := range affected {
		list := slices.DeleteFunc(st.namespaces[ns], func(r Registration) bool {
			name, ok := names[r.Session]
			if !ok {
				return false
			}
			st.regCount--
			st.changes = append(st.changes, Change{Kind: ChangeDeregister, Namespace: r.Namespace, Address: r.Address, Session: name, Node: r.Session.Node})
			return true
		})
		switch {
		case len(list) == 0:
			delete(st.namespaces, ns)
		case cap(list) > 64 && len(list) < cap(list)/4:
			st.namespaces[ns] = slices.Clone(list) // give back memory after a mass purge
		default:
			st.namespaces[ns] = list
		}
	}
}

func (st *state) purgeNode(node string, upTo uint64) error {
	if node == "" {
		return invalidf("purge of an empty node")
	}
	live := st.byNode[node]
	if upTo == 0 {
		m, seen := st.nodes[node]
		upTo = m.Incarnation
		for s := range live {
			seen = true
			upTo = max(upTo, s.Incarnation)
		}
		if !seen {
			return nil // nothing of this node ever seen (or left): nothing to mark
		}
	}
	gone := make(map[SessionID]struct{})
	for s := range live {
		if s.Incarnation <= upTo {
			gone[s] = struct{}{}
		}
	}
	if len(gone) > 0 {
		st.removeSessions(gone)
	}
	if cur, ok := st.purged[node]; !ok || upTo > cur {
		st.purged[node] = upTo
	}
	return nil
}

func (st *state) setNode(m NodeMeta) error {
	if m.ID == "" {
		return invalidf("node metadata with an empty id")
	}
	old, ok := st.nodes[m.ID]
	if ok && m.Incarnation < old.Incarnation {
		// A delayed write from an older life of the node must not overwrite
		// the current one.
		return invalidf("node %q: incarnation %d is older than the current %d", m.ID, m.Incarnation, old.Incarnation)
	}
	if ok && old == m {
		return nil
	}
	st.nodes[m.ID] = m
	st.changes = append(st.changes, Change{Kind: ChangeNode, Node: m.ID})
	return nil
}

func (st *state) removeNode(node string) error {
	if node == "" {
		return invalidf("remove of an empty node")
	}
	// Purge first: it reads the metadata's incarnation for the mark, which
	// refuses registrations still in flight from the removed node.
	if err := st.purgeNode(node, 0); err != nil {
		return err
	}
	if _, ok := st.nodes[node]; ok {
		delete(st.nodes, node)
		st.changes = append(st.changes, Change{Kind: ChangeNodeRemoved, Node: node})
	}
	return nil
}

func sortedSessions(set map[SessionID]struct{}) []SessionID {
	out := make([]SessionID, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	slices.SortFunc(out, compareSession)
	return out
}

// ring is a bounded FIFO set: once full, adding a key evicts the oldest.
// What it holds depends only on the sequence of adds, so it is deterministic
// across nodes.
type ring[K comparable, V any] struct {
	limit int
	m     map[K]V
	keys  []K // insertion order; when full, keys[head] is the oldest
	head  int
}

func newRing[K comparable, V any](limit, sizeHint int) *ring[K, V] {
	if limit <= 0 {
		panic("fsm: ring limit must be positive")
	}
	n := min(sizeHint, limit)
	return &ring[K, V]{limit: limit, m: make(map[K]V, n), keys: make([]K, 0, n)}
}

func (r *ring[K, V]) has(k K) bool {
	_, ok := r.m[k]
	return ok
}

// add inserts k unless present; a present key keeps its place and value.
func (r *ring[K, V]) add(k K, v V) {
	if _, ok := r.m[k]; ok {
		return
	}
	if len(r.keys) < r.limit {
		r.keys = append(r.keys, k)
	} else {
		delete(r.m, r.keys[r.head])
		r.keys[r.head] = k
		r.head = (r.head + 1) % r.limit
	}
	r.m[k] = v
}

func (r *ring[K, V]) len() int { return len(r.keys) }

// each visits the entries oldest first.
func (r *ring[K, V]) each(fn func(K, V)) {
	for _, k := range r.keys[r.head:] {
		fn(k, r.m[k])
	}
	for _, k := range r.keys[:r.head] {
		fn(k, r.m[k])
	}
}
