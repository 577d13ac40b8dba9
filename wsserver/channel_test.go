package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestAbort_CancelsHandlerAndSuppressesReply(t *testing.T) {
	started := make(chan struct{})
	cancelled := make(chan struct{})
	mux := NewMux()
	mux.Handle("ws", "/echo", echoHandler)
	mux.Handle("ws", "/slow", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return json.RawMessage(`"too late"`), nil // must not be sent
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.2/8427")
	rawWrite(t, c, `{"id":0,"twoway":true,"data":{"cmd":"/slow","props":[],"protocol":"ws"},"mode":0}`)
	recv(t, started, 5*time.Second, "handler start")
	rawWrite(t, c, `{"id":1,"twoway":false,"data":0,"mode":2}`)
	recv(t, cancelled, 5*time.Second, "handler cancellation")
	// The next message we get must be the answer to id 2: nothing for id 0.
	rawWrite(t, c, `{"id":2,"twoway":true,"data":{"cmd":"/echo","props":["x"],"protocol":"ws"},"mode":0}`)
	if got, want := rawRead(t, c), `{"id":2,"mode":1,"twoway":false,"data":{"status":200,"data":["x"]}}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestOneWayRequest_GetsNoResponse(t *testing.T) {
	var calls atomic.Int32
	mux := NewMux()
	mux.Handle("ws", "/echo", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		calls.Add(1)
		return props, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.2/8427")
	rawWrite(t, c, `{"id":0,"twoway":false,"data":{"cmd":"/echo","props":[0],"protocol":"ws"},"mode":0}`)
	rawWrite(t, c, `{"id":1,"twoway":false,"data":{"cmd":"/nope","props":[0],"protocol":"ws"},"mode":0}`)
	rawWrite(t, c, `{"id":2,"twoway":true,"data":{"cmd":"/echo","props":[2],"protocol":"ws"},"mode":0}`)
	if got := rawRead(t, c); !jsonEqual(t, got, `{"id":2,"mode":1,"twoway":false,"data":{"status":200,"data":[2]}}`) {
		t.Fatalf("got %s", got)
	}
	eventually(t, 5*time.Second, "one-way handler ran", func() bool { return calls.Load() == 2 })
}

func TestBadMessages_IgnoredConnectionStaysOpen(t *testing.T) {
	var mu sync.Mutex
	var reasons []string
	var gotProps []json.RawMessage
	mux := NewMux()
	mux.Handle("ws", "/echo", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		mu.Lock()
		gotProps = append(gotProps, props)
		mu.Unlock()
		return props, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, OnIgnored: func(ch *Channel, reason string) {
		mu.Lock()
		reasons = append(reasons, reason)
		mu.Unlock()
	}}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.2/8427")
	bad := []string{
		`not json`,
		`{"id":"0","twoway":true,"data":{"cmd":"/echo","props":[],"protocol":"ws"},"mode":0}`,
		`{"id":0,"twoway":true,"data":{"cmd":"/echo","props":[],"protocol":"ws"},"mode":9}`,
		`{"id":0,"twoway":true,"data":{"cmd":5,"props":[],"protocol":"ws"},"mode":0}`,
		`{"id":0,"twoway":true,"data":[1],"mode":0}`,
		`{"id":0,"twoway":false,"data":"x","mode":2}`,
		`{"id":77,"mode":1,"twoway":false,"data":{"status":200}}`, // answers nothing we asked
	}
	for _, m := range bad {
		rawWrite(t, c, m)
	}
	// Binary message holding the same JSON is accepted; props missing -> nil.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, []byte(`{"id":1,"twoway":true,"data":{"cmd":"/echo","protocol":"ws"},"mode":0}`)); err != nil {
		t.Fatal(err)
	}
	if got, want := rawRead(t, c), `{"id":1,"mode":1,"twoway":false,"data":{"status":200}}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != len(bad) {
		t.Fatalf("OnIgnored called %d times (%q), want %d", len(reasons), reasons, len(bad))
	}
	if len(gotProps) != 1 || gotProps[0] != nil {
		t.Fatalf("props = %q, want one nil", gotProps)
	}
}

func TestCall_ConcurrentCallsMatchedByID(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/echo", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		if len(props) > 3 && props[1] == '1' { // vary latency so answers come out of order
			time.Sleep(time.Millisecond)
		}
		return props, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ch := dialTest(t, addr, DialConfig{})
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := ch.Call(context.Background(), "ws", "/echo", []int{i}, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			if want := "[" + strconv.Itoa(i) + "]"; string(res) != want {
				errs <- fmt.Errorf("call %d got %s", i, res)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := ch.calls.nextID.Load(); got != n {
		t.Errorf("used %d ids, want %d", got, n)
	}
}

// Both ends of a channel serve requests: a handler on the accepting side
// calls back the dialer over the same channel.
func TestChannel_BothSidesServe(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/callback", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		return ch.Call(ctx, "ws", "/who", nil, 5*time.Second)
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	client := NewMux()
	client.Handle("ws", "/who", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`"dialer"`), nil
	})
	ch := dialTest(t, addr, DialConfig{ChannelConfig: ChannelConfig{Mux: client}})
	res, err := ch.Call(context.Background(), "ws", "/callback", nil, 5*time.Second)
	if err != nil || string(res) != `"dialer"` {
		t.Fatalf("got %s, %v", res, err)
	}
}

