//go:build linux

package wsserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/later"
)

// rawCountingConn's raw reads count the calls of the read callback: with serveRaw, one per
// burst of requests that a wait for readiness ended.
type rawCountingConn struct {
	net.Conn
	calls *atomic.Int64
}

func (c rawCountingConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.Conn.(syscall.Conn).SyscallConn()
	return countingRawConn{RawConn: rc, calls: c.calls}, err
}

type countingRawConn struct {
	syscall.RawConn
	calls *atomic.Int64
}

func (c countingRawConn) Read(f func(uintptr) bool) error {
	return c.RawConn.Read(func(fd uintptr) bool {
		c.calls.Add(1)
		return f(fd)
	})
}

func TestServeRaw_ABurstCostsOneReadAndNoneThatFindsNothing(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	calls := new(atomic.Int64)
	addr := startServerWrapping(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}},
		func(nc net.Conn) net.Conn { return rawCountingConn{Conn: nc, calls: calls} })
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/30")

	// Each burst is one TCP write of five requests; its replies are read before the next
	// is sent, so the server has drained the socket and waits each time.
	const bursts, perBurst = 20, 5
	nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
	for b := range bursts {
		var burst bytes.Buffer
		for i := range perBurst {
			burst.Write(echoRequest(b*perBurst + i))
		}
		if b == 1 {
			calls.Store(0) // from here on the reader is parked in serveRaw
		}
		if _, err := nc.Write(burst.Bytes()); err != nil {
			t.Fatal(err)
		}
		for i := range perBurst {
			_, payload := readServerFrame(t, br)
			want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":[%d]}}`, b*perBurst+i, b*perBurst+i)
			if !jsonEqual(t, string(payload), want) {
				t.Fatalf("reply = %s, want %s", payload, want)
			}
		}
	}
	// A plain Read would read twice per burst (the second finds nothing, then parks), and
	// never call the raw callback. One burst may come in two segments.
	if got := calls.Load(); got < bursts-1 || got > bursts+1 {
		t.Errorf("%d raw read calls for %d bursts, want one per burst", got, bursts-1)
	}
}

func TestServeRaw_AReplyWriteThatFailsInsideTheReadClosesTheConnection(t *testing.T) {
	// The inline handler's replies are written by the reader itself, from inside the
	// socket's raw read. A client that never reads makes that write time out; the channel
	// then closes the socket from the reader, which must not wait for its own read.
	big := json.RawMessage(`"` + strings.Repeat("x", 32<<10) + `"`)
	mux := NewMux()
	mux.HandleInline("ws", "/big", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { return big, nil })
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, WriteTimeout: 300 * time.Millisecond,
		PingInterval: -1, CloseTimeout: 100 * time.Millisecond, OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	nc, _ := rawTCPHandshake(t, addr, "/10.0.0.9/31")
	go func() {
		// 128-byte frames: every full read of the server's 4 KiB buffer ends on a frame
		// boundary, so the reader never leaves serveRaw to finish a frame.
		body := `{"id":0,"twoway":true,"data":{"cmd":"/big","props":["%s"],"protocol":"ws"},"mode":0}`
		payload := fmt.Sprintf(body, strings.Repeat("p", 128-6-len(body)+2))
		req := rawFrame(true, 0x1, []byte(payload))
		if len(req) != 128 {
			panic(fmt.Sprint("request frame of ", len(req), " bytes"))
		}
		for range 2000 {
			if _, err := nc.Write(req); err != nil {
				return
			}
		}
	}()
	err := recv(t, closed, 10*time.Second, "the channel to close after its reply write timed out")
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Err = %v, want the write's timeout", err)
	}
	// The socket is closed too: the client's writes fail or its reads see the end.
	nc.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	buf := make([]byte, 64<<10)
	for {
		if _, err := nc.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the server kept the socket open after closing the channel")
			}
			break
		}
	}
}

