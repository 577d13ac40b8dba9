package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// scaled stretches test deadlines on slow machines (WSREGISTRY_TEST_SCALE=3).
func scaled(d time.Duration) time.Duration { return testutil.Scaled(d) }

func eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	testutil.Eventually(t, within, cond, msg, args...)
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("WSREGISTRY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type nodeOption func(*Config)

// startNode runs a one-node cluster on dataDir with fast raft timeouts.
func startNode(t testing.TB, dataDir string, opts ...nodeOption) *Node {
	t.Helper()
	ws, api, rl := listen(t), listen(t), listen(t)
	cfg := Config{
		NodeID: "n1", DataDir: dataDir,
		WSListener: ws, HTTPListener: api, RaftListener: rl,
		WSAdvertise: ws.Addr().String(), HTTPAdvertise: api.Addr().String(), RaftAdvertise: rl.Addr().String(),
		Cluster: cluster.Config{
			HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
			LeaderLeaseTimeout: 50 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
		},
		PingInterval: time.Second,
		Logger:       testLogger(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	eventually(t, 10*time.Second, func() bool { ok, _ := n.Ready(); return ok }, "node never became ready")
	return n
}

// rawAgent is a WebSocket client that speaks the frames by hand, as an iocore agent would.
// Like an agent's WebSocket library it keeps reading in the background, so pings are
// answered while the test is not waiting for a reply.
type rawAgent struct {
	t    testing.TB
	conn *websocket.Conn
	msgs chan []byte
	err  error // why reading ended; set before msgs is closed
}

func dialRaw(t testing.TB, n *Node, path string) *rawAgent {
	t.Helper()
	a := dialSilent(t, n, path)
	a.msgs = make(chan []byte, 1024)
	go func() {
		defer close(a.msgs)
		for {
			_, b, err := a.conn.Read(context.Background())
			if err != nil {
				a.err = err
				return
			}
			a.msgs <- b
		}
	}()
	return a
}

// dialSilent connects without reading: pings go unanswered, as from a vanished machine.
func dialSilent(t testing.TB, n *Node, path string) *rawAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+n.WSAddr()+path, nil)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		t.Fatalf("dial %s: %v %s", path, err, body)
	}
	c.SetReadLimit(4 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return &rawAgent{t: t, conn: c}
}

func (a *rawAgent) sendText(s string) {
	a.t.Helper()
	a.send(websocket.MessageText, []byte(s))
}

func (a *rawAgent) send(typ websocket.MessageType, b []byte) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	if err := a.conn.Write(ctx, typ, b); err != nil {
		a.t.Fatalf("write: %v", err)
	}
}

// next reads one message as generic JSON.
func (a *rawAgent) next() any {
	a.t.Helper()
	select {
	case b, ok := <-a.msgs:
		if !ok {
			a.t.Fatalf("read: %v", a.err)
		}
		return mustJSON(a.t, b)
	case <-time.After(scaled(10 * time.Second)):
		a.t.Fatal("read: no message within 10 s")
	}
	return nil
}

// call sends a frame and expects the given reply (key order ignored, key presence not).
func (a *rawAgent) call(send, expect string) {
	a.t.Helper()
	a.sendText(send)
	if got, want := a.next(), mustJSON(a.t, []byte(expect)); !reflect.DeepEqual(got, want) {
		a.t.Fatalf("sent %s\n got  %s\n want %s", send, js(got), expect)
	}
}

// closeStatus waits until the connection ends and returns its close status.
func (a *rawAgent) closeStatus() (websocket.StatusCode, string) {
	a.t.Helper()
	deadline := time.After(scaled(10 * time.Second))
	for {
		select {
		case _, ok := <-a.msgs:
			if ok {
				continue
			}
			var ce websocket.CloseError
			if errors.As(a.err, &ce) {
				return ce.Code, ce.Reason
			}
			return -1, a.err.Error()
		case <-deadline:
			a.t.Fatal("connection still open after 10 s")
		}
	}
}

func mustJSON(t testing.TB, b []byte) any {
	t.Helper()
	var v any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %q: %v", b, err)
	}
	return v
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func online(id int, ns string) string {
	return `{"id":` + strconv.Itoa(id) + `,"twoway":true,"data":{"cmd":"online","props":[` + strconv.Quote(ns) + `],"protocol":"ws"},"mode":0}`
}

func where(id int, ns string) string {
	return `{"id":` + strconv.Itoa(id) + `,"twoway":true,"data":{"cmd":"where","props":[` + strconv.Quote(ns) + `],"protocol":"ws"},"mode":0}`
}

func ok(id int) string {
	return `{"id":` + strconv.Itoa(id) + `,"mode":1,"twoway":false,"data":{"status":200}}`
}

func found(id int, addr string) string {
	return `{"id":` + strconv.Itoa(id) + `,"mode":1,"twoway":false,"data":{"status":200,"data":"` + addr + `"}}`
}

// httpGet fetches a path of the node's HTTP API, returning status, headers and JSON body.
func httpGet(t testing.TB, n *Node, path string) (int, http.Header, any) {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, mustJSON(t, b)
}
