package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
)

func TestReads_WhereNamespacesHealthAndFreshnessHeaders(t *testing.T) {
	ta := newTestAPI(t)
	r := ta.get("/v1/where/user-service")
	if r.code != 200 || !reflect.DeepEqual(r.body, map[string]any{"namespace": "user-service", "host": "127.0.0.1:9001"}) {
		t.Fatalf("where: %d %s", r.code, r.raw)
	}
	if r.header.Get("X-Wsregistry-Index") != "42" || r.header.Get("X-Wsregistry-Known-Leader") != "true" || r.header.Get("X-Wsregistry-Last-Contact") != "0" {
		t.Fatalf("read headers: %v", r.header)
	}
	isErrorBody(t, ta.get("/v1/where/nobody"), 404, `no live instance of namespace "nobody"`)

	r = ta.get("/v1/namespaces")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.raw), &list); r.code != 200 || err != nil || len(list) != 1 {
		t.Fatalf("namespaces: %d %s", r.code, r.raw)
	}
	inst := list[0]["instances"].([]any)[0].(map[string]any)
	if list[0]["name"] != "user-service" || inst["host"] != "127.0.0.1:9001" || inst["node"] != "n1" || inst["since"] != "2026-01-02T03:04:05Z" {
		t.Fatalf("namespaces: %s", r.raw)
	}
	if r := ta.get("/v1/namespaces/user-service"); r.code != 200 || r.body["name"] != "user-service" {
		t.Fatalf("one namespace: %d %s", r.code, r.raw)
	}
	isErrorBody(t, ta.get("/v1/namespaces/nobody"), 404, "nobody")
	if r := ta.get("/healthz"); r.code != 200 || r.body["status"] != "ok" {
		t.Fatalf("healthz: %d %s", r.code, r.raw)
	}
	if r := ta.get("/readyz"); r.code != 200 || r.body["status"] != "ready" {
		t.Fatalf("readyz: %d %s", r.code, r.raw)
	}
}

// A follower that never heard from a leader says so in the headers, so a client can judge
// a local answer.
func TestReads_HeadersOfANodeWithoutLeader(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cluster.leaderID, ta.cluster.leader, ta.cluster.sinceContact = "", false, -1
	})
	r := ta.get("/v1/where/user-service")
	if r.code != 200 || r.header.Get("X-Wsregistry-Known-Leader") != "false" || r.header.Get("X-Wsregistry-Last-Contact") != "-1" {
		t.Fatalf("where without a leader: %d %v", r.code, r.header)
	}
}

func TestReads_BadNamespaceIs400(t *testing.T) {
	ta := newTestAPI(t)
	isErrorBody(t, ta.get("/v1/where/a%00b"), 400, "control character")
	isErrorBody(t, ta.get("/v1/namespaces/a%00b"), 400, "control character")
}

// A fenced node's registrations are being purged by the majority: local reads are refused
// with the reason, the cluster view (which says it is fenced) and consistent reads are not.
func TestReads_FencedNodeRefusesLocalReadsWith503(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.node.fenced = true })
	for _, p := range []string{"/v1/where/user-service", "/v1/namespaces", "/v1/namespaces/user-service"} {
		r := ta.get(p)
		isErrorBody(t, r, 503, "this node is fenced (cut off from the leader): read from another node, or use ?consistent=true")
		if r.header.Get("X-Wsregistry-Index") == "" {
			t.Fatalf("%s: a refused read still says how fresh the node is: %v", p, r.header)
		}
	}
	if r := ta.get("/v1/cluster"); r.code != 200 || r.body["fenced"] != true {
		t.Fatalf("cluster on a fenced node: %d %s", r.code, r.raw)
	}
	if r := ta.get("/v1/where/user-service?consistent=true"); r.code != 200 || ta.cluster.consistent != 1 {
		t.Fatalf("consistent read on a fenced node: %d %s (%d consistent reads)", r.code, r.raw, ta.cluster.consistent)
	}
}

func TestReads_ConsistentFailsWith503WhenTheClusterHasNoLeader(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.cluster.consistentErr = errors.New("consistent read: no leader known") })
	for _, p := range []string{"/v1/where/user-service?consistent=true", "/v1/namespaces?consistent=true", "/v1/cluster?consistent=true"} {
		isErrorBody(t, ta.get(p), 503, "consistent read: no leader known")
	}
	// Anything but "true" is a local read.
	if r := ta.get("/v1/where/user-service?consistent=1"); r.code != 200 || ta.cluster.consistent != 3 {
		t.Fatalf("?consistent=1: %d %s (%d consistent reads)", r.code, r.raw, ta.cluster.consistent)
	}
}

