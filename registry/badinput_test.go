package registry

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Every bad input of issue 8 against a live node: each gets a clear error or the
// documented ignore, the node stays up and a bystander agent is unaffected.
func TestBadInput_TableAgainstALiveNode(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.Limits.MaxConnectionsPerIP = 300
		c.WriteTimeout = 300 * time.Millisecond
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	bystander := dialRaw(t, n, "/127.0.0.2/7000")
	bystander.call(online(0, "bystander"), ok(0))
	probe := 0
	stillFine := func(t *testing.T) {
		t.Helper()
		probe++
		bystander.call(where(probe, "bystander"), found(probe, "127.0.0.2:7000"))
		if ok, why := n.Ready(); !ok {
			t.Fatalf("node not ready after bad input: %s", why)
		}
	}

	t.Run("missing and malformed path segments: 400 before the upgrade", func(t *testing.T) {
		for _, p := range []string{"/", "/onlyhost", "/h/", "/h/port", "/h/99999"} {
			resp, err := http.Get("http://" + n.WSAddr() + p)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 || len(body) == 0 {
				t.Errorf("%s: %d %q", p, resp.StatusCode, body)
			}
		}
		stillFine(t)
	})
	t.Run("extra path segments are ignored", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7001/x/y/z")
		a.call(where(0, "bystander"), found(0, "127.0.0.2:7000"))
	})
	t.Run("frames of the wrong shape at every level are ignored", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7002")
		for _, f := range []string{
			`not json`, `{`, `null`, `42`, `[1,2]`, `{}`,
			`{"id":"7","twoway":true,"data":{"cmd":"where","props":["x"],"protocol":"ws"},"mode":0}`,
			`{"id":99999999999999999999999,"twoway":true,"data":{"cmd":"where","props":["x"],"protocol":"ws"},"mode":0}`,
			`{"id":-1.5,"twoway":true,"data":{"cmd":"where","props":["x"],"protocol":"ws"},"mode":0}`,
			`{"id":1,"twoway":true,"data":{"cmd":"where","props":["x"],"protocol":"ws"},"mode":9}`,
			`{"id":1,"twoway":true,"data":{"cmd":"where","props":["x"],"protocol":"ws"},"mode":"0"}`,
			`{"id":1,"twoway":true,"data":[],"mode":0}`,
			`{"id":1,"twoway":true,"data":{"cmd":["where"],"props":["x"],"protocol":"ws"},"mode":0}`,
			`{"id":1,"twoway":true,"data":{"cmd":"where","props":["x"],"protocol":{}},"mode":0}`,
			`{"id":1,"twoway":true,"mode":0}`,
			`{"id":1,"mode":2,"data":"abc"}`,
		} {
			a.sendText(f)
		}
		a.call(where(50, "bystander"), found(50, "127.0.0.2:7000"))
		stillFine(t)
	})
	t.Run("props of the wrong shape are 400", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7003")
		a.sendText(`{"id":0,"twoway":true,"data":{"cmd":"online","props":{"ns":"x"},"protocol":"ws"},"mode":0}`)
		if got := js(a.next()); !strings.Contains(got, `"status":400`) {
			t.Fatalf("object props: %s", got)
		}
	})
	t.Run("binary messages holding JSON are served", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7004")
		a.send(websocket.MessageBinary, []byte(where(0, "bystander")))
		if got := js(a.next()); !strings.Contains(got, "127.0.0.2:7000") {
			t.Fatalf("binary where: %s", got)
		}
	})
	t.Run("a 2 MiB message closes that connection with 1009", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7005")
		a.sendText(`{"id":0,"twoway":true,"data":{"cmd":"where","props":["` + strings.Repeat("a", 2<<20) + `"],"protocol":"ws"},"mode":0}`)
		if code, _ := a.closeStatus(); code != websocket.StatusMessageTooBig {
			t.Fatalf("closed with %d", code)
		}
		stillFine(t)
	})
	t.Run("10,000 namespaces from one connection: the first 1,024, then 429", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7006")
		window := make(chan struct{}, 256) // requests in flight, as a pipelining client keeps them
		go func() {
			for i := range 10000 {
				window <- struct{}{}
				a.conn.Write(context.Background(), websocket.MessageText, []byte(online(i, fmt.Sprintf("many-%d", i))))
			}
		}()
		okCount, limited := 0, 0
		for range 10000 {
			got := js(a.next())
			<-window
			switch {
			case strings.Contains(got, `"data":{"status":200}`):
				okCount++
			case strings.Contains(got, `"status":429`) && strings.Contains(got, "1024 namespaces"):
				limited++
			default:
				t.Fatalf("unexpected reply %s", got)
			}
		}
		if okCount != 1024 || limited != 10000-1024 {
			t.Fatalf("%d registered, %d refused; want 1024 and %d", okCount, limited, 10000-1024)
		}
		stillFine(t)
		a.conn.Close(websocket.StatusNormalClosure, "")
		eventually(t, 10*time.Second, func() bool { _, ok := n.Where("many-0"); return !ok }, "many-* not deregistered")
	})
	t.Run("a client that never reads is cut off", func(t *testing.T) {
		a := dialRaw(t, n, "/127.0.0.1/7007")
		big := `{"id":%d,"twoway":true,"data":{"cmd":"nosuch-` + strings.Repeat("x", 4000) + `","props":[],"protocol":"ws"},"mode":0}`
		ctx, cancel := context.WithTimeout(context.Background(), scaled(20*time.Second))
		defer cancel()
		var err error
		for i := 0; err == nil && ctx.Err() == nil; i++ {
			err = a.conn.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(big, i)))
		}
		if ctx.Err() != nil {
			t.Fatal("the node kept buffering for a client that never reads")
		}
		stillFine(t)
	})
	t.Run("a handshake that never completes is dropped", func(t *testing.T) {
		c, err := net.Dial("tcp", n.WSAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET /127.0.0.1/7008 HTTP/1.1\r\nHost: x\r\n")) // and never the rest
		c.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
		_, err = bufio.NewReader(c).ReadString('\n')
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("half-open handshake kept for 5 s")
		}
		stillFine(t)
	})
}

