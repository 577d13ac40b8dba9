package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

type bench struct {
	endpoints []string
	pids      []int
	duration  time.Duration
	ttl       time.Duration
	timeout   time.Duration
}

func (b *bench) client(i int) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{b.endpoints[i%len(b.endpoints)]},
		DialTimeout: b.timeout,
		Logger:      zap.NewNop(),
	})
}

// agent is one fake agent: its own client (one connection to member i%n, as our agents are
// spread over the nodes) and its own lease, kept alive while it runs.
type agent struct {
	cli   *clientv3.Client
	lease clientv3.LeaseID
	addr  string
	stop  context.CancelFunc
}

func (b *bench) newAgent(i int) (*agent, error) {
	cli, err := b.client(i)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	g, err := cli.Grant(ctx, int64(b.ttl/time.Second))
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("lease grant: %w", err)
	}
	kctx, stop := context.WithCancel(context.Background())
	ch, err := cli.KeepAlive(kctx, g.ID)
	if err != nil {
		stop()
		cli.Close()
		return nil, fmt.Errorf("lease keep-alive: %w", err)
	}
	go func() {
		for range ch { // the client warns when nobody drains the answers
		}
	}()
	// The identity an agent registers, as wsbench's fake agents have (nothing listens there).
	addr := "127.0.7." + strconv.Itoa(10+i/50000) + ":" + strconv.Itoa(1024+i%50000)
	return &agent{cli: cli, lease: g.ID, addr: addr, stop: stop}, nil
}

// close revokes the agent's lease (which deletes its keys, as a closed connection deregisters
// an agent of ours) and closes its client.
func (a *agent) close(timeout time.Duration) {
	a.stop()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	_, _ = a.cli.Revoke(ctx, a.lease)
	cancel()
	a.cli.Close()
}

