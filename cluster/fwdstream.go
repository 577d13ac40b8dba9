package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
)

// The forward stream: a follower's forwarded batches go to the leader over one persistent
// peer connection (kind 'F'), each as a frame with a call id, answered by a frame with the
// same id, any number in flight. It replaces an HTTP/1.1 request per batch, whose headers,
// parsing and goroutine hand-offs on both sides were ~9% of a three-node cluster's CPU per
// registration under load (BENCHMARKS.md, round 10); the leader queues each call's batch
// without a goroutine and the answers that are ready together leave in one write. A leader
// that refuses the kind (a build from before it) is asked over HTTP, as before.
//
// A frame is a 4-byte big-endian length of what follows, an 8-byte call id, and the body:
// a call's is the batch as encodeBatch writes it, an answer's is proposeReply as JSON.

// maxForwardFrame bounds a frame's length, as the HTTP path bounds its body.
const maxForwardFrame = 32 << 20

const fwdHeaderLen = 12

// fwdRefusedFor is how long a leader that refused the stream is asked over HTTP before the
// stream is tried again (it may have been upgraded meanwhile).
const fwdRefusedFor = time.Minute

// errFwdBroken ends the calls in flight on a stream that failed; they are retried.
var errFwdBroken = errors.New("forward stream to the leader broke")

// errBatchTooLarge refuses a batch no forward can carry; retrying cannot help.
var errBatchTooLarge = errors.New("batch too large to forward")

// monoStart anchors the streams' clock readings: durations since it are monotonic, where
// a stored wall-clock time would make a clock step break a live stream or keep a dead one.
var monoStart = time.Now()

// fwdClient holds a follower's forward streams, one per leader address.
type fwdClient struct {
	layer *streamLayer

	mu      sync.Mutex
	streams map[string]*fwdStream
	refused map[string]time.Time // address -> until when it is asked over HTTP
	closed  bool

	viaStream, viaHTTP atomic.Uint64 // calls made each way (tests and diagnostics)
}

func newFwdClient(layer *streamLayer) *fwdClient {
	return &fwdClient{layer: layer, streams: map[string]*fwdStream{}, refused: map[string]time.Time{}}
}

// call sends body to the leader at addr and waits for its answer. ok false: the leader does
// not speak the stream, ask it over HTTP.
func (c *fwdClient) call(ctx context.Context, addr string, body []byte) (reply proposeReply, ok bool, err error) {
	s, ok, err := c.stream(ctx, addr)
	if !ok {
		c.viaHTTP.Add(1)
	}
	if !ok || err != nil {
		return proposeReply{}, ok, err
	}
	c.viaStream.Add(1)
	reply, err = s.call(ctx, body)
	return reply, true, err
}

func (c *fwdClient) stream(ctx context.Context, addr string) (*fwdStream, bool, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, true, ErrClosed
	}
	if s := c.streams[addr]; s != nil {
		c.mu.Unlock()
		return s, true, nil
	}
	if until, ok := c.refused[addr]; ok {
		if time.Now().Before(until) {
			c.mu.Unlock()
			return nil, false, nil
		}
		delete(c.refused, addr)
	}
	c.mu.Unlock()

	// Dialed outside the lock, so that closing never waits for a dial to a leader that
	// vanished; two callers dialing at once is rare (the forwarder has one call in flight)
	// and the second connection is closed below.
	dctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	conn, err := c.layer.dial(dctx, addr, kindForward)
	var retired []*fwdStream
	defer func() { // after the unlock below: closing a stream takes c.mu
		for _, s := range retired {
			s.retire()
		}
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(err, errPeerRefused) {
		// A wrong key is refused on every kind and the HTTP call will say so; an older
		// build refuses only this kind.
		c.refused[addr] = time.Now().Add(fwdRefusedFor)
		return nil, false, nil
	}
	if err != nil {
		return nil, true, err
	}
	if c.closed {
		conn.Close()
		return nil, true, ErrClosed
	}
	if s := c.streams[addr]; s != nil {
		conn.Close()
		return s, true, nil
	}
	// A new leader: streams to former ones close once their calls are answered, rather
	// than idle until this node stops.
	for _, old := range c.streams {
		retired = append(retired, old)
	}
	s := &fwdStream{conn: conn, pending: map[uint64]chan fwdAnswer{}}
	s.lastRead.Store(int64(time.Since(monoStart)))
	s.onBroken = func() {
		c.mu.Lock()
		if c.streams[addr] == s {
			delete(c.streams, addr)
		}
		c.mu.Unlock()
	}
	c.streams[addr] = s
	go s.readLoop()
	return s, true, nil
}