// syncBuf collects log output so tests can check what was (not) logged.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestAuth_AgentTokenAndAddressChecks(t *testing.T) {
	logs := &syncBuf{}
	const token = "agent-s3cret-token"
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.Auth.AgentToken = token
		c.VerifyAgentIP = true
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	status := func(path string, hdr http.Header) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
		defer cancel()
		c, resp, err := websocket.Dial(ctx, "ws://"+n.WSAddr()+path, &websocket.DialOptions{HTTPHeader: hdr})
		if err == nil {
			defer c.CloseNow()
			// prove it works
			c.Write(ctx, websocket.MessageText, []byte(online(0, "svc")))
			_, b, err := c.Read(ctx)
			if err != nil {
				return -1, err.Error()
			}
			return 101, string(b)
		}
		if resp == nil {
			return -1, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	cases := []struct {
		name string
		path string
		hdr  http.Header
		want int
	}{
		{"no token", "/127.0.0.1/9001", nil, 401},
		{"wrong token in path", "/t/nope/127.0.0.1/9001", nil, 401},
		{"wrong bearer", "/127.0.0.1/9001", http.Header{"Authorization": {"Bearer nope"}}, 401},
		{"token as path prefix (unchanged iocore agents)", "/t/" + token + "/127.0.0.1/9001", nil, 101},
		{"bearer", "/127.0.0.1/9002", http.Header{"Authorization": {"Bearer " + token}}, 101},
		{"query", "/127.0.0.1/9003?token=" + token, nil, 101},
		{"advertised address is not the source", "/t/" + token + "/10.1.2.3/9004", nil, 403},
	}
	for _, c := range cases {
		got, body := status(c.path, c.hdr)
		if got != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, got, body, c.want)
		}
		if got == 401 && (!strings.Contains(body, "agent token") || strings.Contains(body, "nope")) {
			t.Errorf("%s: 401 body %q", c.name, body)
		}
		if got == 403 && !strings.Contains(body, "10.1.2.3") {
			t.Errorf("%s: 403 body %q", c.name, body)
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Fatal("the agent token appears in the logs")
	}
}

