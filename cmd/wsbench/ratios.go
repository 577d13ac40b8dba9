package main

import (
	"flag"
	"fmt"
	"math"
	"strings"
)

// Targets the ratios are checked against (BENCHMARKS.md, round 5).
const (
	targetRegisterVsEtcd = 3.0 // registrations/s at 256 writers, ours / etcd's: at least
	targetWhereVsEcho    = 1.2 // server CPU per where under the agent pattern / its echo floor: at most
	targetFollowerExtra  = 500 // µs a follower's one-writer online may add to the leader's p50: at most

	// Issue 14 item 6: where's p99, paced at openLoopRate/s over openLoopConns connections.
	targetOpenLoopP99us = 1000 // below
	openLoopRate        = 50000
	openLoopConns       = 64
)

// ratiosCmd prints, for one run, the ratios that only mean something within one run: our
// register and where against the etcd anchor's (rows whose variant starts with "etcd", written
// by bench/etcd) at the same concurrency, and the server CPU of each where row against the
// echo floor row of the same shape (same variant, pattern and connections; closed-loop rows
// also the same concurrency).
func ratiosCmd(args []string) error {
	fs := flag.NewFlagSet("ratios", flag.ContinueOnError)
	in := fs.String("in", "", "JSON lines file")
	runID := fs.String("run", "", "only lines of this run (default: the last run in the file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rows, err := readRun(*in, *runID)
	if err != nil {
		return err
	}
	// last returns the last row of the run that matches: when a run measured the same thing
	// twice, the later one is the nearer in time to what follows it.
	last := func(match func(r Result) bool) (Result, bool) {
		for i := len(rows) - 1; i >= 0; i-- {
			if match(rows[i]) {
				return rows[i], true
			}
		}
		return Result{}, false
	}
	isEtcd := func(r Result) bool { return strings.HasPrefix(r.Variant, "etcd") }
	paced := func(r Result) bool { return strings.HasPrefix(r.Variant, "paced") }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f×", a/b)
	}

	var etcdLines []string
	for _, e := range rows {
		if !isEtcd(e) {
			continue
		}
		for _, p := range []string{patternPipelined, patternAgent} {
			want := ""
			if p == patternAgent {
				want = patternAgent
			}
			r, ok := last(func(r Result) bool {
				return r.Workload == e.Workload && r.Concurrency == e.Concurrency && r.Variant == want
			})
			if !ok {
				continue
			}
			target := ""
			if e.Workload == "register" && e.Concurrency == 256 {
				target = fmt.Sprintf("≥ %.0f×: %s", targetRegisterVsEtcd, yesNo(r.OpsPerS >= targetRegisterVsEtcd*e.OpsPerS))
			}
			etcdLines = append(etcdLines, fmt.Sprintf("| %s | %d | %s | %.0f | %s | %.0f | %s | %.1f | %.1f | %s | %s |",
				e.Workload, e.Concurrency, p, r.OpsPerS, e.Variant, e.OpsPerS, ratio(r.OpsPerS, e.OpsPerS),
				r.ServerCPUus, e.ServerCPUus, ratio(r.ServerCPUus, e.ServerCPUus), target))
		}
	}
	if len(etcdLines) > 0 {
		fmt.Println("| workload | c | ours: pattern | ours ops/s | etcd | etcd ops/s | ops/s us/etcd | ours server CPU µs/op | etcd CPU µs/op | CPU/op us/etcd | target |")
		fmt.Println("|---|--:|---|--:|---|--:|--:|--:|--:|--:|---|")
		fmt.Println(strings.Join(etcdLines, "\n"))
		fmt.Println()
	}

	var echoLines []string
	for _, w := range rows {
		if w.Workload != "where" || isEtcd(w) {
			continue
		}
		// The echo floor of the same shape: one process (the target's floor), and, where the run
		// has one, the floor spread over as many processes as there are nodes ("3 procs").
		for _, procs := range []string{"", "3 procs"} {
			e, ok := last(func(r Result) bool {
				return r.Workload == "echo floor" && r.Variant == joinWords(w.Variant, procs) && r.Conns == w.Conns &&
					(paced(w) || r.Concurrency == w.Concurrency)
			})
			if !ok {
				continue
			}
			target := ""
			if w.Pattern == patternAgent && procs == "" {
				target = fmt.Sprintf("≤ %.1f×: %s", targetWhereVsEcho, yesNo(w.ServerCPUus <= targetWhereVsEcho*e.ServerCPUus))
			}
			// A paced pair compares like with like only at the same rate: a generator that fell
			// behind (a busy machine) sent fewer requests to one of them.
			if paced(w) && w.OpsPerS > 0 && math.Abs(e.OpsPerS-w.OpsPerS) > 0.05*w.OpsPerS {
				target = strings.TrimSpace(target + " (rates differ: not comparable)")
			}
			pattern := w.Pattern
			if pattern == "" {
				pattern = patternPipelined
			}
			echoLines = append(echoLines, fmt.Sprintf("| %s | %s | %d | %d | %s | %.0f | %.0f | %.1f | %.1f | %s | %s |",
				w.Variant, pattern, w.Concurrency, w.Conns, e.Variant, w.OpsPerS, e.OpsPerS, w.ServerCPUus, e.ServerCPUus,
				ratio(w.ServerCPUus, e.ServerCPUus), target))
		}
	}
	if len(echoLines) > 0 {
		fmt.Println("| where variant | pattern | c | conns | echo floor | where ops/s | echo ops/s | where server CPU µs/op | echo floor CPU µs/op | where/echo | target |")
		fmt.Println("|---|---|--:|--:|---|--:|--:|--:|--:|--:|---|")
		fmt.Println(strings.Join(echoLines, "\n"))
	}
	if l, ok := last(func(r Result) bool { return r.Workload == "register" && r.Concurrency == 1 && r.Variant == "on leader" }); ok {
		if f, ok := last(func(r Result) bool {
			return r.Workload == "register" && r.Concurrency == 1 && r.Variant == "on follower"
		}); ok {
			fmt.Println()
			fmt.Println("| one writer | leader p50 µs | follower p50 µs | follower - leader µs | leader/s | follower/s | target |")
			fmt.Println("|---|--:|--:|--:|--:|--:|---|")
			fmt.Printf("| register c=1 | %.0f | %.0f | %+.0f | %.0f | %.0f | ≤ +%d µs: %s |\n", l.P50us, f.P50us, f.P50us-l.P50us,
				l.OpsPerS, f.OpsPerS, targetFollowerExtra, yesNo(f.P50us-l.P50us <= targetFollowerExtra))
		}
	}
	if lines := openLoopLines(rows); len(lines) > 0 {
		fmt.Println()
		fmt.Println(strings.Join(lines, "\n"))
	}
	if lines := floorLines(rows); len(lines) > 0 {
		fmt.Println()
		fmt.Println(strings.Join(lines, "\n"))
	}
	if lines := votersLines(rows); len(lines) > 0 {
		fmt.Println()
		fmt.Println(strings.Join(lines, "\n"))
	}
	return nil
}

