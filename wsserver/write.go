package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/later"
)

// writeState is the channel's writing side. The writer is the only writer of queued frames:
// a goroutine (writeLoop), or for one batch a handler's goroutine that has just queued its
// reply (writeInline). There is at most one, and only while there is something to write
// (an idle connection holds no writer, nor its stack): see kick. On a corked socket (every accepted
// and dialed one) the replies of inline handlers are held until the reader is about to
// read from the socket again, then written in one batch (the corkConn calls flushHeld).
// mu orders those writes with the writer's.
type writeState struct {
	sendq chan []byte // frames for the writer; full means slow consumer
	// pending is what the writer has to do: the frames pushed to sendq and counted (each is
	// pushed before it is counted, so every counted frame is in sendq), plus the close
	// request once closeWith made it, plus 1 until start. A writer runs exactly while it is
	// above zero: the one that raises it from zero starts one, the writer exits when it
	// brings it back to zero, and one that stops for good (closed, failed, gone) leaves it
	// above zero so that no other starts.
	pending atomic.Int64
	// loop is c.writeLoop, made once per channel: `go c.writeLoop()` would allocate a
	// closure at every start.
	loop      func()
	start     func() // c.startWriter, made once: deferred to a batch's end without allocating
	fromBatch func() // c.writeFromBatch, made once for the same reason
	mu        sync.Mutex
	// The held replies, encoded back to back in heldBuf (no allocation per
	// reply): frame i ends at heldEnds[i]. Guarded by mu.
	heldBuf    []byte
	heldEnds   []int
	heldFrames [][]byte              // scratch for writing them
	err        atomic.Pointer[error] // the write that failed and dropped the socket
}

// writeBatch bounds how many queued frames go out in one system call.
const writeBatch = 128

// maxKeptBuffer is the largest write buffer kept for reuse: a burst's buffer is let go
// rather than held for the connection's life.
const maxKeptBuffer = 256 << 10

var errSlowConsumer = errors.New("send queue full (slow consumer)")

// enqueue hands a reply or abort to the writer without blocking. A full
// queue means the peer sends requests faster than it reads our answers: the
// channel is closed (1008 "slow consumer"). inline: the caller may write it itself
// (see writeInline).
func (c *Channel) enqueue(frame []byte, inline bool) error {
	if c.isDead() {
		return ErrClosed
	}
	select {
	case c.writer.sendq <- frame:
		c.kick(inline)
		return nil
	default:
	}
	// A full queue with a writer that is still writing is a burst, not a slow consumer: wait
	// as long as one write may take. A peer that does not read makes it time out.
	t := time.NewTimer(c.cfg.writeTimeout)
	defer t.Stop()
	select {
	case c.writer.sendq <- frame:
		c.kick(inline)
		return nil
	case <-c.dead:
		return ErrClosed
	case <-t.C:
		if c.closeWith(websocket.StatusPolicyViolation, ReasonSlowConsumer) {
			c.logger().Warn("send queue full, closing", "queue", cap(c.writer.sendq))
		}
		return errSlowConsumer
	}
}

// enqueueNoWait hands a reply to a writer goroutine and returns at once: the caller may be
// answering many connections (an asynchronous handler's callback), so it neither writes to
// the socket nor waits for room in a full queue (a goroutine of its own does that, rarely).
// A writer it has to start starts when b runs (at once on a nil b): the replies queued in
// between, for this connection, leave with it in one write, from b's goroutine when the
// socket takes them at once (writeFromBatch).
func (c *Channel) enqueueNoWait(b *later.Batch, frame []byte) {
	if c.isDead() {
		return
	}
	select {
	case c.writer.sendq <- frame:
		// kick, with the start deferred: while pending is above zero nobody else starts a
		// writer, and this one takes every frame counted by then.
		if c.writer.pending.Add(1) == 1 {
			if b == nil {
				c.startWriter()
			} else {
				b.Do(c.writer.fromBatch)
			}
		}
	default:
		go func() { _ = c.enqueue(frame, true) }()
	}
}

