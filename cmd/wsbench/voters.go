package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Rows of bench.sh's voters group carry these labels (the variant column); the first is the
// baseline the others are compared with.
const (
	votersBase    = "3 voters"
	votersNonvote = "3 voters + 4 non-voters"
)

// targetNonvoterCost is the most registration throughput four non-voters may cost (issue 18).
const targetNonvoterCost = 0.10

// votersLines compares, within one run, the medians of each voters-group configuration
// (rows whose variant names voters) with the three-voter baseline at the same workload and
// concurrency. Medians, because this machine's repeats spread by 10-20%.
func votersLines(rows []Result) []string {
	type key struct {
		workload, variant string
		c                 int
	}
	groups := map[key][]Result{}
	var order []key
	for _, r := range rows {
		if !strings.Contains(r.Variant, "voters") {
			continue
		}
		k := key{r.Workload, r.Variant, r.Concurrency}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	if len(order) == 0 {
		return nil
	}
	median := func(rs []Result, f func(Result) float64) (med, lo, hi float64) {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return medianRange(v)
	}
	ops := func(r Result) float64 { return r.OpsPerS }
	cpu := func(r Result) float64 { return r.ServerCPUus }
	p50 := func(r Result) float64 { return r.P50us }
	// Baseline first, then the others, each workload and concurrency together.
	slices.SortStableFunc(order, func(a, b key) int {
		if c := strings.Compare(a.workload, b.workload); c != 0 {
			return c
		}
		if a.c != b.c {
			return a.c - b.c
		}
		if (a.variant == votersBase) != (b.variant == votersBase) {
			if a.variant == votersBase {
				return -1
			}
			return 1
		}
		return 0
	})
	extra := func(key string) func(Result) float64 { return func(r Result) float64 { return r.Extra[key] } }
	role := func(rs []Result, key string) string {
		for _, r := range rs {
			if _, ok := r.Extra[key]; !ok {
				return "-"
			}
		}
		m, _, _ := median(rs, extra(key))
		return fmt.Sprintf("%.1f", m)
	}
	lines := []string{
		"| workload | c | configuration | runs | ops/s median (range) | vs 3 voters | p50 µs | server CPU µs/op (all nodes) | vs 3 voters | leader µs/op | each other voter | each non-voter | target |",
		"|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
	}
	for _, k := range order {
		rs := groups[k]
		o, lo, hi := median(rs, ops)
		c, _, _ := median(rs, cpu)
		l, _, _ := median(rs, p50)
		vsOps, vsCPU, target := "", "", ""
		if base, ok := groups[key{k.workload, votersBase, k.c}]; ok && k.variant != votersBase {
			bo, _, _ := median(base, ops)
			bc, _, _ := median(base, cpu)
			if bo > 0 && bc > 0 {
				vsOps = fmt.Sprintf("%.2f×", o/bo)
				vsCPU = fmt.Sprintf("%.2f×", c/bc)
				if k.workload == "register" && k.c == 256 && k.variant == votersNonvote {
					target = fmt.Sprintf("costs ≤ %.0f%%: %s", 100*targetNonvoterCost, yesNo(o >= (1-targetNonvoterCost)*bo))
				}
			}
		}
		lines = append(lines, fmt.Sprintf("| %s | %d | %s | %d | %.0f (%.0f-%.0f) | %s | %.0f | %.1f | %s | %s | %s | %s | %s |",
			k.workload, k.c, k.variant, len(rs), o, lo, hi, vsOps, l, c, vsCPU,
			role(rs, "leader_cpu_us_per_op"), role(rs, "voter_cpu_us_per_op"), role(rs, "nonvoter_cpu_us_per_op"), target))
	}
	return lines
}

// roleMeter splits the servers' CPU over a run by raft role: the leader, the voters that
// follow it, the non-voters (-roles). On this machine every node shares the same cores, so
// the total is what limits a run; with a machine per node, the leader's share is.
type roleMeter struct {
	meters map[string]*cpuMeter // role -> its nodes
	nodes  map[string]int
}

// startRoles reads the roles from node 0's /v1/cluster and starts measuring; nil when they
// cannot be read.
func (b *bench) startRoles() *roleMeter {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := b.cl.View(ctx, b.cl.Nodes[0])
	if err != nil || v.Leader == "" {
		b.log.Warn("roles unknown: no per-role CPU", "err", err)
		return nil
	}
	suffrage := map[string]string{}
	for _, m := range v.Members {
		suffrage[m.ID] = m.Suffrage
	}
	pids := map[string][]int{}
	for _, nd := range b.cl.Nodes {
		pid, err := nd.PID()
		if err != nil {
			continue
		}
		role := ""
		switch {
		case nd.ID == v.Leader:
			role = "leader"
		case suffrage[nd.ID] == "Voter":
			role = "voter"
		case suffrage[nd.ID] == "Nonvoter":
			role = "nonvoter"
		default:
			continue
		}
		pids[role] = append(pids[role], pid)
	}
	r := &roleMeter{meters: map[string]*cpuMeter{}, nodes: map[string]int{}}
	for role, ps := range pids {
		r.meters[role], r.nodes[role] = startCPU(ps), len(ps)
	}
	return r
}

// fill adds <role>_cpu_us_per_op (per node of that role) to res.
func (r *roleMeter) fill(res *Result) {
	if r == nil || res.Ops == 0 {
		return
	}
	if res.Extra == nil {
		res.Extra = map[string]float64{}
	}
	for role, m := range r.meters {
		s, _ := m.Stop()
		res.Extra[role+"_cpu_us_per_op"] = float64(s.Microseconds()) / float64(res.Ops) / float64(r.nodes[role])
	}
}

// medianRange returns the median of v (the mean of the middle two for an even count), its
// least and its greatest; v is sorted in place and must not be empty.
func medianRange(v []float64) (med, lo, hi float64) {
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		med = v[n/2]
	} else {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return med, v[0], v[len(v)-1]
}
