package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// failover: steady register and where load on every node; after a third of
// the run the leader is killed (SIGKILL by PID). Workers whose node died
// reconnect to the next node. Reports the longest gap between successful
// writes (and reads) over all workers, and the worst gap one worker saw.
// The killed node is started again afterwards.
func (b *bench) failover(writers, readers int) (Result, error) {
	ctx := context.Background()
	leader, err := b.cl.leader(ctx)
	if err != nil {
		return Result{}, err
	}
	seedNode := (leader + 1) % b.cl.n
	seed, nss, err := b.seedNamespaces(seedNode, 100, "bench-fo-")
	if err != nil {
		return Result{}, err
	}
	defer b.settle([]*wsConn{seed})
	if err := b.cl.capture(leader); err != nil {
		return Result{}, err
	}
	pids := b.cl.pids()
	cpu := startCPU(pids)
	var wm, rm merged
	var wg sync.WaitGroup
	start := b.now()
	until := start + int64(b.duration)
	worker := func(i int, write bool, m *merged) {
		defer wg.Done()
		rec := &recorder{Lat: make([]int64, 0, 1<<12), Done: make([]int64, 0, 1<<12)}
		defer m.Add(rec)
		node := i % b.cl.n
		var g gen
		if write {
			ns := "bench-fo-w-" + strconv.Itoa(i)
			g = func(buf []byte, id int64) []byte { return appendRequest(buf, id, "online", ns) }
		} else {
			g = func(buf []byte, id int64) []byte { return appendRequest(buf, id, "where", nss[int(id)%len(nss)]) }
		}
		for b.now() < until {
			c, err := b.dial(node, 4096)
			if err != nil {
				node = (node + 1) % b.cl.n
				time.Sleep(20 * time.Millisecond)
				continue
			}
			_, err = b.pipeline(c, 1, until, g, rec, 0)
			c.Close()
			if err != nil {
				node = (node + 1) % b.cl.n
			}
		}
	}
	for i := range writers {
		wg.Add(1)
		go worker(i, true, &wm)
	}
	for i := range readers {
		wg.Add(1)
		go worker(i, false, &rm)
	}
	time.Sleep(b.duration / 3)
	killAt := b.now()
	if err := b.cl.kill(leader); err != nil {
		return Result{}, err
	}
	wg.Wait()
	// Gaps are measured over the load window; a request still waiting at its
	// end shows up in max latency and errors, not as a gap.
	end := until
	res := Result{Workload: "failover", Concurrency: writers + readers, Conns: writers + readers, Seconds: float64(end-start) / 1e9}
	wm.Fill(&res)
	var rres Result
	rres.Seconds = res.Seconds
	rm.Fill(&rres)
	wg1, wg2 := wm.MaxGap(start, end)
	rg1, rg2 := rm.MaxGap(start, end)
	res.Ops += rres.Ops
	res.Errors += rres.Errors
	res.OpsPerS = float64(res.Ops) / res.Seconds
	cpu.Fill(&res)
	res.Extra = map[string]float64{
		"write_gap_ms":            float64(wg1) / 1e6,
		"read_gap_ms":             float64(rg1) / 1e6,
		"write_gap_one_worker_ms": float64(wg2) / 1e6,
		"read_gap_one_worker_ms":  float64(rg2) / 1e6,
		"writes":                  float64(res.Ops - rres.Ops),
		"reads":                   float64(rres.Ops),
		"killed_after_s":          float64(killAt-start) / 1e9,
	}
	res.Note = fmt.Sprintf("SIGKILL of the leader node%d; latency columns are writes", leader)
	if d, err := b.cl.restart(ctx, leader); err != nil {
		b.log.Error("restarting the killed node", "node", leader, "err", err)
	} else {
		res.Extra["restart_ready_ms"] = float64(d.Milliseconds())
	}
	return res, nil
}

// registerOn registers every connection under nsPerAgent namespaces of its
// own (pipelined, 512 connections at a time) and returns how long it took.
func (b *bench) registerOn(conns []*wsConn, nsPerAgent int, prefix string) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	var errs atomic.Int64
	sem := make(chan struct{}, 512)
	for i, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rec := &recorder{}
			j := 0
			g := func(buf []byte, id int64) []byte {
				ns := prefix + strconv.Itoa(i) + "-" + strconv.Itoa(j)
				j++
				return appendRequest(buf, id, "online", ns)
			}
			if _, err := b.pipelineCount(c, nsPerAgent, nsPerAgent, g, rec); err != nil || rec.Errors > 0 {
				errs.Add(1)
			}
		}()
	}
	wg.Wait()
	if e := errs.Load(); e > 0 {
		return 0, fmt.Errorf("%d agents failed to register", e)
	}
	return time.Since(start), nil
}

