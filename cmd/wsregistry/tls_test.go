package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
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

	"github.com/wsregistry/wsregistry/internal/testcerts"
	"github.com/wsregistry/wsregistry/wsserver"
)

// Three processes with --tls-cert/--tls-key/--tls-ca (HTTPS, mutual TLS between nodes) serve,
// on one agent port at once, an unchanged agent speaking docs/protocol.md's frames over plain
// ws:// and a Go SDK agent over wss://; both are found from every node and reached by the
// fetch gateway, the plain one over the very connection it registered on.
func TestProcess_TLSClusterServesPlainAndTLSAgentsAtOnce(t *testing.T) {
	prefix, ips := loopbackIPs(3)
	var certIPs []net.IP
	for _, ip := range ips {
		certIPs = append(certIPs, net.ParseIP(ip))
	}
	certs, err := testcerts.Write(t.TempDir(), certIPs...)
	if err != nil {
		t.Fatal(err)
	}
	const adminToken = "tls-test-admin-token-0123456789"
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.Pool}}}
	t.Cleanup(hc.CloseIdleConnections)
	procs := startNodes(t, ips, func(i int, all []nodeAddrs) (string, []string, []string) {
		return t.TempDir(), nil, []string{
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--bootstrap-expect", "3", "--join", peerAddrs(all),
			"--tls-cert", certs.Cert, "--tls-key", certs.Key, "--tls-ca", certs.CA,
			"--admin-token", adminToken,
			"--raft-heartbeat-timeout", "200ms", "--raft-election-timeout", "200ms", "--raft-leader-lease-timeout", "100ms"}
	})
	for _, p := range procs {
		eventually(t, 30*time.Second, func() bool {
			code, _, _ := runCLI("healthcheck", "--addr", "https://"+p.http, "--tls-ca", certs.CA, "--timeout", "2s")
			return code == 0
		}, "TLS node %s never ready:\n%s", p.http, p.log.String())
	}
	for _, p := range procs {
		var v struct {
			PeerSecurity string `json:"peer_security"`
		}
		if code := httpsJSON(t, hc, "GET", "https://"+p.http+"/v1/cluster", "", nil, &v); code != 200 || v.PeerSecurity != "mutual-tls" {
			t.Fatalf("%s: /v1/cluster %d, peer_security %q, want mutual-tls", p.http, code, v.PeerSecurity)
		}
	}

	// Both agents on node 0's agent port: the unchanged one in plain ws://, the SDK in wss://.
	plain := startPlainAgent(t, prefix+"10")
	plain.dialRegistry(t, "ws://"+procs[0].ws)
	if got := plain.request(t, "online", "plain-svc"); got.Status != 200 {
		t.Fatalf("online over ws:// on the TLS node: %+v", got)
	}

	sdkLog := &syncBuffer{}
	sdk, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registries: []string{"wss://" + procs[0].ws},
		TLS:        &tls.Config{RootCAs: certs.Pool},
		Listen:     prefix + "11:0",
		Advertise:  prefix + "11",
		Logger:     slog.New(slog.NewTextHandler(sdkLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sdk.Close()
		if t.Failed() {
			t.Logf("SDK agent log:\n%s", sdkLog.String())
		}
	})
	var sdkOnRegistry, sdkElsewhere atomic.Int64
	sdk.Handle("ws", "/echo", func(_ context.Context, ch *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		if ch == sdk.Registry() {
			sdkOnRegistry.Add(1)
		} else {
			sdkElsewhere.Add(1)
		}
		return props, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	if err := sdk.Online(ctx, "sdk-svc"); err != nil {
		t.Fatalf("SDK online over wss://: %v", err)
	}

	// Found from every node, over HTTPS.
	for _, p := range procs {
		for ns, want := range map[string]string{"plain-svc": plain.addr, "sdk-svc": sdk.Addr()} {
			eventually(t, 5*time.Second, func() bool {
				var v struct{ Host string }
				return httpsJSON(t, hc, "GET", "https://"+p.http+"/v1/where/"+ns, "", nil, &v) == 200 && v.Host == want
			}, "%s not found at %s over HTTPS on %s", ns, want, p.http)
		}
	}

	// Reached by the fetch gateway of every node. Node 0 holds both agents' registry
	// connections, so its calls must travel on them; the other nodes dial the agents.
	fetch := func(p *proc, ns string) {
		t.Helper()
		var got any
		code := httpsJSON(t, hc, "POST", "https://"+p.http+"/v1/fetch/"+ns+"/echo?timeout=5000", adminToken, []byte(`[1,"a"]`), &got)
		if b, _ := json.Marshal(got); code != 200 || string(b) != `[1,"a"]` {
			t.Fatalf("fetch %s/echo via %s: %d %s", ns, p.http, code, b)
		}
	}
	fetch(procs[0], "plain-svc")
	if n := plain.servedOnRegistry.Load(); n != 1 {
		t.Fatalf("the plain agent answered %d calls on its registry connection, want 1 (and %d on dialed ones)", n, plain.servedDialed.Load())
	}
	fetch(procs[0], "sdk-svc")
	if n := sdkOnRegistry.Load(); n != 1 {
		t.Fatalf("the SDK agent answered %d calls on its registry connection, want 1 (and %d elsewhere)", n, sdkElsewhere.Load())
	}
	for _, p := range procs[1:] {
		fetch(p, "plain-svc")
		fetch(p, "sdk-svc")
	}
	t.Logf("plain agent: %d calls on its registry connection, %d on connections nodes dialed; SDK agent: %d and %d",
		plain.servedOnRegistry.Load(), plain.servedDialed.Load(), sdkOnRegistry.Load(), sdkElsewhere.Load())
	// The plain agent's registry connection still works for its own requests.
	if got := plain.request(t, "where", "sdk-svc"); got.Status != 200 || got.Data != sdk.Addr() {
		t.Fatalf("where sdk-svc from the plain agent: %+v", got)
	}

	// Plain HTTP to the HTTPS port is not served.
	if resp, err := http.Get("http://" + procs[1].http + "/v1/cluster"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("HTTPS port answered plain HTTP")
		}
	}
	// A peer without a client certificate is refused on the peer port.
	conn, err := tls.Dial("tcp", procs[1].raft, &tls.Config{RootCAs: certs.Pool})
	if err == nil {
		conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
		conn.Write([]byte("WSR1I\r\n"))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !(strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset")) {
		t.Fatalf("the peer port accepted a TLS client without a client certificate: %v", err)
	}
}

// httpsJSON sends a request with an optional bearer token and body, decodes a JSON answer
// into out, and returns the status (0 when the request failed).
func httpsJSON(t testing.TB, c *http.Client, method, url, token string, body []byte, out any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		json.Unmarshal(b, out)
	}
	return resp.StatusCode
}

