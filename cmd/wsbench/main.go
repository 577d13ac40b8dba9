// Command wsbench is the load generator for wsregistry: fake iocore agents
// that register, look up and call through a local cluster started by
// scripts/local-cluster.sh, measuring throughput, latency and the server
// processes' CPU per operation (from /proc). See BENCHMARKS.md.
//
//	wsbench -workload where -c 1,16,256 -duration 5s -out bench/results/x.jsonl
//	wsbench -workload where -pattern agent -c 256      # 1,000 agents, one write per request
//	wsbench table -in bench/results/x.jsonl -run <id>
//	wsbench ratios -in bench/results/x.jsonl -run <id> # where vs echo floor, us vs etcd
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
)

// subcommands run instead of a workload: `wsbench table ...`, `wsbench echo-server ...`.
var subcommands = map[string]func(args []string) error{
	"table":       tableCmd,
	"ratios":      ratiosCmd,
	"echo-server": echoServerCmd,
}

func main() {
	if len(os.Args) > 1 {
		if cmd, ok := subcommands[os.Args[1]]; ok {
			if err := cmd(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "wsbench %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wsbench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("wsbench", flag.ContinueOnError)
	host := fs.String("host", "127.0.7.1", "host of the local cluster (WSREGISTRY_CLUSTER_HOST of local-cluster.sh)")
	nodes := fs.Int("nodes", 3, "number of nodes in the cluster")
	roles := fs.Bool("roles", false, "register, where: also each raft role's server CPU per op (leader, voter, nonvoter: per node of that role)")
	entry := fs.Int("entry", 0, "register, where: connect to nodes 0..entry-1 only (0: every node; the server CPU is still that of every node)")
	on := fs.String("on", "", "register, where: connect only to the node of this raft role: leader or follower (the first follower)")
	dir := fs.String("cluster-dir", "", "local-cluster.sh state dir (default: the one remembered for -host)")
	workload := fs.String("workload", "where", "register | where | where-paced | echo | echo-paced | fetch | failover | reregister | scale")
	pattern := fs.String("pattern", patternPipelined, "register, where, where-paced, echo, echo-paced: pipelined (one goroutine per connection,\n"+
		"replies that arrive together answered with one write, zero mask key) or agent (as iocore agents: every request its\n"+
		"own frame write with a fresh random mask key, over -conns connections with -inflight requests each in flight at once)")
	agentConns := fs.Int("conns", defaultAgentConns, "agent pattern: connections (spread over the nodes)")
	inflight := fs.Int("inflight", defaultAgentInflight, "agent pattern: requests one connection has in flight at once (a burst)")
	echoProcs := fs.Int("echo-procs", 1, "echo, echo-paced: echo server processes, the connections spread over them (3: as many as nodes)")
	conc := fs.String("c", "1", "comma-separated concurrencies (requests in flight)")
	k := fs.Int("k", 64, "where, echo (pipelined pattern): most connections the lookups are spread over")
	variants := fs.String("variant", "direct,proxied", "fetch: direct, proxied (via node 0, where the echo agent is connected), proxied-remote (via node 1)")
	label := fs.String("label", "", "added to the variant column (e.g. 'group commit off')")
	duration := fs.Duration("duration", 5*time.Second, "length of each run")
	rate := fs.Float64("rate", 0, "where-paced: total lookups/s (0: half the rate of a where run at the highest -c in this invocation, measured first)")
	agents := fs.Int("agents", 10000, "reregister/scale: agent connections")
	perAgent := fs.Int("per-agent", 10, "scale: registrations per agent")
	writers := fs.Int("writers", 8, "failover: writing agents")
	readers := fs.Int("readers", 8, "failover: reading agents")
	timeout := fs.Duration("timeout", 10*time.Second, "dial and reply timeout")
	out := fs.String("out", "", "append JSON lines to this file too")
	runID := fs.String("run", "", "run id recorded on every line (groups one bench.sh invocation)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		b, err := os.ReadFile("/tmp/wsregistry-local-cluster-" + *host)
		if err != nil {
			return fmt.Errorf("no -cluster-dir and no local cluster known for %s: %w", *host, err)
		}
		*dir = strings.TrimSpace(string(b))
	}
	if *on != "" && *on != "leader" && *on != "follower" {
		return fmt.Errorf("unknown -on %q (leader or follower)", *on)
	}
	s := shape{pattern: *pattern, conns: *agentConns, inflight: *inflight}
	switch {
	case s.pattern != patternPipelined && s.pattern != patternAgent:
		return fmt.Errorf("unknown -pattern %q (pipelined or agent)", s.pattern)
	case s.agent() && !strings.Contains(" register where where-paced echo echo-paced ", " "+*workload+" "):
		return fmt.Errorf("-pattern agent applies to register, where, where-paced, echo and echo-paced, not %s", *workload)
	case s.agent() && (s.conns < 1 || s.inflight < 1):
		return errors.New("-conns and -inflight must be at least 1")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hostPrefix := (*host)[:strings.LastIndexByte(*host, '.')+1]
	b := &bench{
		cl:       newCluster(*dir, *host, *nodes),
		keys:     newAgentKeys(10 + rand.IntN(200)),
		keyIP:    hostPrefix,
		duration: *duration,
		timeout:  *timeout,
		log:      log,
		t0:       time.Now(),
		entry:    *entry,
		on:       *on,
		roles:    *roles,
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
		if *on != "" {
			r.Variant = strings.TrimSpace(r.Variant + " on " + *on)
		}
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
		fmt.Fprintf(os.Stderr, "%-10s %-22s c=%-4d %9.0f ops/s  p50 %7.0fµs p99 %8.0fµs  errors %d  server %.1f µs/op  %v\n",
			r.Workload, r.Variant, r.Concurrency, r.OpsPerS, r.P50us, r.P99us, r.Errors, r.ServerCPUus, r.Extra)
		return nil
	}
	switch *workload {
	case "register":
		for _, c := range cs {
			if err := emit(b.register(c, s)); err != nil {
				return err
			}
		}
	case "echo-paced":
		if *rate <= 0 {
			return errors.New("echo-paced needs -rate")
		}
		if err := emit(b.echoPaced(*rate, *k, *echoProcs, s)); err != nil {
			return err
		}
	case "echo":
		for _, c := range cs {
			if err := emit(b.echo(c, *k, *echoProcs, s)); err != nil {
				return err
			}
		}
	case "where", "where-paced":
		var last Result
		if *workload == "where" || *rate == 0 {
			for _, c := range cs {
				r, err := b.where(c, *k, s)
				if err := emit(r, err); err != nil {
					return err
				}
				last = r
			}
		}
		if *workload == "where-paced" {
			rt := *rate
			if rt == 0 {
				rt = last.OpsPerS / 2
			}
			if err := emit(b.wherePaced(rt, min(*k, cs[len(cs)-1]), s)); err != nil {
				return err
			}
		}
	case "fetch":
		for _, v := range strings.Split(*variants, ",") {
			via := 0
			if v == "proxied-remote" {
				via = 1 % *nodes
			}
			for _, c := range cs {
				if err := emit(b.fetch(c, v, via, quiet)); err != nil {
					return err
				}
			}
		}
	case "failover":
		return emit(b.failover(*writers, *readers))
	case "reregister":
		return emit(b.reregister(*agents))
	case "scale":
		return emit(b.scale(*agents, *perAgent))
	default:
		return fmt.Errorf("unknown workload %q", *workload)
	}
	return nil
}
