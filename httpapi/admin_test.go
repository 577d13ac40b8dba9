package httpapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
)

// tokenFile writes a --token-file with the given lines.
func tokenFile(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Who may call what: admin calls need scope admin, fetch needs scope fetch (or admin);
// with no token configured both are for --trusted-networks only; reads stay open.
func TestAuth_AdminAndFetchScopes(t *testing.T) {
	const (
		adminTok = "admin-token-0123456789"
		readTok  = "reader-token-0123456789"
		fetchTok = "fetcher-token-0123456789"
	)
	ta := newTestAPI(t, withAuth(auth.Config{AdminToken: adminTok, TokenFile: tokenFile(t, "reader read "+readTok, "fetcher fetch "+fetchTok)}))
	bearer := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
	admin := []struct{ method, path string }{
		{"POST", "/v1/join?addr=n9:8429"}, {"POST", "/v1/leave"}, {"POST", "/v1/remove/n1"},
		{"GET", "/v1/snapshot"}, {"POST", "/v1/snapshot"},
	}
	for _, c := range admin {
		what := c.method + " " + c.path
		if r := ta.do(c.method, c.path, "", "", bearer("wrong-token-0123456789")...); r.code != 401 || !strings.Contains(r.raw, "--admin-token") {
			t.Errorf("%s with a wrong token: %d %s", what, r.code, r.raw)
		}
		if r := ta.do(c.method, c.path, "", ""); r.code != 401 {
			t.Errorf("%s without a token, from loopback, while a token is configured: %d %s", what, r.code, r.raw)
		}
		for _, tok := range []string{readTok, fetchTok} {
			if r := ta.do(c.method, c.path, "", "", bearer(tok)...); r.code != 403 || !strings.Contains(r.raw, "does not have scope admin") {
				t.Errorf("%s with a token without scope admin: %d %s", what, r.code, r.raw)
			}
		}
	}
	if len(ta.cluster.added)+len(ta.cluster.removed)+len(ta.cluster.restored)+ta.node.left != 0 {
		t.Fatal("a refused admin call reached the cluster")
	}
	fetch := "/v1/fetch/user-service/echo"
	if r := ta.do("POST", fetch, "[]", "", bearer(readTok)...); r.code != 403 || !strings.Contains(r.raw, "does not have scope fetch") {
		t.Errorf("fetch with a read token: %d %s", r.code, r.raw)
	}
	for _, tok := range []string{fetchTok, adminTok} {
		if r := ta.do("POST", fetch, "[]", "", bearer(tok)...); r.code != 200 {
			t.Errorf("fetch with a token with scope fetch: %d %s", r.code, r.raw)
		}
	}
	if r := ta.do("POST", "/v1/join?addr=n9:8429", "", "", bearer(adminTok)...); r.code != 200 {
		t.Errorf("join with the admin token: %d %s", r.code, r.raw)
	}
	// Without a read token, reads stay open to anyone: an admin token does not lock them.
	adminOnly := newTestAPI(t, withAuth(auth.Config{AdminToken: adminTok}))
	if r := adminOnly.do("GET", "/v1/where/user-service", "", "10.0.0.1:1234"); r.code != 200 {
		t.Errorf("read from anywhere with only an admin token configured: %d %s", r.code, r.raw)
	}

	// No token configured: admin and fetch from --trusted-networks only.
	open := newTestAPI(t)
	for _, c := range append(admin, struct{ method, path string }{"POST", fetch}) {
		r := open.do(c.method, c.path, "", "10.0.0.1:1234")
		if r.code != 403 || !strings.Contains(r.raw, "only from --trusted-networks") || !strings.Contains(r.raw, "10.0.0.1") {
			t.Errorf("%s %s from outside the trusted networks: %d %s", c.method, c.path, r.code, r.raw)
		}
	}
}

func TestJoin_NeedsAnAddress(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.cluster.addID = "n9" })
	isErrorBody(t, ta.post("/v1/join", ""), 400, "join needs ?addr=<peer address (--raft-addr) of the node to add>")
	isErrorBody(t, ta.post("/v1/join?addr=%20", "  \n"), 400, "join needs ?addr=")
	if len(ta.cluster.added) != 0 {
		t.Fatalf("AddMember called without an address: %v", ta.cluster.added)
	}
	if r := ta.post("/v1/join?addr=10.0.0.9:8429", ""); r.code != 200 || r.body["status"] != "joined" || r.body["node"] != "n9" {
		t.Fatalf("join: %d %s", r.code, r.raw)
	}
	if r := ta.post("/v1/join", " 10.0.0.8:8429\n"); r.code != 200 {
		t.Fatalf("join with the address as the body: %d %s", r.code, r.raw)
	}
	if got := ta.cluster.added; len(got) != 2 || got[0] != "10.0.0.9:8429" || got[1] != "10.0.0.8:8429" {
		t.Fatalf("AddMember got %q", got)
	}
	ta.cluster.addErr = errors.New("no leader")
	isErrorBody(t, ta.post("/v1/join?addr=10.0.0.7:8429", ""), 503, "no leader")
}

