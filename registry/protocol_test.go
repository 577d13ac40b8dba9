package registry

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The exchange of PROTOCOL.md §6, frame for frame.
func TestProtocol_ExampleExchange(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/10.0.0.7/9001")
	a.call(`{"id":0,"twoway":true,"data":{"cmd":"online","props":["user-service"],"protocol":"ws"},"mode":0}`,
		`{"id":0,"mode":1,"twoway":false,"data":{"status":200}}`)
	a.call(`{"id":1,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`,
		`{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":"10.0.0.7:9001"}}`)
	a.call(`{"id":2,"twoway":true,"data":{"cmd":"where","props":["nobody"],"protocol":"ws"},"mode":0}`,
		`{"id":2,"mode":1,"twoway":false,"data":{"status":200}}`)
	a.call(`{"id":3,"twoway":true,"data":{"cmd":"nosuch","props":[],"protocol":"ws"},"mode":0}`,
		`{"id":3,"mode":1,"twoway":false,"data":{"status":104,"data":null,"message":"Cannot find the url 'ws:/nosuch'"}}`)
}

type exchange struct {
	Name   string          `json:"name"`
	Agent  string          `json:"agent"`
	After  []string        `json:"after"`
	Binary bool            `json:"binary"`
	Send   json.RawMessage `json:"send"`
	Expect json.RawMessage `json:"expect"`
}

