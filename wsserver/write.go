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
)

// writeState is the channel's writing side. The writer goroutine (writeLoop) is the only
// writer of queued frames; on a corked socket (every accepted and dialed one) the replies
// of inline handlers are held until the reader is about to read from the socket again,
// then written in one batch (the corkConn calls flushHeld). mu orders those writes with
// the writer's.
type writeState struct {
	sendq chan []byte // frames for the writer; full means slow consumer
	mu    sync.Mutex
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
// channel is closed (1008 "slow consumer").
func (c *Channel) enqueue(frame []byte) error {
	if c.isDead() {
		return ErrClosed
	}
	select {
	case c.writer.sendq <- frame:
		return nil
	default:
	}
	// A full queue with a writer that is still writing is a burst, not a slow consumer: wait
	// as long as one write may take. A peer that does not read makes it time out.
	t := time.NewTimer(c.cfg.writeTimeout)
	defer t.Stop()
	select {
	case c.writer.sendq <- frame:
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

// writeLoop is the only writer of data frames. It drains everything queued
// before blocking again; on a corked socket the frames of one batch
// leave in a single write (a system call costs more than encoding a reply).
func (c *Channel) writeLoop() {
	defer c.workers.Done()
	cc := c.cc
	for {
		var first []byte
		select {
		case <-c.ctx.Done():
			return
		case <-c.closing.req:
			c.flushAndClose()
			return
		case first = <-c.writer.sendq:
		}
		// The batch slice is borrowed while there is something to write: an idle
		// connection holds none.
		bp := batchPool.Get().(*[][]byte)
		batch := append((*bp)[:0], first)
		c.drain(&batch)
		if cc != nil && len(batch) == 1 {
			// Replies to requests that arrived together are usually still
			// being computed by handler goroutines made runnable by the
			// same read; letting them run first turns several writes into
			// one.
			runtime.Gosched()
			c.drain(&batch)
		}
		if cc != nil {
			c.writer.mu.Lock()
			batch = c.appendHeld(batch) // replies of inline handlers ride along
			ok := c.writeCorked(cc, batch)
			c.resetHeld()
			c.writer.mu.Unlock()
			if !ok {
				return
			}
			clear(batch)
			*bp = batch[:0]
			batchPool.Put(bp)
			continue
		}
		for i, f := range batch {
			if !c.write(f) {
				return
			}
			batch[i] = nil
		}
		*bp = batch[:0]
		batchPool.Put(bp)
	}
}

var batchPool = sync.Pool{New: func() any { b := make([][]byte, 0, writeBatch); return &b }}

// drain appends what is queued, without blocking, up to writeBatch frames.
func (c *Channel) drain(batch *[][]byte) {
	for len(*batch) < writeBatch {
		select {
		case f := <-c.writer.sendq:
			*batch = append(*batch, f)
		default:
			return
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

// flushHeld writes the held replies with one system call. The corkConn calls it
// before every socket read, so the replies to what one read brought leave
// together. While a close is under way the writer's flushAndClose takes them
// (a data frame after the close frame would break the close handshake).
func (c *Channel) flushHeld() {
	c.writer.mu.Lock()
	defer c.writer.mu.Unlock()
	if len(c.writer.heldEnds) == 0 || c.isClosing() {
		return
	}
	c.writer.heldFrames = c.appendHeld(c.writer.heldFrames[:0])
	c.writeCorked(c.cc, c.writer.heldFrames) // a failure closes the channel
	clear(c.writer.heldFrames)
	c.resetHeld()
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
