package wsserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/later"
)

// parked holds the replies of an asynchronous handler until the test answers them.
type parked struct {
	mu      sync.Mutex
	replies map[string]*Reply // by the request's props
	arrived chan string
}

func newParked() *parked {
	return &parked{replies: make(map[string]*Reply), arrived: make(chan string, 64)}
}

func (p *parked) handler(_ context.Context, _ *Channel, props json.RawMessage, reply *Reply) {
	key := string(props) // props is the reader's buffer: copied by the conversion
	p.mu.Lock()
	p.replies[key] = reply
	p.mu.Unlock()
	p.arrived <- key
}

func (p *parked) get(t *testing.T, key string) *Reply {
	t.Helper()
	p.mu.Lock()
	r := p.replies[key]
	p.mu.Unlock()
	if r == nil {
		t.Fatalf("no request %s parked", key)
	}
	return r
}

func (p *parked) reply(t *testing.T, key string, res json.RawMessage, err error) {
	t.Helper()
	p.get(t, key).Send(res, err)
}

func requestFrame(id int, cmd, props string) string {
	return fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":%q,"props":%s,"protocol":"ws"},"mode":0}`, id, cmd, props)
}

func TestAsync_RepliesLeaveWhenAnsweredInAnyOrder(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/30")
	for i := range 3 {
		rawWrite(t, c, requestFrame(i, "/park", fmt.Sprintf("[%d]", i)))
	}
	// The handler starts on the reader, in arrival order.
	for i := range 3 {
		if got, want := recv(t, p.arrived, 5*time.Second, "request"), fmt.Sprintf("[%d]", i); got != want {
			t.Fatalf("request %d arrived as %s, want %s", i, got, want)
		}
	}
	// Answered from other goroutines, last first.
	for _, i := range []int{2, 0, 1} {
		go p.get(t, fmt.Sprintf("[%d]", i)).Send(json.RawMessage(fmt.Sprintf(`"r%d"`, i)), nil)
		want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":"r%d"}}`, i, i)
		if got := rawRead(t, c); !jsonEqual(t, got, want) {
			t.Fatalf("reply: %s, want %s", got, want)
		}
	}
}

// Replies sent in one batch (a commit's callbacks) leave with one write per connection:
// the write happens when the batch runs, after all of them are queued. On Linux the batch's
// goroutine writes them itself (one raw write), so they are on the socket when Run returns.
func TestAsync_RepliesOfOneBatchLeaveInOneWrite(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	writes, rawWrites := new(atomic.Int64), new(atomic.Int64)
	addr := startServerWrapping(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}},
		func(nc net.Conn) net.Conn { return countingConn{Conn: nc, writes: writes, rawWrites: rawWrites} })
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/36")
	const n = 5
	for i := range n {
		rawWrite(t, c, requestFrame(i, "/park", fmt.Sprintf("[%d]", i)))
		recv(t, p.arrived, 5*time.Second, "request")
	}
	before := writes.Load()
	var b later.Batch
	for i := range n {
		p.get(t, fmt.Sprintf("[%d]", i)).SendIn(&b, json.RawMessage(`"ok"`), nil)
	}
	if got := writes.Load(); got != before {
		t.Fatalf("%d writes before the batch ran, want none", got-before)
	}
	b.Run()
	if got := rawWrites.Load(); runtime.GOOS == "linux" && got != 1 {
		t.Fatalf("when the batch's Run returned, its replies had taken %d raw writes, want 1 (written by the batch's goroutine)", got)
	}
	readOKReplies(t, c, n)
	if got := writes.Load() - before; got != 1 {
		t.Fatalf("%d replies of one batch took %d writes, want 1", n, got)
	}
}

func TestAsync_ReplyDuringTheHandlerAndErrors(t *testing.T) {
	mux := NewMux()
	mux.HandleAsync("ws", "/now", func(_ context.Context, _ *Channel, props json.RawMessage, reply *Reply) {
		if string(props) == `["bad"]` {
			reply.Send(nil, NewError(403, "not %s", "yours"))
			reply.Send(json.RawMessage(`"twice"`), nil) // ignored: a request has one answer
			return
		}
		reply.Send(nil, nil)
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/31")
	rawWrite(t, c, requestFrame(7, "/now", `["bad"]`))
	rawWrite(t, c, requestFrame(8, "/now", `["ok"]`))
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":7,"mode":1,"twoway":false,"data":{"status":403,"data":null,"message":"not yours"}}`) {
		t.Fatalf("refusal: %s", got)
	}
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":8,"mode":1,"twoway":false,"data":{"status":200}}`) {
		t.Fatalf("undefined result: %s", got)
	}
}