// startAgents sets up n agents, 32 at a time.
func (b *bench) startAgents(n int) ([]*agent, error) {
	agents := make([]*agent, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			agents[i], errs[i] = b.newAgent(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.closeAgents(agents)
		return nil, err
	}
	return agents, nil
}

func (b *bench) closeAgents(agents []*agent) {
	var wg sync.WaitGroup
	for _, a := range agents {
		if a != nil {
			wg.Add(1)
			go func() { defer wg.Done(); a.close(b.timeout) }()
		}
	}
	wg.Wait()
}

// register: c agents, each with one put in flight, back to back, cycling over 16 namespaces
// of its own (wsbench's register): every put is a raft write.
func (b *bench) register(ctx context.Context, c int) (Result, error) {
	agents, err := b.startAgents(c)
	if err != nil {
		return Result{}, err
	}
	defer b.closeAgents(agents)
	res := Result{Workload: "register", Variant: "etcd put+lease", Concurrency: c, Conns: c,
		Extra: map[string]float64{"members": float64(len(b.endpoints))}}
	var m merged
	var wg sync.WaitGroup
	cpu := startCPU(b.pids)
	start := time.Now()
	until := start.Add(b.duration)
	rctx, cancel := context.WithDeadline(ctx, until.Add(b.timeout))
	defer cancel()
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{Lat: make([]int64, 0, 1<<12)}
			defer m.Add(rec)
			keys := make([]string, 16)
			for j := range keys {
				keys[j] = "/ns/bench-reg-" + strconv.Itoa(i) + "-" + strconv.Itoa(j) + "/" + a.addr
			}
			for j := 0; time.Now().Before(until); j++ {
				t := time.Now()
				if _, err := a.cli.Put(rctx, keys[j%16], a.addr, clientv3.WithLease(a.lease)); err != nil {
					rec.Errors++
					rec.LastErr = err
					continue
				}
				rec.Lat = append(rec.Lat, time.Since(t).Nanoseconds())
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	m.Fill(&res)
	cpu.Fill(&res)
	return res, nil
}

// where: 1,000 namespaces registered by one agent, then c gets in flight over min(c, k)
// clients spread over the members, a random namespace each; once per consistency mode.
func (b *bench) where(ctx context.Context, c, k int, serializable []bool) ([]Result, error) {
	seed, err := b.newAgent(0)
	if err != nil {
		return nil, err
	}
	defer seed.close(b.timeout)
	nss := make([]string, 1000)
	for i := range nss {
		nss[i] = "/ns/bench-where-" + strconv.Itoa(i) + "/"
	}
	if err := b.seed(ctx, seed, nss); err != nil {
		return nil, err
	}
	k = min(k, c)
	clients := make([]*clientv3.Client, k)
	for i := range clients {
		if clients[i], err = b.client(i); err != nil {
			return nil, err
		}
		defer clients[i].Close()
	}
	// Every member has applied the seed before serializable reads count.
	for i := range min(k, len(b.endpoints)) {
		if err := waitCount(ctx, clients[i], "/ns/bench-where-", int64(len(nss)), b.timeout); err != nil {
			return nil, fmt.Errorf("member %s: %w", b.endpoints[i], err)
		}
	}
	var out []Result
	for _, ser := range serializable {
		mode := "linearizable"
		if ser {
			mode = "serializable"
		}
		res := Result{Workload: "where", Variant: "etcd get " + mode, Concurrency: c, Conns: k,
			Extra: map[string]float64{"members": float64(len(b.endpoints))}}
		var m merged
		var wg sync.WaitGroup
		cpu := startCPU(b.pids)
		start := time.Now()
		until := start.Add(b.duration)
		rctx, cancel := context.WithDeadline(ctx, until.Add(b.timeout))
		for g := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rec := &recorder{Lat: make([]int64, 0, 1<<14)}
				defer m.Add(rec)
				cli := clients[g%k]
				r := rand.New(rand.NewPCG(uint64(g), 7))
				opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(1)}
				if ser {
					opts = append(opts, clientv3.WithSerializable())
				}
				for time.Now().Before(until) {
					t := time.Now()
					resp, err := cli.Get(rctx, nss[r.IntN(len(nss))], opts...)
					if err == nil && len(resp.Kvs) != 1 {
						err = fmt.Errorf("get: %d keys, want 1", len(resp.Kvs))
					}
					if err != nil {
						rec.Errors++
						rec.LastErr = err
						continue
					}
					rec.Lat = append(rec.Lat, time.Since(t).Nanoseconds())
				}
			}()
		}
		wg.Wait()
		cancel()
		res.Seconds = time.Since(start).Seconds()
		m.Fill(&res)
		cpu.Fill(&res)
		out = append(out, res)
	}
	return out, nil
}

// seed puts one key per namespace under the agent's lease, 64 in flight (not measured).
func (b *bench) seed(ctx context.Context, a *agent, prefixes []string) error {
	ctx, cancel := context.WithTimeout(ctx, 4*b.timeout)
	defer cancel()
	errs := make([]error, len(prefixes))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i, p := range prefixes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, errs[i] = a.cli.Put(ctx, p+a.addr, a.addr, clientv3.WithLease(a.lease))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitCount waits until a serializable count of prefix on cli's member reaches want.
func waitCount(ctx context.Context, cli *clientv3.Client, prefix string, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		gctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := cli.Get(gctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		cancel()
		if err == nil && resp.Count >= want {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%d of %d keys under %s", resp.Count, want, prefix)
			}
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady returns once a put and a serializable get through every member succeed.
func (b *bench) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		last = nil
		for i := range b.endpoints {
			if err := b.probe(i); err != nil {
				last = fmt.Errorf("%s: %w", b.endpoints[i], err)
				break
			}
		}
		if last == nil {
			fmt.Println("etcd ready:", len(b.endpoints), "members")
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("etcd not ready after %s: %w", limit, last)
}

func (b *bench) probe(i int) error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{b.endpoints[i]}, DialTimeout: time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/wsbench/ready", strconv.Itoa(i)); err != nil {
		return err
	}
	_, err = cli.Get(ctx, "/wsbench/ready", clientv3.WithSerializable())
	return err
}