// The frames captured from the original registry (testdata/exchanges.json), replayed.
func TestProtocol_CapturedRegistryExchanges(t *testing.T) {
	raw, err := os.ReadFile("../testdata/exchanges.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Registry []exchange `json:"registry"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, t.TempDir())
	agents := map[string]*rawAgent{}
	agentFor := func(addr string) *rawAgent {
		if a := agents[addr]; a != nil {
			return a
		}
		host, port, _ := strings.Cut(addr, ":")
		a := dialRaw(t, n, "/"+host+"/"+port)
		agents[addr] = a
		return a
	}
	nextID := map[string]int{}
	for _, ex := range file.Registry {
		t.Run(ex.Name, func(t *testing.T) {
			a := agentFor(ex.Agent)
			a.t = t
			typ := websocket.MessageText
			if ex.Binary {
				typ = websocket.MessageBinary
			}
			a.send(typ, ex.Send)
			if string(ex.Expect) == "null" {
				// No reply is owed: prove it by asking something else and getting that answer first.
				probe := 1000 + nextID[ex.Agent]
				a.call(where(probe, "nope"), ok(probe))
				return
			}
			if got, want := a.next(), mustJSON(t, ex.Expect); !reflect.DeepEqual(got, want) {
				t.Fatalf("got %s\nwant %s", js(got), ex.Expect)
			}
			nextID[ex.Agent]++
		})
	}
}

func TestOnline_InvalidPropsAre400AndRegisterNothing(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	cases := []struct{ name, props, msg string }{
		{"no props key", `"x":1`, "got no props"},
		{"props not an array", `"props":"svc"`, "props is not an array"},
		{"no prop", `"props":[]`, "exactly one prop"},
		{"two props", `"props":["a","b"]`, "exactly one prop"},
		{"number", `"props":[5]`, "must be a string, got a number"},
		{"null", `"props":[null]`, "must be a string, got null"},
		{"object", `"props":[{"a":1}]`, "must be a string, got an object"},
		{"empty", `"props":[""]`, "namespace is empty"},
		{"too long", `"props":["` + strings.Repeat("x", 257) + `"]`, "257 bytes long, the limit is 256"},
		{"control character", `"props":["a\nb"]`, "control character (0x0a) at byte 1"},
	}
	for i, c := range cases {
		for _, cmd := range []string{"online", "where"} {
			a.sendText(`{"id":` + strconv.Itoa(2*i) + `,"twoway":true,"data":{"cmd":"` + cmd + `",` + c.props + `,"protocol":"ws"},"mode":0}`)
			reply := a.next().(map[string]any)
			data := reply["data"].(map[string]any)
			if data["status"] != json.Number("400") || data["data"] != nil || !strings.Contains(data["message"].(string), c.msg) {
				t.Errorf("%s %s: got %s, want status 400 with message containing %q", cmd, c.name, js(reply), c.msg)
			}
			if _, has := data["data"]; !has {
				t.Errorf("%s %s: a failure carries data:null, got %s", cmd, c.name, js(reply))
			}
		}
	}
	if s := n.State().Stats(); s.Registrations != 0 {
		t.Fatalf("invalid onlines registered %d entries", s.Registrations)
	}
}

func TestClose_ForgetsEveryNamespaceOfThatConnectionOnly(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	b := dialRaw(t, n, "/127.0.0.1/9002")
	a.call(online(0, "svc-a"), ok(0))
	a.call(online(1, "svc-a2"), ok(1))
	b.call(online(0, "svc-b"), ok(0))
	a.conn.Close(websocket.StatusNormalClosure, "bye")
	eventually(t, 5*time.Second, func() bool {
		_, okA := n.Where("svc-a")
		_, okA2 := n.Where("svc-a2")
		return !okA && !okA2
	}, "svc-a and svc-a2 still registered after their agent left")
	b.call(where(1, "svc-b"), found(1, "127.0.0.1:9002"))
	b.call(where(2, "svc-a"), ok(2))
}

func TestWhere_RoundRobinsInstances(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	b := dialRaw(t, n, "/127.0.0.1/9002")
	a.call(online(0, "svc"), ok(0))
	b.call(online(0, "svc"), ok(0))
	seen := map[string]int{}
	for i := 1; i <= 10; i++ {
		a.sendText(where(i, "svc"))
		got := a.next().(map[string]any)["data"].(map[string]any)["data"].(string)
		seen[got]++
	}
	if seen["127.0.0.1:9001"] != 5 || seen["127.0.0.1:9002"] != 5 {
		t.Fatalf("where over two instances answered %v, want 5 each", seen)
	}
	// The original forgets the namespace when the last registrant leaves although the first
	// is alive; we keep the one still connected.
	b.conn.Close(websocket.StatusNormalClosure, "")
	eventually(t, 5*time.Second, func() bool { return len(n.State().Instances("svc")) == 1 }, "second instance not removed")
	a.call(where(20, "svc"), found(20, "127.0.0.1:9001"))
}

func TestReplacedConnection_RegistrationsFollowTheNewOne(t *testing.T) {
	n := startNode(t, t.TempDir())
	old := dialRaw(t, n, "/127.0.0.1/9001")
	old.call(online(0, "svc"), ok(0))
	fresh := dialRaw(t, n, "/127.0.0.1/9001")
	if code, reason := old.closeStatus(); code != websocket.StatusPolicyViolation || reason != "replaced" {
		t.Fatalf("older connection closed with %d %q, want 1008 \"replaced\"", code, reason)
	}
	// The agent did not say online again on the new connection, yet stays findable.
	eventually(t, 5*time.Second, func() bool {
		regs := n.State().Instances("svc")
		return len(regs) == 1 && regs[0].Session.Seq != 1
	}, "registration did not move to the new session: %v", n.State().Instances("svc"))
	fresh.call(where(0, "svc"), found(0, "127.0.0.1:9001"))
	fresh.conn.Close(websocket.StatusNormalClosure, "")
	eventually(t, 5*time.Second, func() bool { _, ok := n.Where("svc"); return !ok }, "registration outlived the new connection")
}

func TestAccept_MissingSegmentIs400BeforeUpgrade(t *testing.T) {
	n := startNode(t, t.TempDir())
	for _, path := range []string{"/", "/10.0.0.7", "/10.0.0.7/", "/10.0.0.7/notaport", "/10.0.0.7/70000", "/10.0.0.7/0"} {
		resp, err := http.Get("http://" + n.WSAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || len(strings.TrimSpace(string(body))) == 0 {
			t.Errorf("%s: got %d %q, want 400 with a reason", path, resp.StatusCode, body)
		}
	}
	// Extra segments are ignored and the query string is not part of the port.
	a := dialRaw(t, n, "/127.0.0.1/9001/extra/segments?x=1")
	a.call(online(0, "svc"), ok(0))
	a.call(where(1, "svc"), found(1, "127.0.0.1:9001"))
}

func TestBadFrames_IgnoredAndConnectionKeepsWorking(t *testing.T) {
	n := startNode(t, t.TempDir())
	other := dialRaw(t, n, "/127.0.0.1/9002")
	other.call(online(0, "other"), ok(0))
	a := dialRaw(t, n, "/127.0.0.1/9001")
	bad := []string{
		`not json`,
		`{"id":`,
		`[]`,
		`"string"`,
		`{"id":"0","twoway":true,"data":{"cmd":"online","props":["x"],"protocol":"ws"},"mode":0}`,
		`{"id":1.5,"twoway":true,"data":{"cmd":"online","props":["x"],"protocol":"ws"},"mode":0}`,
		`{"id":0,"twoway":true,"data":{"cmd":"online","props":["x"],"protocol":"ws"},"mode":7}`,
		`{"id":0,"twoway":true,"data":"online","mode":0}`,
		`{"id":0,"twoway":true,"data":{"cmd":5,"props":["x"],"protocol":"ws"},"mode":0}`,
		`{"id":0,"twoway":true,"data":{"cmd":"online","props":["x"],"protocol":7},"mode":0}`,
		`{"id":99,"mode":1,"twoway":false,"data":{"status":200}}`,
		`{"id":0,"twoway":false,"data":"x","mode":2}`,
	}
	for _, b := range bad {
		a.sendText(b)
	}
	a.call(where(5, "other"), found(5, "127.0.0.1:9002"))
	if s := n.State().Stats(); s.Registrations != 1 {
		t.Fatalf("bad frames changed state: %+v", s)
	}
}

func TestOversizedMessage_ClosesOnlyThatConnection(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) { c.ReadLimit = 64 << 10 })
	other := dialRaw(t, n, "/127.0.0.1/9002")
	other.call(online(0, "other"), ok(0))
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "big"), ok(0))
	a.sendText(`{"id":1,"twoway":true,"data":{"cmd":"where","props":["` + strings.Repeat("x", 100<<10) + `"],"protocol":"ws"},"mode":0}`)
	if code, _ := a.closeStatus(); code != websocket.StatusMessageTooBig {
		t.Fatalf("oversized message closed with %d, want 1009", code)
	}
	eventually(t, 5*time.Second, func() bool { _, ok := n.Where("big"); return !ok }, "closed agent still registered")
	other.call(where(1, "other"), found(1, "127.0.0.1:9002"))
}

