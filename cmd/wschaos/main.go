// Command wschaos is the chaos harness of wsregistry: against a running local cluster
// (scripts/local-cluster.sh, started with --fault-injection) it churns simulated agents
// and injects one fault per round: kill -9 of the leader or of a follower (then a restart
// on the same data dir), SIGSTOP/SIGCONT for longer than the node grace, a partition of one
// node through the fault switch, or a clean restart (SIGINT, start again). After each
// round it stops the faults and the churn, lets the agents settle, waits one grace period,
// and checks every node's HTTP API against what the agents know (see verdict for the exact
// definitions). It ends with
//
//	rounds=N lost=L ghosts=G divergent=D doubled=X
//
// and exits 1 when any count is above zero, or when a round ended with a configuration other
// than every node a member and --voters of them voters (autopilot's job), 2 when the harness
// itself could not run.
// scripts/chaos.sh starts the cluster and runs it; see RELIABILITY.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

type config struct {
	dir        string
	host       string
	nodes      int
	voters     int
	rounds     int
	agents     int
	nsPool     int
	grace      time.Duration
	settleTime time.Duration
	faults     string
	vary       bool
	verbose    bool
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	var cfg config
	fs := flag.NewFlagSet("wschaos", flag.ContinueOnError)
	fs.StringVar(&cfg.dir, "cluster-dir", "", "the local cluster's directory (node<i>.pid, node<i>.log)")
	fs.StringVar(&cfg.host, "host", "127.0.8.1", "the cluster's address (WSREGISTRY_CLUSTER_HOST); agents use the same first three octets, .2-.9")
	fs.IntVar(&cfg.nodes, "nodes", 3, "nodes in the cluster")
	fs.IntVar(&cfg.voters, "voters", 3, "the nodes' --voters: after each round every node must be a member and this many (at most --nodes) voters, the rest non-voters")
	fs.IntVar(&cfg.rounds, "rounds", 3, "fault rounds")
	fs.IntVar(&cfg.agents, "agents", 200, "simulated agents")
	fs.IntVar(&cfg.nsPool, "namespaces", 60, "distinct namespaces the agents pick 1-3 from")
	fs.DurationVar(&cfg.grace, "grace", 2*time.Second, "the nodes' --node-grace")
	fs.DurationVar(&cfg.settleTime, "settle", time.Second, "extra wait after the grace before checking")
	fs.StringVar(&cfg.faults, "faults", "kill-leader,kill-follower,stop-cont,partition,restart", "faults, used in turn")
	fs.BoolVar(&cfg.vary, "vary-namespaces", false, "agents pick new namespaces on every connection (unlike real agents; shows the handover finding in RELIABILITY.md)")
	fs.BoolVar(&cfg.verbose, "v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if cfg.dir == "" || cfg.rounds < 1 || cfg.agents < 1 || cfg.nsPool < 3 {
		fmt.Fprintln(os.Stderr, "wschaos: need --cluster-dir, --rounds >= 1, --agents >= 1, --namespaces >= 3")
		return 2
	}
	faults := strings.Split(cfg.faults, ",")
	for _, f := range faults {
		if faultFunc(f) == nil {
			fmt.Fprintf(os.Stderr, "wschaos: unknown fault %q\n", f)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := openCluster(cfg.dir, cfg.host, cfg.nodes, log)
	if err != nil {
		log.Error("opening the cluster", "err", err)
		return 2
	}
	if _, err := c.waitHealthy(ctx, 30*time.Second); err != nil {
		log.Error("cluster not healthy", "err", err)
		return 2
	}
	var wsAddrs []string
	for _, nd := range c.Nodes {
		wsAddrs = append(wsAddrs, nd.WS)
	}
	hostBase := cfg.host[:strings.LastIndexByte(cfg.host, '.')]
	f := newFleet(cfg.agents, wsAddrs, hostBase, 30000, cfg.nsPool, log)
	f.vary = cfg.vary
	actx, stopAgents := context.WithCancel(ctx)
	wg := f.run(actx)
	defer func() { stopAgents(); wg.Wait() }()

	h := &harness{cfg: cfg, c: c, f: f, log: log}
	start := time.Now()
	var total verdict
	rounds := 0
	harnessErr := error(nil)
	for r := 1; r <= cfg.rounds && ctx.Err() == nil; r++ {
		fault := faults[(r-1)%len(faults)]
		v, err := h.round(ctx, r, fault)
		if err != nil {
			harnessErr = fmt.Errorf("round %d (%s): %w", r, fault, err)
			log.Error("round could not complete", "round", r, "fault", fault, "err", err)
			break
		}
		rounds++
		total.add(v)
	}
	fmt.Printf("agent stats: connects=%d dial_failures=%d online_failures=%d closed_by_node=%d churn_closes=%d\n",
		f.stats.connects.Load(), f.stats.dialFails.Load(), f.stats.onlineFails.Load(), f.stats.unexpectedCloses.Load(), f.stats.churnCloses.Load())
	fmt.Printf("duration=%s readyz_503_while_healthy=%d\n", time.Since(start).Round(time.Second), h.readyzStuck)
	counts, failures := c.autopilotCounts(context.WithoutCancel(ctx))
	var actions []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		actions = append(actions, fmt.Sprintf("%s=%d", k, counts[k]))
	}
	fmt.Printf("autopilot (counted by the running nodes while they led): %s failures=%d; rounds ending with a wrong membership: %d\n",
		strings.Join(actions, " "), failures, h.membershipWrong)
	fmt.Printf("rounds=%d lost=%d ghosts=%d divergent=%d doubled=%d\n", rounds, total.lost, total.ghosts, total.divergent, total.doubled)
	switch {
	case total.bad() || h.membershipWrong > 0:
		return 1
	case harnessErr != nil || ctx.Err() != nil:
		fmt.Fprintf(os.Stderr, "wschaos: incomplete: %v\n", errors.Join(harnessErr, ctx.Err()))
		return 2
	}
	return 0
}

type harness struct {
	readyzStuck     int // times a healthy node's /readyz answered 503 (see waitHealthy)
	membershipWrong int // rounds whose configuration did not come back to --voters voters
	cfg             config
	c               *cluster
	f               *fleet
	log             *slog.Logger
}

// round runs one fault with churn, then quiesces and checks.
func (h *harness) round(ctx context.Context, r int, fault string) (verdict, error) {
	began := time.Now()
	h.f.setMode(modeChurn, nil)
	sleepCtx(ctx, 2*time.Second) // churn before the fault, so it hits a busy cluster
	desc, err := faultFunc(fault)(h, ctx)
	if err != nil {
		return verdict{}, fmt.Errorf("injecting %s: %w", fault, err)
	}
	sleepCtx(ctx, time.Second) // some churn right after the fault healed, too

	// Quiesce: every node ready, churn stopped, every agent connected with its onlines
	// acknowledged (a tenth of them disconnected instead, to look for their ghosts), one
	// grace period so that purges of dead incarnations have run, then check.
	stuck, err := h.c.waitHealthy(ctx, 60*time.Second)
	if err != nil {
		return verdict{}, err
	}
	retiredMod := r % 10
	h.f.setMode(modeSettle, func(i int) bool { return i%10 == retiredMod })
	if err := h.f.settle(ctx, 60*time.Second); err != nil {
		return verdict{}, err
	}
	sleepCtx(ctx, h.cfg.grace+h.cfg.settleTime)
	stuck2, err := h.c.waitHealthy(ctx, 30*time.Second)
	if err != nil {
		return verdict{}, err
	}
	h.readyzStuck += stuck + stuck2
	// Autopilot may have replaced a voter that was down (--dead-server-timeout); by now the
	// node is back as a non-voter and the voters are at the target again, or they never will.
	voters, nonvoters, merr := h.c.waitMembership(ctx, 30*time.Second, h.cfg.voters)
	if merr != nil {
		if ctx.Err() != nil {
			return verdict{}, merr
		}
		h.membershipWrong++
		h.log.Error("membership not restored", "round", r, "err", merr)
	}
	if err := h.f.settle(ctx, 60*time.Second); err != nil {
		return verdict{}, err
	}
	v, err := check(ctx, h.c, h.f, 20*time.Second)
	if err != nil {
		return verdict{}, err
	}
	live := 0
	for _, a := range h.f.views() {
		if a.live {
			live++
		}
	}
	leader, _ := h.c.Leader(ctx)
	cv, _ := h.c.View(ctx, h.c.Nodes[max(leader, 0)])
	fmt.Printf("round=%d fault=%s (%s) lost=%d ghosts=%d divergent=%d doubled=%d live_agents=%d applied_index=%d voters=%s nonvoters=%s took=%s\n",
		r, fault, desc, v.lost, v.ghosts, v.divergent, v.doubled, live, cv.AppliedIndex,
		strings.Join(voters, ","), strings.Join(nonvoters, ","), time.Since(began).Round(100*time.Millisecond))
	if merr != nil {
		fmt.Printf("  %v\n", merr)
	}
	if v.bad() {
		for _, d := range v.details {
			fmt.Printf("  %s\n", d)
		}
		// Tell a transient state from a lasting one: look again after another grace.
		sleepCtx(ctx, h.cfg.grace+h.cfg.settleTime)
		if again, err := check(ctx, h.c, h.f, 20*time.Second); err == nil {
			fmt.Printf("  re-check after another grace: lost=%d ghosts=%d divergent=%d doubled=%d\n", again.lost, again.ghosts, again.divergent, again.doubled)
		}
	}
	return v, nil
}

// faultFunc returns the injector of a fault: it injects it, holds it and undoes it
// (restart, SIGCONT, heal), and returns a short description for the round's line.
func faultFunc(name string) func(*harness, context.Context) (string, error) {
	switch name {
	case "kill-leader":
		return func(h *harness, ctx context.Context) (string, error) { return h.killRestart(ctx, true) }
	case "kill-follower":
		return func(h *harness, ctx context.Context) (string, error) { return h.killRestart(ctx, false) }
	case "stop-cont":
		return (*harness).stopCont
	case "partition":
		return (*harness).partition
	case "restart":
		return (*harness).restart
	}
	return nil
}

func (h *harness) pick(ctx context.Context, leader bool) (int, error) {
	l, err := h.c.waitLeader(ctx, 30*time.Second, -1)
	if err != nil {
		return -1, err
	}
	if leader {
		return l, nil
	}
	return (l + 1 + int(time.Now().UnixNano()%int64(len(h.c.Nodes)-1))) % len(h.c.Nodes), nil
}

// killRestart: kill -9, stay down past the grace (the leader purges the node's agents),
// start again on the same data dir.
func (h *harness) killRestart(ctx context.Context, leader bool) (string, error) {
	i, err := h.pick(ctx, leader)
	if err != nil {
		return "", err
	}
	nd := h.c.Nodes[i]
	h.log.Info("fault: kill -9", "node", nd.ID, "leader", leader)
	if err := nd.Signal(syscall.SIGKILL); err != nil {
		return "", err
	}
	if err := nd.WaitExit(10 * time.Second); err != nil {
		return "", err
	}
	if leader {
		if _, err := h.c.waitLeader(ctx, 30*time.Second, i); err != nil {
			return "", err
		}
	}
	sleepCtx(ctx, h.cfg.grace+time.Second)
	if err := nd.Start("wschaos: restarting"); err != nil {
		return "", err
	}
	return "kill -9 " + nd.ID, nil
}

// raftIOTimeout is the I/O deadline of the nodes' raft transport (cluster.Open): a frozen
// peer's heartbeats only fail, and its silence only starts to count, after it.
const raftIOTimeout = 5 * time.Second

// stopCont freezes a node long enough for the leader to notice (the transport's I/O
// deadline) and purge its agents after the grace; it fences itself when it wakes up.
func (h *harness) stopCont(ctx context.Context) (string, error) {
	i, err := h.pick(ctx, time.Now().UnixNano()%2 == 0)
	if err != nil {
		return "", err
	}
	nd := h.c.Nodes[i]
	hold := max(2*h.cfg.grace, raftIOTimeout+h.cfg.grace) + 500*time.Millisecond
	h.log.Info("fault: SIGSTOP", "node", nd.ID, "for", hold)
	if err := nd.Signal(syscall.SIGSTOP); err != nil {
		return "", err
	}
	sleepCtx(ctx, hold)
	if err := nd.Signal(syscall.SIGCONT); err != nil {
		return "", err
	}
	return "SIGSTOP/SIGCONT " + nd.ID, nil
}

// partition cuts one node off through the fault switch for twice the grace.
func (h *harness) partition(ctx context.Context) (string, error) {
	i, err := h.pick(ctx, time.Now().UnixNano()%2 == 0)
	if err != nil {
		return "", err
	}
	nd := h.c.Nodes[i]
	h.log.Info("fault: partition", "node", nd.ID, "for", 2*h.cfg.grace)
	if err := h.c.partition(ctx, nd, true); err != nil {
		return "", err
	}
	sleepCtx(ctx, 2*h.cfg.grace+500*time.Millisecond)
	if err := h.c.partition(context.WithoutCancel(ctx), nd, false); err != nil {
		return "", err
	}
	return "partition " + nd.ID, nil
}

// restart stops a node cleanly (SIGINT keeps its membership) and starts it again at once.
func (h *harness) restart(ctx context.Context) (string, error) {
	i, err := h.pick(ctx, time.Now().UnixNano()%2 == 0)
	if err != nil {
		return "", err
	}
	nd := h.c.Nodes[i]
	h.log.Info("fault: restart (SIGINT)", "node", nd.ID)
	if err := nd.Signal(syscall.SIGINT); err != nil {
		return "", err
	}
	if err := nd.WaitExit(20 * time.Second); err != nil {
		// A clean stop that hangs is a finding: SIGQUIT makes the Go runtime write every
		// goroutine's stack into the node's log before it dies.
		_ = nd.Signal(syscall.SIGQUIT)
		if nd.WaitExit(5*time.Second) != nil {
			_ = nd.Signal(syscall.SIGKILL)
		}
		return "", fmt.Errorf("%w; sent SIGQUIT: goroutine dump in %s", err, nd.LogFile)
	}
	if err := nd.Start("wschaos: restarting"); err != nil {
		return "", err
	}
	return "restart " + nd.ID, nil
}