func TestAuth_AdminTokenAndNoInternalCallsOnThePublicPort(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.Cluster.Peer.Keys = []string{"cluster-s3cret"}
		c.Auth.AdminToken = "admin-s3cret"
	})
	post := func(path, header, value string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+n.HTTPAddr()+path, strings.NewReader("{}"))
		if header != "" {
			req.Header.Set(header, value)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Node-to-node calls live on the peer port only: the public port does not know them,
	// whatever key is sent.
	for _, p := range []string{"/internal/v1/propose", "/internal/v1/join", "/internal/v1/remove", "/internal/v1/info"} {
		if got := post(p, "X-Wsregistry-Cluster-Key", "cluster-s3cret"); got != 404 {
			t.Errorf("%s on the public HTTP port: %d, want 404", p, got)
		}
	}
	for _, p := range []string{"/v1/join?addr=127.0.0.1:1", "/v1/leave", "/v1/remove/x"} {
		if got := post(p, "", ""); got != 401 {
			t.Errorf("%s without admin token: %d", p, got)
		}
		if got := post(p, "Authorization", "Bearer wrong"); got != 401 {
			t.Errorf("%s with a wrong admin token: %d", p, got)
		}
	}
	if got := post("/v1/remove/x", "Authorization", "Bearer admin-s3cret"); got != 404 {
		t.Errorf("remove of an unknown member with the admin token: %d, want 404", got)
	}
}

func TestAccept_HostWithColonIsRefusedBeforeTheUpgrade(t *testing.T) {
	n := startNode(t, t.TempDir())
	resp, err := http.Get("http://" + n.WSAddr() + "/a:b/9001")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "contains ':'") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// A node id names sessions and members in every node's state: one that is not valid
// UTF-8 or holds control characters is refused at start, with the reason.
func TestStart_RefusesABadNodeID(t *testing.T) {
	for _, id := range []string{"n\xff", "n\n1"} {
		ws, api, rl := listen(t), listen(t), listen(t)
		_, err := Start(Config{NodeID: id, DataDir: t.TempDir(), WSListener: ws, HTTPListener: api, RaftListener: rl,
			WSAdvertise: ws.Addr().String(), HTTPAdvertise: api.Addr().String(), RaftAdvertise: rl.Addr().String(), Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "node id") {
			t.Errorf("Start with node id %q: %v, want a node id error", id, err)
		}
		ws.Close()
		api.Close()
		rl.Close()
	}
}

// 5,000 connections from one address: the per-address limit answers 503 to all but 300.
// Its own node, with the default handshake and write timeouts and no pings in the way: the
// table's node has 300 ms timeouts for its slow-client rows, and on a loaded machine those
// cut off dials or free slots (an accepted connection closed by a missed pong), which is
// not what this row is about.
func TestLimits_PerAddressConnectionLimitAnswers503(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.Limits.MaxConnectionsPerIP = 300
		c.PingInterval = time.Hour
	})
	var errs sync.Map // a few dial errors, to say what "other" was
	var accepted, refused, other atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*websocket.Conn
	sem := make(chan struct{}, 32)
	for i := range 5000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), scaled(30*time.Second))
			defer cancel()
			c, resp, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s/127.0.0.9/%d", n.WSAddr(), 10000+i), nil)
			switch {
			case err == nil:
				c.CloseRead(context.Background()) // answer pings, so the slot stays taken
				accepted.Add(1)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			case resp != nil && resp.StatusCode == 503:
				refused.Add(1)
			default:
				if other.Add(1) <= 3 {
					errs.Store(i, fmt.Sprintf("%v (response %v)", err, resp != nil))
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.CloseNow()
	}
	// The bystander and this test's own connections come from the same address.
	if accepted.Load() != 300 || refused.Load() != 4700 || other.Load() != 0 {
		var first []string
		errs.Range(func(_, v any) bool { first = append(first, v.(string)); return true })
		t.Fatalf("accepted %d, refused %d, other failures %d %v", accepted.Load(), refused.Load(), other.Load(), first)
	}
	// The slots are given back when the connections end (the agent server's ServeHTTP returns
	// before that: the gate releases through wsserver.WhenClosed).
	eventually(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
		defer cancel()
		c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s/127.0.0.9/9999", n.WSAddr()), nil)
		if err != nil {
			return false
		}
		c.CloseNow()
		return true
	}, "no slot free after every connection closed")
}