func TestReady_NotReadyIs503WithTheReason(t *testing.T) {
	for _, why := range []string{"no leader known", "catching up with the leader's log", "fenced: cut off from the leader for longer than the node grace"} {
		ta := newTestAPI(t, func(ta *testAPI) { ta.node.ready, ta.node.why = false, why })
		r := ta.get("/readyz")
		if r.code != 503 || !reflect.DeepEqual(r.body, map[string]any{"status": "not ready", "reason": why}) {
			t.Fatalf("readyz: %d %s, want 503 with reason %q", r.code, r.raw, why)
		}
		if r := ta.get("/healthz"); r.code != 200 {
			t.Fatalf("healthz of a live but unready node: %d", r.code)
		}
	}
}

func TestUnknownEndpointsAre404WithAJSONBody(t *testing.T) {
	ta := newTestAPI(t)
	for _, c := range []struct{ method, path string }{
		{"GET", "/v2/where/x"},
		{"POST", "/v1/where/user-service"},
		{"DELETE", "/v1/namespaces"},
		{"POST", "/internal/v1/propose"}, // node-to-node calls live on the peer port only
		{"GET", "/debug/pprof/"},         // off unless Config.Pprof
		{"POST", "/v1/debug/partition?on=true"},
	} {
		r := ta.do(c.method, c.path, "", "")
		isErrorBody(t, r, 404, "no such endpoint: "+c.method+" ")
	}
	if len(ta.cluster.partition) != 0 {
		t.Fatal("the fault switch moved while FaultInjection is off")
	}
}

func TestCluster_ViewOnTheLeaderAndOnAFollower(t *testing.T) {
	members := []cluster.Member{
		{ID: "n3", Address: "n3:8429", Voter: true, Suffrage: "Voter"},
		{ID: "n1", Address: "n1:8429", Voter: true, Suffrage: "Voter"},
		{ID: "n2", Address: "n2:8429", Voter: false, Suffrage: "Nonvoter"},
	}
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cluster.members = members
		ta.cluster.silence = map[string]time.Duration{"n3": 1500 * time.Millisecond}
	})
	r := ta.get("/v1/cluster")
	var v ClusterView
	if err := json.Unmarshal([]byte(r.raw), &v); r.code != 200 || err != nil {
		t.Fatalf("cluster: %d %s", r.code, r.raw)
	}
	if v.Node != "n1" || v.State != "Leader" || v.Leader != "n1" || v.Term != 2 || v.CommitIndex != 42 || v.PeerSecurity != string(cluster.PeerTrusted) || len(v.Members) != 3 {
		t.Fatalf("cluster view: %s", r.raw)
	}
	contact := func(m MemberView) int64 {
		if m.LastContactMS == nil {
			return -1
		}
		return *m.LastContactMS
	}
	// Sorted by id; the leader knows everyone's silence; metadata comes from the state.
	if v.Members[0].ID != "n1" || !v.Members[0].Leader || v.Members[0].WS != "127.0.0.1:8427" || v.Members[0].Incarnation != 7 || contact(v.Members[0]) != 0 ||
		v.Members[1].ID != "n2" || v.Members[1].Suffrage != "Nonvoter" || contact(v.Members[1]) != 0 ||
		v.Members[2].ID != "n3" || contact(v.Members[2]) != 1500 {
		t.Fatalf("members on the leader: %s", r.raw)
	}
	if !strings.Contains(r.raw, `"last_contact_ms":0`) {
		t.Fatalf("last contact not in the body: %s", r.raw)
	}

	// A follower knows only its own contact with the leader: the others are null.
	f := newTestAPI(t, func(ta *testAPI) {
		ta.cfg.NodeID = "n2"
		ta.cluster.members, ta.cluster.leaderID, ta.cluster.leader = members, "n1", false
		ta.cluster.status.State, ta.cluster.sinceContact = "follower", 30*time.Millisecond
	})
	v = DescribeCluster("n2", f.cluster, f.state, false)
	if v.State != "Follower" || contact(v.Members[0]) != 30 || contact(v.Members[1]) != 30 || v.Members[2].LastContactMS != nil {
		t.Fatalf("members on a follower: %+v", v)
	}
	if r := f.get("/v1/cluster"); r.code != 200 || !strings.Contains(r.raw, `"last_contact_ms":null`) {
		t.Fatalf("follower's /v1/cluster: %d %s", r.code, r.raw)
	}
}

