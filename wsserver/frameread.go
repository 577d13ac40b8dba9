package wsserver

import (
	"encoding/binary"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// frameReader sits under coder/websocket on an accepted connection. It parses the frames
// coming off the socket and serves the common one itself: a whole, masked, unextended
// text frame of at most maxText bytes goes straight to onText, unmasked in the buffer it
// was read into. Every other frame (control frames, fragments, binary, anything unusual
// or invalid) is handed to the library byte for byte, which checks and handles it as if
// nothing stood in between. The library's per-message path (locks on channels, context
// checks, a reader per message) is a sizeable share of a short request such as where
// (BENCHMARKS.md, round 4).
//
// Frames are served strictly in order: after a handed-over frame, nothing behind it is
// parsed until the library has read it and asks for more. Only the library calls Read,
// always under its read lock, so the state needs no lock of its own.
type frameReader struct {
	conn       net.Conn
	beforeRead func() bool // runs before every socket read (corkConn.beforeRead): writes the held replies
	// mayWait runs instead when a read drained the socket (Channel.mayWait), and must flush
	// as beforeRead does; true: replies went out or are owed, so the reader may wait
	// without reading once more. Nil: beforeRead.
	mayWait func() bool
	onText  func(msg []byte)
	maxText int

	// raw, when the socket offers it (a plain TCP connection), lets fresh frames be read
	// and served inside the socket's raw read (serveRaw); nil otherwise.
	raw syscall.RawConn
	// closed, when set, is the corkConn's: serveRaw stops reading once the socket is closed.
	closed *atomic.Bool
	// emptyReads counts serveRaw's reads that found nothing (each ~1 µs here), for tests;
	// only the reader writes it, so the atomic add is uncontended.
	emptyReads atomic.Int64

	carry      []byte // bytes read but not yet parsed or handed over (nil when none)
	pass       int    // bytes of a handed-over frame the library has yet to get
	fragmented bool   // a fragmented data message is being handed over
	err        error  // a read error to report once the bytes before it are consumed
}

// maxServedText is the largest text frame an accepting end's frameReader serves itself;
// longer ones go through the library, which buffers them anyway.
const maxServedText = 64 << 10

// maxHeader is the longest frame header: 2 bytes, a 64-bit length, a mask key.
const maxHeader = 14

func (fr *frameReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if fr.pass > 0 {
			if len(fr.carry) > 0 {
				n := copy(p[:min(len(p), fr.pass)], fr.carry)
				fr.pass -= n
				fr.consumeCarry(n)
				return n, nil
			}
			n, err := fr.read(p)
			if n == 0 {
				return 0, err
			}
			k := min(n, fr.pass)
			fr.pass -= k
			if n > k { // the start of the frames behind it
				fr.carry = append([]byte(nil), p[k:n]...)
			}
			fr.err = err
			return k, nil
		}
		if len(fr.carry) > 0 {
			used, need := fr.scan(fr.carry)
			fr.consumeCarry(used)
			if fr.pass > 0 || need == 0 {
				continue
			}
			// An incomplete frame: read the rest of it behind what is carried. The buffer
			// grows with the bytes that arrive, not with the length a header claims.
			if free := cap(fr.carry) - len(fr.carry); free < need {
				grown := make([]byte, len(fr.carry), len(fr.carry)+min(need, max(512, cap(fr.carry))))
				copy(grown, fr.carry)
				fr.carry = grown
			}
			n, err := fr.read(fr.carry[len(fr.carry):cap(fr.carry)])
			if n == 0 {
				// The stream ended inside a frame: hand the library what came, as it would
				// have read it, then the error (an unexpected EOF to it, as without us).
				fr.pass, fr.err = len(fr.carry), err
				continue
			}
			fr.carry = fr.carry[:len(fr.carry)+n]
			fr.err = err
			continue
		}
		if fr.raw != nil && fr.err == nil {
			n, err := fr.serveRaw(p)
			if n > 0 || err != nil {
				return n, err
			}
			continue // an incomplete frame was left in carry
		}
		// A socket without a raw read (TLS): the library's buffer is small
		// (libraryBufferSize), so read into a pooled one of socketReadSize, so that a
		// burst of requests still comes in one read and its replies leave in one write.
		buf, pooled := p, (*[]byte)(nil)
		var n int
		var err error
		if len(p) >= socketReadSize {
			n, err = fr.read(p) // a pending error comes back here
		} else {
			pooled = readBufPool.Get().(*[]byte)
			buf = (*pooled)[:socketReadSize]
			n, err = fr.read(buf)
		}
		if n == 0 {
			putReadBuf(pooled)
			return 0, err
		}
		fr.err = err
		k := fr.afterScan(p, buf[:n])
		putReadBuf(pooled)
		if k > 0 {
			return k, nil
		}
	}
}