// kick counts one thing more for the writer (a frame the caller has just pushed to sendq,
// or the close request) and makes a writer if none runs: the caller itself when inline
// (writeInline), else a goroutine. Pushing before counting is the hand-off: a writer that
// brings pending to zero has taken every frame counted so far, and the next count makes a
// new writer, which writes after the old one's last write.
func (c *Channel) kick(inline bool) {
	if c.writer.pending.Add(1) != 1 {
		return
	}
	if inline {
		c.writeInline()
	} else {
		c.startWriter()
	}
}

// joinWriter counts a writer among the channel's workers unless teardown began: teardown
// waits for the workers, so none may join after (pending then stays above zero). It also
// reports whether a close was started.
func (c *Channel) joinWriter() (joined, closing bool) {
	c.closing.mu.Lock()
	defer c.closing.mu.Unlock()
	if c.closing.torndown {
		return false, true
	}
	c.workers.Add(1)
	return true, c.closing.started.Load()
}

// startWriter starts a writer goroutine (writeLoop).
func (c *Channel) startWriter() {
	if joined, _ := c.joinWriter(); joined {
		go c.writer.loop()
	}
}

// writeInline makes the calling goroutine (a handler's, which has just queued its reply and
// has nothing else to do) the writer for one batch: a reply on an idle connection then
// leaves without a goroutine start and a switch to it. What is left after that batch, and
// a close, go to a writer goroutine: the caller is not held longer. Not for callers that
// must return on time (Call: a write blocked on a peer that does not read would outlast
// the call's timeout) nor for the reader.
func (c *Channel) writeInline() {
	n := c.writer.pending.Load() // before the close check, as in writeLoop
	joined, closing := c.joinWriter()
	if !joined {
		return
	}
	defer c.workers.Done()
	if c.ctx.Err() != nil {
		return // the connection is gone; pending stays above zero
	}
	if closing || c.writeSome(n) {
		c.startWriter() // the writer stays one: it takes over what is counted
	}
}

// writeFromBatch is the writer made at the end of a batch of callbacks that answered
// this connection (enqueueNoWait). The batch's goroutine writes the replies itself, with
// one write that does not wait for room: a goroutine started for one reply costs more
// than the reply's write does in user space (its start, a scheduling round, its exit; one
// per registration under load, BENCHMARKS.md round 13). What the socket does not take at
// once is left to a writer goroutine, so the batch's goroutine never waits on one peer.
func (c *Channel) writeFromBatch() {
	cc := c.cc
	if cc == nil || cc.raw == nil {
		c.startWriter()
		return
	}
	n := c.writer.pending.Load() // before the close check, as in writeLoop
	joined, closing := c.joinWriter()
	if !joined {
		return
	}
	handedOver := false
	defer func() {
		if !handedOver {
			c.workers.Done()
		}
	}()
	if c.ctx.Err() != nil {
		return // the connection is gone; pending stays above zero
	}
	if closing {
		c.startWriter() // the close handshake is the writer goroutine's (flushAndClose)
		return
	}
	bp := batchPool.Get().(*[][]byte)
	batch := (*bp)[:0]
	c.take(&batch, n)
	taken := int64(len(batch))
	c.writer.mu.Lock()
	batch = c.appendHeld(batch) // replies of inline handlers ride along
	unfinished, err := cc.tryWriteTextFrames(batch)
	c.resetHeld() // the frames are copied into the corkConn's buffer
	c.writer.mu.Unlock()
	clear(batch)
	*bp = batch[:0]
	batchPool.Put(bp)
	switch {
	case err != nil:
		c.writeFailed(err) // pending stays above zero: no writer follows
	case unfinished:
		handedOver = true
		go c.finishWrite(cc, taken)
	case c.writer.pending.Add(-taken) != 0:
		c.startWriter() // queued meanwhile: the writer stays one
	}
}

// finishWrite is the writer goroutine after a write that the socket did not take whole
// (writeFromBatch): it gets the corkConn's lock with the rest in its buffer, and the
// worker count, from the goroutine that wrote the first part. It writes the rest under
// the write timeout, then goes on as the writer.
func (c *Channel) finishWrite(cc *corkConn, taken int64) {
	err := cc.flushLocked(c.cfg.writeTimeout)
	cc.mu.Unlock()
	switch {
	case err != nil:
		c.writeFailed(err)
	case c.writer.pending.Add(-taken) != 0:
		c.writeLoop() // its deferred Done is this worker's
		return
	}
	c.workers.Done()
}

