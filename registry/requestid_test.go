package registry

import (
	"strings"
	"testing"
)

// Request ids are "<node>/<incarnation>/<seq>", unique per node life, and cost one
// allocation: every write makes one, on the path of every online.
func TestNewRequestID_ShapeAndOneAllocation(t *testing.T) {
	n := &Node{cfg: Config{NodeID: "node-" + strings.Repeat("x", 120)}}
	n.incarnation.Store(1796406561146)
	first, second := n.newRequestID(), n.newRequestID()
	if want := n.cfg.NodeID + "/1796406561146/1"; first != want {
		t.Fatalf("first id %q, want %q", first, want)
	}
	if want := n.cfg.NodeID + "/1796406561146/2"; second != want {
		t.Fatalf("second id %q, want %q", second, want)
	}
	n.cfg.NodeID = "node1"
	if allocs := testing.AllocsPerRun(100, func() { _ = n.newRequestID() }); allocs != 1 {
		t.Fatalf("newRequestID made %v allocations, want 1", allocs)
	}
}