// afterScan serves the fresh bytes b, then copies the start of a frame to hand over into p
// (returning how many bytes) and keeps in carry what the frames served left behind it.
func (fr *frameReader) afterScan(p, b []byte) int {
	used, _ := fr.scan(b)
	if fr.pass > 0 { // hand over the frame at used, keep what follows it
		k := min(fr.pass, len(b)-used, len(p))
		if used+k < len(b) {
			fr.carry = append([]byte(nil), b[used+k:]...)
		}
		copy(p, b[used:used+k])
		fr.pass -= k
		return k
	}
	if used < len(b) { // an incomplete frame: Read reads the rest behind it
		fr.carry = append([]byte(nil), b[used:]...)
	}
	return 0
}

// socketReadSize is the least a frameReader asks the socket for when it reads fresh frames.
const socketReadSize = 4096

// The pooled buffers have room past socketReadSize for serveRaw's control message.
var readBufPool = sync.Pool{New: func() any { b := make([]byte, socketReadSize+64); return &b }}

func putReadBuf(b *[]byte) {
	if b != nil {
		readBufPool.Put(b)
	}
}

// read reads from the socket after beforeRead, unless an error is pending.
func (fr *frameReader) read(b []byte) (int, error) {
	if fr.err != nil {
		err := fr.err
		fr.err = nil
		return 0, err
	}
	if fr.beforeRead != nil {
		fr.beforeRead()
	}
	return fr.conn.Read(b)
}

// consumeCarry drops the first n carried bytes; an emptied carry is let go, so an idle
// connection holds no buffer of its own.
func (fr *frameReader) consumeCarry(n int) {
	fr.carry = fr.carry[n:]
	if len(fr.carry) == 0 {
		fr.carry = nil
	}
}

// scan serves the whole text frames at the start of b. It stops at a frame to hand over
// (setting pass to its length; it starts at used) or at an incomplete frame (need: how
// many more bytes it takes, at least).
func (fr *frameReader) scan(b []byte) (used, need int) {
	for used < len(b) {
		f := b[used:]
		if len(f) < 2 {
			return used, 2 - len(f)
		}
		hl := 2
		plen := int(f[1] & 0x7f)
		switch plen {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		masked := f[1]&0x80 != 0
		if masked {
			hl += 4
		}
		if len(f) < hl {
			return used, hl - len(f)
		}
		switch plen {
		case 126:
			plen = int(binary.BigEndian.Uint16(f[2:]))
		case 127:
			// Lengths past maxText are handed over: the library fails the message as too
			// big, or the frame as invalid (the top bit set).
			plen = int(min(binary.BigEndian.Uint64(f[2:]), math.MaxInt-maxHeader))
		}
		fin, opcode := f[0]&0x80 != 0, f[0]&0x7f // the opcode with the RSV bits: any set is not ours
		if !fin || opcode != 1 || !masked || fr.fragmented || plen > fr.maxText {
			fr.pass = hl + plen
			switch f[0] & 0x0f {
			case 0, 1, 2: // a data frame starts or continues a message
				fr.fragmented = !fin
			}
			return used, 0
		}
		if len(f) < hl+plen {
			return used, hl + plen - len(f)
		}
		payload := f[hl : hl+plen]
		unmask(payload, [4]byte(f[hl-4:hl]))
		used += hl + plen
		fr.onText(payload)
	}
	return used, 0
}

// unmask XORs b with the masking key (RFC 6455 5.3), eight bytes at a time.
func unmask(b []byte, key [4]byte) {
	k32 := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k32) | uint64(k32)<<32
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^k64)
	}
	for ; i < len(b); i++ {
		b[i] ^= key[i&3]
	}
}
