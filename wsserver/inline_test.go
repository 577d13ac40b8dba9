package wsserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingConn counts the write system calls made on an accepted connection: through
// the net.Conn and through its raw connection (rawWrites, when set, counts the latter
// alone).
type countingConn struct {
	net.Conn
	writes, rawWrites *atomic.Int64
}

// SyscallConn keeps the frameReader's raw read and the raw write, as on a plain TCP
// connection; writes are still counted.
func (c countingConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.Conn.(syscall.Conn).SyscallConn()
	return rawWriteCounter{RawConn: rc, writes: c.writes, rawWrites: c.rawWrites}, err
}

type rawWriteCounter struct {
	syscall.RawConn
	writes, rawWrites *atomic.Int64
}

func (c rawWriteCounter) Write(f func(uintptr) bool) error {
	return c.RawConn.Write(func(fd uintptr) bool {
		c.writes.Add(1)
		if c.rawWrites != nil {
			c.rawWrites.Add(1)
		}
		return f(fd)
	})
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func startCountingServer(t *testing.T, cfg ServerConfig) (addr string, writes *atomic.Int64) {
	t.Helper()
	writes = new(atomic.Int64)
	addr = startServerWrapping(t, cfg, func(nc net.Conn) net.Conn { return countingConn{Conn: nc, writes: writes} })
	return addr, writes
}

func echoRequest(id int) []byte {
	return rawFrame(true, 0x1, fmt.Appendf(nil, `{"id":%d,"twoway":true,"data":{"cmd":"/echo","props":[%d],"protocol":"ws"},"mode":0}`, id, id))
}

func TestInline_RepliesToOneReadLeaveInOneWrite(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	addr, writes := startCountingServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/20")

	// 40 requests (~3.4 KB) in one TCP write: on loopback one segment, one read on the server.
	const n = 40
	var burst bytes.Buffer
	for i := range n {
		burst.Write(echoRequest(i))
	}
	before := writes.Load()
	if _, err := nc.Write(burst.Bytes()); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	for i := range n {
		_, payload := readServerFrame(t, br)
		want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":[%d]}}`, i, i)
		if !jsonEqual(t, string(payload), want) {
			t.Fatalf("reply %d = %s, want %s (inline replies keep the order of the requests)", i, payload, want)
		}
	}
	// Allow one split read; writing each reply on its own would be 40.
	if got := writes.Load() - before; got > 2 {
		t.Errorf("%d socket writes for %d replies that one read brought, want 1 (at most 2)", got, n)
	}
}

func TestInline_RunWhileOtherHandlersBlock(t *testing.T) {
	release := make(chan struct{})
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	mux.Handle("ws", "/hold", func(ctx context.Context, _ *Channel, _ json.RawMessage) (json.RawMessage, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return json.RawMessage(`"released"`), nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/21")
	rawWrite(t, c, `{"id":0,"twoway":true,"data":{"cmd":"/hold","props":[],"protocol":"ws"},"mode":0}`)
	// More than one write batch of inline replies, while /hold is still running.
	const n = 3 * writeBatch
	for i := 1; i <= n; i++ {
		rawWrite(t, c, fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":"/echo","props":[%d],"protocol":"ws"},"mode":0}`, i, i))
	}
	for i := 1; i <= n; i++ {
		got := rawRead(t, c)
		if want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":[%d]}}`, i, i); !jsonEqual(t, got, want) {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
	close(release)
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":0,"mode":1,"twoway":false,"data":{"status":200,"data":"released"}}`) {
		t.Fatalf("held request: %s", got)
	}
}

func TestInline_PanicIs500AndTheConnectionLives(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/boom", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { panic("boom") })
	mux.HandleInline("ws", "/echo", echoHandler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/22")
	rawWrite(t, c, `{"id":0,"twoway":true,"data":{"cmd":"/boom","props":[],"protocol":"ws"},"mode":0}`)
	rawWrite(t, c, `{"id":1,"twoway":true,"data":{"cmd":"/echo","props":[1],"protocol":"ws"},"mode":0}`)
	if got := rawRead(t, c); !strings.Contains(got, `"status":500`) || !strings.Contains(got, `"id":0`) {
		t.Fatalf("panicking inline handler answered %s, want status 500", got)
	}
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`) {
		t.Fatalf("after the panic: %s", got)
	}
}
