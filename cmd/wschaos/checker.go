package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// instance is one entry of GET /v1/namespaces.
type instance struct {
	Host    string `json:"host"`
	Node    string `json:"node"`
	Session string `json:"session"`
	Since   string `json:"since"`
}

type namespaceView struct {
	Name      string     `json:"name"`
	Instances []instance `json:"instances"`
}

// nodeState is one node's answer, with the applied index read before and after it.
type nodeState struct {
	node         string
	index        uint64 // X-Wsregistry-Index of the namespaces answer
	before, post uint64 // applied_index of /v1/cluster around it
	namespaces   []namespaceView
}

// stable: nothing was applied while the answer was built, so it is the state at index.
func (s nodeState) stable() bool { return s.before == s.index && s.index == s.post }

// canonical renders the state in a fixed order, for comparing nodes.
func (s nodeState) canonical() string {
	var lines []string
	for _, ns := range s.namespaces {
		for _, in := range ns.Instances {
			lines = append(lines, ns.Name+" "+in.Host+" "+in.Session+" "+in.Since)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// verdict counts the violations of one check.
//
//   - lost: a live agent's namespace (agent connected, every online acknowledged) has no
//     instance with the agent's host on a node (counted per node and namespace).
//   - ghosts: an instance that should not exist: its host is a disconnected agent, or a
//     live agent that did not register that namespace on its current connection, or it
//     is owned by a node other than the one the live agent is connected to (a session
//     left over from an earlier connection).
//   - doubled: the same registration applied more than once: a (namespace, session) pair
//     listed twice, or a live agent's (namespace, host) held by more than one session of
//     the node it is connected to (one online that became two registrations).
//   - divergent: nodes at the same applied index whose states differ (counted per pair
//     of nodes), or nodes that never reached a common index during the check.
type verdict struct {
	lost, ghosts, doubled, divergent int
	details                          []string
}

func (v *verdict) add(o verdict) {
	v.lost += o.lost
	v.ghosts += o.ghosts
	v.doubled += o.doubled
	v.divergent += o.divergent
	v.details = append(v.details, o.details...)
}

func (v verdict) bad() bool { return v.lost+v.ghosts+v.doubled+v.divergent > 0 }

func (v *verdict) note(format string, args ...any) {
	if len(v.details) < 40 {
		v.details = append(v.details, fmt.Sprintf(format, args...))
	}
}

// readNode reads one node's registrations and applied index.
func (c *cluster) readNode(ctx context.Context, i int) (nodeState, error) {
	nd := c.Nodes[i]
	s := nodeState{node: nd.ID}
	before, err := c.View(ctx, nd)
	if err != nil {
		return s, err
	}
	hdr, err := c.GetJSON(ctx, nd.HTTP, "/v1/namespaces", &s.namespaces)
	if err != nil {
		return s, err
	}
	after, err := c.View(ctx, nd)
	if err != nil {
		return s, err
	}
	s.before, s.post = before.AppliedIndex, after.AppliedIndex
	if s.index, err = strconv.ParseUint(hdr.Get("X-Wsregistry-Index"), 10, 64); err != nil {
		return s, fmt.Errorf("%s: X-Wsregistry-Index %q: %w", nd.ID, hdr.Get("X-Wsregistry-Index"), err)
	}
	return s, nil
}

// check reads every node until the agents did not change during the read and every node
// answered a stable state at one common applied index (or timeout passes), then judges
// that reading against the agents.
func check(ctx context.Context, c *cluster, f *fleet, timeout time.Duration) (verdict, error) {
	deadline := time.Now().Add(timeout)
	var (
		states  []nodeState
		agents  []agentView
		lastErr error
	)
	for attempt := 0; ; attempt++ {
		agents = f.views()
		states = states[:0]
		lastErr = nil
		for i := range c.Nodes {
			s, err := c.readNode(ctx, i)
			if err != nil {
				lastErr = err
				break
			}
			states = append(states, s)
		}
		if lastErr == nil {
			after := f.views()
			agentsSteady := true
			for i := range agents {
				if agents[i].gen != after[i].gen {
					agentsSteady = false
					break
				}
			}
			if agentsSteady && sameStableIndex(states) {
				break
			}
			if !agentsSteady {
				lastErr = fmt.Errorf("agents changed during the read")
			} else {
				lastErr = fmt.Errorf("nodes not at one stable index: %s", indexes(states))
			}
		}
		if time.Now().After(deadline) {
			if len(states) != len(c.Nodes) {
				return verdict{}, fmt.Errorf("check: %w", lastErr)
			}
			break // judge what we have; divergence is reported below
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return judge(states, agents, c), nil
}

func sameStableIndex(states []nodeState) bool {
	for _, s := range states {
		if !s.stable() || s.index != states[0].index {
			return false
		}
	}
	return true
}

func indexes(states []nodeState) string {
	var parts []string
	for _, s := range states {
		parts = append(parts, fmt.Sprintf("%s=%d/%d/%d", s.node, s.before, s.index, s.post))
	}
	return strings.Join(parts, " ")
}

func judge(states []nodeState, agents []agentView, c *cluster) verdict {
	var v verdict
	type want struct {
		node string
	}
	expected := map[[2]string]want{} // (namespace, host) -> the node the live agent is on
	live := map[string]bool{}
	for _, a := range agents {
		if !a.live {
			continue
		}
		live[a.key] = true
		for _, ns := range a.namespaces {
			expected[[2]string{ns, a.key}] = want{node: c.Nodes[a.node].ID}
		}
	}
	for _, s := range states {
		found := map[[2]string]int{}
		for _, ns := range s.namespaces {
			seenSession := map[string]bool{}
			for _, in := range ns.Instances {
				if seenSession[in.Session] {
					v.doubled++
					v.note("%s: doubled: namespace %s lists session %s twice (host %s)", s.node, ns.Name, in.Session, in.Host)
					continue
				}
				seenSession[in.Session] = true
				k := [2]string{ns.Name, in.Host}
				w, ok := expected[k]
				switch {
				case !ok && !live[in.Host]:
					v.ghosts++
					v.note("%s: ghost: %s has %s (session %s, since %s); that agent is disconnected", s.node, ns.Name, in.Host, in.Session, in.Since)
				case !ok:
					v.ghosts++
					v.note("%s: ghost: %s has %s (session %s, since %s); the agent is connected but did not register it on its current connection", s.node, ns.Name, in.Host, in.Session, in.Since)
				case in.Node != w.node:
					v.ghosts++
					v.note("%s: ghost: %s has %s from node %s (session %s, since %s); the agent is connected to %s", s.node, ns.Name, in.Host, in.Node, in.Session, in.Since, w.node)
				default:
					found[k]++
					if found[k] > 1 {
						v.doubled++
						v.note("%s: doubled: %s has %s from %d sessions of %s (latest %s)", s.node, ns.Name, in.Host, found[k], in.Node, in.Session)
					}
				}
			}
		}
		for k, w := range expected {
			if found[k] == 0 {
				v.lost++
				v.note("%s: lost: %s has no instance %s (agent connected to %s, online acknowledged)", s.node, k[0], k[1], w.node)
			}
		}
	}
	for i := range states {
		for j := i + 1; j < len(states); j++ {
			a, b := states[i], states[j]
			if !a.stable() || !b.stable() || a.index != b.index {
				v.divergent++
				v.note("divergent: %s and %s never showed one stable applied index during the check (%s)", a.node, b.node, indexes(states))
				continue
			}
			if ca, cb := a.canonical(), b.canonical(); ca != cb {
				v.divergent++
				v.note("divergent: %s and %s differ at applied index %d: %s", a.node, b.node, a.index, firstDiff(ca, cb))
			}
		}
	}
	return v
}

func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < max(len(la), len(lb)); i++ {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			return fmt.Sprintf("first difference at line %d: %q vs %q", i, x, y)
		}
	}
	return "same lines"
}
