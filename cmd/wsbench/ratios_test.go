package main

import (
	"strings"
	"testing"
)

func TestOpenLoopLines_PairsEachWhereWithTheEchoFloorsAfterIt(t *testing.T) {
	where := func(label string, p99 float64) Result {
		return Result{Workload: "where", Variant: "paced 50000/s " + label, Conns: 64, OpsPerS: 50000, P50us: 300, P99us: p99}
	}
	echo := func(procs string, p99 float64) Result {
		return Result{Workload: "echo floor", Variant: joinWords("paced 50000/s", procs), Conns: 64, OpsPerS: 50000, P99us: p99}
	}
	rows := []Result{
		where("3 nodes", 1200), echo("", 800), echo("3 procs", 1100),
		where("3 nodes", 1300), echo("", 850),
		where("1 node", 900), echo("", 700), echo("3 procs", 1000),
		{Workload: "where", Variant: "paced 50000/s", Conns: 8, P99us: 400},  // another shape
		{Workload: "where", Variant: "paced 20000/s", Conns: 64, P99us: 400}, // another rate
	}
	got := strings.Join(openLoopLines(rows), "\n")
	for _, want := range []string{
		"| paced 50000/s 3 nodes | 50000 | 300 | 1200 | 800 | 1100 | < 1000 µs: **no** |",
		"| paced 50000/s 3 nodes | 50000 | 300 | 1300 | 850 | - | < 1000 µs: **no** |",
		"| paced 50000/s 1 node | 50000 | 300 | 900 | 700 | 1000 | < 1000 µs: yes |",
		"| paced 50000/s 3 nodes: median of 2 | | | 1250 (1200-1300) |",
		"| paced 50000/s 1 node: median of 1 | | | 900 (900-900) | | | < 1000 µs: yes |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "| 400 |") {
		t.Errorf("a row of another shape or rate is in:\n%s", got)
	}
	if openLoopLines(rows[8:]) != nil {
		t.Error("lines for a run without the open-loop rows")
	}
}

func TestFloorLines_PairsEachWhereWithTheFloorOfAsManyProcesses(t *testing.T) {
	where := func(label string, cpu float64) Result {
		return Result{Workload: "where", Pattern: patternAgent, Variant: "agent " + label, Concurrency: 256, Conns: 1000, OpsPerS: 80000, ServerCPUus: cpu}
	}
	echo := func(procs string, cpu float64) Result {
		return Result{Workload: "echo floor", Pattern: patternAgent, Variant: joinWords("agent", procs), Concurrency: 256, Conns: 1000, OpsPerS: 90000, ServerCPUus: cpu}
	}
	rows := []Result{
		where(floorLabel3, 11), echo("", 5), echo("3 procs", 10), // the 1-process floor is not this one's
		where(floorLabel3, 12), echo("3 procs", 10),
		where(floorLabel3, 13), echo("3 procs", 10),
		where(floorLabel1, 9), echo("3 procs", 1), echo("", 8), // 3 processes are not one node's floor
		where(floorLabel1, 10), // no floor after it: no pass
		{Workload: "where", Pattern: patternAgent, Variant: "agent", Concurrency: 256, Conns: 1000, ServerCPUus: 99}, // the patterns group's
		echo("", 1),
	}
	got := strings.Join(floorLines(rows), "\n")
	for _, want := range []string{
		"| agent like for like, 3 nodes | 80000 | 90000 | 11.00 | agent 3 procs | 10.00 | 1.10× |",
		"| agent like for like, 1 node | 80000 | 90000 | 9.00 | agent | 8.00 | 1.12× |",
		"| agent like for like, 3 nodes: median of 3 | | | | | | 1.20× (1.10-1.30), ≤ 1.2×: yes |",
		"| agent like for like, 1 node: median of 1 | | | | | | 1.12× (1.12-1.12), ≤ 1.2×: yes |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "9.00×") || strings.Contains(got, "99.00") || strings.Contains(got, "| 11.00 | agent | 5.00") {
		t.Errorf("a pair that is not like for like is in:\n%s", got)
	}
	if floorLines(rows[9:]) != nil {
		t.Error("lines for a run without the floor group's pairs")
	}
}
