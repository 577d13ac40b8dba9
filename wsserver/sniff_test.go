package wsserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/testcerts"
)

// testTLS returns a server config with a certificate for 127.0.0.1 and a client config
// that trusts it.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	f, err := testcerts.Write(t.TempDir(), net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{f.Pair}}, &tls.Config{RootCAs: f.Pool}
}

// serveSniff serves h with an http.Server on a NewSniffListener on 127.0.0.1:0.
func serveSniff(t testing.TB, h http.Handler, cfg *tls.Config, allowPlain bool, peek time.Duration) string {
	t.Helper()
	sl := NewSniffListener(listen(t), cfg, allowPlain, peek)
	hs := &http.Server{Handler: h, ReadHeaderTimeout: scaled(5 * time.Second)}
	served := make(chan struct{})
	go func() { defer close(served); hs.Serve(sl) }()
	t.Cleanup(func() { hs.Close(); <-served })
	return sl.Addr().String()
}

// startSniffServer serves a Server behind serveSniff; wrap, when set, sees each request first.
func startSniffServer(t testing.TB, cfg ServerConfig, wrap func(http.Handler) http.Handler,
	tlsCfg *tls.Config, allowPlain bool, peek time.Duration) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	s := NewServer(cfg)
	var h http.Handler = s
	if wrap != nil {
		h = wrap(s)
	}
	addr := serveSniff(t, h, tlsCfg, allowPlain, peek)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, addr
}

type seenReq struct {
	key, auth string
	tls       bool
}

// recordTLS sends what each request looked like (key, Authorization, TLS or not) to c.
func recordTLS(c chan<- seenReq) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			k, _ := ParseKey(r.URL.Path)
			c <- seenReq{key: k, auth: r.Header.Get("Authorization"), tls: r.TLS != nil}
			next.ServeHTTP(w, r)
		})
	}
}

func dialT(t testing.TB, target, own string, cfg DialConfig) *Channel {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	ch, err := Dial(ctx, target, own, cfg)
	if err != nil {
		t.Fatalf("dial %s as %s: %v", target, own, err)
	}
	t.Cleanup(func() { ch.Close(websocket.StatusNormalClosure, ""); <-ch.Done() })
	return ch
}

func echoMux() *Mux {
	m := NewMux()
	m.Handle("ws", "echo", echoHandler)
	return m
}

func TestSniffListener_ServesWSAndWSSOnOnePort(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	seen := make(chan seenReq, 4)
	s, addr := startSniffServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: echoMux()}}, recordTLS(seen), srvTLS, true, time.Second)

	plain := dialT(t, addr, "10.0.0.1:1", DialConfig{})
	secure := dialT(t, addr, "10.0.0.2:2", DialConfig{TLS: cliTLS})
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		r := recv(t, seen, 5*time.Second, "request")
		got[r.key] = r.tls
	}
	if tls1, tls2 := got["10.0.0.1:1"], got["10.0.0.2:2"]; len(got) != 2 || tls1 || !tls2 {
		t.Fatalf("r.TLS set per client: %v, want ws:// without, wss:// with", got)
	}
	eventually(t, 5*time.Second, "both channels accepted", func() bool { return s.Len() == 2 })
	for _, ch := range []*Channel{plain, secure} { // both at once, on one port
		res, err := ch.Call(context.Background(), "ws", "echo", []string{ch.RemoteAddr()}, scaled(5*time.Second))
		if err != nil || !strings.Contains(string(res), "127.0.0.1") {
			t.Fatalf("echo: %s %v", res, err)
		}
	}
}