// reregister: n agents registered on a follower; the follower is killed; each
// agent reconnects at once to another node and sends online again. Reports
// the time from the kill until the last agent's online was acknowledged.
func (b *bench) reregister(n int) (Result, error) {
	ctx := context.Background()
	leader, err := b.cl.leader(ctx)
	if err != nil {
		return Result{}, err
	}
	victim := (leader + 1) % b.cl.n
	others := []int{}
	for i := range b.cl.n {
		if i != victim {
			others = append(others, i)
		}
	}
	if err := b.cl.capture(victim); err != nil {
		return Result{}, err
	}
	conns, err := b.connectAll(n, []int{victim}, 1024)
	if err != nil {
		return Result{}, err
	}
	keys := make([]string, n)
	for i, c := range conns {
		keys[i] = c.key
	}
	// Agent i registers "bench-rr-<i>-0", and again under that name after the kill.
	if _, err := b.registerOn(conns, 1, "bench-rr-"); err != nil {
		closeAll(conns)
		return Result{}, err
	}
	cpu := startCPU(b.cl.pids())
	var wg sync.WaitGroup
	lat := make([]int64, n)
	var failed atomic.Int64
	gone := make(chan struct{})
	var killAt atomic.Int64
	sem := make(chan struct{}, 1024) // about as many dials in flight as a real herd
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.idle()
			<-gone
			sem <- struct{}{}
			defer func() { <-sem }()
			ns := "bench-rr-" + strconv.Itoa(i) + "-0"
			for attempt := 0; attempt < 20; attempt++ {
				node := others[(i+attempt)%len(others)]
				nc, err := dialWS(b.cl.ws(node), keys[i], b.timeout, 1024)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				_, err = nc.call(0, "online", ns, b.timeout)
				nc.Close()
				if err == nil {
					lat[i] = b.now() - killAt.Load()
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			failed.Add(1)
		}()
	}
	killAt.Store(b.now())
	if err := b.cl.kill(victim); err != nil {
		close(gone)
		closeAll(conns)
		return Result{}, err
	}
	close(gone)
	wg.Wait()
	res := Result{Workload: "reregister", Concurrency: n, Conns: n}
	slices.Sort(lat)
	res.Seconds = float64(lat[n-1]) / 1e9
	res.Ops = int64(n) - failed.Load()
	res.Errors = failed.Load()
	res.OpsPerS = float64(res.Ops) / res.Seconds
	q := func(p float64) float64 { return float64(lat[min(int(p*float64(n)), n-1)]) / 1e3 }
	res.P50us, res.P90us, res.P99us, res.Maxus = q(.5), q(.9), q(.99), float64(lat[n-1])/1e3
	cpu.Fill(&res)
	res.Note = fmt.Sprintf("SIGKILL of follower node%d; latencies are kill-to-acknowledged-online per agent; seconds = until the last one", victim)
	if d, err := b.cl.restart(ctx, victim); err != nil {
		b.log.Error("restarting the killed node", "node", victim, "err", err)
	} else {
		res.Extra = map[string]float64{"restart_ready_ms": float64(d.Milliseconds())}
	}
	return res, nil
}

