package main

import (
	"fmt"
	"strings"
)

// Rows of bench.sh's floor group (issue 14 item 4 in passes) carry these labels: where under
// the agent pattern on one node, then on three, each followed by the echo floor in as many
// processes as the cluster has nodes (each process pays its own runtime and wake-ups).
const (
	floorLabel1 = "like for like, 1 node"
	floorLabel3 = "like for like, 3 nodes"
)

// floorLines pairs each where row of the floor group with the echo floor row that follows it
// in the same shape and number of processes, gives each pass's ratio of server CPU per op,
// then each variant's median ratio over its passes: one run's ratio moves by 10-20% on this
// machine, the median of alternated passes much less.
func floorLines(rows []Result) []string {
	procsOf := map[string]string{floorLabel1: "", floorLabel3: "3 procs"}
	var lines []string
	ratios := map[string][]float64{}
	var order []string
	for i, w := range rows {
		if w.Workload != "where" || w.Pattern != patternAgent {
			continue
		}
		label := ""
		for l := range procsOf {
			if strings.HasSuffix(w.Variant, l) {
				label = l
			}
		}
		if label == "" {
			continue
		}
		want := joinWords(strings.TrimSpace(strings.TrimSuffix(w.Variant, label)), procsOf[label])
		for _, e := range rows[i+1:] {
			if e.Workload == "where" {
				break
			}
			if e.Workload != "echo floor" || e.Pattern != patternAgent || e.Variant != want ||
				e.Concurrency != w.Concurrency || e.Conns != w.Conns || e.ServerCPUus == 0 {
				continue
			}
			r := w.ServerCPUus / e.ServerCPUus
			if _, seen := ratios[w.Variant]; !seen {
				order = append(order, w.Variant)
			}
			ratios[w.Variant] = append(ratios[w.Variant], r)
			lines = append(lines, fmt.Sprintf("| %s | %.0f | %.0f | %.2f | %s | %.2f | %.2f× |",
				w.Variant, w.OpsPerS, e.OpsPerS, w.ServerCPUus, e.Variant, e.ServerCPUus, r))
			break
		}
	}
	if len(lines) == 0 {
		return nil
	}
	head := []string{
		"| where, agent pattern | where ops/s | echo ops/s | where server CPU µs/op | echo floor | echo CPU µs/op | where/echo |",
		"|---|--:|--:|--:|---|--:|--:|",
	}
	lines = append(head, lines...)
	for _, v := range order {
		m, lo, hi := medianRange(ratios[v])
		lines = append(lines, fmt.Sprintf("| %s: median of %d | | | | | | %.2f× (%.2f-%.2f), ≤ %.1f×: %s |", v, len(ratios[v]),
			m, lo, hi, targetWhereVsEcho, yesNo(m <= targetWhereVsEcho)))
	}
	return lines
}
