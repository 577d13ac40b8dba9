package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
)

// fakeState is a registration state set by hand; Where returns the first instance.
type fakeState struct {
	regs  map[string][]fsm.Registration
	nodes map[string]fsm.NodeMeta
}

func (s *fakeState) Where(ns string) (string, bool) {
	if r := s.regs[ns]; len(r) > 0 {
		return r[0].Address, true
	}
	return "", false
}

func (s *fakeState) Instances(ns string) []fsm.Registration { return slices.Clone(s.regs[ns]) }

func (s *fakeState) Namespaces() []fsm.NamespaceView {
	var out []fsm.NamespaceView
	for name, regs := range s.regs {
		out = append(out, fsm.NamespaceView{Name: name, Instances: regs})
	}
	slices.SortFunc(out, func(a, b fsm.NamespaceView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (s *fakeState) Node(id string) (fsm.NodeMeta, bool) { m, ok := s.nodes[id]; return m, ok }

// fakeCluster answers what it is told and records what it is asked to do.
type fakeCluster struct {
	mu            sync.Mutex
	status        cluster.Status
	leaderID      string
	leader        bool
	members       []cluster.Member
	silence       map[string]time.Duration
	health        map[string]cluster.MemberHealth
	autopilot     cluster.AutopilotState
	sinceContact  time.Duration
	applied       uint64
	security      cluster.PeerSecurity
	consistentErr error
	consistent    int // ConsistentRead calls

	addID      string
	addErr     error
	added      []string
	removeErr  error
	removed    []string
	snapshot   []byte
	restoreErr error
	restored   [][]byte
	partition  []bool
}

func (c *fakeCluster) Status() cluster.Status { return c.status }
func (c *fakeCluster) Leader() (string, string) {
	if c.leaderID == "" {
		return "", ""
	}
	return c.leaderID, c.leaderID + ":8429"
}
func (c *fakeCluster) IsLeader() bool                          { return c.leader }
func (c *fakeCluster) Members() []cluster.Member               { return c.members }
func (c *fakeCluster) MemberSilence() map[string]time.Duration { return c.silence }
func (c *fakeCluster) SinceLeaderContact() time.Duration       { return c.sinceContact }
func (c *fakeCluster) MemberHealth() map[string]cluster.MemberHealth {
	if !c.leader {
		return nil
	}
	return c.health
}
func (c *fakeCluster) Autopilot() cluster.AutopilotState { return c.autopilot }
func (c *fakeCluster) AppliedIndex() uint64              { return c.applied }
func (c *fakeCluster) Security() cluster.PeerSecurity    { return c.security }
func (c *fakeCluster) ConsistentRead(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.consistent++
	return c.consistentErr
}
func (c *fakeCluster) AddMember(_ context.Context, addr string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.added = append(c.added, addr)
	return c.addID, c.addErr
}
func (c *fakeCluster) Remove(_ context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removed = append(c.removed, id)
	return c.removeErr
}
func (c *fakeCluster) SaveSnapshot() ([]byte, uint64, error) { return c.snapshot, c.applied, nil }
func (c *fakeCluster) RestoreSnapshot(_ context.Context, b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restored = append(c.restored, b)
	return c.restoreErr
}
func (c *fakeCluster) SetPartitioned(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partition = append(c.partition, on)
}

type fakeNode struct {
	mu           sync.Mutex
	ready        bool
	why          string
	fenced       bool
	leaveErr     error
	closedAgents int
	left         int
}

func (n *fakeNode) Ready() (bool, string) { return n.ready, n.why }
func (n *fakeNode) Fenced() bool          { return n.fenced }
func (n *fakeNode) CloseAgents(context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closedAgents++
}
func (n *fakeNode) Leave(context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.left++
	return n.leaveErr
}

// fakeFetcher answers proxied calls with fn.
type fakeFetcher struct {
	fn func(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error)
}

func (f *fakeFetcher) Fetch(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error) {
	return f.fn(ctx, protocol, url, props, timeout)
}

// testAPI is the API over fakes of a healthy one-node cluster ("n1", leader) whose state
// holds user-service on 127.0.0.1:9001.
type testAPI struct {
	t       *testing.T
	state   *fakeState
	cluster *fakeCluster
	node    *fakeNode
	fetcher *fakeFetcher
	cfg     Config
	h       http.Handler
}

func newTestAPI(t *testing.T, adjust ...func(*testAPI)) *testAPI {
	t.Helper()
	ta := &testAPI{
		t: t,
		state: &fakeState{
			regs: map[string][]fsm.Registration{"user-service": {{
				Namespace: "user-service", Address: "127.0.0.1:9001",
				Session: fsm.SessionID{Node: "n1", Incarnation: 7, Seq: 1}, Since: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(),
			}}},
			nodes: map[string]fsm.NodeMeta{"n1": {ID: "n1", WSAddr: "127.0.0.1:8427", HTTPAddr: "127.0.0.1:8428", RaftAddr: "n1:8429", Incarnation: 7}},
		},
		cluster: &fakeCluster{
			status:   cluster.Status{State: "leader", Term: 2, CommitIndex: 42, AppliedIndex: 42, LastIndex: 42},
			leaderID: "n1", leader: true, applied: 42, security: cluster.PeerTrusted,
			members: []cluster.Member{{ID: "n1", Address: "n1:8429", Voter: true, Suffrage: "Voter"}},
		},
		node: &fakeNode{ready: true, why: "ready"},
		fetcher: &fakeFetcher{fn: func(context.Context, string, string, any, time.Duration) (json.RawMessage, error) {
			return json.RawMessage(`"ok"`), nil
		}},
	}
	authority, err := auth.New(auth.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ta.cfg = Config{
		NodeID: "n1", State: ta.state, Cluster: ta.cluster, Node: ta.node, Fetcher: ta.fetcher, Auth: authority,
		ValidateNamespace: func(ns string) error {
			if strings.ContainsRune(ns, '\x00') {
				return errBadName
			}
			return nil
		},
	}
	for _, fn := range adjust {
		fn(ta)
	}
	ta.h = New(ta.cfg)
	return ta
}

var errBadName = errors.New("the namespace contains a control character")

// withAuth replaces the authority (tokens, trusted networks).
func withAuth(c auth.Config) func(*testAPI) {
	return func(ta *testAPI) {
		a, err := auth.New(c)
		if err != nil {
			ta.t.Fatal(err)
		}
		ta.cfg.Auth = a
	}
}

type reply struct {
	code   int
	header http.Header
	raw    string
	body   map[string]any // nil when the body is not a JSON object
}

// do sends one request from 127.0.0.1 (a trusted caller) unless from says otherwise;
// headers alternate name and value.
func (ta *testAPI) do(method, target, body string, from string, headers ...string) reply {
	ta.t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.RemoteAddr = "127.0.0.1:40000"
	if from != "" {
		req.RemoteAddr = from
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	ta.h.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	r := reply{code: res.StatusCode, header: res.Header, raw: strings.TrimSpace(string(b))}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if d.Decode(&m) == nil {
		r.body = m
	}
	return r
}

func (ta *testAPI) get(target string) reply {
	ta.t.Helper()
	return ta.do(http.MethodGet, target, "", "")
}

func (ta *testAPI) post(target, body string) reply {
	ta.t.Helper()
	return ta.do(http.MethodPost, target, body, "")
}

// isErrorBody checks the error body every endpoint answers with: {"status": code, "message": ...}.
func isErrorBody(t *testing.T, r reply, code int, msgPart string) {
	t.Helper()
	if r.code != code || r.body == nil || r.body["status"] != json.Number(itoa(code)) || !strings.Contains(asString(r.body["message"]), msgPart) {
		t.Fatalf("got %d %s, want %d with an error body whose message contains %q", r.code, r.raw, code, msgPart)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error body with Content-Type %q", ct)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func asString(v any) string { s, _ := v.(string); return s }
