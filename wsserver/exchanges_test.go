package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

type exchanges struct {
	Agent []struct {
		Name   string          `json:"name"`
		Send   json.RawMessage `json:"send"`
		Expect json.RawMessage `json:"expect"`
	} `json:"agent"`
	Caller []struct {
		Name      string            `json:"name"`
		Sent      []json.RawMessage `json:"sent"`
		FailsWith struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"fails_with"`
	} `json:"caller"`
}

func loadExchanges(t *testing.T) exchanges {
	t.Helper()
	b, err := os.ReadFile("../testdata/exchanges.json")
	if err != nil {
		t.Fatal(err)
	}
	var x exchanges
	if err := json.Unmarshal(b, &x); err != nil {
		t.Fatal(err)
	}
	if len(x.Agent) == 0 || len(x.Caller) == 0 {
		t.Fatal("exchanges.json has no agent or caller section")
	}
	return x
}

// A raw WebSocket client (as the registry would be) drives a Go Agent with
// the captured frames and gets the captured answers back.
func TestExchanges_AgentAnswersLikeTheOriginal(t *testing.T) {
	x := loadExchanges(t)
	a, err := NewAgent(AgentConfig{Registry: "127.0.0.1:1", Listen: "127.0.0.1:0", Advertise: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.Handle("ws", "/echo", echoHandler)
	a.Handle("ws", "/boom", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("boom")
	})
	port := a.ln.Addr().String()
	c := rawDial(t, "ws://"+port+"/10.0.0.2/8427")
	for _, ex := range x.Agent {
		t.Run(ex.Name, func(t *testing.T) {
			rawWrite(t, c, string(ex.Send))
			got := rawRead(t, c)
			if !jsonEqual(t, got, string(ex.Expect)) {
				t.Fatalf("got  %s\nwant %s", got, ex.Expect)
			}
		})
	}
}

// A Channel calling a raw server that never answers /slow times out, sends
// exactly the captured abort frame and fails like the original.
func TestExchanges_CallerTimeoutSendsAbort(t *testing.T) {
	x := loadExchanges(t)
	ex := x.Caller[0]
	frames := make(chan string, 16)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			frames <- string(b)
			f, _ := DecodeFrame(b)
			req, _ := DecodeRequest(f.Data)
			if f.Mode == ModeRequest && req.Cmd == "/fast" {
				c.Write(context.Background(), websocket.MessageText, appendSuccess(nil, f.ID, nil))
			}
		}
	}))
	t.Cleanup(ts.Close)
	ch, err := Dial(context.Background(), strings.TrimPrefix(ts.URL, "http://"), "10.0.0.7:9001", DialConfig{ChannelConfig: ChannelConfig{Logger: testLogger(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close(websocket.StatusNormalClosure, ""); <-ch.Done() })

	// Use up ids 0..3 so the timed-out request gets id 4, as captured.
	for i := 0; i < 4; i++ {
		if _, err := ch.Call(context.Background(), "ws", "/fast", nil, time.Second); err != nil {
			t.Fatal(err)
		}
		recv(t, frames, 5*time.Second, "fast request")
	}
	start := time.Now()
	_, err = ch.Call(context.Background(), "ws", "/slow", []int{1000}, 200*time.Millisecond)
	elapsed := time.Since(start)
	var e *Error
	if !errors.As(err, &e) || e.Code != ex.FailsWith.Status || e.Message != ex.FailsWith.Message || e.Status != 0 {
		t.Fatalf("err = %#v, want status %q message %q", err, ex.FailsWith.Status, ex.FailsWith.Message)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout error should wrap context.DeadlineExceeded: %v", err)
	}
	if elapsed < 200*time.Millisecond || elapsed > scaled(time.Second) {
		t.Errorf("timed out after %v, want ~200ms", elapsed)
	}
	for i, want := range ex.Sent {
		got := recv(t, frames, 5*time.Second, "frame "+string(want))
		if !jsonEqual(t, got, string(want)) {
			t.Errorf("frame %d: got %s, want %s", i, got, want)
		}
	}
	select {
	case f := <-frames:
		t.Errorf("unexpected extra frame %s", f)
	default:
	}
}

// Cancelling the caller's context aborts like a timeout does.
func TestCall_ContextCancelSendsAbort(t *testing.T) {
	var mu sync.Mutex
	cancelled := false
	mux := NewMux()
	mux.Handle("ws", "/hang", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		<-ctx.Done()
		mu.Lock()
		cancelled = true
		mu.Unlock()
		return nil, ctx.Err()
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ch := dialTest(t, addr, DialConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := ch.Call(ctx, "ws", "/hang", nil, 0)
	var e *Error
	if !errors.As(err, &e) || e.Code != "ECONNABORTED" || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	eventually(t, 5*time.Second, "handler cancelled by the abort", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return cancelled
	})
}

func dialTest(t testing.TB, addr string, cfg DialConfig) *Channel {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ch, err := Dial(context.Background(), addr, "127.0.0.1:9", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close(websocket.StatusNormalClosure, ""); <-ch.Done() })
	return ch
}
