package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

// gen appends one request with the given id to b.
type gen func(b []byte, id int64) []byte

type bench struct {
	cl       *cluster
	keys     *agentKeys
	keyIP    string // "127.0.7." prefix of fake agent identities
	duration time.Duration
	timeout  time.Duration
	log      *slog.Logger
	t0       time.Time
	entry    int    // connect to nodes 0..entry-1 only (0: all); CPU is measured on every node
	on       string // connect only to the node of this role (leader, follower); "" for all
	roles    bool   // register, where: also the CPU per op of the leader, a voter, a non-voter
}

func (b *bench) now() int64 { return int64(time.Since(b.t0)) }

func (b *bench) dial(node int, bufSize int) (*wsConn, error) {
	return dialWS(b.cl.ws(node), b.keys.next(b.keyIP), b.timeout, bufSize)
}

// call sends one request and waits for its reply (setup, not measured).
func (c *wsConn) call(id int64, cmd, ns string, timeout time.Duration) ([]byte, error) {
	if err := c.write(appendRequest(nil, id, cmd, ns)); err != nil {
		return nil, err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	defer c.nc.SetReadDeadline(time.Time{})
	for {
		p, err := c.readMessage(nil)
		if err != nil {
			return nil, err
		}
		if rid, ok, err := parseReply(p); err == nil && rid == id {
			if !ok {
				return p, fmt.Errorf("%s %s: %s", cmd, ns, p)
			}
			return p, nil
		}
	}
}

// pipeline keeps depth requests outstanding on c until the generator's clock
// passes until (ns), then waits for the outstanding ones. Replies that arrive
// together are answered with new requests in one write.
func (b *bench) pipeline(c *wsConn, depth int, until int64, g gen, rec *recorder, firstID int64) (nextID int64, err error) {
	sent := make(map[int64]int64, depth)
	id := firstID
	wbuf := make([]byte, 0, 4096)
	now := b.now()
	for range depth {
		wbuf = g(wbuf, id)
		sent[id] = now
		id++
	}
	if err := c.write(wbuf); err != nil {
		rec.Errors += int64(len(sent))
		return id, err
	}
	wbuf = wbuf[:0]
	_ = c.nc.SetReadDeadline(time.Now().Add(time.Duration(until-b.now()) + b.timeout))
	defer c.nc.SetReadDeadline(time.Time{})
	var scratch []byte
	flush := func() error {
		if len(wbuf) == 0 {
			return nil
		}
		err := c.write(wbuf)
		wbuf = wbuf[:0]
		return err
	}
	for len(sent) > 0 {
		p, err := c.readMessageFlushing(scratch, flush)
		if err != nil {
			rec.Errors += int64(len(sent))
			return id, err
		}
		scratch = p[:0]
		rid, ok, perr := parseReply(p)
		ts, found := sent[rid]
		if perr != nil || !found {
			continue
		}
		delete(sent, rid)
		now := b.now()
		if ok {
			rec.Lat = append(rec.Lat, now-ts)
			if rec.Done != nil {
				rec.Done = append(rec.Done, now)
			}
		} else {
			rec.Errors++
		}
		if now < until {
			wbuf = g(wbuf, id)
			sent[id] = now
			id++
		}
		if c.br.Buffered() == 0 {
			if err := flush(); err != nil {
				rec.Errors += int64(len(sent))
				return id, err
			}
		}
	}
	return id, nil
}

// connectAll dials n connections spread over the nodes (node i%len(nodes)).
func (b *bench) connectAll(n int, nodes []int, bufSize int) ([]*wsConn, error) {
	return b.dialMany(n, func(i int) string { return b.cl.ws(nodes[i%len(nodes)]) }, bufSize)
}

func closeAll(conns []*wsConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// allNodes lists the nodes the generator connects to: every node, the first -entry, or
// the one of the -on role.
func (b *bench) allNodes() []int {
	if b.on != "" {
		return []int{b.roleNode(b.on)}
	}
	n := b.cl.n
	if b.entry > 0 {
		n = min(b.entry, n)
	}
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// runClosed runs a closed-loop workload: conns connections, c requests in
// flight in total, for b.duration; pids are the server processes measured.
func (b *bench) runClosed(workload string, c, nconns int, conns []*wsConn, pids []int, mkGen func(i int) gen) Result {
	res := Result{Workload: workload, Concurrency: c, Conns: nconns, Pattern: patternPipelined}
	var m merged
	var wg sync.WaitGroup
	cpu := startCPU(pids)
	start := b.now()
	until := start + int64(b.duration)
	for i, conn := range conns {
		depth := c / nconns
		if i < c%nconns {
			depth++
		}
		if depth == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{Lat: make([]int64, 0, 1<<14)}
			if _, err := b.pipeline(conn, depth, until, mkGen(i), rec, 0); err != nil {
				b.log.Warn("connection failed", "workload", workload, "err", err)
			}
			m.Add(rec)
		}()
	}
	wg.Wait()
	res.Seconds = float64(b.now()-start) / 1e9
	m.Fill(&res)
	cpu.Fill(&res)
	return res
}

// register: c agents (one connection each, spread over the nodes) each send
// online back to back, cycling over 16 namespaces of their own: every online
// is a raft write (the registry does not skip repeats). Under the agent
// pattern the c onlines in flight rotate over s.conns agents in bursts.
func (b *bench) register(c int, s shape) (Result, error) {
	n := c
	if s.agent() {
		n = s.conns
	}
	conns, err := b.connectAll(n, b.allNodes(), 4096)
	if err != nil {
		return Result{}, err
	}
	defer b.settle(conns)
	mk := func(i int) gen {
		nss := make([]string, 16)
		for j := range nss {
			nss[j] = "bench-reg-" + strconv.Itoa(i) + "-" + strconv.Itoa(j)
		}
		return func(buf []byte, id int64) []byte { return appendRequest(buf, id, "online", nss[id%16]) }
	}
	var roles *roleMeter
	if b.roles {
		roles = b.startRoles()
	}
	var res Result
	if s.agent() {
		res = b.runAgent("register", c, conns, s, b.cl.pids(), mk)
	} else {
		res = b.runClosed("register", c, c, conns, b.cl.pids(), mk)
	}
	roles.fill(&res)
	return res, nil
}

// settle closes connections and gives the cluster a moment to apply their
// deregistrations, so they do not bleed into the next run.
func (b *bench) settle(conns []*wsConn) {
	closeAll(conns)
	time.Sleep(time.Duration(min(len(conns), 1000)) * time.Millisecond / 200)
	time.Sleep(300 * time.Millisecond)
}

// seedNamespaces registers n namespaces from one agent on node and waits
// until every node answers where for the last one.
func (b *bench) seedNamespaces(node, n int, prefix string) (*wsConn, []string, error) {
	c, err := b.dial(node, 0)
	if err != nil {
		return nil, nil, err
	}
	nss := make([]string, n)
	for i := range nss {
		nss[i] = prefix + strconv.Itoa(i)
	}
	rec := &recorder{}
	i := 0
	g := func(buf []byte, id int64) []byte {
		ns := nss[i%n]
		i++
		return appendRequest(buf, id, "online", ns)
	}
	// One pass over the namespaces, 64 in flight.
	if _, err := b.pipelineCount(c, 64, n, g, rec); err != nil || rec.Errors > 0 {
		c.Close()
		return nil, nil, fmt.Errorf("seeding %d namespaces: %d errors, %v", n, rec.Errors, err)
	}
	for node := range b.cl.n {
		if err := b.waitVisible(node, nss[n-1]); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	return c, nss, nil
}

// pipelineCount sends exactly total requests with depth in flight.
func (b *bench) pipelineCount(c *wsConn, depth, total int, g gen, rec *recorder) (int64, error) {
	var sent int
	counted := func(buf []byte, id int64) []byte {
		if sent >= total {
			return buf
		}
		sent++
		return g(buf, id)
	}
	id := int64(0)
	wbuf := make([]byte, 0, 64*96)
	outstanding := 0
	for outstanding < depth && sent < total {
		wbuf = counted(wbuf, id)
		id++
		outstanding++
	}
	if err := c.write(wbuf); err != nil {
		return id, err
	}
	wbuf = wbuf[:0]
	_ = c.nc.SetReadDeadline(time.Now().Add(b.timeout * 4))
	defer c.nc.SetReadDeadline(time.Time{})
	var scratch []byte
	for outstanding > 0 {
		p, err := c.readMessage(scratch)
		if err != nil {
			return id, err
		}
		scratch = p[:0]
		_, ok, perr := parseReply(p)
		if perr != nil {
			continue
		}
		outstanding--
		if !ok {
			rec.Errors++
		}
		if sent < total {
			wbuf = counted(wbuf, id)
			id++
			outstanding++
		}
		if c.br.Buffered() == 0 && len(wbuf) > 0 {
			if err := c.write(wbuf); err != nil {
				return id, err
			}
			wbuf = wbuf[:0]
		}
	}
	return id, nil
}

func (b *bench) waitVisible(node int, ns string) error {
	c, err := b.dial(node, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for id := int64(0); time.Now().Before(deadline); id++ {
		p, err := c.call(id, "where", ns, b.timeout)
		if err != nil {
			return err
		}
		if bytes.Contains(p, []byte(`"data":"`)) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("namespace %s not visible on node%d after 10 s", ns, node)
}

// where: c lookups in flight over k connections spread over the nodes, each
// for a random one of 1000 existing namespaces. Under the agent pattern the
// lookups rotate over s.conns connections in bursts (k is not used).
func (b *bench) where(c, k int, s shape) (Result, error) {
	seed, nss, err := b.seedNamespaces(0, 1000, "bench-where-")
	if err != nil {
		return Result{}, err
	}
	defer b.settle([]*wsConn{seed})
	k = min(k, c)
	if s.agent() {
		k = s.conns
	}
	conns, err := b.connectAll(k, b.allNodes(), s.bufSize())
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	mk := func(i int) gen {
		r := rand.New(rand.NewPCG(uint64(i), 7))
		return func(buf []byte, id int64) []byte {
			return appendRequest(buf, id, "where", nss[r.IntN(len(nss))])
		}
	}
	var roles *roleMeter
	if b.roles {
		roles = b.startRoles()
	}
	var res Result
	if s.agent() {
		res = b.runAgent("where", c, conns, s, b.cl.pids(), mk)
	} else {
		res = b.runClosed("where", c, k, conns, b.cl.pids(), mk)
	}
	roles.fill(&res)
	return res, nil
}

// wherePaced sends lookups at a fixed total rate over k connections (open
// loop, so latency is not hidden by the generator waiting); under the agent
// pattern over s.conns connections, in bursts.
func (b *bench) wherePaced(rate float64, k int, s shape) (Result, error) {
	seed, nss, err := b.seedNamespaces(0, 1000, "bench-where-")
	if err != nil {
		return Result{}, err
	}
	defer b.settle([]*wsConn{seed})
	if s.agent() {
		k = s.conns
	}
	conns, err := b.connectAll(k, b.allNodes(), s.bufSize())
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	res := Result{Workload: "where", Variant: fmt.Sprintf("paced %.0f/s", rate), Conns: k}
	return b.paced(res, conns, rate, s, b.cl.pids(), func(i int) gen {
		r := rand.New(rand.NewPCG(uint64(i), 9))
		return func(buf []byte, id int64) []byte {
			return appendRequest(buf, id, "where", nss[r.IntN(len(nss))])
		}
	}), nil
}

// pacedConn is one connection of a paced run: its writer records what it sent, its reader
// matches the replies.
type pacedConn struct {
	conn        *wsConn
	mu          sync.Mutex
	sent        map[int64]int64 // id -> time sent (ns since t0)
	writerDone  atomic.Bool
	inflightMax *atomic.Int64
}

// noteInflight records the most requests in flight on one connection; call with mu held.
func (pc *pacedConn) noteInflight() {
	pc.inflightMax.Store(max(pc.inflightMax.Load(), int64(len(pc.sent))))
}

// paced sends requests made by mkGen(i) on conns[i] at a fixed total rate (open loop, so
// latency is not hidden by the generator waiting); pids are the server processes measured.
// Under the agent pattern each connection sends bursts of s.inflight requests, one write each.
func (b *bench) paced(res Result, conns []*wsConn, rate float64, s shape, pids []int, mkGen func(i int) gen) Result {
	k := len(conns)
	var m merged
	var wg sync.WaitGroup
	cpu := startCPU(pids)
	start := b.now()
	until := start + int64(b.duration)
	perConn := rate / float64(k)
	var inflightMax atomic.Int64
	for i, conn := range conns {
		wg.Add(2)
		pc := &pacedConn{conn: conn, sent: make(map[int64]int64), inflightMax: &inflightMax}
		rec := &recorder{Lat: make([]int64, 0, 1<<14)}
		go func() {
			defer wg.Done()
			defer func() {
				pc.mu.Lock()
				pc.writerDone.Store(true)
				if len(pc.sent) == 0 { // the reader may be blocked with nothing to come
					_ = conn.nc.SetReadDeadline(time.Now())
				}
				pc.mu.Unlock()
			}()
			if s.agent() {
				b.agentWriter(pc, mkGen(i), s, i, k, start, until, perConn, uint64(start))
			} else {
				b.pipelinedWriter(pc, mkGen(i), start, until, perConn)
			}
		}()
		go func() {
			defer wg.Done()
			defer m.Add(rec)
			b.pacedReader(pc, rec)
		}()
	}
	wg.Wait()
	res.Seconds = float64(b.now()-start) / 1e9
	if s.agent() {
		res.Extra = map[string]float64{"burst": float64(max(1, s.inflight))}
	}
	m.Fill(&res)
	cpu.Fill(&res)
	res.Concurrency = int(inflightMax.Load())
	res.Note = "concurrency = most requests in flight on one connection"
	s.tag(&res)
	return res
}

// pipelinedWriter sleeps until the next request is due, then sends what is owed in one write.
func (b *bench) pipelinedWriter(pc *pacedConn, g gen, start, until int64, perConn float64) {
	var id int64
	buf := make([]byte, 0, 4096)
	// Sleeping until each due time, rather than a 1 ms ticker per connection,
	// keeps the generator's own wake-ups (64,000/s with 64 tickers) out of the
	// latencies at low rates; a late wake-up sends everything owed at once.
	for {
		due := start + int64(float64(id+1)/perConn*1e9)
		if d := time.Duration(due - b.now()); d > 0 {
			time.Sleep(d)
		}
		now := b.now()
		if now >= until {
			return
		}
		owed := int64(float64(now-start)/1e9*perConn) - id
		if owed <= 0 {
			continue
		}
		buf = buf[:0]
		pc.mu.Lock()
		for range owed {
			buf = g(buf, id)
			pc.sent[id] = now
			id++
		}
		pc.noteInflight()
		pc.mu.Unlock()
		if err := pc.conn.write(buf); err != nil {
			return
		}
	}
}

// pacedReader matches replies to what the writer sent until the writer is done and nothing
// is outstanding.
func (b *bench) pacedReader(pc *pacedConn, rec *recorder) {
	conn := pc.conn
	_ = conn.nc.SetReadDeadline(time.Now().Add(b.duration + b.timeout))
	var scratch []byte
	for {
		pc.mu.Lock()
		n := len(pc.sent)
		pc.mu.Unlock()
		if n == 0 && pc.writerDone.Load() {
			return
		}
		p, err := conn.readMessage(scratch)
		if err != nil {
			pc.mu.Lock()
			if !pc.writerDone.Load() || len(pc.sent) > 0 {
				rec.Errors += int64(len(pc.sent))
			}
			pc.mu.Unlock()
			return
		}
		scratch = p[:0]
		rid, ok, perr := parseReply(p)
		if perr != nil {
			continue
		}
		now := b.now()
		pc.mu.Lock()
		ts, found := pc.sent[rid]
		delete(pc.sent, rid)
		last := len(pc.sent) == 0 && pc.writerDone.Load()
		pc.mu.Unlock()
		if found {
			if ok {
				rec.Lat = append(rec.Lat, now-ts)
			} else {
				rec.Errors++
			}
		}
		if last {
			return
		}
	}
}

// fetch: c concurrent callers of an echo agent, either directly over a
// channel of our own (variant direct) or through POST /v1/fetch on a node.
func (b *bench) fetch(c int, variant string, viaNode int, quiet *slog.Logger) (Result, error) {
	ctx := context.Background()
	agent, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registry: b.cl.ws(0), Listen: b.cl.host + ":0", Advertise: b.cl.host, Logger: quiet,
	})
	if err != nil {
		return Result{}, err
	}
	defer agent.Close()
	agent.Handle("ws", "/echo", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return props, nil
	})
	ns := "bench-echo-" + strconv.Itoa(rand.IntN(1e6))
	if err := agent.Online(ctx, ns); err != nil {
		return Result{}, err
	}
	for i := range b.cl.n {
		if err := b.waitVisible(i, ns); err != nil {
			return Result{}, err
		}
	}
	props := json.RawMessage(`[1,"a"]`)
	var call func() error
	switch variant {
	case "direct":
		ch, err := wsserver.Dial(ctx, agent.Addr(), b.keys.next(b.keyIP), wsserver.DialConfig{ChannelConfig: wsserver.ChannelConfig{Logger: quiet}})
		if err != nil {
			return Result{}, err
		}
		defer ch.Close(1000, "")
		call = func() error {
			r, err := ch.Call(ctx, "ws", "/echo", props, b.timeout)
			if err == nil && !bytes.Equal(r, props) {
				err = fmt.Errorf("echo returned %s", r)
			}
			return err
		}
	default:
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c, DisableCompression: true, Proxy: nil}}
		defer hc.CloseIdleConnections()
		url := "http://" + b.cl.http(viaNode) + "/v1/fetch/" + ns + "/echo?timeout=" + strconv.Itoa(int(b.timeout.Milliseconds()))
		call = func() error {
			resp, err := hc.Post(url, "application/json", bytes.NewReader(props))
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != 200 || !bytes.Equal(bytes.TrimSpace(body), props)) {
				err = fmt.Errorf("fetch: HTTP %d %s", resp.StatusCode, body)
			}
			return err
		}
	}
	// Warm up the connections and the node's channel to the agent.
	for range 10 {
		if err := call(); err != nil {
			return Result{}, fmt.Errorf("fetch warm-up: %w", err)
		}
	}
	res := Result{Workload: "fetch", Variant: variant, Concurrency: c, Conns: 1}
	if variant != "direct" {
		res.Conns = c
	}
	var m merged
	var wg sync.WaitGroup
	var lastErr atomic.Pointer[error]
	cpu := startCPU(b.cl.pids())
	start := b.now()
	until := start + int64(b.duration)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{Lat: make([]int64, 0, 1<<12)}
			for b.now() < until {
				t := b.now()
				if err := call(); err != nil {
					rec.Errors++
					lastErr.Store(&err)
					continue
				}
				rec.Lat = append(rec.Lat, b.now()-t)
			}
			m.Add(rec)
		}()
	}
	wg.Wait()
	res.Seconds = float64(b.now()-start) / 1e9
	m.Fill(&res)
	cpu.Fill(&res)
	if e := lastErr.Load(); e != nil {
		res.Note = "last error: " + (*e).Error()
	}
	return res, nil
}

// roleNode is the index of the leader, or of the first follower, by node 0's view of the
// cluster; node 0 when it cannot be read (said on stderr).
func (b *bench) roleNode(role string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := b.cl.View(ctx, b.cl.Nodes[0])
	if err != nil || v.Leader == "" {
		b.log.Warn("roles unknown: using node 0", "role", role, "err", err)
		return 0
	}
	for i, nd := range b.cl.Nodes {
		if (nd.ID == v.Leader) == (role == "leader") {
			return i
		}
	}
	return 0
}