// scale: on node 0 (of a one-node cluster started with --pprof and a low
// snapshot threshold): memory per connection and per registration, snapshot
// time, then SIGKILL + restart from the data dir: startup and restore time.
func (b *bench) scale(agents, nsPerAgent int) (Result, error) {
	ctx := context.Background()
	pid, err := b.cl.pid(0)
	if err != nil {
		return Result{}, err
	}
	if err := b.cl.capture(0); err != nil {
		return Result{}, err
	}
	mem := func() (rss, heap int64, err error) {
		hs, err := b.cl.heapStats(ctx, 0)
		if err != nil {
			return 0, 0, err
		}
		rss, err = rssBytes(pid)
		return rss, hs["HeapAlloc"], err
	}
	rss0, heap0, err := mem()
	if err != nil {
		return Result{}, err
	}
	conns, err := b.connectAll(agents, []int{0}, 1024)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	time.Sleep(time.Second)
	rss1, heap1, err := mem()
	if err != nil {
		return Result{}, err
	}
	cpu := startCPU([]int{pid})
	took, err := b.registerOn(conns, nsPerAgent, "scale-")
	if err != nil {
		return Result{}, err
	}
	for _, c := range conns {
		go func() { _ = c.idle() }() // answer pings from here on
	}
	regEnd := time.Now()
	// A few more writes so that a snapshot (threshold 16 entries in
	// bench.sh) is taken of the whole state, after regEnd.
	if extra, err := b.dial(0, 0); err == nil {
		for j := range 32 {
			_, _ = extra.call(int64(j), "online", "scale-extra-"+strconv.Itoa(j), b.timeout)
		}
		defer extra.Close()
	}
	// A snapshot follows from --snapshot-threshold/--snapshot-interval; read its duration
	// from raft's log lines. The heap is measured after it: while it runs it holds a copy
	// of the state, which is not memory per registration.
	snapshotMs := -1.0
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if d, ok := logSpan(b.cl.Nodes[0].LogFile, regEnd, "starting snapshot up to", "snapshot complete up to"); ok {
			snapshotMs = float64(d.Microseconds()) / 1e3
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	rss2, heap2, err := mem()
	if err != nil {
		return Result{}, err
	}
	if file := os.Getenv("WSBENCH_HEAP_PROFILE"); file != "" {
		// What the registrations hold, for `go tool pprof -sample_index=inuse_space`.
		if err := b.cl.saveHeapProfile(ctx, 0, file); err != nil {
			b.log.Warn("heap profile not saved", "file", file, "err", err)
		}
	}
	total := agents * nsPerAgent
	res := Result{Workload: "scale", Concurrency: 512, Conns: agents, Ops: int64(total), Seconds: took.Seconds()}
	res.OpsPerS = float64(total) / took.Seconds()
	cpu.Fill(&res)
	res.Extra = map[string]float64{
		"rss_base_mib":         float64(rss0) / (1 << 20),
		"rss_per_conn_b":       float64(rss1-rss0) / float64(agents),
		"heap_per_conn_b":      float64(heap1-heap0) / float64(agents),
		"rss_per_reg_b":        float64(rss2-rss1) / float64(total),
		"heap_per_reg_b":       float64(heap2-heap1) / float64(total),
		"rss_total_mib":        float64(rss2) / (1 << 20),
		"heap_total_mib":       float64(heap2) / (1 << 20),
		"registrations":        float64(total),
		"agent_connections":    float64(agents),
		"registration_seconds": took.Seconds(),
	}
	if snapshotMs >= 0 {
		res.Extra["snapshot_ms"] = snapshotMs
	}
	if err := b.cl.kill(0); err != nil {
		return res, err
	}
	killed := time.Now()
	d, err := b.cl.restart(ctx, 0)
	if err != nil {
		return res, err
	}
	res.Extra["startup_ready_ms"] = float64(d.Milliseconds())
	if r, ok := logSpan(b.cl.Nodes[0].LogFile, killed, "starting restore from snapshot", "restored from snapshot"); ok {
		res.Extra["restore_ms"] = float64(r.Microseconds()) / 1e3
	}
	res.Note = fmt.Sprintf("%d registrations over %d connections on one node; per-item memory = growth / count", total, agents)
	return res, nil
}

// logSpan finds, in a node's text log, the first line containing from at or
// after since and the next line containing to, and returns the time between.
func logSpan(path string, since time.Time, from, to string) (time.Duration, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var t0 time.Time
	for sc.Scan() {
		l := sc.Text()
		t, ok := lineTime(l)
		if !ok || t.Before(since.Add(-time.Millisecond)) {
			continue
		}
		if t0.IsZero() && strings.Contains(l, from) {
			t0 = t
		} else if !t0.IsZero() && strings.Contains(l, to) {
			return t.Sub(t0), true
		}
	}
	return 0, false
}

// lineTime reads time=... of a slog text line.
func lineTime(l string) (time.Time, bool) {
	i := strings.Index(l, "time=")
	if i < 0 {
		return time.Time{}, false
	}
	s := l[i+5:]
	if j := strings.IndexByte(s, ' '); j >= 0 {
		s = s[:j]
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t, err == nil
}
