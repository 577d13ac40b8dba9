package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestAccept_RefusesBadPathsWith400(t *testing.T) {
	_, addr := startServer(t, ServerConfig{})
	for _, path := range []string{"/", "/10.0.0.7", "/10.0.0.7/", "//9001", "/10.0.0.7/0", "/10.0.0.7/65536",
		"/10.0.0.7/99999999999999999999", "/10.0.0.7/abc", "/10.0.0.7/-1", "/10.0.0.7/+80", "/10.0.0.7/9001x"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		reason := strings.TrimSuffix(string(body), "\n")
		if resp.StatusCode != http.StatusBadRequest || reason == "" || strings.Contains(reason, "\n") {
			t.Errorf("%s: %d %q, want 400 with a one-line reason", path, resp.StatusCode, body)
		}
	}
}

func TestParseKey(t *testing.T) {
	for path, want := range map[string]string{
		"/10.0.0.7/9001":             "10.0.0.7:9001",
		"/10.0.0.7/9001/extra/stuff": "10.0.0.7:9001",
		"/host.example/00080":        "host.example:80",
		"/h/65535/":                  "h:65535",
	} {
		if got, err := ParseKey(path); err != nil || got != want {
			t.Errorf("ParseKey(%q) = %q, %v; want %q", path, got, err, want)
		}
	}
}

func TestAccept_StripsQueryIgnoresExtraSegments(t *testing.T) {
	keys := make(chan string, 1)
	remotes := make(chan string, 1)
	_, addr := startServer(t, ServerConfig{OnOpen: func(ch *Channel) { keys <- ch.Key(); remotes <- ch.RemoteAddr() }})
	c := rawDial(t, "ws://"+addr+"/10.0.0.7/9001/extra/x?token=abc")
	if got := recv(t, keys, 5*time.Second, "OnOpen"); got != "10.0.0.7:9001" {
		t.Fatalf("key = %q", got)
	}
	if got := recv(t, remotes, 5*time.Second, "remote"); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Fatalf("remote = %q", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// A newer connection for a key replaces the older (1008 "replaced"); the
// older's OnClose returns before the newer's OnOpen is called.
func TestAccept_NewerConnectionReplacesOlder(t *testing.T) {
	var mu sync.Mutex
	var events []string
	opened := make(chan *Channel, 2)
	var srv *Server
	srv, addr := startServer(t, ServerConfig{
		OnOpen: func(ch *Channel) {
			mu.Lock()
			events = append(events, "open "+ch.RemoteAddr())
			mu.Unlock()
			opened <- ch
		},
		ChannelConfig: ChannelConfig{OnClose: func(ch *Channel) {
			time.Sleep(20 * time.Millisecond) // a slow deregistration must still come first
			mu.Lock()
			events = append(events, "close "+ch.RemoteAddr())
			mu.Unlock()
		}},
	})
	a := rawDial(t, "ws://"+addr+"/10.0.0.7/9001")
	aErr := make(chan error, 1)
	go func() { aErr <- readErr(t, a) }() // a live agent keeps reading
	chA := recv(t, opened, 5*time.Second, "first OnOpen")
	start := time.Now()
	b := rawDial(t, "ws://"+addr+"/10.0.0.7/9001")
	chB := recv(t, opened, 5*time.Second, "second OnOpen")
	if d := time.Since(start); d > scaled(500*time.Millisecond) {
		t.Errorf("replacement took %v", d)
	}

	err := recv(t, aErr, 5*time.Second, "older connection end")
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("older connection ended with %v, want 1008 replaced", err)
	}
	<-chA.Done()
	if ce := chA.Err(); websocket.CloseStatus(ce) != websocket.StatusPolicyViolation || !strings.Contains(ce.Error(), ReasonReplaced) {
		t.Errorf("older Err = %v", ce)
	}
	mu.Lock()
	want := []string{"open " + chA.RemoteAddr(), "close " + chA.RemoteAddr(), "open " + chB.RemoteAddr()}
	if strings.Join(events, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", events, want)
	}
	mu.Unlock()
	if srv.Channel("10.0.0.7:9001") != chB || srv.Len() != 1 {
		t.Errorf("Channel(key) is not the newer one or Len %d != 1", srv.Len())
	}
	// The newer connection works.
	rawWrite(t, b, `{"id":0,"twoway":true,"data":{"cmd":"x","props":[],"protocol":"ws"},"mode":0}`)
	if got := rawRead(t, b); !strings.Contains(got, `"status":104`) {
		t.Errorf("newer connection answered %s", got)
	}
}

func TestShutdown_ClosesWith1001AndRefusesNew(t *testing.T) {
	closed := make(chan struct{}, 1)
	s := NewServer(ServerConfig{ChannelConfig: ChannelConfig{Logger: testLogger(t), OnClose: func(*Channel) { closed <- struct{}{} }}})
	srv := &http.Server{Handler: s}
	ln := listen(t)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	c := rawDial(t, "ws://"+addr+"/10.0.0.7/9001")
	eventually(t, 5*time.Second, "channel registered", func() bool { return s.Len() == 1 })
	go func() {
		// the client keeps reading so it answers the close handshake
		readErr(t, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	default:
		t.Fatal("Shutdown returned before OnClose ran")
	}
	if s.Len() != 0 {
		t.Errorf("Len = %d after Shutdown", s.Len())
	}
	_, resp, err := websocket.Dial(ctx, "ws://"+addr+"/10.0.0.7/9001", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after shutdown: %v, %v", resp, err)
	}
}

func TestCloseAll_WaitsForOnClose(t *testing.T) {
	var mu sync.Mutex
	var codes []websocket.StatusCode
	s, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{OnClose: func(ch *Channel) {
		mu.Lock()
		codes = append(codes, websocket.CloseStatus(ch.Err()))
		mu.Unlock()
	}}})
	for _, p := range []string{"/10.0.0.7/1", "/10.0.0.7/2", "/10.0.0.7/3"} {
		c := rawDial(t, "ws://"+addr+p)
		go readErr(t, c)
	}
	eventually(t, 5*time.Second, "3 channels", func() bool { return s.Len() == 3 })
	s.CloseAll(websocket.StatusServiceRestart, "fenced")
	mu.Lock()
	defer mu.Unlock()
	if len(codes) != 3 || codes[0] != websocket.StatusServiceRestart {
		t.Fatalf("OnClose codes %v after CloseAll", codes)
	}
}