func TestAsync_AbortSuppressesTheReply(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	mux.HandleInline("ws", "/echo", echoHandler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/32")
	rawWrite(t, c, requestFrame(1, "/park", `["a"]`))
	recv(t, p.arrived, 5*time.Second, "request")
	rawWrite(t, c, `{"id":1,"twoway":false,"data":1,"mode":2}`) // abort request 1
	rawWrite(t, c, requestFrame(2, "/echo", `[2]`))             // read after the abort
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":2,"mode":1,"twoway":false,"data":{"status":200,"data":[2]}}`) {
		t.Fatalf("echo: %s", got)
	}
	p.reply(t, `["a"]`, json.RawMessage(`"late"`), nil)
	rawWrite(t, c, requestFrame(3, "/echo", `[3]`))
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":3,"mode":1,"twoway":false,"data":{"status":200,"data":[3]}}`) {
		t.Fatalf("after the aborted request's answer: %s, want only the echo", got)
	}
}

func TestAsync_PanicIs500AndTheConnectionLives(t *testing.T) {
	mux := NewMux()
	mux.HandleAsync("ws", "/boom", func(context.Context, *Channel, json.RawMessage, *Reply) { panic("boom") })
	mux.HandleInline("ws", "/echo", echoHandler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/33")
	rawWrite(t, c, requestFrame(0, "/boom", `[]`))
	if got := rawRead(t, c); !strings.Contains(got, `"status":500`) || !strings.Contains(got, `"id":0`) {
		t.Fatalf("panicking handler answered %s, want status 500", got)
	}
	rawWrite(t, c, requestFrame(1, "/echo", `[1]`))
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`) {
		t.Fatalf("after the panic: %s", got)
	}
}

// The close of a connection (and its OnClose, where the registry deregisters) waits for
// every started request's answer, as it waits for handler goroutines.
func TestAsync_OnCloseWaitsForTheReply(t *testing.T) {
	p := newParked()
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	closed := make(chan struct{})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1,
		OnClose: func(*Channel) { close(closed) }}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/34")
	rawWrite(t, c, requestFrame(1, "/park", `["x"]`))
	recv(t, p.arrived, 5*time.Second, "request")
	c.CloseNow()
	// Give the teardown every chance to run ahead: it must not.
	deadline := time.Now().Add(scaled(200 * time.Millisecond))
	for time.Now().Before(deadline) {
		select {
		case <-closed:
			t.Fatal("OnClose ran before the request was answered")
		default:
			runtime.Gosched()
		}
	}
	p.reply(t, `["x"]`, nil, nil) // the channel is gone: the answer is dropped, the close goes on
	recv(t, closed, 5*time.Second, "OnClose after the answer")
}

func TestAsync_CountsTowardsTheInflightLimit(t *testing.T) {
	p := newParked()
	p.arrived = make(chan string, DefaultMaxInflight+1)
	mux := NewMux()
	mux.HandleAsync("ws", "/park", p.handler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/35")
	for i := range DefaultMaxInflight + 1 {
		rawWrite(t, c, requestFrame(i, "/park", fmt.Sprintf("[%d]", i)))
	}
	got := rawRead(t, c)
	if !strings.Contains(got, `"status":429`) || !strings.Contains(got, fmt.Sprintf(`"id":%d`, DefaultMaxInflight)) {
		t.Fatalf("first reply: %s, want 429 for the request over the limit", got)
	}
	for i := range DefaultMaxInflight {
		p.reply(t, fmt.Sprintf("[%d]", i), nil, nil)
	}
	for range DefaultMaxInflight {
		if got := rawRead(t, c); !strings.Contains(got, `"status":200`) {
			t.Fatalf("reply: %s", got)
		}
	}
}

func TestAsync_LookupAdaptsToABlockingHandler(t *testing.T) {
	mux := NewMux()
	mux.HandleAsync("ws", "/later", func(_ context.Context, _ *Channel, props json.RawMessage, reply *Reply) {
		res := append(json.RawMessage(nil), props...)
		go reply.Send(res, nil)
	})
	h := mux.Lookup("ws", "/later")
	if h == nil {
		t.Fatal("Lookup found no handler for an asynchronous route")
	}
	res, err := h(context.Background(), nil, json.RawMessage(`[5]`))
	if err != nil || string(res) != `[5]` {
		t.Fatalf("Lookup's handler = %s, %v", res, err)
	}
	mux.HandleAsync("ws", "/later", nil)
	if mux.Lookup("ws", "/later") != nil {
		t.Fatal("a nil handler did not remove the route")
	}
}
