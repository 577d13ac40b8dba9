package main

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// Generator patterns: how the fake agents put their requests on the wire.
const (
	// patternPipelined is the generator's own shape: one goroutine per connection keeps its
	// requests in flight, the requests made by replies that arrived together leave in one
	// write, and every frame is masked with the zero key. Cheapest for the generator.
	patternPipelined = "pipelined"
	// patternAgent is what an iocore agent does: every request is its own frame write (its
	// own system call) with a fresh random mask key, from many connections with a few
	// requests in flight each.
	patternAgent = "agent"

	defaultAgentConns    = 1000 // -conns
	defaultAgentInflight = 4    // -inflight
)

// shape is the generator pattern of a run and, for the agent pattern, its connections and
// the requests one agent connection has in flight at once.
type shape struct {
	pattern  string
	conns    int
	inflight int
}

func (s shape) agent() bool { return s.pattern == patternAgent }

// bufSize is the read buffer of a connection: a thousand agents need less than 16 KiB each.
func (s shape) bufSize() int {
	if s.agent() {
		return 4096
	}
	return 0
}

// tag names the pattern in a result: the agent pattern is appended to the variant (with the
// requests in flight per connection when they are not the default), so the table tells the
// rows apart; pipelined rows keep the variants they always had.
func (s shape) tag(res *Result) {
	res.Pattern = s.pattern
	if s.agent() {
		res.Variant = joinWords(res.Variant, patternAgent)
		if s.inflight != defaultAgentInflight {
			res.Variant += " " + strconv.Itoa(s.inflight) + "/conn"
		}
	}
}

// joinWords joins two parts of a variant with a space, leaving out an empty one.
func joinWords(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + " " + b
}

// maskFrame gives one client frame built by appendFrame (zero key) the mask key and masks
// its payload in place.
func maskFrame(frame []byte, key uint32) {
	off := 2
	switch frame[1] & 0x7f {
	case 126:
		off += 2
	case 127:
		off += 8
	}
	k := [4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}
	copy(frame[off:off+4], k[:])
	p := frame[off+4:]
	for i := range p {
		p[i] ^= k[i&3]
	}
}

// dialMany dials n connections, connection i to target(i), 64 at a time.
func (b *bench) dialMany(n int, target func(i int) string, bufSize int) ([]*wsConn, error) {
	conns := make([]*wsConn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = dialWS(target(i), b.keys.next(b.keyIP), b.timeout, bufSize)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

// agentConn is one agent connection of the agent pattern, owned by one worker at a time.
type agentConn struct {
	c    *wsConn
	g    gen
	next int64 // the next request id on this connection
}

// runAgent is runClosed under the agent pattern: c requests in flight in total, as bursts of
// s.inflight requests (the last worker's smaller when c is not a multiple of it) from one agent
// connection at a time. A burst's requests each leave in their own write with their own mask
// key; when all their replies are in, the connection goes to the back of the queue and the
// worker takes the next one, so the bursts rotate over every connection (1,000 connections at
// c=256: 64 agents busy at any moment, each waiting ~15 bursts between two of its own).
// pids are the server processes measured.
func (b *bench) runAgent(workload string, c int, conns []*wsConn, s shape, pids []int, mkGen func(i int) gen) Result {
	burst := max(1, min(s.inflight, c))
	workers := min((c+burst-1)/burst, len(conns))
	sizes := make([]int, workers)
	left := c
	for w := range sizes {
		sizes[w] = min(burst, left)
		left -= sizes[w]
	}
	res := Result{Workload: workload, Concurrency: c - left, Conns: len(conns),
		Extra: map[string]float64{"inflight_per_conn": float64(burst), "busy_conns": float64(workers)}}
	s.tag(&res)
	free := make(chan *agentConn, len(conns))
	for i, conn := range conns {
		free <- &agentConn{c: conn, g: mkGen(i)}
	}
	var m merged
	var wg sync.WaitGroup
	cpu := startCPU(pids)
	start := b.now()
	until := start + int64(b.duration)
	deadline := time.Now().Add(b.duration + b.timeout)
	for _, conn := range conns {
		_ = conn.nc.SetReadDeadline(deadline)
	}
	for w, n := range sizes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{Lat: make([]int64, 0, 1<<14)}
			defer m.Add(rec)
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start)))
			ids := make([]int64, n)
			sentAt := make([]int64, n)
			var buf, scratch []byte
			for b.now() < until {
				ac := <-free
				for j := range n {
					ids[j] = ac.next
					buf = ac.g(buf[:0], ac.next)
					ac.next++
					maskFrame(buf, rng.Uint32())
					sentAt[j] = b.now()
					if err := ac.c.write(buf); err != nil {
						// A failed connection is not handed back; this worker stops, so the
						// others never wait for a connection that cannot come.
						rec.Errors += int64(n)
						b.log.Warn("connection failed", "workload", workload, "err", err)
						return
					}
				}
				for got := 0; got < n; {
					p, err := ac.c.readMessage(scratch)
					if err != nil {
						rec.Errors += int64(n - got)
						b.log.Warn("connection failed", "workload", workload, "err", err)
						return
					}
					scratch = p[:0]
					rid, ok, perr := parseReply(p)
					if perr != nil {
						continue
					}
					j := 0
					for j < n && ids[j] != rid {
						j++
					}
					if j == n {
						continue
					}
					ids[j] = -1
					got++
					if ok {
						rec.Lat = append(rec.Lat, b.now()-sentAt[j])
					} else {
						rec.Errors++
					}
				}
				free <- ac
			}
		}()
	}
	wg.Wait()
	res.Seconds = float64(b.now()-start) / 1e9
	m.Fill(&res)
	cpu.Fill(&res)
	for _, conn := range conns {
		_ = conn.nc.SetReadDeadline(time.Time{})
	}
	return res
}

// agentWriter is the writer of one connection in a paced run under the agent pattern: every
// period it sends a burst of s.inflight requests, each its own write with its own mask key.
// Connection i of k starts i/k of a period late, so the bursts of all the connections are
// spread evenly over time instead of arriving together.
func (b *bench) agentWriter(pc *pacedConn, g gen, s shape, i, k int, start, until int64, perConn float64, seed uint64) {
	burst := max(1, s.inflight)
	period := float64(burst) / perConn * 1e9
	phase := start + int64(period*float64(i)/float64(k))
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	var id int64
	var buf []byte
	for turn := int64(0); ; turn++ {
		due := phase + int64(float64(turn)*period)
		if d := time.Duration(due - b.now()); d > 0 {
			time.Sleep(d)
		}
		if b.now() >= until {
			return
		}
		// A late wake-up sends every burst owed, each request still its own write.
		owed := int64(float64(b.now()-phase)/period) + 1 - turn
		for range max(owed, 1) * int64(burst) {
			buf = g(buf[:0], id)
			maskFrame(buf, rng.Uint32())
			pc.mu.Lock()
			pc.sent[id] = b.now()
			pc.noteInflight()
			pc.mu.Unlock()
			id++
			if err := pc.conn.write(buf); err != nil {
				return
			}
		}
		turn += max(owed, 1) - 1
	}
}
