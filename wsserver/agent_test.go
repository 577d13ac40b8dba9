package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// standIn is a minimal in-memory registry built on Server+Mux.
type standIn struct {
	mu      sync.Mutex
	where   map[string]string
	onlines chan [2]string // namespace, key
}

func newStandIn() *standIn {
	return &standIn{where: map[string]string{}, onlines: make(chan [2]string, 64)}
}

func (r *standIn) mux() *Mux {
	m := NewMux()
	m.Handle("ws", "online", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		if err := json.Unmarshal(props, &args); err != nil || len(args) != 1 {
			return nil, NewError(400, "online wants one namespace")
		}
		r.mu.Lock()
		r.where[args[0]] = ch.Key()
		r.mu.Unlock()
		r.onlines <- [2]string{args[0], ch.Key()}
		return nil, nil
	})
	m.Handle("ws", "where", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		if err := json.Unmarshal(props, &args); err != nil || len(args) != 1 {
			return nil, NewError(400, "where wants one namespace")
		}
		r.mu.Lock()
		addr, ok := r.where[args[0]]
		r.mu.Unlock()
		if !ok {
			return nil, nil
		}
		return json.Marshal(addr)
	})
	return m
}

// serveOn serves a new stand-in registry Server on ln until the returned stop is called.
func serveOn(t testing.TB, ln net.Listener, reg *standIn) (stop func()) {
	s := NewServer(ServerConfig{ChannelConfig: ChannelConfig{Mux: reg.mux(), Logger: testLogger(t)}})
	hs := &http.Server{Handler: s}
	go hs.Serve(ln)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.Shutdown(ctx)
			hs.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestAgent_ReconnectsToRestartedRegistryAndReSendsOnline(t *testing.T) {
	ln := listen(t)
	regAddr := ln.Addr().String()
	reg := newStandIn()
	stop := serveOn(t, ln, reg)

	a, err := NewAgent(AgentConfig{Registry: regAddr, Listen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: testLogger(t),
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Online(context.Background(), "svc-a", "svc-b"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		o := recv(t, reg.onlines, 5*time.Second, "online")
		seen[o[0]] = true
		if o[1] != a.Addr() {
			t.Errorf("registered key %q, want %q", o[1], a.Addr())
		}
	}
	if !seen["svc-a"] || !seen["svc-b"] || a.Connects() != 1 {
		t.Fatalf("onlines %v, connects %d", seen, a.Connects())
	}

	// Restart the registry on the same address, with empty state.
	stop()
	eventually(t, 5*time.Second, "agent to notice the loss", func() bool { return a.Registry() == nil })
	ln2, err := net.Listen("tcp", regAddr)
	if err != nil {
		t.Fatal(err)
	}
	reg2 := newStandIn()
	serveOn(t, ln2, reg2)
	seen = map[string]bool{}
	for i := 0; i < 2; i++ {
		seen[recv(t, reg2.onlines, 5*time.Second, "online after restart")[0]] = true
	}
	if !seen["svc-a"] || !seen["svc-b"] {
		t.Fatalf("re-sent onlines %v", seen)
	}
	eventually(t, 5*time.Second, "second connect counted", func() bool { return a.Connects() == 2 })
	addr, found, err := a.Where(context.Background(), "svc-b")
	if err != nil || !found || addr != a.Addr() {
		t.Fatalf("Where after restart: %q %v %v", addr, found, err)
	}
}

func TestAgent_FetchViaWhere(t *testing.T) {
	ln := listen(t)
	reg := newStandIn()
	serveOn(t, ln, reg)
	newAgent := func() *Agent {
		a, err := NewAgent(AgentConfig{Registry: ln.Addr().String(), Listen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		if a.Addr() != a.ln.Addr().String() {
			t.Fatalf("Addr %q, listening on %s", a.Addr(), a.ln.Addr())
		}
		return a
	}
	server, client := newAgent(), newAgent()
	server.Handle("ws", "/users/list", func(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`["ann","bob"]`), nil
	})
	if err := server.Online(context.Background(), "users"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // the second and third reuse the cached channel
		res, err := client.Fetch(context.Background(), "ws", "users/users/list", nil, time.Second)
		if err != nil || string(res) != `["ann","bob"]` {
			t.Fatalf("Fetch: %s %v", res, err)
		}
	}
	if n := client.peers.Len(); n != 1 {
		t.Errorf("%d cached peer channels, want 1", n)
	}
	_, err := client.Fetch(context.Background(), "ws", "nobody/x", nil, time.Second)
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 || e.Message != "Cannot find the namepsace of nobody from registry" {
		t.Fatalf("unknown namespace: %v", err)
	}
}

func TestAgent_RegistryPathPrefixPassedThrough(t *testing.T) {
	paths := make(chan string, 1)
	reg := newStandIn()
	s := NewServer(ServerConfig{ChannelConfig: ChannelConfig{Mux: reg.mux(), Logger: testLogger(t)}})
	ln := listen(t)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.Path
		http.StripPrefix("/t/secret", s).ServeHTTP(w, r)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { s.CloseAll(websocket.StatusGoingAway, ""); hs.Close() })
	a, err := NewAgent(AgentConfig{Registry: ln.Addr().String() + "/t/secret", Listen: "127.0.0.1:0", Advertise: "10.1.2.3:4567", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Online(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if p := recv(t, paths, time.Second, "path"); p != "/t/secret/10.1.2.3/4567" {
		t.Fatalf("dialed path %q", p)
	}
	if o := recv(t, reg.onlines, time.Second, "online"); o != [2]string{"x", "10.1.2.3:4567"} {
		t.Fatalf("online %v", o)
	}
}
