package registry

import (
	"hash/maphash"
	"strconv"
	"sync/atomic"
	"testing"
	"unsafe"
)

func TestWhereRotation_EachNamespaceRotatesOnItsOwn(t *testing.T) {
	var nodeWide atomic.Uint64
	nodeWide.Store(40)
	var r whereRotation
	a, b := uint64(8+1), uint64(16+2) // different slots
	for i := range uint64(5) {
		if got := r.next(a, &nodeWide); got != 40+i {
			t.Fatalf("a, lookup %d: position %d, want %d", i, got, 40+i)
		}
		if got := r.next(b, &nodeWide); got != 41+i {
			t.Fatalf("b, lookup %d: position %d, want %d", i, got, 41+i)
		}
	}
	// Another namespace in a's slot starts afresh from the node-wide counter, and so does a
	// when it comes back.
	c := a + rotationSlots
	if got := r.next(c, &nodeWide); got != 42 {
		t.Fatalf("c in a's slot: position %d, want 42 from the node-wide counter", got)
	}
	if got := r.next(a, &nodeWide); got != 43 {
		t.Fatalf("a after c: position %d, want 43 from the node-wide counter", got)
	}
	if got := r.next(b, &nodeWide); got != 46 {
		t.Fatalf("b kept its slot: position %d, want 46", got)
	}
}

// namesInOtherSlots returns two namespaces whose hashes fall in different rotation slots.
func namesInOtherSlots(t *testing.T) (string, string) {
	slot := func(ns string) uint64 { return maphash.String(rotationSeed, ns) % rotationSlots }
	x := "svc-x"
	for i := range 100 {
		y := "svc-y" + strconv.Itoa(i)
		if slot(y) != slot(x) {
			return x, y
		}
	}
	t.Fatal("no two namespaces in different slots")
	return "", ""
}

// An agent that alternates two namespaces of two instances each reaches both instances of
// each: a node-wide counter, with this agent its only user, gave each namespace every other
// position, so always the same instance.
func TestWhere_AlternatingNamespacesReachEveryInstance(t *testing.T) {
	x, y := namesInOtherSlots(t)
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	b := dialRaw(t, n, "/127.0.0.1/9002")
	for i, ns := range []string{x, y} {
		a.call(online(i, ns), ok(i))
		b.call(online(i, ns), ok(i))
	}
	c := dialRaw(t, n, "/127.0.0.1/9003")
	seen := map[string]map[string]int{x: {}, y: {}}
	for i := 1; i <= 20; i++ {
		ns := x
		if i%2 == 0 {
			ns = y
		}
		c.sendText(where(i, ns))
		got := c.next().(map[string]any)["data"].(map[string]any)["data"].(string)
		seen[ns][got]++
	}
	for _, ns := range []string{x, y} {
		if seen[ns]["127.0.0.1:9001"] != 5 || seen[ns]["127.0.0.1:9002"] != 5 {
			t.Fatalf("where %s, alternating with another namespace, answered %v; want 5 each", ns, seen[ns])
		}
	}
}

// Every where touches these fields of its session, mostly out of the cache: the rotation
// is the session's first cache line and the other where fields its second, which holds only
// while the session is exactly 256 bytes (a size class of 256-byte aligned objects).
func TestAgentSession_WhereFieldsTakeTwoAlignedCacheLines(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layout is set for 64-bit platforms")
	}
	var s agentSession
	if got := unsafe.Sizeof(s); got != 256 {
		t.Errorf("agentSession is %d bytes, want 256: change sessionPad by %d", got, 256-int(got))
	}
	if got := unsafe.Offsetof(s.rotation) + unsafe.Sizeof(s.rotation); got != 64 {
		t.Errorf("whereRotation ends at byte %d, want the first cache line exactly (64)", got)
	}
	if end := unsafe.Offsetof(s.limiter) + unsafe.Sizeof(s.limiter); end > 128 {
		t.Errorf("where's fields of agentSession end at byte %d, past the second cache line", end)
	}
	// The allocator puts 256-byte objects on 256-byte boundaries (sessions live on the heap:
	// the sink keeps these there too).
	for range 100 {
		sessionSink = new(agentSession)
		if p := uintptr(unsafe.Pointer(sessionSink)); p%64 != 0 {
			t.Fatalf("an agentSession at %#x is not on a cache line boundary", p)
		}
	}
}

var sessionSink *agentSession

// An empty slot's tag is 0, and no namespace's is: a namespace whose hash is 0 starts from
// the node-wide counter like any other.
func TestWhereRotation_HashZeroStartsFromTheNodeWideCounter(t *testing.T) {
	var nodeWide atomic.Uint64
	nodeWide.Store(7)
	var r whereRotation
	if got := r.next(0, &nodeWide); got != 7 {
		t.Fatalf("hash 0 in an empty slot: position %d, want 7 from the node-wide counter", got)
	}
	if got := r.next(0, &nodeWide); got != 8 {
		t.Fatalf("hash 0 again: position %d, want 8", got)
	}
}