// Bad frames close only their own connection, with the matching status.
func TestBadFrames_CloseOnlyThatConnection(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/echo", echoHandler)
	var mu sync.Mutex
	ends := map[string]error{}
	s, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, ReadLimit: 1024, OnClose: func(ch *Channel) {
		mu.Lock()
		ends[ch.Key()] = ch.Err()
		mu.Unlock()
	}}})
	bystander := dialTest(t, addr, DialConfig{})
	check := func(key string, code websocket.StatusCode) {
		t.Helper()
		var err error
		eventually(t, 10*time.Second, "OnClose of "+key, func() bool {
			mu.Lock()
			defer mu.Unlock()
			err = ends[key]
			return err != nil
		})
		if websocket.CloseStatus(err) != code {
			t.Errorf("%s ended with %v, want %d", key, err, code)
		}
		if res, err := bystander.Call(context.Background(), "ws", "/echo", []int{1}, 5*time.Second); err != nil || string(res) != "[1]" {
			t.Fatalf("bystander broken after %s: %s %v", key, res, err)
		}
	}

	t.Run("1009 oversize", func(t *testing.T) {
		c := rawDial(t, "ws://"+addr+"/10.0.0.9/1009")
		rawWrite(t, c, `{"id":0,"twoway":true,"data":{"cmd":"/echo","props":["`+strings.Repeat("x", 1000)+`"],"protocol":"ws"},"mode":0}`)
		if err := readErr(t, c); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Errorf("client saw %v, want 1009", err)
		}
		check("10.0.0.9:1009", websocket.StatusMessageTooBig)
	})
	t.Run("1007 invalid UTF-8", func(t *testing.T) {
		c := rawDial(t, "ws://"+addr+"/10.0.0.9/1007")
		rawWrite(t, c, "{\"id\":0,\"twoway\":true,\"data\":{\"cmd\":\"/echo\",\"props\":[\"\xff\xfe\"],\"protocol\":\"ws\"},\"mode\":0}")
		if err := readErr(t, c); websocket.CloseStatus(err) != websocket.StatusInvalidFramePayloadData {
			t.Errorf("client saw %v, want 1007", err)
		}
		check("10.0.0.9:1007", websocket.StatusInvalidFramePayloadData)
	})
	t.Run("1002 reserved opcode", func(t *testing.T) {
		nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/1002")
		if _, err := nc.Write(rawFrame(true, 0x3, []byte("x"))); err != nil {
			t.Fatal(err)
		}
		nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
		op, payload := readServerFrame(t, br)
		if op != 0x8 || len(payload) < 2 || int(payload[0])<<8|int(payload[1]) != 1002 {
			t.Fatalf("server sent opcode %d payload %q, want close 1002", op, payload)
		}
		nc.Write(rawFrame(true, 0x8, payload[:2])) // answer the close
		check("10.0.0.9:1002", websocket.StatusProtocolError)
	})
	if s.Len() != 1 {
		t.Errorf("Len = %d, want only the bystander", s.Len())
	}
}

