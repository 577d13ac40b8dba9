package wsserver

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// hijackRecorder keeps the net.Conn that websocket.Accept hijacks.
type hijackRecorder struct {
	http.ResponseWriter
	nc net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nc, brw, err
	}
	// Everything coder/websocket writes goes through the corkConn, so the
	// channel's writer can send a batch of replies with one system call.
	// net/http hands over a fresh writer on the raw socket; flush it in
	// case, then replace it with one on the corkConn.
	if err := brw.Writer.Flush(); err != nil {
		return nc, brw, err
	}
	cc := &corkConn{Conn: nc, server: true}
	// Bytes the client sent right behind its handshake (an agent says online at once) may
	// already sit in net/http's reader: they are the first frames, read before the socket.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		cc.leftover = append([]byte(nil), b...)
	}
	h.nc = cc
	// Small buffers for the library: data frames go out through writeTextFrames and come
	// in through the frameReader, so it only reads and writes control frames (a header and
	// at most 125 bytes) and, rarely, a frame the frameReader leaves to it, which bufio
	// passes through unbuffered when it is larger. Idle connections are most of a
	// registry's memory: this is ~8 KiB of each.
	br := bufio.NewReaderSize(cc, libraryBufferSize)
	return cc, bufio.NewReadWriter(br, bufio.NewWriterSize(cc, libraryBufferSize)), nil
}

// libraryBufferSize is the size of coder/websocket's read and write buffers on accepted
// connections: a control frame with its header fits.
const libraryBufferSize = 256

// corkConn is the socket under a channel: hijackRecorder puts it in place of an
// accepted connection, Dial wraps the connection it dials. While corked (by the
// channel's writer, around a batch of frames), writes are collected in memory;
// uncork sends them with one write under a deadline. Control frames that
// coder/websocket writes meanwhile (pongs) join the batch in order. On the
// accepting end the writer skips corking: writeTextFrames frames the batch itself.
type corkConn struct {
	net.Conn
	server bool       // the accepting end: frames are not masked (writeTextFrames)
	mu     sync.Mutex // orders writes; held during the socket write
	corked bool
	buf    []byte
	// closeSent: the library wrote a close frame; no data frame may follow it.
	closeSent bool
	// frames, when set, reads the socket and serves plain text frames itself (see
	// frameReader).
	frames *frameReader
	// raw, when set, writes without waiting for room (tryWriteTextFrames).
	raw syscall.RawConn
	// leftover: what the client sent behind its handshake, read before the socket (by the
	// frameReader, which starts with it, or by Read).
	leftover []byte
	// asyncClose: the frameReader serves requests inside the socket's raw read, holding a
	// reference to the descriptor that a plain Close waits for (set before it first reads).
	asyncClose atomic.Bool
	closed     atomic.Bool // Close was called
	// beforeRead runs before every socket read (the channel's flushHeld): what
	// was answered from the bytes of the last read goes out before waiting for more.
	beforeRead func() bool
	// deadline is the write deadline armed on the socket (zero: none). Arming it
	// costs two runtime timer updates per write, so flushes reuse it while at least
	// half the timeout remains (see armWriteDeadline).
	deadline time.Time
}

func (c *corkConn) Read(p []byte) (int, error) {
	if c.frames != nil {
		return c.frames.Read(p)
	}
	if len(c.leftover) > 0 {
		n := copy(p, c.leftover)
		if c.leftover = c.leftover[n:]; len(c.leftover) == 0 {
			c.leftover = nil
		}
		return n, nil
	}
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}

