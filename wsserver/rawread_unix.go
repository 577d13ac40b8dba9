//go:build unix

package wsserver

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// serveRaw reads and serves fresh frames from inside the socket's raw read, until a frame
// must be handed to the library (its first bytes are copied to p, their count returned),
// a frame is incomplete (it is left in carry for Read to finish) or the socket fails.
//
// Why inside: Go's Read resets the socket's readiness before it reads, so a reader that
// took everything there was still pays one more read, which finds nothing, before it
// parks: on this kind of machine ~1.3 µs, a read in three for a connection whose requests
// come in bursts (BENCHMARKS.md, round 12). Within one raw read the readiness is kept
// between calls of the callback, so after a read that drained the socket the callback
// answers what came and asks to wait, and the next read comes only when data has arrived.
//
// The callback holds a reference to the descriptor while it serves, and net's Close waits
// for it: the corkConn closes the socket on another goroutine (see corkConn.Close).
func (fr *frameReader) serveRaw(p []byte) (int, error) {
	var k int
	var rerr error
	flushed := false // beforeRead already ran for the read the callback is called for
	err := fr.raw.Read(func(fd uintptr) bool {
		for {
			if fr.beforeRead != nil && !flushed {
				fr.beforeRead()
			}
			flushed = false
			pooled := readBufPool.Get().(*[]byte)
			buf := *pooled
			n, errno := syscall.Read(int(fd), buf)
			if errno != nil || n <= 0 {
				readBufPool.Put(pooled)
				switch {
				case errno == syscall.EINTR:
					continue
				case errno == syscall.EAGAIN:
					return false // nothing yet (a readiness that a read before took): wait
				case errno != nil:
					rerr = fr.readError(errno)
				default:
					rerr = io.EOF
				}
				return true
			}
			used, _ := fr.scan(buf[:n])
			switch {
			case fr.pass > 0: // hand over the frame at used, keep what follows it
				k = min(fr.pass, n-used, len(p))
				if used+k < n {
					fr.carry = append([]byte(nil), buf[used+k:n]...)
				}
				copy(p, buf[used:used+k])
				fr.pass -= k
			case used < n: // an incomplete frame: Read reads the rest behind it
				fr.carry = append([]byte(nil), buf[used:n]...)
			}
			readBufPool.Put(pooled)
			if k > 0 || fr.carry != nil {
				return true
			}
			if n == len(buf) {
				continue // the buffer is full: more is likely waiting
			}
			// The socket is drained: answer what came, then wait without a read.
			if fr.beforeRead != nil {
				fr.beforeRead()
				flushed = true
			}
			return false
		}
	})
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "read" // as a plain Read reports it ("raw-read" otherwise)
		}
		return 0, err
	}
	return k, rerr
}

// readError wraps a failed read's errno as net's Read would.
func (fr *frameReader) readError(errno error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: fr.conn.LocalAddr(), Addr: fr.conn.RemoteAddr(),
		Err: os.NewSyscallError("read", errno)}
}
