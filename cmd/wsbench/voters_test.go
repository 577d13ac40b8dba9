package main

import (
	"strings"
	"testing"
)

func TestVotersLines_MediansAgainstThreeVotersAndTheTarget(t *testing.T) {
	row := func(variant string, ops, cpu float64) Result {
		return Result{Workload: "register", Variant: variant, Concurrency: 256, Ops: int64(ops), OpsPerS: ops, ServerCPUus: cpu,
			Extra: map[string]float64{"leader_cpu_us_per_op": cpu / 2}}
	}
	rows := []Result{
		row("7 voters", 500, 100),
		row("3 voters", 1000, 50), row("3 voters", 1200, 50), row("3 voters", 800, 70),
		row("3 voters + 4 non-voters", 950, 60),
		{Workload: "register", Variant: "", Concurrency: 256, OpsPerS: 1}, // not of the group
	}
	lines := votersLines(rows)
	if len(lines) != 2+3 {
		t.Fatalf("want a header and three rows, got:\n%s", strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[2], "| 3 voters | 3 | 1000 (800-1200) |") {
		t.Errorf("the baseline (median of three) comes first: %s", lines[2])
	}
	for _, want := range []string{"| 3 voters + 4 non-voters | 1 | 950 (950-950) | 0.95× |", "costs ≤ 10%: yes"} {
		if !strings.Contains(strings.Join(lines, "\n"), want) {
			t.Errorf("no %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if !strings.Contains(strings.Join(lines, "\n"), "| 7 voters | 1 | 500 (500-500) | 0.50× |") {
		t.Errorf("7 voters not compared with 3:\n%s", strings.Join(lines, "\n"))
	}
	rows[4] = row("3 voters + 4 non-voters", 850, 60)
	if got := strings.Join(votersLines(rows), "\n"); !strings.Contains(got, "costs ≤ 10%: **no**") {
		t.Errorf("0.85× meets the target:\n%s", got)
	}
	if votersLines(rows[5:]) != nil {
		t.Error("lines for a run without the voters group")
	}
}