func TestSniffListener_SilentClientDoesNotDelayOthers(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	// A peek timeout far beyond the dial timeouts below: Accept must not wait on it.
	_, addr := startSniffServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: echoMux()}}, nil, srvTLS, true, time.Minute)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	for i, cfg := range []DialConfig{{}, {TLS: cliTLS}} {
		cfg.DialTimeout = scaled(2 * time.Second)
		ch := dialT(t, addr, fmt.Sprintf("10.0.0.%d:1", i+1), cfg)
		if _, err := ch.Call(context.Background(), "ws", "echo", nil, scaled(2*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSniffListener_ClosesClientSilentPastPeekTimeout(t *testing.T) {
	_, addr := startSniffServer(t, ServerConfig{}, nil, nil, true, 50*time.Millisecond)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	expectClosed(t, silent, "silent client after the peek timeout")
}

// expectClosed fails unless the server closes c (EOF or reset) within the deadline.
func expectClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open (read: %v)", what, err)
	}
}

func TestSniffListener_RefusesPlainWhenTLSRequired(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	seen := make(chan seenReq, 4)
	_, addr := startSniffServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: echoMux()}}, recordTLS(seen), srvTLS, false, time.Second)

	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /10.0.0.1/1 HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain client got %s, want 400", resp.Status)
	}
	for _, want := range []string{"requires TLS", "wss://", "https://", "--agent-tls"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("body %q does not say %q", body, want)
		}
	}
	if _, err := io.ReadAll(nc); err != nil { // and closed after it
		t.Fatalf("connection not closed after the 400: %v", err)
	}

	_, _, err = websocket.Dial(context.Background(), "ws://"+addr+"/10.0.0.1/1", nil)
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("ws:// dial: %v, want a 400", err)
	}
	dialT(t, addr, "10.0.0.2:2", DialConfig{TLS: cliTLS})
	if r := recv(t, seen, 5*time.Second, "request"); r.key != "10.0.0.2:2" || !r.tls {
		t.Fatalf("only the wss:// request should reach the handler, got %+v", r)
	}
}

func TestSniffListener_AcceptReplaysFirstByte(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	sl := NewSniffListener(listen(t), srvTLS, true, time.Second)
	defer sl.Close()
	accept := func() net.Conn {
		t.Helper()
		type res struct {
			c   net.Conn
			err error
		}
		rc := make(chan res, 1)
		go func() { c, err := sl.Accept(); rc <- res{c, err} }()
		r := recv(t, rc, 5*time.Second, "Accept")
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	}

	pc, err := net.Dial("tcp", sl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	io.WriteString(pc, "xyz")
	c := accept()
	if _, ok := c.(*tls.Conn); ok {
		t.Fatal("plain connection returned as *tls.Conn")
	}
	b := make([]byte, 3)
	c.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "xyz" {
		t.Fatalf("plain read %q %v, want the peeked byte replayed", b, err)
	}

	cc := cliTLS.Clone()
	cc.ServerName = "127.0.0.1"
	tc, err := net.Dial("tcp", sl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := tls.Client(tc, cc)
	defer client.Close()
	go func() { client.Handshake(); io.WriteString(client, "hello") }()
	c = accept()
	sc, ok := c.(*tls.Conn)
	if !ok {
		t.Fatalf("TLS connection returned as %T, want *tls.Conn", c)
	}
	b = make([]byte, 5)
	sc.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != "hello" {
		t.Fatalf("TLS read %q %v", b, err)
	}
}

func TestSniffListener_NilTLSConfigClosesTLSClients(t *testing.T) {
	sl := NewSniffListener(listen(t), nil, true, time.Second)
	defer sl.Close()
	nc, err := net.Dial("tcp", sl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write([]byte{0x16, 3, 1})
	expectClosed(t, nc, "TLS client without a TLS config")
}

func TestSniffListener_CloseUnblocksAcceptAndDropsPeekedConns(t *testing.T) {
	sl := NewSniffListener(listen(t), nil, true, time.Minute)
	errc := make(chan error, 1)
	go func() { _, err := sl.Accept(); errc <- err }()
	silent, err := net.Dial("tcp", sl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	inner := sl.(*sniffListener)
	eventually(t, 5*time.Second, "the silent client being peeked", func() bool {
		inner.mu.Lock()
		defer inner.mu.Unlock()
		return len(inner.peeking) == 1
	})
	if err := sl.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errc, 5*time.Second, "Accept to return"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := sl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Accept after Close: %v", err)
	}
	expectClosed(t, silent, "peeked connection after Close")
}

func TestSniffListener_InnerListenerFailureEndsAccept(t *testing.T) {
	ln := listen(t)
	sl := NewSniffListener(ln, nil, true, time.Second)
	defer sl.Close()
	ln.Close()
	errc := make(chan error, 1)
	go func() { _, err := sl.Accept(); errc <- err }()
	if err := recv(t, errc, 5*time.Second, "Accept to fail"); err == nil {
		t.Fatal("Accept returned no error after its listener closed")
	}
}
