package main

import (
	"strings"
	"testing"

	"github.com/wsregistry/wsregistry/internal/localcluster"
)

func testCluster() *cluster {
	return &cluster{Cluster: localcluster.New("/nonexistent", "127.0.0.1", 2, nil)}
}

func stateOf(node string, index uint64, ns ...namespaceView) nodeState {
	return nodeState{node: node, index: index, before: index, post: index, namespaces: ns}
}

func nsv(name string, in ...instance) namespaceView { return namespaceView{Name: name, Instances: in} }

func inst(host, node, session string) instance {
	return instance{Host: host, Node: node, Session: session, Since: "t"}
}

// The checker must count each kind of violation, or a clean run would prove nothing.
func TestJudge_CountsEachViolation(t *testing.T) {
	agents := []agentView{
		{key: "a:1", live: true, node: 0, namespaces: []string{"x", "y"}},
		{key: "b:1", live: true, node: 1, namespaces: []string{"x"}},
		{key: "c:1", live: false, node: -1},
	}
	good := []namespaceView{
		nsv("x", inst("a:1", "node0", "node0/1/1"), inst("b:1", "node1", "node1/1/1")),
		nsv("y", inst("a:1", "node0", "node0/1/1")),
	}
	tests := []struct {
		name   string
		states []nodeState
		want   verdict
	}{
		{"clean", []nodeState{stateOf("node0", 9, good...), stateOf("node1", 9, good...)}, verdict{}},
		{"lost on one node", []nodeState{stateOf("node0", 9, good...), stateOf("node1", 9, good[0])},
			verdict{lost: 1, divergent: 1}},
		{"ghost of a closed agent", []nodeState{
			stateOf("node0", 9, append(good, nsv("z", inst("c:1", "node1", "node1/1/2")))...),
			stateOf("node1", 9, append(good, nsv("z", inst("c:1", "node1", "node1/1/2")))...)},
			verdict{ghosts: 2}},
		{"ghost: namespace the live agent did not register", []nodeState{
			stateOf("node0", 9, append(good, nsv("z", inst("b:1", "node1", "node1/1/1")))...),
			stateOf("node1", 9, good...)},
			verdict{ghosts: 1, divergent: 1}},
		{"ghost: old session on another node", []nodeState{
			stateOf("node0", 9, nsv("x", inst("a:1", "node0", "node0/1/1"), inst("b:1", "node0", "node0/1/7"), inst("b:1", "node1", "node1/1/1")), good[1]),
			stateOf("node1", 9, good...)},
			verdict{ghosts: 1, divergent: 1}},
		{"doubled: one online, two sessions", []nodeState{
			stateOf("node0", 9, nsv("x", inst("a:1", "node0", "node0/1/1"), inst("b:1", "node1", "node1/1/1"), inst("b:1", "node1", "node1/1/5")), good[1]),
			stateOf("node1", 9, good...)},
			verdict{doubled: 1, divergent: 1}},
		{"doubled: same session listed twice", []nodeState{
			stateOf("node0", 9, good[0], nsv("y", inst("a:1", "node0", "node0/1/1"), inst("a:1", "node0", "node0/1/1"))),
			stateOf("node1", 9, good...)},
			verdict{doubled: 1, divergent: 1}},
		{"never at one index", []nodeState{stateOf("node0", 9, good...), stateOf("node1", 10, good...)}, verdict{divergent: 1}},
		{"unstable read", []nodeState{stateOf("node0", 9, good...), {node: "node1", before: 8, index: 9, post: 9, namespaces: good}}, verdict{divergent: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := judge(tt.states, agents, testCluster())
			if got.lost != tt.want.lost || got.ghosts != tt.want.ghosts || got.doubled != tt.want.doubled || got.divergent != tt.want.divergent {
				t.Fatalf("got lost=%d ghosts=%d doubled=%d divergent=%d, want %+v\n%s",
					got.lost, got.ghosts, got.doubled, got.divergent, tt.want, strings.Join(got.details, "\n"))
			}
			if got.bad() != tt.want.bad() || (got.bad() && len(got.details) == 0) {
				t.Fatalf("bad()=%v with details %q", got.bad(), got.details)
			}
		})
	}
}