// Close closes the socket. While the frameReader may be serving inside the socket's raw
// read (serveRaw), the close runs on its own goroutine: net's Close waits for the read to
// return, and the closer may be that very reader (a reply write that failed) or hold a
// lock the reader is waiting for (the writer's). That goroutine wakes the read with an
// error at once; the descriptor is released when the read has returned.
func (c *corkConn) Close() error {
	c.closed.Store(true)
	if c.asyncClose.Load() {
		go c.Conn.Close()
		return nil
	}
	return c.Conn.Close()
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The library flushes after every whole frame, and frames it writes while data frames
	// can go through writeTextFrames are control frames (far smaller than its buffer), so
	// each Write here then starts a frame: 0x88 is a close frame (FIN, opcode 8). The
	// library writes data frames only in the channel's flushAndClose, and a chunk of a large
	// one may start with 0x88 too: harmless, as writeTextFrames is not used once closing.
	if len(p) > 0 && p[0] == 0x88 {
		c.closeSent = true
	}
	if c.corked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	// The library bounds its own writes (by context); a deadline armed by an
	// earlier flush may have passed while the connection was idle.
	if !c.deadline.IsZero() {
		_ = c.Conn.SetWriteDeadline(time.Time{})
		c.deadline = time.Time{}
	}
	return c.Conn.Write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// writeTextFrames sends each payload as one unmasked text frame, all with one write under
// the deadline. It stands in for the library's Write on the accepting end, which takes
// channel-based locks and checks a context for every message, a sizeable share of a short
// reply such as where's (BENCHMARKS.md, round 3). Frames written by the library meanwhile
// stay whole and in order.
func (c *corkConn) writeTextFrames(payloads [][]byte, timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return net.ErrClosed
	}
	for _, p := range payloads {
		c.buf = appendTextFrameHeader(c.buf, len(p))
		c.buf = append(c.buf, p...)
	}
	return c.flushLocked(timeout) // the accepting end is never corked: nothing else is pending
}

// tryWriteTextFrames is writeTextFrames for a goroutine that must not wait on this peer
// (writeFromBatch): one write that does not wait for room. When the socket does not take
// it all (its buffer is full, or the last write deadline has passed), it reports
// unfinished and returns with mu still held and the rest in buf: the caller's writer
// finishes the write (flushLocked) and unlocks, so nothing is written in between.
func (c *corkConn) tryWriteTextFrames(payloads [][]byte) (unfinished bool, err error) {
	c.mu.Lock()
	if c.closeSent {
		c.mu.Unlock()
		return false, net.ErrClosed
	}
	for _, p := range payloads {
		c.buf = appendTextFrameHeader(c.buf, len(p))
		c.buf = append(c.buf, p...)
	}
	n, err := writeNoWait(c.raw, c.buf)
	if err == nil && n < len(c.buf) {
		c.buf = c.buf[:copy(c.buf, c.buf[n:])]
		return true, nil
	}
	if cap(c.buf) > maxKeptBuffer {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	c.mu.Unlock()
	return false, err
}

// armWriteDeadline makes sure the next write fails if it takes longer than half to
// all of timeout: a busy connection rearms the socket's deadline once per timeout/2
// rather than twice per write. The caller holds mu.
func (c *corkConn) armWriteDeadline(timeout time.Duration) {
	now := time.Now()
	if !c.deadline.IsZero() && c.deadline.Sub(now) >= timeout/2 {
		return
	}
	c.deadline = now.Add(timeout)
	_ = c.Conn.SetWriteDeadline(c.deadline)
}

// appendTextFrameHeader appends the header of an unmasked, final text frame (RFC 6455 5.2).
func appendTextFrameHeader(b []byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, 0x81, 126, byte(n>>8), byte(n))
	default:
		return append(b, 0x81, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// uncork writes what was collected under the write deadline (armWriteDeadline); a
// later write of the library clears it (Write).
func (c *corkConn) uncork(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked(timeout)
}

// flushLocked writes the collected bytes under the deadline. The caller holds mu.
func (c *corkConn) flushLocked(timeout time.Duration) error {
	if len(c.buf) == 0 {
		return nil
	}
	c.armWriteDeadline(timeout)
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > maxKeptBuffer {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}
