// Command etcdbench runs wsbench's register and where workloads against an etcd cluster: the
// anchor of BENCHMARKS.md (scripts/bench.sh --anchor etcd). It is its own module so that the
// registry's go.mod does not carry etcd's client and gRPC.
//
// A registration is a put of /ns/<namespace>/<addr> attached to the agent's lease (one lease per
// agent, kept alive, as an agent's connection holds its registrations); a where is a get of the
// prefix /ns/<namespace>/ with limit 1, serializable (a member answers from its own state, as
// our nodes do) or linearizable. Results are wsbench's JSON lines (`wsbench table` and
// `wsbench ratios` read them), with the CPU of the etcd processes (from /proc) per operation.
//
//	etcdbench -endpoints 127.0.9.1:2379,127.0.9.2:2379,127.0.9.3:2379 -pids 11,12,13 -workload register -c 1,256
//	etcdbench -endpoints ... -wait 30s          # until every member serves reads and writes
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "etcdbench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("etcdbench", flag.ContinueOnError)
	endpoints := fs.String("endpoints", "127.0.9.1:2379,127.0.9.2:2379,127.0.9.3:2379", "client URLs of the members (host:port); agent i uses member i%n")
	pidList := fs.String("pids", "", "comma-separated PIDs of the etcd processes whose CPU is measured")
	workload := fs.String("workload", "where", "register | where")
	conc := fs.String("c", "1", "comma-separated concurrencies (requests in flight)")
	k := fs.Int("k", 64, "where: most clients the lookups are spread over (wsbench's -k)")
	consistency := fs.String("consistency", "serializable", "where: serializable, linearizable or both (comma-separated)")
	duration := fs.Duration("duration", 5*time.Second, "length of each run")
	ttl := fs.Duration("ttl", 10*time.Second, "lease TTL of an agent")
	timeout := fs.Duration("timeout", 10*time.Second, "dial and request timeout")
	wait := fs.Duration("wait", 0, "wait up to this long until every member serves reads and writes, then exit")
	label := fs.String("label", "", "added to the variant column")
	out := fs.String("out", "", "append JSON lines to this file too")
	runID := fs.String("run", "", "run id recorded on every line (groups one bench.sh invocation)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	eps := strings.Split(*endpoints, ",")
	b := &bench{endpoints: eps, duration: *duration, ttl: *ttl, timeout: *timeout}
	if *wait > 0 {
		return b.waitReady(*wait)
	}
	for _, s := range strings.Split(*pidList, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("bad -pids %q", *pidList)
		}
		b.pids = append(b.pids, p)
	}
	if len(b.pids) == 0 {
		return errors.New("-pids: the etcd processes to measure")
	}
	var cs []int
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -c %q", s)
		}
		cs = append(cs, n)
	}
	var sink *os.File
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		sink = f
	}
	emit := func(r Result, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", *workload, err)
		}
		r.Time = time.Now().UTC().Format(time.RFC3339)
		r.Run = *runID
		if *label != "" {
			r.Variant = strings.TrimSpace(r.Variant + " " + *label)
		}
		line, _ := json.Marshal(r)
		fmt.Println(string(line))
		if sink != nil {
			if _, err := sink.Write(append(line, '\n')); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "%-10s %-26s c=%-4d %9.0f ops/s  p50 %7.0fµs p99 %8.0fµs  errors %d  etcd %.1f µs/op\n",
			r.Workload, r.Variant, r.Concurrency, r.OpsPerS, r.P50us, r.P99us, r.Errors, r.ServerCPUus)
		return nil
	}
	ctx := context.Background()
	switch *workload {
	case "register":
		for _, c := range cs {
			if err := emit(b.register(ctx, c)); err != nil {
				return err
			}
		}
	case "where":
		var modes []bool // serializable?
		for _, m := range strings.Split(*consistency, ",") {
			switch strings.TrimSpace(m) {
			case "serializable":
				modes = append(modes, true)
			case "linearizable":
				modes = append(modes, false)
			default:
				return fmt.Errorf("bad -consistency %q", m)
			}
		}
		for _, c := range cs {
			rs, err := b.where(ctx, c, *k, modes)
			if err != nil {
				return emit(Result{}, err)
			}
			for _, r := range rs {
				if err := emit(r, nil); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("unknown workload %q", *workload)
	}
	return nil
}
