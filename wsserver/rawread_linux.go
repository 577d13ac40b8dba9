package wsserver

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// tcpInq is Linux's TCP_INQ (and TCP_CM_INQ): with it on, every recvmsg reports how many
// bytes the socket still holds after it, and 1 when it holds none but a FIN came (not
// after a reset: see serveRaw).
const tcpInq = 36

// rawConnFor returns nc's raw connection with TCP_INQ on, or nil when nc is not a TCP
// socket that allows it (serveRaw needs to know that a read left nothing behind).
func rawConnFor(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_TCP, tcpInq, 1)
	}); err != nil || serr != nil {
		return nil
	}
	return raw
}

// cmsgSpace is room for one control message carrying an int32 (CMSG_SPACE(4)).
var cmsgSpace = syscall.CmsgSpace(4)

// inqOf reads the TCP_CM_INQ count out of recvmsg's control bytes; -1 when absent.
func inqOf(oob []byte) int {
	h := syscall.SizeofCmsghdr
	if len(oob) < h+4 {
		return -1
	}
	cm := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
	if cm.Level != syscall.SOL_TCP || cm.Type != tcpInq {
		return -1
	}
	return int(int32(binary.NativeEndian.Uint32(oob[h:])))
}

// serveRaw reads and serves fresh frames from inside the socket's raw read, until a frame
// must be handed to the library (its first bytes are copied to p, their count returned),
// a frame is incomplete (it is left in carry for Read to finish) or the socket fails.
//
// Why inside: Go's Read resets the socket's readiness before it reads, so a reader that
// took everything there was still pays one more read, which finds nothing, before it
// parks: on this kind of machine ~1.3 µs, and half the reads of a connection whose requests
// come in bursts (BENCHMARKS.md, round 12). Within one raw read the readiness is kept
// between calls of the callback, so after a read that drained the socket the callback
// answers what came and asks to wait, and the next read comes only when data has arrived.
// "Drained" is what the kernel says (TCP_INQ is 0), not a short read: a FIN that came
// with the last data raises no readiness of its own, and only a further read reports it.
// Nor does a reset, which TCP_INQ does not tell of: the read is skipped only after a
// reply write, or while a reply is still to be written, and that write fails on a reset
// socket (Channel.mayWait).
//
// The callback holds a reference to the descriptor while it serves, and net's Close waits
// for it: the corkConn closes the socket on another goroutine (see corkConn.Close) and
// marks it closed, which the callback checks before every read.
func (fr *frameReader) serveRaw(p []byte) (int, error) {
	var k int
	var rerr error
	flushed := false // drainedMayWait just flushed the held replies: the next read need not
	err := fr.raw.Read(func(fd uintptr) bool {
		for {
			if fr.beforeRead != nil && !flushed {
				fr.beforeRead()
			}
			flushed = false
			if fr.closed != nil && fr.closed.Load() {
				rerr = fr.readError(net.ErrClosed)
				return true
			}
			pooled := readBufPool.Get().(*[]byte)
			// The buffer's tail, past what a read asks for, takes the control message.
			buf, oob := (*pooled)[:socketReadSize], (*pooled)[socketReadSize:socketReadSize+cmsgSpace]
			n, oobn, _, _, errno := syscall.Recvmsg(int(fd), buf, oob, 0)
			inq := inqOf(oob[:oobn]) // before the buffer goes back to the pool
			if errno != nil || n <= 0 {
				readBufPool.Put(pooled)
				switch {
				case errno == syscall.EINTR:
					continue
				case errno == syscall.EAGAIN:
					fr.emptyReads.Add(1)
					return false // nothing yet (a readiness that a read before took): wait
				case errno != nil:
					rerr = fr.readError(errno)
				default:
					rerr = io.EOF
				}
				return true
			}
			k = fr.afterScan(p, buf[:n])
			readBufPool.Put(pooled)
			if k > 0 || fr.carry != nil {
				return true
			}
			if inq != 0 {
				continue // more is waiting, or the end of the stream is
			}
			// The socket is drained: answer what came, then wait without a read if replies
			// went out or are still to go. TCP_INQ tells of a FIN but not of a reset that
			// came with the data; a write after such a reset fails, and closes the channel.
			// With nothing written nor owed (one-way messages), read once more.
			flushed = true
			if fr.drainedMayWait() {
				return false
			}
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

// drainedMayWait runs when a read drained the socket; serveRaw skips its next flush after
// it, so mayWait must flush as beforeRead does. Without mayWait, beforeRead flushes and
// whether it wrote decides.
func (fr *frameReader) drainedMayWait() bool {
	if fr.mayWait != nil {
		return fr.mayWait()
	}
	return fr.beforeRead != nil && fr.beforeRead()
}

// readError wraps a failed read's error as net's Read would.
func (fr *frameReader) readError(err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError("read", errno)
	}
	return &net.OpError{Op: "read", Net: "tcp", Source: fr.conn.LocalAddr(), Addr: fr.conn.RemoteAddr(), Err: err}
}

// writeNoWait writes b with one system call that does not wait for room: it reports how
// much the socket took, which is less than len(b), maybe nothing, when its buffer is
// full or when the write cannot start (a passed write deadline, a closed socket: the
// writer that finishes it finds out).
func writeNoWait(raw syscall.RawConn, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno error
	if err := raw.Write(func(fd uintptr) bool {
		for {
			n, errno = syscall.Write(int(fd), b)
			if errno != syscall.EINTR {
				return true
			}
		}
	}); err != nil {
		return 0, nil
	}
	switch {
	case errno == syscall.EAGAIN:
		return 0, nil
	case errno != nil:
		return 0, os.NewSyscallError("write", errno)
	}
	return max(n, 0), nil
}