// writeLoop is the writer goroutine. It writes what is counted in pending, in batches,
// and exits once it finds nothing more: a busy connection keeps one writer as long as
// replies keep coming.
func (c *Channel) writeLoop() {
	defer c.workers.Done()
	for {
		// Load before looking for the close request: a counted close request is then seen
		// below, so n counts frames only.
		n := c.writer.pending.Load()
		if c.ctx.Err() != nil {
			return // the connection is gone; pending stays above zero
		}
		select {
		case <-c.closing.req:
			c.flushAndClose()
			return // no data frame after the close frame; pending stays above zero
		default:
		}
		if !c.writeSome(n) {
			return
		}
	}
}

// writeSome writes one batch of at most n queued frames (n counts frames only) and
// reports whether more is counted. On a corked socket the frames of one batch leave in a
// single write (a system call costs more than encoding a reply). After a failed write it
// reports false and leaves pending above zero: the socket is dropped, no writer follows.
func (c *Channel) writeSome(n int64) bool {
	cc := c.cc
	// The batch slice is borrowed while there is something to write: an idle
	// connection holds none.
	bp := batchPool.Get().(*[][]byte)
	batch := (*bp)[:0]
	c.take(&batch, n)
	if cc != nil && len(batch) == 1 {
		// Replies to requests that arrived together are usually still
		// being computed by handler goroutines made runnable by the
		// same read; letting them run first turns several writes into
		// one.
		runtime.Gosched()
		c.take(&batch, c.writer.pending.Load())
	}
	taken := int64(len(batch))
	ok := true
	if cc != nil {
		c.writer.mu.Lock()
		batch = c.appendHeld(batch) // replies of inline handlers ride along
		ok = c.writeCorked(cc, batch)
		c.resetHeld()
		c.writer.mu.Unlock()
	} else {
		for _, f := range batch {
			if ok = c.write(f); !ok {
				break
			}
		}
	}
	clear(batch)
	*bp = batch[:0]
	batchPool.Put(bp)
	// Zero: every counted frame is written, the next kick makes a writer.
	return ok && c.writer.pending.Add(-taken) != 0
}

var batchPool = sync.Pool{New: func() any { b := make([][]byte, 0, writeBatch); return &b }}

// take appends frames from sendq, without blocking, up to writeBatch and up to counted
// (what pending said, including the frames already in batch): taking a frame not yet
// counted would let pending drop below zero, which the hand-off (kick) cannot have.
func (c *Channel) take(batch *[][]byte, counted int64) {
	for int64(len(*batch)) < counted && len(*batch) < writeBatch {
		select {
		case f := <-c.writer.sendq:
			*batch = append(*batch, f)
		default:
			return // the rest of counted is the close request
		}
	}
}

// hold keeps an inline handler's reply for the next flushHeld; a full batch goes
// at once.
func (c *Channel) hold(id int64, res json.RawMessage, err error) {
	c.writer.mu.Lock()
	c.writer.heldBuf = c.appendReply(c.writer.heldBuf, id, res, err)
	c.writer.heldEnds = append(c.writer.heldEnds, len(c.writer.heldBuf))
	full := len(c.writer.heldEnds) >= writeBatch
	c.writer.mu.Unlock()
	if full {
		c.flushHeld()
	}
}

// appendHeld appends the held frames to batch (slices of heldBuf: valid until
// resetHeld). The caller holds writer.mu.
func (c *Channel) appendHeld(batch [][]byte) [][]byte {
	start := 0
	for _, end := range c.writer.heldEnds {
		batch = append(batch, c.writer.heldBuf[start:end:end])
		start = end
	}
	return batch
}