func (c *fwdClient) close() {
	c.mu.Lock()
	c.closed = true
	streams := c.streams
	c.streams = map[string]*fwdStream{}
	c.mu.Unlock()
	for _, s := range streams {
		s.fail(ErrClosed)
	}
}

// fwdStream is one connection to a leader and the calls in flight on it.
type fwdStream struct {
	conn     net.Conn
	onBroken func()

	wmu sync.Mutex // one frame written at a time

	lastRead atomic.Int64 // time.Since(monoStart) at the last answer read (or at the dial)
	// answerTimeout is how long a call waits for its answer (0: peerCallTimeout; tests).
	answerTimeout time.Duration

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan fwdAnswer
	err     error // why the stream broke; nothing is sent after
	retired bool  // the leader changed: close once nothing is pending
}

// errFwdRetired closes a stream to a former leader once no call is pending on it; a call
// that took the stream just before ends with it and is retried.
var errFwdRetired = errors.New("the leader changed")

func (s *fwdStream) retire() {
	s.mu.Lock()
	s.retired = true
	idle := len(s.pending) == 0
	s.mu.Unlock()
	if idle {
		s.fail(errFwdRetired)
	}
}

// closeIfRetired closes a retired stream whose last call has ended.
func (s *fwdStream) closeIfRetired() {
	s.mu.Lock()
	idle := s.retired && s.err == nil && len(s.pending) == 0
	s.mu.Unlock()
	if idle {
		s.fail(errFwdRetired)
	}
}

type fwdAnswer struct {
	reply proposeReply
	err   error
}

func (s *fwdStream) call(ctx context.Context, body []byte) (proposeReply, error) {
	if len(body) > maxForwardFrame-8 {
		// Sent, it would break the stream for every call in flight: the leader drops a
		// connection whose frame is too long.
		return proposeReply{}, fmt.Errorf("%w: %d bytes, a forward carries %d", errBatchTooLarge, len(body), maxForwardFrame-8)
	}
	ch := make(chan fwdAnswer, 1)
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return proposeReply{}, err
	}
	s.next++
	id := s.next
	s.pending[id] = ch
	s.mu.Unlock()

	frame := make([]byte, fwdHeaderLen, fwdHeaderLen+len(body))
	binary.BigEndian.PutUint32(frame, uint32(8+len(body)))
	binary.BigEndian.PutUint64(frame[4:], id)
	frame = append(frame, body...)
	s.wmu.Lock()
	s.conn.SetWriteDeadline(time.Now().Add(peerCallTimeout))
	_, err := s.conn.Write(frame)
	s.wmu.Unlock()
	if err != nil {
		s.fail(err)
	}

	wait := s.answerTimeout
	if wait == 0 {
		wait = peerCallTimeout
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case a := <-ch:
		return a.reply, a.err
	case <-ctx.Done():
		s.forget(id)
		return proposeReply{}, ctx.Err()
	case <-timer.C:
		// A leader that answered nothing at all for this long is gone: the stream breaks
		// and the next call dials whoever leads. One that answers other calls is alive,
		// and only this call gives up (it is retried; the request ids make that safe).
		if time.Since(monoStart)-time.Duration(s.lastRead.Load()) >= wait {
			s.fail(fmt.Errorf("no answer in %v", wait))
			a := <-ch
			return a.reply, a.err
		}
		s.forget(id)
		return proposeReply{}, fmt.Errorf("no answer to this call in %v", wait)
	}
}

func (s *fwdStream) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id) // nil once the stream failed: a no-op then
	s.mu.Unlock()
	s.closeIfRetired()
}

// fail breaks the stream once: the connection closes and every call in flight ends.
func (s *fwdStream) fail(cause error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = fmt.Errorf("%w: %v", errFwdBroken, cause)
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.conn.Close()
	if s.onBroken != nil {
		s.onBroken()
	}
	for _, ch := range pending {
		ch <- fwdAnswer{err: s.err}
	}
}

