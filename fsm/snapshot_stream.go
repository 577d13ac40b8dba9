package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Buffered, checksummed reading and writing of a snapshot in the encoding of binary.go, for
// the format of snapshot_binary.go.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// streamBufSize is the write buffer and the read window.
const streamBufSize = 256 << 10

// streamWriter appends to a buffer and writes it out when nearly full, summing what it writes.
type streamWriter struct {
	w   io.Writer
	buf []byte
	sum uint32
	err error
}

func (sw *streamWriter) flush() {
	if sw.err == nil && len(sw.buf) > 0 {
		sw.sum = crc32.Update(sw.sum, castagnoli, sw.buf)
		_, sw.err = sw.w.Write(sw.buf)
	}
	sw.buf = sw.buf[:0]
}

// room is called before each record: records are appended whole, so the buffer only grows
// past its size for a record longer than the slack.
func (sw *streamWriter) room() {
	if len(sw.buf) >= streamBufSize-4<<10 {
		sw.flush()
	}
}

func (sw *streamWriter) uvarint(v uint64) { sw.buf = binary.AppendUvarint(sw.buf, v) }
func (sw *streamWriter) varint(v int64)   { sw.buf = binary.AppendVarint(sw.buf, v) }
func (sw *streamWriter) string(s string)  { sw.buf = appendString(sw.buf, s) }

var errSnapshotTruncated = errors.New("snapshot truncated")

// streamReader reads a snapshot through a window of streamBufSize bytes, summing what it
// consumes for the checksum. After the first error every read returns a zero value and
// err stays set, so a decoder checks once per record.
type streamReader struct {
	r        io.Reader
	buf      []byte
	pos, end int // buf[pos:end] is read but not consumed
	hashed   int // buf[:hashed] is in sum
	sum      uint32
	eof      bool
	err      error
}

func newStreamReader(r io.Reader) *streamReader {
	return &streamReader{r: r, buf: make([]byte, streamBufSize)}
}

func (sr *streamReader) fail(err error) {
	if sr.err == nil {
		sr.err = err
	}
}

// failure is the error that stopped the decoding.
func (sr *streamReader) failure() error {
	return fmt.Errorf("decode snapshot: %w", sr.err)
}

// fill reads until n bytes (at most len(buf)) are unconsumed, the stream ends or fails;
// it returns how many of the n are there.
func (sr *streamReader) fill(n int) int {
	for empty := 0; sr.end-sr.pos < n && !sr.eof && sr.err == nil; {
		if sr.end == len(sr.buf) {
			sr.sum = crc32.Update(sr.sum, castagnoli, sr.buf[sr.hashed:sr.pos])
			sr.end = copy(sr.buf, sr.buf[sr.pos:sr.end])
			sr.pos, sr.hashed = 0, 0
		}
		k, err := sr.r.Read(sr.buf[sr.end:])
		sr.end += k
		switch {
		case err == io.EOF:
			sr.eof = true
		case err != nil:
			sr.err = fmt.Errorf("read snapshot: %w", err)
		case k == 0:
			if empty++; empty == 100 {
				sr.err = fmt.Errorf("read snapshot: %w", io.ErrNoProgress)
			}
		}
	}
	return min(n, sr.end-sr.pos)
}

func (sr *streamReader) uvarint() uint64 {
	if sr.end-sr.pos < binary.MaxVarintLen64 {
		sr.fill(binary.MaxVarintLen64)
	}
	if sr.err != nil {
		return 0
	}
	v, k := binary.Uvarint(sr.buf[sr.pos:sr.end])
	switch {
	case k == 0:
		sr.fail(errSnapshotTruncated)
		return 0
	case k < 0:
		sr.fail(errors.New("varint overflows 64 bits"))
		return 0
	}
	sr.pos += k
	return v
}

// varint reads the zigzag form binary.AppendVarint writes.
func (sr *streamReader) varint() int64 {
	u := sr.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

func (sr *streamReader) byte() byte {
	if sr.fill(1) < 1 {
		sr.fail(errSnapshotTruncated)
	}
	if sr.err != nil {
		return 0
	}
	c := sr.buf[sr.pos]
	sr.pos++
	return c
}

// bytes reads a length and that many bytes; the result is only valid until the next read.
func (sr *streamReader) bytes() []byte {
	n := sr.uvarint()
	if sr.err != nil {
		return nil
	}
	if n <= uint64(len(sr.buf)) {
		if sr.fill(int(n)) < int(n) {
			sr.fail(errSnapshotTruncated)
			return nil
		}
		b := sr.buf[sr.pos : sr.pos+int(n)]
		sr.pos += int(n)
		return b
	}
	// Longer than the window: gathered as it arrives, so a corrupt length costs no
	// more memory than the data behind it.
	var out []byte
	for rem := n; rem > 0; {
		k := sr.fill(len(sr.buf))
		if k == 0 {
			sr.fail(errSnapshotTruncated)
			return nil
		}
		k = int(min(uint64(k), rem))
		out = append(out, sr.buf[sr.pos:sr.pos+k]...)
		sr.pos += k
		rem -= uint64(k)
	}
	return out
}

func (sr *streamReader) string() string {
	return utf8String(sr.bytes())
}

// line reads the header line (up to max bytes, newline included).
func (sr *streamReader) line(max int) ([]byte, error) {
	n := sr.fill(max)
	b := sr.buf[sr.pos : sr.pos+n]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		sr.pos += i + 1
		return b[:i+1], nil
	}
	switch {
	case sr.err != nil:
		return b, sr.err
	case n == 0:
		return nil, io.EOF
	}
	return b, io.ErrUnexpectedEOF
}

// rest is the unconsumed stream, for the JSON decoder.
func (sr *streamReader) rest() io.Reader {
	return io.MultiReader(bytes.NewReader(sr.buf[sr.pos:sr.end]), sr.r)
}

// finish checks the checksum and that nothing follows it.
func (sr *streamReader) finish() error {
	if sr.err != nil {
		return sr.failure()
	}
	want := crc32.Update(sr.sum, castagnoli, sr.buf[sr.hashed:sr.pos])
	sr.hashed = sr.pos
	if sr.fill(4) < 4 {
		sr.fail(errSnapshotTruncated)
		return sr.failure()
	}
	got := binary.LittleEndian.Uint32(sr.buf[sr.pos:])
	sr.pos += 4
	if got != want {
		return fmt.Errorf("snapshot checksum mismatch (stored %08x, computed %08x): the snapshot is corrupt", got, want)
	}
	if sr.fill(1) > 0 {
		return errors.New("trailing data after snapshot")
	}
	if sr.err != nil {
		return sr.failure()
	}
	return nil
}