func TestHeartbeat_SilentAgentIsClosedAndDeregistered(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) { c.PingInterval = 50 * time.Millisecond; c.PingMisses = 3 })
	a := dialSilent(t, n, "/127.0.0.1/9001")
	a.sendText(online(0, "ghost"))
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	if _, b, err := a.conn.Read(ctx); err != nil || !strings.Contains(string(b), `"status":200`) {
		t.Fatalf("online: %s %v", b, err)
	}
	// coder/websocket answers pings only while something reads; stop reading, like a machine
	// that vanished, and the node must give up on it.
	eventually(t, 10*time.Second, func() bool { _, ok := n.Where("ghost"); return !ok }, "silent agent was never deregistered")
}

// The HTTP API over a running node: an agent's registration is what /v1/where and
// /v1/namespaces serve, with a leader's freshness headers. What the API does with any state
// (error bodies, fencing, consistent reads, auth) is tested in httpapi with fakes.
func TestHTTP_WhereNamespacesHealth(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "user-service"), ok(0))

	code, hdr, body := httpGet(t, n, "/v1/where/user-service")
	if code != 200 || !reflect.DeepEqual(body, mustJSON(t, []byte(`{"namespace":"user-service","host":"127.0.0.1:9001"}`))) {
		t.Fatalf("where: %d %s", code, js(body))
	}
	if hdr.Get("X-Wsregistry-Index") == "" || hdr.Get("X-Wsregistry-Known-Leader") != "true" || hdr.Get("X-Wsregistry-Last-Contact") != "0" {
		t.Fatalf("read headers missing: %v", hdr)
	}
	code, _, body = httpGet(t, n, "/v1/where/nobody")
	if code != 404 || body.(map[string]any)["status"] != json.Number("404") || body.(map[string]any)["message"] == "" {
		t.Fatalf("where unknown: %d %s", code, js(body))
	}
	code, _, body = httpGet(t, n, "/v1/namespaces")
	list := body.([]any)
	if code != 200 || len(list) != 1 {
		t.Fatalf("namespaces: %d %s", code, js(body))
	}
	inst := list[0].(map[string]any)["instances"].([]any)[0].(map[string]any)
	if list[0].(map[string]any)["name"] != "user-service" || inst["host"] != "127.0.0.1:9001" || inst["node"] != "n1" || inst["since"] == "" {
		t.Fatalf("namespaces: %s", js(body))
	}
	if code, _, _ := httpGet(t, n, "/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _, _ := httpGet(t, n, "/readyz"); code != 200 {
		t.Fatalf("readyz %d", code)
	}
}