func (s *fwdStream) readLoop() {
	r := bufio.NewReaderSize(s.conn, 16<<10)
	for {
		id, body, err := readFwdFrame(r)
		if err != nil {
			s.fail(err)
			return
		}
		s.lastRead.Store(int64(time.Since(monoStart)))
		var a fwdAnswer
		if err := json.Unmarshal(body, &a.reply); err != nil {
			s.fail(fmt.Errorf("answer is not JSON: %w", err))
			return
		}
		s.mu.Lock()
		ch := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if ch != nil {
			ch <- a
		}
		s.closeIfRetired()
	}
}

func readFwdFrame(r *bufio.Reader) (uint64, []byte, error) {
	var head [fwdHeaderLen]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n < 8 || n > maxForwardFrame {
		return 0, nil, fmt.Errorf("forward frame of %d bytes (8-%d)", n, maxForwardFrame)
	}
	body := make([]byte, n-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint64(head[4:]), body, nil
}

// fwdServer is the leader's side: it serves every follower's stream.
type fwdServer struct {
	n *Node

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func (n *Node) startForwardServer() {
	f := &fwdServer{n: n, conns: map[net.Conn]struct{}{}}
	n.fwdServer = f
	ln := faultListener{n.layer.peers.forward, n.layer}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // the peer port closed
			}
			if !f.track(conn) {
				conn.Close()
				return
			}
			f.wg.Add(1)
			go f.serve(conn)
		}
	}()
}

func (f *fwdServer) track(conn net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[conn] = struct{}{}
	return true
}

func (f *fwdServer) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// serve reads one follower's calls; answers go out through a writer of their own, so a
// slow follower holds up neither the batch that answers it nor its own reads.
func (f *fwdServer) serve(conn net.Conn) {
	defer f.wg.Done()
	w := &fwdWriter{conn: conn, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.loop()
	defer func() {
		conn.Close()
		close(w.done)
		f.mu.Lock()
		delete(f.conns, conn)
		f.mu.Unlock()
	}()
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		id, body, err := readFwdFrame(r)
		if err != nil {
			return
		}
		f.propose(id, body, w)
	}
}

// propose queues one forwarded batch as handlePropose does, without a goroutine when the
// batcher takes it at once.
func (f *fwdServer) propose(id uint64, body []byte, w *fwdWriter) {
	n := f.n
	cmd, err := fsm.Decode(body)
	if err != nil {
		w.answer(id, proposeReply{Error: err.Error()})
		return
	}
	cmds := []fsm.Command{cmd}
	if b, ok := cmd.(fsm.Batch); ok {
		cmds = b.Commands
	}
	if !n.IsLeader() {
		w.answer(id, proposeReply{Error: ErrNotLeader.Error(), Retry: true})
		return
	}
	answer := func(index uint64, errs []error, err error) {
		if err != nil {
			w.answer(id, proposeReply{Error: err.Error(), Retry: true})
			return
		}
		w.answer(id, proposeReply{Index: index, Results: encodeResults(errs)})
	}
	queued := n.batcher.proposeAsyncFrom(cmds, true, func(_ *later.Batch, r proposalResult) {
		answer(r.index, r.errs, r.err)
	})
	if !queued {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), peerCallTimeout)
			defer cancel()
			answer(n.batcher.proposeFrom(ctx, cmds, true))
		}()
	}
}

// fwdWriter sends a stream's answers: those that are ready together leave in one write.
type fwdWriter struct {
	conn net.Conn
	wake chan struct{}
	done chan struct{}

	mu  sync.Mutex
	buf []byte
}

func (w *fwdWriter) answer(id uint64, reply proposeReply) {
	body, err := json.Marshal(reply)
	if err != nil {
		body, _ = json.Marshal(proposeReply{Error: "encode answer: " + err.Error()})
	}
	w.mu.Lock()
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(8+len(body)))
	w.buf = binary.BigEndian.AppendUint64(w.buf, id)
	w.buf = append(w.buf, body...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *fwdWriter) loop() {
	var out []byte
	for {
		select {
		case <-w.wake:
		case <-w.done:
			return
		}
		w.mu.Lock()
		out, w.buf = w.buf, out[:0]
		w.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		w.conn.SetWriteDeadline(time.Now().Add(peerCallTimeout))
		if _, err := w.conn.Write(out); err != nil {
			w.conn.Close() // the reader ends, and with it this writer
			return
		}
	}
}
