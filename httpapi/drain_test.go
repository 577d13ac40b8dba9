package httpapi

import (
	"context"
	"strings"
	"testing"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/fsm"
)

// withDrain mounts a drain that records its calls.
func withDrain(calls *[]bool) func(*testAPI) {
	return func(ta *testAPI) {
		ta.cfg.Drain = func(_ context.Context, cancel bool) (any, error) {
			*calls = append(*calls, cancel)
			return map[string]any{"node": "n1", "draining": !cancel}, nil
		}
		ta.cfg.DrainStatus = func() any { return map[string]any{"node": "n1", "done": true} }
	}
}

// Drain is an admin call: refused without the admin scope (401/403 naming the flags),
// and a refusal never reaches the node.
func TestDrain_IsAdminOnlyAndStartsOrCancels(t *testing.T) {
	const adminTok, readTok = "admin-token-0123456789", "reader-token-0123456789"
	var calls []bool
	ta := newTestAPI(t, withAuth(auth.Config{AdminToken: adminTok, TokenFile: tokenFile(t, "reader read "+readTok)}), withDrain(&calls))
	for _, path := range []string{"/v1/drain", "/v1/drain?cancel=true"} {
		if r := ta.do("POST", path, "", ""); r.code != 401 || !strings.Contains(r.raw, "--admin-token") || !strings.Contains(r.raw, "--token-file") {
			t.Errorf("POST %s without a token: %d %s", path, r.code, r.raw)
		}
		if r := ta.do("POST", path, "", "", "Authorization", "Bearer "+readTok); r.code != 403 {
			t.Errorf("POST %s with a read token: %d %s", path, r.code, r.raw)
		}
	}
	if r := ta.do("GET", "/v1/drain", "", ""); r.code != 401 {
		t.Errorf("GET /v1/drain without a token: %d %s", r.code, r.raw)
	}
	if len(calls) != 0 {
		t.Fatalf("a refused drain reached the node: %v", calls)
	}
	if r := ta.do("POST", "/v1/drain", "", "", "Authorization", "Bearer "+adminTok); r.code != 200 || r.body["draining"] != true {
		t.Errorf("drain with the admin token: %d %s", r.code, r.raw)
	}
	if r := ta.do("POST", "/v1/drain?cancel=true", "", "", "Authorization", "Bearer "+adminTok); r.code != 200 || r.body["draining"] != false {
		t.Errorf("cancel with the admin token: %d %s", r.code, r.raw)
	}
	if r := ta.do("POST", "/v1/drain?cancel=maybe", "", "", "Authorization", "Bearer "+adminTok); r.code != 400 {
		t.Errorf("a bad cancel: %d %s", r.code, r.raw)
	}
	if r := ta.do("GET", "/v1/drain", "", "", "Authorization", "Bearer "+adminTok); r.code != 200 || r.body["done"] != true {
		t.Errorf("drain status: %d %s", r.code, r.raw)
	}
	if len(calls) != 2 || calls[0] || !calls[1] {
		t.Fatalf("drain calls %v: want start then cancel", calls)
	}
	// Open while no token is configured only from --trusted-networks.
	open := newTestAPI(t, withDrain(&calls))
	if r := open.do("POST", "/v1/drain", "", "10.0.0.1:1234"); r.code != 403 || !strings.Contains(r.raw, "--trusted-networks") {
		t.Errorf("drain from outside the trusted networks: %d %s", r.code, r.raw)
	}
}

// /v1/cluster shows each member's announced version, whether it drains, and its agents;
// and this node's version, balance and pace.
func TestCluster_ShowsVersionsAgentsBalanceAndPace(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.state.nodes["n1"] = fsm.NodeMeta{ID: "n1", WSAddr: "127.0.0.1:8427", Incarnation: 7, Version: "v1.2.3", Draining: true}
		ta.cfg.Version = "v1.2.4"
		ta.cfg.Balance = func() any { return map[string]any{"fair_share": 10} }
		ta.cfg.Pace = func() any { return map[string]any{"lookups": []float64{1, 2}} }
	})
	r := ta.get("/v1/cluster")
	if r.code != 200 || r.body["version"] != "v1.2.4" || r.body["balance"] == nil || r.body["pace"] == nil {
		t.Fatalf("/v1/cluster: %d %s", r.code, r.raw)
	}
	m := r.body["members"].([]any)[0].(map[string]any)
	if m["version"] != "v1.2.3" || m["draining"] != true {
		t.Fatalf("member: %v", m)
	}
}