func TestHeartbeat_ClosesPeerThatStopsAnsweringPings(t *testing.T) {
	const interval = 50 * time.Millisecond
	closed := make(chan error, 2)
	s, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{PingInterval: interval, PingMisses: 3, CloseTimeout: 100 * time.Millisecond,
		OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	// A healthy peer (it reads, so it answers pings) stays connected.
	healthy := dialTest(t, addr, DialConfig{ChannelConfig: ChannelConfig{PingInterval: -1}})
	// A vanished peer: handshake done, then it never reads again.
	start := time.Now()
	rawTCPHandshake(t, addr, "/10.0.0.9/7")
	err := recv(t, closed, 5*time.Second, "the silent peer to be closed")
	elapsed := time.Since(start)
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), ReasonPingTimeout) {
		t.Errorf("Err = %v, want 1008 ping timeout", err)
	}
	// 3 misses of one interval each, after the first interval, plus the close timeout.
	if elapsed < 3*interval || elapsed > scaled(2*time.Second) {
		t.Errorf("closed after %v, want about %v", elapsed, 4*interval+100*time.Millisecond)
	}
	if healthy.isDead() || s.Len() != 1 {
		t.Errorf("healthy peer was closed (Len %d)", s.Len())
	}
}

func TestSlowConsumer_IsCutOff(t *testing.T) {
	big := json.RawMessage(`"` + strings.Repeat("x", 64<<10) + `"`)
	mux := NewMux()
	mux.Handle("ws", "/big", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { return big, nil })
	closed := make(chan error, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, SendQueue: 4, WriteTimeout: 500 * time.Millisecond, PingInterval: -1, CloseTimeout: 100 * time.Millisecond,
		OnClose: func(ch *Channel) { closed <- ch.Err() }}})
	// The client asks for a lot and never reads.
	nc, _ := rawTCPHandshake(t, addr, "/10.0.0.9/8")
	go func() {
		req := []byte(`{"id":0,"twoway":true,"data":{"cmd":"/big","props":[],"protocol":"ws"},"mode":0}`)
		for i := 0; i < 500; i++ {
			if _, err := nc.Write(rawFrame(true, 0x1, req)); err != nil {
				return
			}
		}
	}()
	// Cut off by whichever notices first: the writer's deadline on the socket, or a full
	// queue that stayed full for as long (1008 "slow consumer").
	err := recv(t, closed, 10*time.Second, "slow consumer to be closed")
	if err == nil {
		t.Fatal("slow consumer closed without an error")
	}
	slow := websocket.CloseStatus(err) == websocket.StatusPolicyViolation && strings.Contains(err.Error(), ReasonSlowConsumer)
	if !slow && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Err = %v, want 1008 slow consumer or a write timeout", err)
	}
}