// Every member's role; on the leader, its probe of each member; and autopilot's actions.
func TestCluster_RolesHealthAndAutopilotActions(t *testing.T) {
	now := time.Now()
	members := []cluster.Member{
		{ID: "n1", Address: "n1:8429", Voter: true, Suffrage: "Voter"},
		{ID: "n2", Address: "n2:8429", Voter: false, Suffrage: "Nonvoter"},
		{ID: "n3", Address: "n3:8429", Voter: true, Suffrage: "Voter"},
	}
	act := cluster.AutopilotAction{At: now.Add(-time.Minute), Action: cluster.ActionRemoved, Member: "n4", Reason: "voter silent for 10s"}
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cluster.members = members
		ta.cluster.health = map[string]cluster.MemberHealth{
			"n2": {LastContact: now.Add(-200 * time.Millisecond), HealthySince: now.Add(-5 * time.Second), AppliedIndex: 40, Lag: 2},
			"n3": {LastContact: now.Add(-8 * time.Second), AppliedIndex: 30, Lag: 12},
		}
		ta.cluster.autopilot = cluster.AutopilotState{TargetVoters: 3, Recent: []cluster.AutopilotAction{act},
			Counts: map[string]uint64{cluster.ActionRemoved: 1, cluster.ActionPromoted: 0, cluster.ActionRejoined: 0}}
	})
	r := ta.get("/v1/cluster")
	var v ClusterView
	if err := json.Unmarshal([]byte(r.raw), &v); r.code != 200 || err != nil {
		t.Fatalf("cluster: %d %s", r.code, r.raw)
	}
	for i, role := range []string{"voter", "nonvoter", "voter"} {
		if v.Members[i].Role != role {
			t.Fatalf("member %s: role %q, want %q: %s", v.Members[i].ID, v.Members[i].Role, role, r.raw)
		}
	}
	self, nv, failing := v.Members[0].Health, v.Members[1].Health, v.Members[2].Health
	if self == nil || !self.Healthy || nv == nil || failing == nil {
		t.Fatalf("health on the leader: %s", r.raw)
	}
	if !nv.Healthy || nv.Lag != 2 || nv.AppliedIndex != 40 || nv.HealthyForMS < 5000 || nv.LastContactAgeMS < 200 || nv.LastContactAgeMS > 5000 {
		t.Fatalf("healthy non-voter: %+v", *nv)
	}
	if failing.Healthy || failing.Lag != 12 || failing.HealthyForMS != 0 || failing.LastContactAgeMS < 8000 {
		t.Fatalf("failing voter: %+v", *failing)
	}
	ap := v.Autopilot
	if ap == nil || ap.TargetVoters != 3 || len(ap.Recent) != 1 || ap.Recent[0].Member != "n4" || ap.Recent[0].Reason == "" || ap.Counts["removed"] != 1 || ap.Counts["promoted"] != 0 {
		t.Fatalf("autopilot: %s", r.raw)
	}

	// A follower has no probes: no health; it shows what it did while it led (nothing).
	f := newTestAPI(t, func(ta *testAPI) {
		ta.cfg.NodeID = "n2"
		ta.cluster.members, ta.cluster.leaderID, ta.cluster.leader = members, "n1", false
		ta.cluster.health = map[string]cluster.MemberHealth{"n3": {LastContact: now}}
	})
	r = f.get("/v1/cluster")
	if r.code != 200 || strings.Contains(r.raw, `"health"`) || !strings.Contains(r.raw, `"role":"nonvoter"`) || !strings.Contains(r.raw, `"recent":[]`) {
		t.Fatalf("follower's /v1/cluster: %d %s", r.code, r.raw)
	}
}

// The watch stream and the metrics are reads; the dashboard's page holds no data and stays
// open so a browser can load it before it has a token to send.
func TestMounts_WatchMetricsDashboard(t *testing.T) {
	handler := func(body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(body)) })
	}
	const readToken = "reader-token-0123456789"
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cfg.Metrics, ta.cfg.Watch, ta.cfg.Dashboard = handler("metrics"), handler("watch"), handler("page")
	}, withAuth(auth.Config{TokenFile: tokenFile(t, "reader read "+readToken)}))
	for path, want := range map[string]string{"/metrics": "metrics", "/v1/watch": "watch"} {
		if r := ta.get(path); r.code != 401 {
			t.Errorf("%s without the read token: %d %s", path, r.code, r.raw)
		}
		if r := ta.do("GET", path, "", "", "Authorization", "Bearer "+readToken); r.code != 200 || r.raw != want {
			t.Errorf("%s with the read token: %d %s", path, r.code, r.raw)
		}
	}
	for _, p := range []string{"/", "/assets/app.js"} {
		if r := ta.do("GET", p, "", "10.0.0.1:1234"); r.code != 200 || r.raw != "page" {
			t.Errorf("%s: %d %s", p, r.code, r.raw)
		}
	}
}
