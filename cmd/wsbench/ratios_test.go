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
