//go:build linux

package wsserver

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/later"
)

// A peer that does not read fills the socket. A batch's goroutine then writes what the
// socket takes and returns; a writer goroutine finishes the write and the later replies
// behind it, whole and in order, once the peer reads again.
func TestWriteFromBatch_AFullSocketIsFinishedByAWriterInOrder(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	writes, rawWrites := new(atomic.Int64), new(atomic.Int64)
	addr := startServerWrapping(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1, WriteTimeout: time.Minute}},
		func(nc net.Conn) net.Conn {
			_ = nc.(*net.TCPConn).SetWriteBuffer(4096) // with the peer's receive buffer, well under the 1 MiB of replies
			return countingConn{Conn: nc, writes: writes, rawWrites: rawWrites}
		})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/38")
	const batches, perBatch = 8, 4
	for i := range batches * perBatch {
		if _, err := nc.Write(rawFrame(true, 0x1, []byte(requestFrame(i, "/park", fmt.Sprintf("[%d]", i))))); err != nil {
			t.Fatal(err)
		}
		recv(t, p.arrived, 5*time.Second, "request")
	}
	payload := func(i int) string { return fmt.Sprintf(`"%d:%s"`, i, strings.Repeat("x", 32<<10)) }
	// Nothing is read meanwhile: the batches after the first few find the socket full.
	for k := range batches {
		ran := make(chan struct{})
		go func() {
			var b later.Batch
			for i := k * perBatch; i < (k+1)*perBatch; i++ {
				p.get(t, fmt.Sprintf("[%d]", i)).SendIn(&b, json.RawMessage(payload(i)), nil)
			}
			b.Run()
			close(ran)
		}()
		recv(t, ran, 5*time.Second, fmt.Sprintf("batch %d's Run to return while the peer does not read", k))
	}
	for i := range batches * perBatch {
		var reply stringReply
		_ = nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
		op, frame, err := readAnyServerFrame(br)
		if err != nil || op != 0x1 {
			t.Fatalf("reply %d: opcode %#x, %v", i, op, err)
		}
		if err := json.Unmarshal(frame, &reply); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if want := payload(i); reply.ID != i || reply.Data.Status != 200 || `"`+reply.Data.Data+`"` != want {
			t.Fatalf("reply %d: id %d, status %d, %d bytes of data; want id %d, status 200, %d bytes",
				i, reply.ID, reply.Data.Status, len(reply.Data.Data), i, len(want)-2)
		}
	}
	if w, rw := writes.Load(), rawWrites.Load(); w <= rw {
		t.Fatalf("%d writes, all %d of them raw: no write was left to a writer, the socket never filled", w, rw)
	}
}