// resetHeld forgets the held frames once written. The caller holds writer.mu.
func (c *Channel) resetHeld() {
	w := &c.writer // a self-assignment through a plain pointer: escape analysis sees c does not escape
	w.heldEnds = w.heldEnds[:0]
	if cap(w.heldBuf) > maxKeptBuffer {
		w.heldBuf = nil
	} else {
		w.heldBuf = w.heldBuf[:0]
	}
}

// mayWait runs when the reader has drained the socket (frameReader.serveRaw): it writes
// the held replies, and reports whether the reader may wait for data without first reading
// once more. That read is there for a reset that came with the data, which TCP_INQ does not
// tell of; a write after it fails and closes the channel. So the reader may wait when
// replies went out, and when an asynchronous handler still owes a reply (an online's,
// from the commit), which is written after this: a request leaves inflight before its
// reply is written. Until then a reset goes unnoticed, which HandleAsync documents.
//
// The reads that do not ask (the top of every read, the library's) call flushHeld alone,
// and the count is read without the lock: a lookup's read pays nothing for it.
func (c *Channel) mayWait() bool {
	if c.flushHeld() {
		return true
	}
	return c.serving.repliesDue.Load() > 0 && !c.isClosing() // a closing channel writes no more replies
}

// flushHeld writes the held replies with one system call. The corkConn calls it
// before every socket read, so the replies to what one read brought leave
// together. While a close is under way the writer's flushAndClose takes them
// (a data frame after the close frame would break the close handshake). It reports
// whether it wrote replies successfully.
func (c *Channel) flushHeld() bool {
	c.writer.mu.Lock()
	defer c.writer.mu.Unlock()
	if len(c.writer.heldEnds) == 0 || c.isClosing() {
		return false
	}
	c.writer.heldFrames = c.appendHeld(c.writer.heldFrames[:0])
	ok := c.writeCorked(c.cc, c.writer.heldFrames) // a failure closes the channel
	clear(c.writer.heldFrames)
	c.resetHeld()
	return ok
}

// writeCorked sends the batch with one write under the write timeout: on the accepting
// end as frames the corkConn writes itself, on a dialing end through the library frame
// by frame into the cork buffer (no socket I/O, so no per-frame deadline context).
func (c *Channel) writeCorked(cc *corkConn, batch [][]byte) bool {
	if cc.server {
		if err := cc.writeTextFrames(batch, c.cfg.writeTimeout); err != nil {
			c.writeFailed(err)
			return false
		}
		return true
	}
	// A dialing end masks its frames with a random key: leave that to the library.
	cc.cork()
	var err error
	for _, f := range batch {
		if err = c.conn.Write(c.ioCtx, websocket.MessageText, f); err != nil {
			break
		}
	}
	if uerr := cc.uncork(c.cfg.writeTimeout); err == nil {
		err = uerr
	}
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// writeFailed drops the connection after a failed write (it is unusable) and
// remembers why, so Err blames the write rather than the peer.
func (c *Channel) writeFailed(err error) {
	if c.ctx.Err() == nil {
		c.logger().Debug("write failed, dropping connection", "err", err)
		c.writer.err.CompareAndSwap(nil, &err)
	}
	c.forceClose()
}

// write writes one frame through the library under the write timeout.
func (c *Channel) write(f []byte) bool {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.writeTimeout)
	err := c.conn.Write(ctx, websocket.MessageText, f)
	cancel()
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// flushAndClose writes what is queued, then does the close handshake.
func (c *Channel) flushAndClose() {
	c.writer.mu.Lock()
	held := c.appendHeld(nil)
	c.writer.heldBuf, c.writer.heldEnds = nil, nil // held keeps the old buffer
	c.writer.mu.Unlock()
	for _, f := range held {
		if !c.write(f) {
			return
		}
	}
	for flushed := false; !flushed; {
		select {
		case f := <-c.writer.sendq:
			if !c.write(f) {
				return
			}
		default:
			flushed = true
		}
	}
	c.closing.mu.Lock()
	code, reason := c.closing.code, c.closing.reason
	c.closing.mu.Unlock()
	if err := c.conn.Close(code, reason); err != nil {
		c.logger().Debug("close handshake", "err", err)
	}
	c.cancel()
}
