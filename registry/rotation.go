package registry

import (
	"hash/maphash"
	"sync/atomic"
)

// rotationSlots is how many namespaces one connection rotates over on its own at once.
const rotationSlots = 8

// whereRotation is one agent connection's round robin for where: a position per namespace it
// looks up (in slots by the namespace's hash), advanced by every where of that namespace on
// this connection. It lives in the session and only the connection's reader goroutine touches
// it (where runs inline). With the node-wide counter alone, an agent that alternated lookups
// of two namespaces got the same instance of each, every time.
//
// A slot counts for one namespace at a time. The first where of a namespace on a connection,
// and the first after another namespace took its slot, starts from the node-wide counter: the
// first lookups of many connections spread over the instances as before, and a connection
// that alternates namespaces sharing a slot is no worse off than with the node-wide counter
// alone. Namespaces with slots of their own each rotate strictly: an agent that alternates
// two namespaces of two instances each reaches both instances of each (a single per-connection
// counter would give one namespace only the even positions).
//
// A slot is 8 bytes, the eight one cache line: every where touches it, mostly out of the
// cache. Two namespaces of one slot whose tags agree share a position, which only makes
// their rotation less strict; at 2^32 positions wrap, which may repeat or skip one instance.
type whereRotation [rotationSlots]struct {
	tag  uint32 // of the namespace the slot counts for (rotationTag: never 0, an empty slot's)
	next uint32
}

// rotationTag folds a namespace's hash into a slot's tag, odd so that no tag is an empty slot's.
func rotationTag(h uint64) uint32 { return (uint32(h>>32) ^ uint32(h)) | 1 }

// next returns the position of this where of the namespace with hash h and advances it.
func (r *whereRotation) next(h uint64, nodeWide *atomic.Uint64) uint64 {
	sl := &r[h%rotationSlots]
	if tag := rotationTag(h); sl.tag != tag {
		sl.tag = tag
		sl.next = uint32(nodeWide.Add(1) - 1)
	}
	p := sl.next
	sl.next++
	return uint64(p)
}

// rotationSeed keys the namespace hashes of whereRotation (any seed will do: a hash only
// picks a slot and tells namespaces apart).
var rotationSeed = maphash.MakeSeed()

// positionBytes is the round-robin position of a where of ns on session s (nil: a caller
// without a connection, which takes the node-wide counter).
func (n *Node) positionBytes(s *agentSession, ns []byte) uint64 {
	if s == nil {
		return n.roundRobin.Add(1) - 1
	}
	return s.rotation.next(maphash.Bytes(rotationSeed, ns), &n.roundRobin)
}

// position is positionBytes for a namespace held as a string.
func (n *Node) position(s *agentSession, ns string) uint64 {
	if s == nil {
		return n.roundRobin.Add(1) - 1
	}
	return s.rotation.next(maphash.String(rotationSeed, ns), &n.roundRobin)
}