func TestOnClose_RunsAfterHandlersReturned(t *testing.T) {
	var mu sync.Mutex
	handlerDone := false
	started := make(chan struct{})
	result := make(chan bool, 1)
	mux := NewMux()
	mux.Handle("ws", "/hang", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		close(started)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // slow cleanup after cancellation
		mu.Lock()
		handlerDone = true
		mu.Unlock()
		return nil, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, OnClose: func(ch *Channel) {
		mu.Lock()
		result <- handlerDone
		mu.Unlock()
	}}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/1")
	rawWrite(t, c, `{"id":0,"twoway":true,"data":{"cmd":"/hang","props":[],"protocol":"ws"},"mode":0}`)
	recv(t, started, 5*time.Second, "handler start")
	c.CloseNow() // the agent vanishes mid-request
	if !recv(t, result, 5*time.Second, "OnClose") {
		t.Fatal("OnClose ran before the handler returned")
	}
}

func TestBurstOfRepliesWaitsForTheWriterInsteadOfClosing(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/echo", func(_ context.Context, _ *Channel, props json.RawMessage) (json.RawMessage, error) { return props, nil })
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, SendQueue: 2}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/3")
	const n = 500 // far more replies at once than the queue holds
	for i := range n {
		rawWrite(t, c, fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":"/echo","props":[%d],"protocol":"ws"},"mode":0}`, i, i))
	}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, b, err := c.Read(ctx)
		cancel()
		if err != nil || !strings.Contains(string(b), `"status":200`) {
			t.Fatalf("reply: %s %v", b, err)
		}
	}
}

func TestTooManyRequestsInFlightAre429(t *testing.T) {
	release := make(chan struct{})
	mux := NewMux()
	mux.Handle("ws", "/hold", func(ctx context.Context, _ *Channel, _ json.RawMessage) (json.RawMessage, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/4")
	for i := range DefaultMaxInflight + 1 {
		rawWrite(t, c, fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":"/hold","props":[],"protocol":"ws"},"mode":0}`, i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	close(release)
	if err != nil || !strings.Contains(string(b), `"status":429`) || !strings.Contains(string(b), fmt.Sprintf(`"id":%d`, DefaultMaxInflight)) {
		t.Fatalf("first reply: %s %v, want 429 for the request over the limit", b, err)
	}
}

func TestServer_AuthFromRequestReachesChannel(t *testing.T) {
	m := NewMux()
	// As the registry's online would: register only namespaces the token allows.
	m.Handle("ws", "online", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		json.Unmarshal(props, &args)
		allowed, _ := ch.Auth().([]string)
		for _, ns := range allowed {
			if len(args) == 1 && ns == args[0] {
				return nil, nil
			}
		}
		return nil, NewError(403, "namespace not allowed")
	})
	auths := make(chan any, 2)
	s := NewServer(ServerConfig{ChannelConfig: ChannelConfig{Mux: m, Logger: testLogger(t)}, OnOpen: func(ch *Channel) { auths <- ch.Auth() }})
	gate := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer good" {
			r = WithAuth(r, []string{"billing"})
		}
		s.ServeHTTP(w, r)
	})
	ts := httptest.NewServer(gate)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		s.Shutdown(ctx)
		ts.Close()
	})
	addr := strings.TrimPrefix(ts.URL, "http://")

	good := dialT(t, addr, "10.0.0.1:1", DialConfig{HTTPHeader: http.Header{"Authorization": {"Bearer good"}}})
	if a, ok := recv(t, auths, 5*time.Second, "OnOpen").([]string); !ok || len(a) != 1 || a[0] != "billing" {
		t.Fatalf("Auth in OnOpen = %v", a)
	}
	if _, err := good.Call(context.Background(), "ws", "online", []string{"billing"}, 0); err != nil {
		t.Fatalf("allowed namespace: %v", err)
	}
	var e *Error
	if _, err := good.Call(context.Background(), "ws", "online", []string{"payroll"}, 0); !errors.As(err, &e) || e.Status != 403 {
		t.Fatalf("namespace outside the token: %v, want 403", err)
	}
	if good.Auth() != nil {
		t.Errorf("dialed channel Auth = %v, want nil", good.Auth())
	}

	anon := dialT(t, addr, "10.0.0.2:2", DialConfig{})
	if a := recv(t, auths, 5*time.Second, "OnOpen"); a != nil {
		t.Fatalf("Auth without WithAuth = %v, want nil", a)
	}
	if _, err := anon.Call(context.Background(), "ws", "online", []string{"billing"}, 0); !errors.As(err, &e) || e.Status != 403 {
		t.Fatalf("no token: %v, want 403", err)
	}
}