func TestCall_ResultsAndFailures(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/undefined", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { return nil, nil })
	mux.Handle("ws", "/null", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage("null"), nil
	})
	mux.Handle("ws", "/teapot", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, fmt.Errorf("wrapped: %w", NewError(418, "short and %s", "stout"))
	})
	mux.Handle("ws", "/code", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, &Error{Code: "EAGAIN", Message: "later"}
	})
	mux.Handle("ws", "/panic", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { panic("oops") })
	mux.Handle("ws", "/badjson", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage("{"), nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ch := dialTest(t, addr, DialConfig{})
	ctx := context.Background()
	if res, err := ch.Call(ctx, "ws", "/undefined", nil, 0); err != nil || res != nil {
		t.Errorf("/undefined: %q, %v", res, err)
	}
	if res, err := ch.Call(ctx, "ws", "/null", nil, 0); err != nil || string(res) != "null" {
		t.Errorf("/null: %q, %v", res, err)
	}
	check := func(cmd string, status int, code, msg string) {
		t.Helper()
		_, err := ch.Call(ctx, "ws", cmd, nil, 0)
		var e *Error
		if !errors.As(err, &e) || e.Status != status || e.Code != code || e.Message != msg {
			t.Errorf("%s: err = %#v, want %d %q %q", cmd, err, status, code, msg)
		}
	}
	check("/teapot", 418, "", "short and stout")
	check("/code", 0, "EAGAIN", "later")
	check("/panic", 500, "", "internal error")
	check("/badjson", 500, "", "handler returned invalid JSON")
	check("/missing", 104, "", "Cannot find the url 'ws://missing'")
	if _, err := ch.Call(ctx, "ws", "/x", json.RawMessage("{"), 0); err == nil {
		t.Error("invalid RawMessage props accepted")
	}
}

func TestCall_FailsWithErrClosedWhenChannelCloses(t *testing.T) {
	started := make(chan *Channel, 1)
	mux := NewMux()
	mux.Handle("ws", "/hang", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		started <- ch
		<-ctx.Done()
		return nil, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ch := dialTest(t, addr, DialConfig{})
	errc := make(chan error, 1)
	go func() {
		_, err := ch.Call(context.Background(), "ws", "/hang", nil, 10*time.Second)
		errc <- err
	}()
	srvCh := recv(t, started, 5*time.Second, "handler start")
	srvCh.Close(websocket.StatusGoingAway, "bye")
	err := recv(t, errc, 5*time.Second, "call failure")
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	<-ch.Done()
	if got := websocket.CloseStatus(ch.Err()); got != websocket.StatusGoingAway {
		t.Errorf("dialer's Err = %v (status %d), want the peer's 1001", ch.Err(), got)
	}
	if _, err := ch.Call(context.Background(), "ws", "/hang", nil, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("call on closed channel: %v", err)
	}
}

func TestDial_ChannelOutlivesDialContext(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/echo", echoHandler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := Dial(ctx, addr, "127.0.0.1:9", DialConfig{ChannelConfig: ChannelConfig{Logger: testLogger(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close(websocket.StatusNormalClosure, ""); <-ch.Done() })
	cancel()
	if res, err := ch.Call(context.Background(), "ws", "/echo", []int{1}, 5*time.Second); err != nil || string(res) != "[1]" {
		t.Fatalf("after cancelling the dial context: %s, %v", res, err)
	}
	if ch.Key() != addr || ch.RemoteAddr() != addr {
		t.Errorf("Key %q RemoteAddr %q, want %q", ch.Key(), ch.RemoteAddr(), addr)
	}
}