// plainAgent is an unchanged iocore agent written from docs/protocol.md alone: JSON frames by
// hand over plain ws://. Like the originals it is a server too (the registry dials it when
// a node without its connection proxies a call) and it answers the registry's requests on
// the connection it dialed.
type plainAgent struct {
	addr string // its identity: the address its own server listens on

	servedOnRegistry atomic.Int64 // /echo calls answered on the registry connection
	servedDialed     atomic.Int64 // on connections a node opened to its server

	reg     *frameConn
	mu      sync.Mutex
	nextID  int
	pending map[int]chan reply
}

// reply is the data of a response frame.
type reply struct {
	Status  any    `json:"status"`
	Data    any    `json:"data"`
	Message string `json:"message"`
}

// frameConn is one WebSocket connection with one writer at a time.
type frameConn struct {
	c  *websocket.Conn
	mu sync.Mutex
}

func (f *frameConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return f.c.Write(ctx, websocket.MessageText, b)
}

func startPlainAgent(t *testing.T, ip string) *plainAgent {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	a := &plainAgent{addr: ln.Addr().String(), pending: map[int]chan reply{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		a.serve(ctx, &frameConn{c: c}, &a.servedDialed)
	})}
	wg.Add(1)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		wg.Wait()
	})
	return a
}

// dialRegistry opens ws://<registry>/<own-host>/<own-port> and serves it.
func (a *plainAgent) dialRegistry(t *testing.T, registry string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(a.addr)
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, registry+"/"+host+"/"+port, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", registry, err)
	}
	c.SetReadLimit(1 << 20)
	a.reg = &frameConn{c: c}
	life, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.serve(life, a.reg, &a.servedOnRegistry) }()
	t.Cleanup(func() {
		stop()
		c.CloseNow()
		<-done
	})
}

// serve reads frames until the connection ends: requests for ws:/echo are answered with
// their props, other requests with 104 as the originals do, responses go to request.
func (a *plainAgent) serve(ctx context.Context, fc *frameConn, served *atomic.Int64) {
	for {
		_, b, err := fc.c.Read(ctx)
		if err != nil {
			return
		}
		var f struct {
			ID     int             `json:"id"`
			Mode   int             `json:"mode"`
			Twoway bool            `json:"twoway"`
			Data   json.RawMessage `json:"data"`
		}
		if json.Unmarshal(b, &f) != nil {
			continue // not JSON: ignored, as by the originals
		}
		switch f.Mode {
		case 0:
			var req struct {
				Cmd      string          `json:"cmd"`
				Props    json.RawMessage `json:"props"`
				Protocol string          `json:"protocol"`
			}
			json.Unmarshal(f.Data, &req)
			var data any = map[string]any{"status": 200, "data": req.Props}
			if req.Protocol != "ws" || req.Cmd != "/echo" {
				data = map[string]any{"status": 104, "data": nil, "message": fmt.Sprintf("Cannot find the url '%s:/%s'", req.Protocol, strings.TrimPrefix(req.Cmd, "/"))}
			} else {
				served.Add(1)
			}
			if f.Twoway {
				fc.send(map[string]any{"id": f.ID, "mode": 1, "twoway": false, "data": data})
			}
		case 1:
			var r reply
			json.Unmarshal(f.Data, &r)
			a.mu.Lock()
			ch := a.pending[f.ID]
			delete(a.pending, f.ID)
			a.mu.Unlock()
			if ch != nil {
				ch <- r
			}
		}
	}
}

// request sends a registry command on the registry connection and waits for its response,
// while requests from the registry keep being served.
func (a *plainAgent) request(t *testing.T, cmd, ns string) reply {
	t.Helper()
	ch := make(chan reply, 1)
	a.mu.Lock()
	id := a.nextID
	a.nextID++
	a.pending[id] = ch
	a.mu.Unlock()
	err := a.reg.send(map[string]any{"id": id, "twoway": true, "mode": 0,
		"data": map[string]any{"cmd": cmd, "props": []string{ns}, "protocol": "ws"}})
	if err != nil {
		t.Fatalf("%s %s: %v", cmd, ns, err)
	}
	select {
	case r := <-ch:
		if f, ok := r.Status.(float64); ok {
			r.Status = int(f)
		}
		return r
	case <-time.After(scaled(10 * time.Second)):
		t.Fatalf("%s %s: no response", cmd, ns)
	}
	return reply{}
}