// openLoopLines pairs each where row paced at openLoopRate over openLoopConns connections
// with the echo floor rows that follow it (bench.sh --only openloop runs them back to back),
// then gives each where variant's median p99 over its passes.
func openLoopLines(rows []Result) []string {
	variant := fmt.Sprintf("paced %d/s", openLoopRate)
	isOpenLoop := func(r Result) bool { return r.Conns == openLoopConns && strings.HasPrefix(r.Variant, variant) }
	var lines []string
	p99s := map[string][]float64{}
	var order []string
	for i, w := range rows {
		if w.Workload != "where" || !isOpenLoop(w) {
			continue
		}
		echoP99 := map[string]string{"1": "-", "3": "-"}
		for _, e := range rows[i+1:] {
			if e.Workload == "where" {
				break
			}
			if e.Workload == "echo floor" && isOpenLoop(e) {
				procs := "1"
				if strings.Contains(e.Variant, "3 procs") {
					procs = "3"
				}
				echoP99[procs] = fmt.Sprintf("%.0f", e.P99us)
			}
		}
		if _, seen := p99s[w.Variant]; !seen {
			order = append(order, w.Variant)
		}
		p99s[w.Variant] = append(p99s[w.Variant], w.P99us)
		lines = append(lines, fmt.Sprintf("| %s | %.0f | %.0f | %.0f | %s | %s | < %d µs: %s |", w.Variant, w.OpsPerS, w.P50us, w.P99us,
			echoP99["1"], echoP99["3"], targetOpenLoopP99us, yesNo(w.P99us < targetOpenLoopP99us)))
	}
	if len(lines) == 0 {
		return nil
	}
	head := []string{
		"| where, open loop | ops/s | p50 µs | p99 µs | echo floor p99 µs, 1 proc | 3 procs | target |",
		"|---|--:|--:|--:|--:|--:|---|",
	}
	lines = append(head, lines...)
	for _, v := range order {
		n := len(p99s[v])
		m, lo, hi := medianRange(p99s[v])
		lines = append(lines, fmt.Sprintf("| %s: median of %d | | | %.0f (%.0f-%.0f) | | | < %d µs: %s |", v, n, m, lo, hi,
			targetOpenLoopP99us, yesNo(m < targetOpenLoopP99us)))
	}
	return lines
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
