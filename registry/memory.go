package registry

import (
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Returning memory after a snapshot. The Go runtime keeps the pages a peak grew (a burst of
// registrations with their goroutines in flight, the snapshot's copy of every registration)
// and gives them back to the OS slowly, so a node's RSS stays near its peak long after: at
// 1,000,000 registrations 2.6 GiB resident for 0.7 GiB live (BENCHMARKS.md, round 8). A
// snapshot has just copied the whole state and dropped the copy, and is rare (minutes apart),
// so after one, if the runtime holds much more free memory than it needs, it is handed back:
// one collection, at a moment the node has already spent far more on the snapshot.

// idleMemoryFloor is the free, unreleased heap below which nothing is returned: small heaps are
// not worth a collection.
const idleMemoryFloor = 64 << 20

var returningMemory atomic.Bool

// heapFreeAndInUse reads the heap's free pages not yet returned to the OS, and the bytes in
// objects (live and not yet collected).
func heapFreeAndInUse() (free, inUse uint64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// returnIdleMemory hands free heap pages back to the OS when there are more than
// idleMemoryFloor of them and more than a quarter of the heap in use; it reports whether it
// did. One at a time: snapshots never overlap, but a slow collection must not pile up.
func returnIdleMemory() bool {
	free, inUse := heapFreeAndInUse()
	if free < idleMemoryFloor || free < inUse/4 {
		return false
	}
	if !returningMemory.CompareAndSwap(false, true) {
		return false
	}
	defer returningMemory.Store(false)
	debug.FreeOSMemory()
	return true
}