func TestServeRaw_ClosingAChannelWhoseReaderWaitsEndsIt(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	closed := make(chan *Channel, 1)
	opened := make(chan *Channel, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1,
		OnClose: func(ch *Channel) { closed <- ch }}, OnOpen: func(ch *Channel) { opened <- ch }})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/32")
	rawWrite(t, c, `{"id":1,"twoway":true,"data":{"cmd":"/echo","props":[1],"protocol":"ws"},"mode":0}`)
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`) {
		t.Fatalf("reply: %s", got)
	}
	ch := recv(t, opened, 5*time.Second, "OnOpen")
	ch.Close(websocket.StatusGoingAway, ReasonGoingAway)
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("client read after Close: %v, want a 1001 close", err)
	}
	recv(t, closed, 5*time.Second, "OnClose after Close")
}

// A FIN that arrives with the last data raises no readiness of its own: a reader that
// parked after a short read would never see the client leave (an agent that left would
// stay registered until a ping failed; with pings off, for ever).
func TestServeRaw_AFINRightBehindTheLastRequestEndsTheChannel(t *testing.T) {
	for name, before := range map[string][]byte{
		"parked reader":                         nil,
		"after a frame the library read itself": maskedFrame(0x82, bytes.Repeat([]byte{'b'}, 8000), false),
	} {
		t.Run(name, func(t *testing.T) {
			nc, br, closed := parkedEchoChannel(t, "/10.0.0.9/33")
			last := append(append([]byte(nil), before...), echoRequest(9)...)
			if _, err := nc.Write(last); err != nil {
				t.Fatal(err)
			}
			if err := nc.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, payload := readServerFrame(t, br); !strings.Contains(string(payload), `"id":9`) {
				t.Fatalf("reply %s, want the answer to id 9", payload)
			}
			recv(t, closed, 5*time.Second, "the channel to end after the client's FIN")
		})
	}
}

// A client that keeps the socket full keeps the reader inside the raw read: it must still
// stop reading and serving once the socket is closed, not when a read happens to come up
// short.
func TestServeRaw_StopsServingOnceTheSocketIsClosed(t *testing.T) {
	big := json.RawMessage(`"` + strings.Repeat("x", 32<<10) + `"`)
	var served atomic.Int64
	mux := NewMux()
	mux.HandleInline("ws", "/big", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		served.Add(1)
		return big, nil
	})
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, WriteTimeout: 300 * time.Millisecond,
		PingInterval: -1, CloseTimeout: 100 * time.Millisecond, OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	nc, _ := rawTCPHandshake(t, addr, "/10.0.0.9/34")
	body := `{"id":0,"twoway":true,"data":{"cmd":"/big","props":["%s"],"protocol":"ws"},"mode":0}`
	req := rawFrame(true, 0x1, []byte(fmt.Sprintf(body, strings.Repeat("p", 128-6-len(body)+2))))
	chunk := bytes.Repeat(req, 8192) // 1 MiB of 128-byte frames: reads fill the buffer exactly
	var stop atomic.Bool
	defer stop.Store(true)
	go func() {
		for !stop.Load() {
			if _, err := nc.Write(chunk); err != nil {
				return
			}
		}
	}()
	// The client never reads: a reply write times out and the channel closes the socket
	// from the reader, which then must serve nothing more.
	err := recv(t, closed, 10*time.Second, "the channel to close while the client floods it")
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Err = %v, want the write's timeout", err)
	}
	// What one write batch and the read that brought it hold: far fewer than a reader
	// that went on after the close would serve (1,100-1,400 here before the fix).
	if n := served.Load(); n > 4*writeBatch {
		t.Errorf("%d requests served: the reader went on after the socket was closed", n)
	}
}

// TCP_INQ tells of a FIN but not of a reset: a reset that comes with a last message that
// needs no reply must still end the channel at once, not at the next ping (pings are off
// here: it would never end).
func TestServeRaw_AResetBehindAOneWayMessageEndsTheChannel(t *testing.T) {
	nc, _, closed := parkedEchoChannel(t, "/10.0.0.9/35")
	if _, err := nc.Write(oneWay(9)); err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.TCPConn).SetLinger(0); err != nil { // Close sends a reset
		t.Fatal(err)
	}
	nc.Close()
	recv(t, closed, 5*time.Second, "the channel to end after the client's reset")
}

// A goroutine handler may wait on its ctx for as long as the channel lives, so its request
// owes no write the reader could count on: a reset behind it must be read at once, or the
// channel and the handler would wait for ever (pings are off).
func TestServeRaw_AResetBehindARequestWhoseHandlerWaitsOnItsContextEndsTheChannel(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	mux.Handle("ws", "/wait", func(ctx context.Context, _ *Channel, _ json.RawMessage) (json.RawMessage, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1,
		OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/39")
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	if _, err := nc.Write(echoRequest(1)); err != nil {
		t.Fatal(err)
	}
	readServerFrame(t, br) // the reader has drained the socket and waits in serveRaw
	if _, err := nc.Write(textFrame(requestFrame(2, "/wait", `[]`))); err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.TCPConn).SetLinger(0); err != nil { // Close sends a reset
		t.Fatal(err)
	}
	nc.Close()
	recv(t, closed, 5*time.Second, "the channel to end after the client's reset")
}

// parkedEchoChannel connects a raw client to an inline echo server with pings off and has
// three requests answered, so the server's reader has drained the socket and waits in
// serveRaw; closed gets the channel's Err when it ends.
func parkedEchoChannel(t *testing.T, path string) (net.Conn, *bufio.Reader, chan error) {
	t.Helper()
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1,
		OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	nc, br := rawTCPHandshake(t, addr, path)
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	for i := range 3 {
		if _, err := nc.Write(echoRequest(i)); err != nil {
			t.Fatal(err)
		}
		readServerFrame(t, br)
	}
	return nc, br, closed
}

// A request whose reply comes later (an online's, from the commit) is owed a write, and
// that write fails on a reset socket: the reader waits for data without the read that finds
// nothing. The handler answers each request when the next one arrives, so whenever the
// reader has drained the socket exactly one reply is due.
func TestServeRaw_ARequestWhoseReplyComesLaterCostsNoReadThatFindsNothing(t *testing.T) {
	var mu sync.Mutex
	var previous *Reply
	mux := NewMux()
	mux.HandleAsync("ws", "/later", func(_ context.Context, _ *Channel, _ json.RawMessage, reply *Reply) {
		mu.Lock()
		if previous != nil {
			previous.Send(json.RawMessage(`"ok"`), nil)
		}
		previous = reply
		mu.Unlock()
	})
	opened := make(chan *Channel, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1},
		OnOpen: func(ch *Channel) { opened <- ch }})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/36")
	ch := recv(t, opened, 5*time.Second, "OnOpen")
	nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
	request := func(id int) []byte {
		return rawFrame(true, 0x1, fmt.Appendf(nil, `{"id":%d,"twoway":true,"data":{"cmd":"/later","props":[],"protocol":"ws"},"mode":0}`, id))
	}
	const n = 20
	if _, err := nc.Write(request(0)); err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= n; id++ {
		if _, err := nc.Write(request(id)); err != nil {
			t.Fatal(err)
		}
		if _, payload := readServerFrame(t, br); !strings.Contains(string(payload), fmt.Sprintf(`"id":%d,`, id-1)) {
			t.Fatalf("reply %s, want the answer to id %d", payload, id-1)
		}
	}
	// Reading once more before each wait found nothing once a request (21 for these 20
	// before). What remains is not per request: the read that finds the socket still empty
	// before request 0 arrives (37 of 40 runs here), and in about one run in 40 one more.
	if got := ch.cc.frames.emptyReads.Load(); got > 2 {
		t.Errorf("%d reads found nothing over %d requests whose replies came later, want at most 2", got, n)
	}
	mu.Lock()
	previous.Send(nil, nil)
	mu.Unlock()
}

// What the read skipped above would have found: a reset that came with the data. With
// pings off nothing else notices it, so the channel ends at the latest when the reply that
// was due is written and fails (it may end sooner, if a read before the wait finds the
// reset). The reply goes out as an online's does: handed over in a batch that a commit's
// goroutine runs (Reply.SendIn).
func TestServeRaw_AResetBehindARequestWhoseReplyComesLaterEndsTheChannelByTheReply(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1,
		OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/37")
	nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
	if _, err := nc.Write(textFrame(requestFrame(1, "/park", `["a"]`))); err != nil {
		t.Fatal(err)
	}
	recv(t, p.arrived, 5*time.Second, "request a")
	p.reply(t, `["a"]`, json.RawMessage(`1`), nil)
	readServerFrame(t, br) // the reader has drained the socket and waits in serveRaw

	if _, err := nc.Write(textFrame(requestFrame(2, "/park", `["b"]`))); err != nil {
		t.Fatal(err)
	}
	if err := nc.(*net.TCPConn).SetLinger(0); err != nil { // Close sends a reset
		t.Fatal(err)
	}
	nc.Close()
	recv(t, p.arrived, 5*time.Second, "request b")
	var batch later.Batch
	p.get(t, `["b"]`).SendIn(&batch, json.RawMessage(`2`), nil)
	batch.Run()
	recv(t, closed, 5*time.Second, "the channel to end once the reply to b was written")
}
