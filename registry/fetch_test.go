package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

// testAgent is a Go SDK agent with handlers that exercise every outcome of a proxied call.
type testAgent struct {
	*wsserver.Agent
	aborted atomic.Int64 // slow calls whose context ended before they finished
	started chan struct{}
}

func startAgent(t *testing.T, registryWS string, namespaces ...string) *testAgent {
	t.Helper()
	a, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registry: registryWS, Listen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{Agent: a, started: make(chan struct{}, 1024)}
	t.Cleanup(func() { a.Close() })
	a.Handle("ws", "/echo", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return props, nil
	})
	a.Handle("ws", "/whoami", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return json.Marshal(a.Addr())
	})
	a.Handle("ws", "/nothing", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, nil
	})
	a.Handle("ws", "/forbidden", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, wsserver.NewError(403, "no entry")
	})
	a.Handle("ws", "/boom", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("boom")
	})
	a.Handle("ws", "/weird", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return nil, &wsserver.Error{Code: "EWEIRD", Message: "strange status"}
	})
	a.Handle("http", "/users/7", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`{"via":"http"}`), nil
	})
	a.Handle("ws", "/slow", func(ctx context.Context, _ *wsserver.Channel, _ json.RawMessage) (json.RawMessage, error) {
		ta.started <- struct{}{}
		select {
		case <-ctx.Done():
			ta.aborted.Add(1)
			return nil, ctx.Err()
		case <-time.After(scaled(30 * time.Second)):
			return json.RawMessage(`"late"`), nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	if err := a.Online(ctx, namespaces...); err != nil {
		t.Fatal(err)
	}
	return ta
}

type fetchReply struct {
	code   int
	body   string
	header http.Header
}

func postFetch(t *testing.T, n *Node, path, body string) fetchReply {
	t.Helper()
	resp, err := http.Post("http://"+n.HTTPAddr()+"/v1/fetch/"+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fetchReply{code: resp.StatusCode, body: strings.TrimSpace(string(b)), header: resp.Header}
}

func TestFetch_FromFollowerToAgentOnLeaderAndReverse(t *testing.T) {
	tc := startCluster(t, 3, 5*time.Second)
	l, f := tc.leader(), tc.followers()[0]
	onLeader := startAgent(t, l.WSAddr(), "svc-on-leader")
	onFollower := startAgent(t, f.WSAddr(), "svc-on-follower")
	for _, n := range tc.nodes {
		eventually(t, time.Second, func() bool {
			_, a := n.Where("svc-on-leader")
			_, b := n.Where("svc-on-follower")
			return a && b
		}, "registrations not replicated to %s", n.cfg.NodeID)
	}
	cases := []struct {
		via  *Node
		ns   string
		want string
	}{
		{f, "svc-on-leader", onLeader.Addr()},
		{l, "svc-on-follower", onFollower.Addr()},
		{f, "svc-on-follower", onFollower.Addr()}, // reuses the agent's own connection
	}
	for _, c := range cases {
		r := postFetch(t, c.via, c.ns+"/whoami", `[]`)
		if r.code != 200 || r.body != `"`+c.want+`"` {
			t.Fatalf("fetch %s via %s: %d %s, want %q", c.ns, c.via.cfg.NodeID, r.code, r.body, c.want)
		}
	}
	// Go API, with the props passed through unchanged.
	res, err := f.Fetch(context.Background(), "ws", "svc-on-leader/echo", []any{1, "a", map[string]int{"x": 3}}, 2*time.Second)
	if err != nil || string(res) != `[1,"a",{"x":3}]` {
		t.Fatalf("Go Fetch: %s %v", res, err)
	}
	// The follower reused the agent's own connection: it dialed nothing for svc-on-follower.
	if ch := f.ws.Channel(onFollower.Addr()); ch == nil {
		t.Fatal("agent's own connection not found on its node")
	}
}

func TestFetch_StatusMapping(t *testing.T) {
	n := startNode(t, t.TempDir())
	startAgent(t, n.WSAddr(), "svc")
	cases := []struct {
		path, body string
		code       int
		want       string // substring of the body
	}{
		{"svc/echo", `[1,"a"]`, 200, `[1,"a"]`},
		{"svc/echo", ``, 200, `[]`},
		{"svc/users/7?protocol=http", `[{"params":{"id":"7"}}]`, 200, `{"via":"http"}`},
		{"nobody/echo", `[]`, 404, `"message":"Cannot find the namepsace of nobody from registry"`},
		{"svc/forbidden", `[]`, 403, `{"message":"no entry","status":403}`},
		{"svc/boom", `[]`, 500, `{"message":"boom","status":500}`},
		{"svc/nosuch", `[]`, 502, `"status":104`},
		{"svc/weird", `[]`, 502, `"status":"EWEIRD"`},
		{"svc/slow?timeout=100", `[]`, 504, `"status":"ECONNABORTED"`},
		{"svc/echo", `{"not":"an array"}`, 400, `must be a JSON array`},
		{"svc/echo", `[1,`, 400, `must be a JSON array`},
		{"svc/echo?protocol=ftp", `[]`, 400, `protocol must be ws or http`},
		{"svc/echo?timeout=soon", `[]`, 400, `timeout must be a positive number`},
	}
	for _, c := range cases {
		r := postFetch(t, n, c.path, c.body)
		if r.code != c.code || !strings.Contains(r.body, c.want) {
			t.Errorf("POST /v1/fetch/%s %s: got %d %s, want %d containing %s", c.path, c.body, r.code, r.body, c.code, c.want)
		}
	}
	if r := postFetch(t, n, "svc/nothing", `[]`); r.code != 200 || r.body != "" || r.header.Get("X-Wsregistry-Result") != "undefined" {
		t.Errorf("undefined result: %d %q %v", r.code, r.body, r.header)
	}
	_, err := n.Fetch(context.Background(), "ws", "nobody/x", nil, time.Second)
	var we *wsserver.Error
	if !errors.As(err, &we) || we.Status != 404 || we.Message != "Cannot find the namepsace of nobody from registry" {
		t.Errorf("Go API unknown namespace: %v", err)
	}
}

func TestFetch_TimeoutAndCallerGoneSendAbortToAgent(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := startAgent(t, n.WSAddr(), "svc")
	start := time.Now()
	if r := postFetch(t, n, "svc/slow?timeout=200", `[]`); r.code != 504 {
		t.Fatalf("timeout: %d %s", r.code, r.body)
	}
	if d := time.Since(start); d > scaled(5*time.Second) {
		t.Fatalf("timeout of 200 ms took %v", d)
	}
	eventually(t, 5*time.Second, func() bool { return a.aborted.Load() == 1 }, "agent's handler was not aborted after the timeout")

	// The HTTP caller going away aborts the call too.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.HTTPAddr()+"/v1/fetch/svc/slow", strings.NewReader("[]"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-a.started
	<-a.started
	cancel()
	<-done
	eventually(t, 5*time.Second, func() bool { return a.aborted.Load() == 2 }, "agent's handler was not aborted when the caller went away")
}

func TestFetch_ThousandConcurrentCallsOverOnePooledChannel(t *testing.T) {
	tc := startCluster(t, 3, 5*time.Second)
	l, f := tc.leader(), tc.followers()[0]
	startAgent(t, l.WSAddr(), "svc")
	eventually(t, time.Second, func() bool { _, ok := f.Where("svc"); return ok }, "not replicated")
	const calls = 1000
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.Fetch(context.Background(), "ws", "svc/echo", []any{i, fmt.Sprintf("call-%d", i)}, scaled(20*time.Second))
			if err != nil || string(res) != fmt.Sprintf(`[%d,"call-%d"]`, i, i) {
				if bad.Add(1) < 5 {
					t.Errorf("call %d: %s %v", i, res, err)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d calls got something else than their own answer", bad.Load(), calls)
	}
	if got := f.peers.Len(); got != 1 {
		t.Fatalf("follower holds %d dialed channels for one agent, want 1", got)
	}
}

func TestFetch_AgentDyingMidCallIs502Promptly(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := startAgent(t, n.WSAddr(), "svc")
	type result struct {
		r   fetchReply
		dur time.Duration
	}
	out := make(chan result, 1)
	go func() {
		start := time.Now()
		r := postFetch(t, n, "svc/slow?timeout=20000", `[]`)
		out <- result{r, time.Since(start)}
	}()
	<-a.started
	a.Close()
	res := <-out
	if res.r.code != 502 {
		t.Fatalf("agent died mid-call: %d %s, want 502", res.r.code, res.r.body)
	}
	if res.dur > scaled(5*time.Second) {
		t.Fatalf("502 took %v: the caller waited for the timeout", res.dur)
	}
}

func TestFetch_UnreachableInstanceTriesNextAndNamesEveryAddress(t *testing.T) {
	tc := startCluster(t, 3, 30*time.Second)
	l, f := tc.leader(), tc.followers()[0]
	live := startAgent(t, l.WSAddr(), "svc")
	// A registration whose agent does not listen: its connection to the leader is raw and its
	// advertised port is closed.
	dead := net.JoinHostPort("127.0.0.1", freePort(t))
	host, port, _ := net.SplitHostPort(dead)
	raw := dialRaw(t, l, "/"+host+"/"+port)
	raw.call(online(0, "svc"), ok(0))
	raw2 := dialRaw(t, l, "/127.0.0.1/"+freePort(t))
	raw2.call(online(0, "only-dead"), ok(0))
	eventually(t, time.Second, func() bool { return len(f.State().Instances("svc")) == 2 }, "not replicated")

	for i := 0; i < 4; i++ { // round robin starts on either instance: all must reach the live one
		res, err := f.Fetch(context.Background(), "ws", "svc/whoami", nil, 2*time.Second)
		if err != nil || string(res) != `"`+live.Addr()+`"` {
			t.Fatalf("call %d: %s %v", i, res, err)
		}
	}
	eventually(t, time.Second, func() bool { _, ok := f.Where("only-dead"); return ok }, "not replicated")
	r := postFetch(t, f, "only-dead/echo", `[]`)
	if r.code != 502 || !strings.Contains(r.body, "tried 127.0.0.1:") {
		t.Fatalf("all instances unreachable: %d %s", r.code, r.body)
	}
}

func TestFetch_ClosedChannelIsDroppedAndRedialed(t *testing.T) {
	tc := startCluster(t, 3, 30*time.Second)
	l, f := tc.leader(), tc.followers()[0]
	a := startAgent(t, l.WSAddr(), "svc")
	eventually(t, time.Second, func() bool { _, ok := f.Where("svc"); return ok }, "not replicated")
	if _, err := f.Fetch(context.Background(), "ws", "svc/echo", nil, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if f.peers.Len() != 1 {
		t.Fatalf("pool holds %d channels", f.peers.Len())
	}
	// The channel closes (the agent restarted its server, say).
	ch, err := f.peers.Get(context.Background(), a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	ch.Close(1001, "bye")
	eventually(t, 5*time.Second, func() bool { return f.peers.Len() == 0 }, "closed channel kept in the pool")
	res, err := f.Fetch(context.Background(), "ws", "svc/echo", []any{"again"}, 2*time.Second)
	if err != nil || string(res) != `["again"]` {
		t.Fatalf("after redial: %s %v", res, err)
	}
}

func freePort(t *testing.T) string {
	ln := listen(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}