func TestRestart_StateRestoredAndStaleSessionsPurged(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "svc"), ok(0))
	before := n.Cluster().AppliedIndex()
	if err := n.Crash(); err != nil { // as kill -9: nobody deregisters
		t.Fatal(err)
	}

	n2 := startNode(t, dir)
	if n2.Incarnation() <= n.Incarnation() {
		t.Fatalf("incarnation %d after %d", n2.Incarnation(), n.Incarnation())
	}
	if got := n2.Cluster().AppliedIndex(); got <= before {
		t.Fatalf("applied index %d after restart, was %d: state not restored", got, before)
	}
	if meta, ok := n2.State().Node("n1"); !ok || meta.Incarnation != n2.Incarnation() {
		t.Fatalf("node metadata after restart: %+v %v", meta, ok)
	}
	// Ready means the purge of the previous incarnation is applied.
	if _, ok := n2.Where("svc"); ok {
		t.Fatalf("a session of the crashed run survived the restart: %v", n2.State().Instances("svc"))
	}
	b := dialRaw(t, n2, "/127.0.0.1/9001")
	b.call(online(0, "svc"), ok(0))
	b.call(where(1, "svc"), found(1, "127.0.0.1:9001"))
}

func TestShutdown_ClosesAgentsWith1001(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "svc"), ok(0))
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	if code, _ := a.closeStatus(); code != websocket.StatusGoingAway {
		t.Fatalf("closed with %d, want 1001", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
}

func TestReplacedConnection_InheritedNamespacesMustBeConfirmed(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) { c.InheritWindow = 300 * time.Millisecond })
	old := dialRaw(t, n, "/127.0.0.1/9001")
	old.call(online(0, "svc-a"), ok(0))
	old.call(online(1, "svc-b"), ok(1))
	fresh := dialRaw(t, n, "/127.0.0.1/9001")
	if code, _ := old.closeStatus(); code != websocket.StatusPolicyViolation {
		t.Fatalf("older connection closed with %d", code)
	}
	// Findable at once through the inherited registrations...
	eventually(t, 5*time.Second, func() bool {
		regs := n.State().Instances("svc-b")
		return len(regs) == 1 && regs[0].Session.Seq != 1
	}, "registrations did not move")
	// ...and the new connection confirms one of them and asks for something else.
	fresh.call(online(0, "svc-a"), ok(0))
	fresh.call(online(1, "svc-c"), ok(1))
	eventually(t, 5*time.Second, func() bool { _, ok := n.Where("svc-b"); return !ok },
		"a namespace the replacing connection never asked for stayed registered")
	for _, ns := range []string{"svc-a", "svc-c"} {
		if _, ok := n.Where(ns); !ok {
			t.Fatalf("%s, asked for by the new connection, is gone", ns)
		}
	}
}

// The log gets one "agent registered" line per namespace a connection adds; an agent
// repeating online for a namespace it holds is logged at debug only (each repeat is still a
// write, and a chatty agent must not flood the log).
func TestOnline_RepeatsAreNotLoggedAtInfo(t *testing.T) {
	logs := &syncBuf{}
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "svc"), ok(0))
	a.call(online(1, "svc"), ok(1))
	a.call(online(2, "other"), ok(2))
	a.call(online(3, "svc"), ok(3))
	lines := strings.Count(logs.String(), "msg=\"agent registered\"")
	if lines != 2 || !strings.Contains(logs.String(), "namespace=other") {
		t.Fatalf("%d \"agent registered\" lines, want 2 (svc, other):\n%s", lines, logs)
	}
}

// A where on the hot path (a plain ["<ns>"] for a registered namespace) allocates nothing:
// the namespace is looked up from the request's bytes, the reply built in the
// connection's buffer.
func TestWhere_NoAllocationPerLookup(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "svc"), ok(0))
	ch := n.ws.Channel("127.0.0.1:9001")
	if ch == nil {
		t.Fatal("no channel for the agent")
	}
	props := json.RawMessage(`["svc"]`)
	// Called here rather than on the channel's reader: the agent sends nothing meanwhile,
	// so this goroutine is the only user of the session's reply buffer.
	var reply json.RawMessage
	allocs := testing.AllocsPerRun(1000, func() {
		reply, _ = n.handleWhere(context.Background(), ch, props)
	})
	if string(reply) != `"127.0.0.1:9001"` {
		t.Fatalf("reply %s", reply)
	}
	if allocs != 0 {
		t.Fatalf("%.1f allocations per where, want 0", allocs)
	}
}