func TestRemove_RefusesSelfAndUnknownMembers(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cluster.members = append(ta.cluster.members, cluster.Member{ID: "n2", Address: "n2:8429", Voter: true, Suffrage: "Voter"})
	})
	isErrorBody(t, ta.post("/v1/remove/n1", ""), 400, "a node cannot remove itself: use leave")
	isErrorBody(t, ta.post("/v1/remove/ghost", ""), 404, "no member with id ghost")
	if len(ta.cluster.removed) != 0 {
		t.Fatalf("Remove called: %v", ta.cluster.removed)
	}
	if r := ta.post("/v1/remove/n2", ""); r.code != 200 || r.body["status"] != "removed" || r.body["node"] != "n2" {
		t.Fatalf("remove: %d %s", r.code, r.raw)
	}
	ta.cluster.removeErr = errors.New("leadership lost")
	isErrorBody(t, ta.post("/v1/remove/n2", ""), 503, "leadership lost")
}

func TestLeave_ClosesAgentsThenLeavesThenCallsOnLeft(t *testing.T) {
	left := make(chan struct{}, 1)
	ta := newTestAPI(t, func(ta *testAPI) { ta.cfg.OnLeft = func() { left <- struct{}{} } })
	if r := ta.post("/v1/leave", ""); r.code != 200 || r.body["status"] != "left" || r.body["node"] != "n1" {
		t.Fatalf("leave: %d %s", r.code, r.raw)
	}
	<-left
	if ta.node.closedAgents != 1 || ta.node.left != 1 {
		t.Fatalf("agents closed %d times, left %d times", ta.node.closedAgents, ta.node.left)
	}
	ta.node.leaveErr = errors.New("no leader to hand over to")
	isErrorBody(t, ta.post("/v1/leave", ""), 503, "no leader to hand over to")
	select {
	case <-left:
		t.Fatal("OnLeft ran after a failed leave")
	default:
	}
}

func TestSnapshot_SaveRestoreAndRefusals(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cluster.snapshot = []byte("wsregistry-snapshot 1\n...")
		ta.cfg.MaxSnapshotUpload = 64
	})
	r := ta.get("/v1/snapshot")
	if r.code != 200 || r.raw != "wsregistry-snapshot 1\n..." || r.header.Get("Content-Type") != "application/octet-stream" || r.header.Get("X-Wsregistry-Snapshot-Index") != "42" {
		t.Fatalf("save: %d %q %v", r.code, r.raw, r.header)
	}

	// Over the limit: refused before anything reaches the cluster.
	isErrorBody(t, ta.post("/v1/snapshot", strings.Repeat("x", 65)), 413, "snapshot larger than 64 bytes")
	if len(ta.cluster.restored) != 0 {
		t.Fatal("an oversized snapshot reached the cluster")
	}
	// Not a snapshot: the cluster's check says so (fsm.ErrInvalid), and that is the caller's mistake.
	ta.cluster.restoreErr = fmt.Errorf("%w: not a snapshot (no wsregistry-snapshot header)", fsm.ErrInvalid)
	isErrorBody(t, ta.post("/v1/snapshot", "not a snapshot"), 400, "not a snapshot")
	// Anything else is the cluster's trouble.
	ta.cluster.restoreErr = errors.New("no leader")
	isErrorBody(t, ta.post("/v1/snapshot", "wsregistry-snapshot 1"), 503, "no leader")
	ta.cluster.restoreErr = nil
	if r := ta.post("/v1/snapshot", "wsregistry-snapshot 1"); r.code != 200 || r.body["status"] != "restored" {
		t.Fatalf("restore: %d %s", r.code, r.raw)
	}
	if got := ta.cluster.restored; len(got) != 3 || string(got[2]) != "wsregistry-snapshot 1" {
		t.Fatalf("RestoreSnapshot got %q", got)
	}
	if got := sizeString(DefaultMaxSnapshotUpload); got != "1 GiB" {
		t.Fatalf("the default limit reads %q", got)
	}
}

func TestPartitionSwitch(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.cfg.FaultInjection = true })
	isErrorBody(t, ta.post("/v1/debug/partition", ""), 400, "partition needs ?on=true or ?on=false")
	if r := ta.post("/v1/debug/partition?on=true", ""); r.code != 200 || r.body["partitioned"] != true {
		t.Fatalf("partition on: %d %s", r.code, r.raw)
	}
	if r := ta.post("/v1/debug/partition?on=false", ""); r.code != 200 || r.body["partitioned"] != false {
		t.Fatalf("partition off: %d %s", r.code, r.raw)
	}
	if got := ta.cluster.partition; len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("switch moved %v", got)
	}
	if r := ta.do("POST", "/v1/debug/partition?on=true", "", "10.0.0.1:1234"); r.code != 403 {
		t.Fatalf("partition from outside the trusted networks: %d %s", r.code, r.raw)
	}
}

func TestPprof_AdminOnly(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.cfg.Pprof = true })
	if r := ta.get("/debug/pprof/cmdline"); r.code != 200 {
		t.Fatalf("pprof from loopback: %d %s", r.code, r.raw)
	}
	if r := ta.do("GET", "/debug/pprof/cmdline", "", "10.0.0.1:1234"); r.code != 403 {
		t.Fatalf("pprof from outside the trusted networks: %d %s", r.code, r.raw)
	}
}
