package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
)

// tableCmd prints the lines of one run as a Markdown table.
func tableCmd(args []string) error {
	fs := flag.NewFlagSet("table", flag.ContinueOnError)
	in := fs.String("in", "", "JSON lines file")
	runID := fs.String("run", "", "only lines of this run (default: the last run in the file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rows, err := readRun(*in, *runID)
	if err != nil {
		return err
	}
	fmt.Println("| workload | variant | c | conns | ops | s | ops/s | p50 µs | p90 µs | p99 µs | max µs | errors | server CPU µs/op | generator CPU µs/op |")
	fmt.Println("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %d | %d | %d | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f | %d | %.1f | %.1f |\n",
			r.Workload, r.Variant, r.Concurrency, r.Conns, r.Ops, r.Seconds, r.OpsPerS,
			r.P50us, r.P90us, r.P99us, r.Maxus, r.Errors, r.ServerCPUus, r.ClientCPUus)
	}
	var extras []string
	for _, r := range rows {
		if len(r.Extra) == 0 && r.Note == "" {
			continue
		}
		keys := make([]string, 0, len(r.Extra))
		for k := range r.Extra {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var kv []string
		for _, k := range keys {
			kv = append(kv, fmt.Sprintf("%s=%.4g", k, r.Extra[k]))
		}
		s := fmt.Sprintf("- **%s %s**: %s", r.Workload, r.Variant, strings.Join(kv, ", "))
		if r.Note != "" {
			s += " (" + r.Note + ")"
		}
		extras = append(extras, s)
	}
	if len(extras) > 0 {
		fmt.Println()
		fmt.Println(strings.Join(extras, "\n"))
	}
	return nil
}

// readRun reads the result lines of one run from a JSON lines file (runID "": the last run).
func readRun(in, runID string) ([]Result, error) {
	f, err := os.Open(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var all []Result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r Result
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			all = append(all, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if runID == "" && len(all) > 0 {
		runID = all[len(all)-1].Run
	}
	return slices.DeleteFunc(all, func(r Result) bool { return r.Run != runID }), nil
}
