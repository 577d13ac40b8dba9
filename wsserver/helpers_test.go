package wsserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// scaled and eventually use the project's helpers, so WSREGISTRY_TEST_SCALE stretches the
// deadlines here as everywhere else.
func scaled(d time.Duration) time.Duration { return testutil.Scaled(d) }

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, d, cond, "waiting for %s", what)
}

// recv waits for a value on c or fails.
func recv[T any](t testing.TB, c <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(scaled(d)):
		t.Fatalf("timed out after %v waiting for %s", scaled(d), what)
		var zero T
		return zero
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("WSSERVER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer serves a Server on 127.0.0.1:0 and returns it with its "host:port".
func startServer(t testing.TB, cfg ServerConfig) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	s := NewServer(cfg)
	ts := httptest.NewServer(s)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		ts.Close()
	})
	return s, strings.TrimPrefix(ts.URL, "http://")
}

// wrappingListener hands out every accepted connection wrapped by wrap.
type wrappingListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrappingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(nc), nil
}

// startServerWrapping is startServer with every accepted connection wrapped by wrap.
func startServerWrapping(t testing.TB, cfg ServerConfig, wrap func(net.Conn) net.Conn) (addr string) {
	t.Helper()
	cfg.Logger = testLogger(t)
	s := NewServer(cfg)
	ts := httptest.NewUnstartedServer(s)
	ts.Listener = wrappingListener{Listener: ts.Listener, wrap: wrap}
	ts.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		_ = s.Shutdown(ctx)
		ts.Close()
	})
	return strings.TrimPrefix(ts.URL, "http://")
}

// rawDial opens a plain coder/websocket client connection (not a Channel).
func rawDial(t testing.TB, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func rawWrite(t testing.TB, c *websocket.Conn, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func rawRead(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// readErr reads until an error and returns it.
func readErr(t testing.TB, c *websocket.Conn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	for {
		if _, _, err := c.Read(ctx); err != nil {
			return err
		}
	}
}

// jsonEqual compares two JSON texts ignoring key order (presence of keys matters).
func jsonEqual(t testing.TB, got, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("got is not JSON: %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %q: %v", want, err)
	}
	return reflect.DeepEqual(g, w)
}

// rawTCPHandshake does a WebSocket client handshake by hand on a plain TCP
// connection, for tests that need to misbehave below coder/websocket.
func rawTCPHandshake(t testing.TB, addr, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, scaled(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr)
	br := bufio.NewReader(nc)
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	nc.SetReadDeadline(time.Time{})
	return nc, br
}

// rawFrame builds one masked client frame (payload < 126 bytes).
func rawFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	mask := [4]byte{1, 2, 3, 4}
	f := []byte{b0, 0x80 | byte(len(payload)), mask[0], mask[1], mask[2], mask[3]}
	for i, c := range payload {
		f = append(f, c^mask[i%4])
	}
	return f
}

// readServerFrame reads one unmasked server frame (payload < 126 bytes).
func readServerFrame(t testing.TB, br *bufio.Reader) (opcode byte, payload []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatalf("read frame header: %v", err)
	}
	n := int(h[1] & 0x7f)
	if n >= 126 {
		t.Fatalf("unexpected long frame")
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatalf("read frame payload: %v", err)
	}
	return h[0] & 0x0f, payload
}

func echoHandler(ctx context.Context, ch *Channel, props json.RawMessage) (json.RawMessage, error) {
	return props, nil
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// readOKReplies reads the replies {"status":200,"data":"ok"} to requests 0..n-1, in order.
func readOKReplies(t *testing.T, c *websocket.Conn, n int) {
	t.Helper()
	for i := range n {
		want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":"ok"}}`, i)
		if got := rawRead(t, c); !jsonEqual(t, got, want) {
			t.Fatalf("reply %d: %s", i, got)
		}
	}
}

// stringReply decodes a reply whose data is a string, as the tests send it.
type stringReply struct {
	ID   int `json:"id"`
	Data struct {
		Status int    `json:"status"`
		Data   string `json:"data"`
	} `json:"data"`
}
